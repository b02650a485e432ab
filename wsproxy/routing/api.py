"""Token plugins that ask an HTTP service: websockify's ``BaseTokenAPI`` and ``JSONTokenApi``.

The source is a URL with ``%s`` where the token goes
(``http://api.example/vnc/%s``).  A 2xx answer (after redirects) names the
target: ``host:port`` as plain text for ``BaseTokenAPI``, a JSON object with
``host`` and ``port`` members for ``JSONTokenApi``; a 4xx answer means an
unknown token.  Anything else (5xx, unreachable, no complete answer within
:data:`~wsproxy.routing.base.LOOKUP_TIMEOUT`) refuses the handshake with 503.

Differences from websockify kept on purpose: the token is percent-encoded
before it goes into the URL (so it cannot add query parameters), and the
environment's proxy variables are not used.  A subclass may override
``process_result(resp)`` as for websockify; ``resp`` has the ``text``,
``content``, ``status_code``, ``ok``, ``url`` and ``json()`` it used there.
"""

import http.client
import json
import time
import urllib.parse
from typing import Any, Optional

from wsproxy.settings import ConfigError

from . import net
from .base import LOOKUP_TIMEOUT, MAX_ANSWER, BuiltinPlugin, TokenLookupError


class Response:
    """An HTTP answer as ``process_result`` sees it (the parts websockify's plugins use)."""

    def __init__(self, status_code: int, url: str, content: bytes, charset: Optional[str]) -> None:
        self.status_code = status_code
        self.url = url
        self.content = content
        self.encoding = charset or "utf-8"

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    @property
    def text(self) -> str:
        return self.content.decode(self.encoding, "replace")

    def json(self) -> Any:
        return json.loads(self.content.decode("utf-8"))


class BaseTokenAPI(BuiltinPlugin):
    """``GET`` the source URL with the token in place of ``%s``; the answer is ``host:port``.

    Raises :class:`ConfigError` naming ``token-source`` for a source that
    is not an ``http(s)://`` URL holding one ``%s``.
    """

    name = "BaseTokenAPI"
    timeout = LOOKUP_TIMEOUT

    def __init__(self, src: Optional[str]) -> None:
        super().__init__(src)
        try:
            example = (src or "") % "TOKEN"
        except (TypeError, ValueError):
            example = ""
        parts = urllib.parse.urlsplit(example)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname \
                or (src or "").count("%s") != 1:
            raise ConfigError("token-source: %s needs an http(s):// URL with %%s where the token "
                              "goes, got %r" % (self.name, src))
        #: The URL without its query or user information, for log lines.
        self.where = urllib.parse.urlunsplit(parts._replace(
            netloc=parts.netloc.rpartition("@")[2], query="", fragment=""))

    def process_result(self, resp: Response):
        """The target a 2xx answer names: ``host:port`` text."""
        host, port = resp.text.strip().split(":")
        return host, port

    def lookup(self, token: str):
        url = self.source % urllib.parse.quote(token, safe="")
        deadline = time.monotonic() + self.timeout
        try:
            status, headers, body, final_url = net.http_get(url, deadline, MAX_ANSWER)
        except net.DeadlinePassed:
            raise TokenLookupError("%s %s too slow (no complete answer in %g s)"
                                   % (self.name, self.where, self.timeout)) from None
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise TokenLookupError("%s %s failed: %s" % (self.name, self.where, _reason(exc))) \
                from None
        if 400 <= status < 500:
            return None
        if not 200 <= status < 300:
            raise TokenLookupError("%s %s answered HTTP %d" % (self.name, self.where, status))
        response = Response(status, final_url, body, headers.get_content_charset())
        try:
            return self.process_result(response)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TokenLookupError("%s %s answered %r, not what it expects (%s)"
                                   % (self.name, self.where, body[:200], type(exc).__name__)) \
                from None


class JSONTokenApi(BaseTokenAPI):
    """As :class:`BaseTokenAPI`, but the answer is JSON ``{"host": "...", "port": N}``."""

    name = "JSONTokenApi"

    def process_result(self, resp: Response):
        answer = resp.json()
        return answer["host"], answer["port"]


def _reason(reason: object) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__
