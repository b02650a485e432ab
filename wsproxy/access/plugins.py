"""websockify's auth plugins by name, and the check the handler runs with one.

An auth plugin is called as websockify calls it, after the token chose the
target: ``authenticate(headers, target_host, target_port)``, where
``headers`` is the request's header block as an ``http.client.HTTPMessage``
(case-insensitive ``get``) and the target is ``(None, None)`` for a Unix
socket.  Any ``SSL_*`` header the client sent is removed first; with a
verified TLS client certificate, ``SSL_CLIENT_S_DN_CN`` holds its subject's
common name.  The plugin refuses by raising an error with ``code``,
``headers`` and ``msg`` (:class:`wsproxy.plugins.AuthenticationError`,
websockify's own, or any alike): the client gets that status and headers,
the log one line with the error's text.  Any other failure refuses with
500; a plugin from elsewhere that does not answer within the lookup
deadline refuses with 503.
"""

import base64
import binascii
import hmac
import http.client
import logging
import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from wsproxy.plugins import MAX_STUCK  # noqa: F401  (public here too)
from wsproxy.plugins import (AuthenticationError, BasePlugin, InvalidOriginError, PluginBusy,
                             PluginRunner, PluginTimeout, build_plugin)
from wsproxy.protocol.errors import HandshakeError
from wsproxy.settings import ConfigError, Settings
from wsproxy.tokens import SERVICE_TIMEOUT

logger = logging.getLogger("wsproxy")

#: websockify's built-in auth plugins by name: ``module:Class`` inside wsproxy.
AUTH_PLUGINS: Dict[str, str] = {
    "BasicHTTPAuth": "wsproxy.access.plugins:BasicHTTPAuth",
    "ExpectOrigin": "wsproxy.access.plugins:ExpectOrigin",
    "ClientCertCNAuth": "wsproxy.access.plugins:ClientCertCNAuth",
}

#: The header that carries the TLS client certificate's common name (Apache's name).
CLIENT_CN_HEADER = "SSL_CLIENT_S_DN_CN"
#: Seconds a plugin from elsewhere may take to decide (the token lookups' deadline).
AUTH_TIMEOUT = SERVICE_TIMEOUT

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class BasicHTTPAuth(BasePlugin):
    """HTTP Basic authentication against one ``user:password`` (the source).

    No ``Authorization`` header, or the wrong credentials: 401 with a
    ``WWW-Authenticate`` challenge; a header that is not Basic or not
    decodable: 403.  Raises :class:`ConfigError` naming ``auth-source``
    without a ``user:password`` source.
    """

    bounded = True

    def __init__(self, src: Optional[str] = None) -> None:
        super().__init__(src)
        if not src or ":" not in src:
            raise ConfigError("auth-source: BasicHTTPAuth needs USER:PASSWORD")
        self.src = src
        self._expected = src.encode("utf-8")

    def authenticate(self, headers, target_host, target_port) -> None:
        header = headers.get("Authorization")
        if not header:
            self.demand_auth()
        if not header.startswith("Basic "):
            self.auth_error()
        try:
            # websockify decodes the credentials as ISO-8859-1.
            decoded = base64.b64decode(header[6:].strip(), validate=True)
        except (binascii.Error, ValueError):
            self.auth_error()
        if b":" not in decoded:
            self.auth_error()
        if not hmac.compare_digest(decoded.decode("latin-1").encode("utf-8"), self._expected):
            self.demand_auth()

    def auth_error(self) -> None:
        raise AuthenticationError(log_msg="malformed Basic credentials", response_code=403)

    def demand_auth(self) -> None:
        raise AuthenticationError(log_msg="authentication required", response_code=401,
                                  response_headers={"WWW-Authenticate": 'Basic realm="wsproxy"'})


class ExpectOrigin(BasePlugin):
    """403 unless the ``Origin`` header is one of the source's white-space separated origins."""

    bounded = True

    def __init__(self, src: Optional[str] = None) -> None:
        super().__init__(src)
        self.source = src.split() if src else []

    def authenticate(self, headers, target_host, target_port) -> None:
        origin = headers.get("Origin")
        if origin is None or origin not in self.source:
            raise InvalidOriginError(expected=self.source, actual=origin)


class ClientCertCNAuth(BasePlugin):
    """403 unless the TLS client certificate's common name is one of the source's names.

    Needs ``--verify-client`` (else no certificate is asked for).
    """

    bounded = True

    def __init__(self, src: Optional[str] = None) -> None:
        super().__init__(src)
        self.source = src.split() if src else []

    def authenticate(self, headers, target_host, target_port) -> None:
        if headers.get(CLIENT_CN_HEADER) not in self.source:
            raise AuthenticationError(log_msg="client certificate common name %r not allowed"
                                      % (headers.get(CLIENT_CN_HEADER),), response_code=403)


class AuthRefused(HandshakeError):
    """An auth plugin's refusal: its status, headers and text; ``log_text`` goes to the log."""

    def __init__(self, status: int, reason: str, headers: Mapping[str, str], log_text: str) -> None:
        super().__init__(status, reason, headers)
        self.log_text = log_text

    def __str__(self) -> str:
        return "%d %s" % (self.status, self.log_text)


class PluginAuth:
    """Runs the ``--auth-plugin`` named ``name``, built with ``source``, for each handshake.

    Raises :class:`ConfigError` naming ``auth-plugin`` or ``auth-source``
    when the plugin cannot be loaded or refuses its source.
    """

    def __init__(self, name: str, source: Optional[str], timeout: float = AUTH_TIMEOUT) -> None:
        self.name = name
        self.timeout = timeout
        self.plugin = build_plugin(name, AUTH_PLUGINS, "auth-plugin", "auth-source", source)
        self.runner = PluginRunner(self.plugin, "wsproxy-auth-plugin", timeout)
        self.bounded = self.runner.bounded

    def check(self, header_list: Sequence[Tuple[str, str]], target_host: Optional[str],
              target_port: Optional[int], peer_cert: Optional[Mapping[str, Any]] = None) -> None:
        """Return when the plugin lets the request through; raise HandshakeError when not.

        ``header_list`` is the request's headers as sent; ``peer_cert`` the
        client's verified certificate (``SSLObject.getpeercert()``), if any.
        """
        headers = request_headers(header_list, peer_cert)
        error = self._run(headers, target_host, target_port)
        if error is None:
            return
        code = getattr(error, "code", None)
        if isinstance(code, int) and not isinstance(code, bool) and hasattr(error, "headers"):
            status = code if 400 <= code <= 599 else 403
            message = getattr(error, "msg", None)
            raise AuthRefused(status, str(message) if message else "refused",
                              _safe_headers(getattr(error, "headers", None)),
                              "auth plugin %s: %s" % (self.name, _one_line(str(error))))
        if isinstance(error, HandshakeError):
            raise error
        raise AuthRefused(500, "authentication failed", {}, "auth plugin %s failed: %s: %s"
                          % (self.name, type(error).__name__, _one_line(str(error))))

    def _run(self, headers, target_host, target_port) -> Optional[BaseException]:
        """The plugin's exception, or None when it accepted."""
        try:
            return self.runner.run(lambda: self._call(headers, target_host, target_port))
        except PluginBusy:
            return HandshakeError(503, "authentication unavailable")
        except PluginTimeout:
            logger.warning("auth plugin %s gave no answer in %g s", self.name, self.timeout)
            return HandshakeError(503, "authentication unavailable")

    def _call(self, headers, target_host, target_port) -> Optional[BaseException]:
        try:
            self.plugin.authenticate(headers=headers, target_host=target_host,
                                     target_port=target_port)
        except (Exception, SystemExit) as exc:
            return exc
        return None


def request_headers(header_list: Sequence[Tuple[str, str]],
                    peer_cert: Optional[Mapping[str, Any]]) -> http.client.HTTPMessage:
    """The headers an auth plugin sees: as sent, minus ``SSL_*``, plus the certificate's CN."""
    headers = http.client.HTTPMessage()
    for name, value in header_list:
        # A client must not pose as a verified certificate.
        if not name.upper().startswith("SSL_"):
            headers[name] = value
    common_name = _common_name(peer_cert)
    if common_name is not None:
        headers[CLIENT_CN_HEADER] = common_name
    return headers


def _common_name(peer_cert: Optional[Mapping[str, Any]]) -> Optional[str]:
    found = None
    for rdn in (peer_cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                found = value
    return found


def _safe_headers(headers: Any) -> Dict[str, str]:
    """The plugin's response headers that can go on the wire as they are."""
    safe: Dict[str, str] = {}
    try:
        items = list(dict(headers or {}).items())
    except (TypeError, ValueError):
        return safe
    for name, value in items:
        value = str(value)
        if (isinstance(name, str) and _TOKEN.match(name) and "\r" not in value
                and "\n" not in value):
            try:
                value.encode("latin-1")
            except UnicodeEncodeError:
                continue
            safe[name] = value
    return safe


def _one_line(text: str) -> str:
    return text.encode("unicode_escape", "backslashreplace").decode("ascii")


def open_auth_plugin(settings: Settings) -> Optional[PluginAuth]:
    """The ``--auth-plugin`` check ``settings`` ask for, or None; ConfigError naming the option."""
    if settings.auth_source and not settings.auth_plugin:
        raise ConfigError("auth-source: needs --auth-plugin")
    if not settings.auth_plugin:
        return None
    return PluginAuth(settings.auth_plugin, settings.auth_source)
