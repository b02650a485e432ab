"""Token routing: map a client-supplied token to a configured :class:`Target`.

The token source (``--token-source``) is a file, or a directory whose regular,
non-hidden files are read in sorted name order.  Each line is one of::

    # a comment
    token: host:port
    token: [v6::addr]:port
    token: unix:/path/to/socket

A client only ever names a token; the target it maps to comes from the
operator's files, so a client can never reach a host the operator did not
list.  The table re-reads its source when a file changes and on demand
(``reload``, for SIGHUP).

The source may instead be an ``http://`` or ``https://`` URL: then a
:class:`TokenService` asks that central service for each token (``GET
URL?token=NAME`` answering ``{"host": "...", "port": N}`` or ``{"unix":
"/path"}``, 404 for an unknown token) and keeps the answers a few seconds.
:func:`open_token_source` picks the right one.  Only the token service
opens sockets here.
"""

import base64
import collections
import http.client
import io
import json
import logging
import os
import socket
import ssl
import stat
import threading
import time
import urllib.parse
from typing import Dict, List, Mapping, Optional, Tuple, Union

from wsproxy.redact import redact_text
from wsproxy.settings import ConfigError
from wsproxy.targets import Target, parse_target

logger = logging.getLogger("wsproxy")

#: Seconds between two looks at the source's files for a change.
RECHECK_INTERVAL = 1.0

# What a source looked like when last read: per file its path, mtime, size and
# inode; a plain string saying why for a source that could not be listed.
_Signature = Union[None, str, Tuple[Tuple[str, int, int, int], ...]]


def source_files(source: str, hidden: bool) -> List[str]:
    """The regular files a file-or-directory token source stands for, in sorted name order.

    A file stands for itself; a directory for its regular files (names
    starting with ``.`` only when ``hidden``).  Raises ``OSError`` when the
    source is missing or cannot be listed.
    """
    if not os.path.isdir(source):
        os.stat(source)  # raises when missing or unreachable
        return [source]
    files = []
    for name in sorted(os.listdir(source)):
        if name.startswith(".") and not hidden:
            continue
        path = os.path.join(source, name)
        try:
            if stat.S_ISREG(os.stat(path).st_mode):
                files.append(path)
        except OSError:
            continue  # vanished between listdir and stat, or a dangling link
    return files


def files_signature(paths: List[str]) -> Tuple[Tuple[str, int, int, int], ...]:
    """What ``paths`` look like now: (path, mtime, size, inode) each; ``OSError`` if one is gone.

    Two equal signatures mean the files need not be read again.
    """
    signature = []
    for path in paths:
        st = os.stat(path)
        signature.append((path, st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(signature)


class TokenTable:
    """A thread-safe ``token -> Target`` table read from a file or directory.

    ``source`` is the ``--token-source`` path.  Raises :class:`ConfigError`
    naming ``token-source`` when it does not exist at construction.  Once
    built, the table never raises: a malformed line is logged (one warning
    naming file and line number) and skipped, and a source that vanishes or
    cannot be read is logged and gives an empty table until it comes back.

    ``recheck_interval`` bounds how often :meth:`lookup` stats the files.
    """

    def __init__(self, source: str, recheck_interval: float = RECHECK_INTERVAL) -> None:
        if not os.path.exists(source):
            raise ConfigError("token-source: %s does not exist" % source)
        self.source = source
        self.recheck_interval = recheck_interval
        self._lock = threading.Lock()
        self._table: Dict[str, Target] = {}
        self._signature: _Signature = None
        self._checked_at = 0.0
        self.reload()

    def __len__(self) -> int:
        with self._lock:
            return len(self._table)

    def lookup(self, token: str) -> Optional[Target]:
        """Return the target for ``token``, or ``None`` if it is not listed.

        Re-reads the source first when any file changed since the last read
        (checked at most once per ``recheck_interval``).
        """
        with self._lock:
            now = time.monotonic()
            if now - self._checked_at >= self.recheck_interval:
                self._checked_at = now
                signature = self._current_signature()
                if signature != self._signature:
                    self._load(signature)
            return self._table.get(token)

    def reload(self) -> None:
        """Re-read the source now, whether or not it looks changed."""
        with self._lock:
            self._checked_at = time.monotonic()
            self._load(self._current_signature())

    # -- reading -------------------------------------------------------------

    def _current_signature(self) -> _Signature:
        try:
            return files_signature(source_files(self.source, hidden=False))
        except OSError as exc:
            return "unreadable: %s" % exc.strerror

    def _load(self, signature: _Signature) -> None:
        """Replace the table with the source's current content (lock held)."""
        previous = self._signature
        self._signature = signature
        if isinstance(signature, str):
            if previous != signature:
                logger.warning("token-source %s: %s; no tokens until it can be read",
                               self.source, signature.split(": ", 1)[1])
            self._table = {}
            return
        table: Dict[str, Target] = {}
        where: Dict[str, Tuple[str, int]] = {}
        for path, _mtime, _size, _ino in signature:
            self._read_file(path, table, where)
        self._table = table
        logger.info("token-source %s: %d token(s) loaded", self.source, len(table))

    @staticmethod
    def _read_file(path: str, table: Dict[str, Target],
                   where: Dict[str, Tuple[str, int]]) -> None:
        try:
            with open(path, "rb") as stream:
                raw_lines = stream.read().splitlines()
        except OSError as exc:
            logger.warning("token-source %s: cannot read: %s; file skipped", path, exc.strerror)
            return
        for number, raw in enumerate(raw_lines, start=1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                logger.warning("token-source %s line %d: not UTF-8; line skipped", path, number)
                continue
            if not line or line.startswith("#"):
                continue
            try:
                token, target = parse_token_line(line)
            except ValueError as exc:
                logger.warning("token-source %s line %d: %s; line skipped", path, number, exc)
                continue
            if token in table:
                first_path, first_number = where[token]
                logger.warning("token-source %s line %d: token already defined at %s line %d; "
                               "the later line wins", path, number, first_path, first_number)
            table[token] = target
            where[token] = (path, number)


# -- the HTTP token service --------------------------------------------------------

#: Seconds the token service has to answer before the handshake gets 503.
SERVICE_TIMEOUT = 2.0
#: Seconds an answer naming a target is kept.
SERVICE_TTL = 10.0
#: Seconds a 404 ("unknown token") answer is kept.
SERVICE_UNKNOWN_TTL = 2.0
#: Most answers kept at once; the least recently used go first.
SERVICE_CACHE_ENTRIES = 1024
#: Longest answer body read from the service.
SERVICE_MAX_ANSWER = 64 * 1024
#: Longest token sent to the service; a longer one is unknown without asking.
MAX_SERVICE_TOKEN = 512


class TokenServiceError(Exception):
    """The token service gave no usable answer; the handshake is refused with 503.

    Unreachable, slower than the timeout, an HTTP status other than 200 or
    404, or a body that is not the JSON contract.  The message says which,
    for one log line; it never holds the token.
    """


class TokenService:
    """A ``token -> Target`` lookup answered by a central HTTP service, with a small cache.

    ``url`` is the ``--token-source`` ``http://`` or ``https://`` URL.  For
    a token not in the cache, :meth:`lookup` sends ``GET url?token=NAME``
    (``&token=NAME`` when the URL already has a query).  The service
    answers 200 with a JSON object, ``{"host": "name or address", "port":
    N}`` or ``{"unix": "/path/to/socket"}``, or 404 for an unknown token.

    Answers are kept ``ttl`` seconds (404s ``unknown_ttl`` seconds), at
    most ``max_entries`` of them (least recently used dropped first);
    failures are not kept.  One deadline, ``timeout`` seconds, bounds the
    whole exchange: connecting, the TLS handshake, sending the request and
    reading the entire answer (a service trickling its answer a byte at a
    time gets no more).  Only resolving the host name is outside it (the
    system resolver has no timeout to give): name the service by address,
    or rely on a local resolver.  ``https`` is verified against the
    system's CA store (or ``ssl_context``); ``user:password@`` in the URL
    is sent as HTTP Basic authentication.  Redirects are not followed
    and the environment's proxy variables are ignored.  Raises
    :class:`ConfigError` naming ``token-source`` for a URL that is not
    ``http(s)://HOST[:PORT]/...``.
    """

    def __init__(self, url: str, timeout: float = SERVICE_TIMEOUT, ttl: float = SERVICE_TTL,
                 unknown_ttl: float = SERVICE_UNKNOWN_TTL,
                 max_entries: int = SERVICE_CACHE_ENTRIES,
                 ssl_context: Optional[ssl.SSLContext] = None) -> None:
        parts = urllib.parse.urlsplit(url.strip())
        try:
            parts.port  # raises ValueError for a port that is not a number 0-65535
            usable = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
        except ValueError:
            usable = False
        if not usable:
            raise ConfigError("token-source: expected http://HOST[:PORT]/PATH or "
                              "https://HOST[:PORT]/PATH, got %r" % redact_text(url))
        self.url = url
        self.timeout = timeout
        self.ttl = ttl
        self.unknown_ttl = unknown_ttl
        self.max_entries = max_entries
        # user:password@ in the URL becomes HTTP Basic authentication (RFC 7617).
        self._headers = {"Accept": "application/json", "User-Agent": "wsproxy"}
        if parts.username is not None:
            credentials = "%s:%s" % (urllib.parse.unquote(parts.username),
                                     urllib.parse.unquote(parts.password or ""))
            self._headers["Authorization"] = "Basic " + base64.b64encode(
                credentials.encode("utf-8")).decode("ascii")
        self._base = parts._replace(fragment="", netloc=parts.netloc.rpartition("@")[2])
        #: The URL without its query or password, for log lines.
        self.where = urllib.parse.urlunsplit(self._base._replace(query=""))
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        self._context: Optional[ssl.SSLContext] = None
        if parts.scheme.lower() == "https":
            self._context = ssl_context if ssl_context is not None else ssl.create_default_context()
        self._lock = threading.Lock()
        self._cache: "collections.OrderedDict[str, Tuple[float, Optional[Target]]]" = \
            collections.OrderedDict()

    def __len__(self) -> int:
        """How many answers the cache holds (expired ones included until replaced)."""
        with self._lock:
            return len(self._cache)

    def lookup(self, token: str) -> Optional[Target]:
        """Return the target for ``token``, or ``None`` if the service does not know it.

        Raises :class:`TokenServiceError` when the service gives no usable
        answer; that takes at most about ``timeout`` seconds.
        """
        if not token or len(token) > MAX_SERVICE_TOKEN:
            return None
        with self._lock:
            entry = self._cache.get(token)
            if entry is not None and entry[0] > time.monotonic():
                self._cache.move_to_end(token)
                return entry[1]
        # Asked outside the lock: one slow answer must not hold up the others.
        target = self._ask(token)
        keep = self.ttl if target is not None else self.unknown_ttl
        with self._lock:
            self._cache[token] = (time.monotonic() + keep, target)
            self._cache.move_to_end(token)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return target

    def reload(self) -> None:
        """Forget every kept answer (SIGHUP): the next lookups ask the service again."""
        with self._lock:
            self._cache.clear()

    def query_url(self, token: str) -> str:
        """The URL that asks the service about ``token``."""
        query = urllib.parse.urlencode({"token": token})
        if self._base.query:
            query = self._base.query + "&" + query
        return urllib.parse.urlunsplit(self._base._replace(query=query))

    def _ask(self, token: str) -> Optional[Target]:
        deadline = time.monotonic() + self.timeout
        target = urllib.parse.urlsplit(self.query_url(token))
        path = urllib.parse.urlunsplit(("", "", target.path or "/", target.query, ""))
        connection = _DeadlineConnection(self._host, self._port, deadline, self._context)
        response = None
        try:
            connection.request("GET", path, headers=self._headers)
            response = connection.getresponse()
            status = response.status
            body = response.read(SERVICE_MAX_ANSWER + 1) if status == 200 else b""
        except socket.timeout:
            raise TokenServiceError("token service %s timed out (no whole answer within %g s)"
                                    % (self.where, self.timeout)) from None
        except OSError as exc:
            if not connection.connected:
                raise TokenServiceError("token service %s unreachable: %s"
                                        % (self.where, _reason(exc))) from None
            raise TokenServiceError("token service %s failed: %s"
                                    % (self.where, _reason(exc))) from None
        except http.client.HTTPException as exc:
            raise TokenServiceError("token service %s failed: %s"
                                    % (self.where, _reason(exc))) from None
        finally:
            if response is not None:
                response.close()
            connection.release()
        if status == 404:
            return None
        if status != 200:
            raise TokenServiceError("token service %s answered HTTP %d (expected 200 or 404)"
                                    % (self.where, status))
        if len(body) > SERVICE_MAX_ANSWER:
            raise TokenServiceError("token service %s answer longer than %d bytes"
                                    % (self.where, SERVICE_MAX_ANSWER))
        return self._target_from_answer(body)

    def _target_from_answer(self, body: bytes) -> Target:
        """The :class:`Target` a 200 answer names; TokenServiceError if it breaks the contract."""
        try:
            answer = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            answer = None
        if not isinstance(answer, dict):
            answer = {}
        unix, host, port = answer.get("unix"), answer.get("host"), answer.get("port")
        if unix is not None:
            # No control character: the path appears in log lines.
            if isinstance(unix, str) and unix and unix.isprintable():
                return Target(unix=unix)
        else:
            if isinstance(host, str) and host.startswith("[") and host.endswith("]"):
                host = host[1:-1]  # an IPv6 literal written as in a URL
            if (isinstance(host, str) and host and len(host) <= 255
                    and all(0x20 < ord(char) < 0x7F for char in host)
                    and isinstance(port, int) and not isinstance(port, bool)
                    and 0 < port <= 65535):
                return Target(host=host, port=port)
        raise TokenServiceError('token service %s answered %r; expected JSON {"host": "...", '
                                '"port": N} or {"unix": "/path"}' % (self.where, body[:200]))


def _left(deadline: float) -> float:
    """Seconds left before ``deadline``; ``socket.timeout`` once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise socket.timeout("deadline passed")
    return left


class _DeadlineReader(io.RawIOBase):
    """A socket's reading side where every read gets only the time left before ``deadline``.

    A socket timeout bounds one read; re-arming it with what is left before
    each read makes the timeouts of all reads add up to the one deadline.
    (An ``SSLSocket`` read with a timeout is bounded as a whole too.)
    """

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self._sock.settimeout(_left(self._deadline))
        return self._sock.recv_into(buffer)


class _DeadlineSocketView:
    """What ``http.client.HTTPResponse`` needs of a socket: ``makefile`` over a deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def makefile(self, mode: str = "rb", *args, **kwargs):
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))


class _DeadlineResponse(http.client.HTTPResponse):
    """An HTTP response read (status line, headers, body) before one deadline."""

    def __init__(self, sock, debuglevel: int = 0, method: Optional[str] = None,
                 url: Optional[str] = None, deadline: float = 0.0) -> None:
        super().__init__(_DeadlineSocketView(sock, deadline), debuglevel, method, url)


class _DeadlineConnection(http.client.HTTPConnection):
    """One HTTP(S) exchange with the token service, bounded as a whole by ``deadline``.

    Connecting, the TLS handshake, sending and every read each get the
    time left; the environment's proxy settings are never consulted and
    redirects are just statuses.
    """

    def __init__(self, host: str, port: int, deadline: float,
                 context: Optional[ssl.SSLContext]) -> None:
        super().__init__(host, port)
        self._deadline = deadline
        self._context = context
        #: True once the TCP connection (and TLS) stands.
        self.connected = False
        self._kept: List[socket.socket] = []
        self.response_class = lambda sock, *args, **kwargs: _DeadlineResponse(
            sock, *args, deadline=deadline, **kwargs)

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), _left(self._deadline))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._context is not None:
                sock.settimeout(_left(self._deadline))
                sock = self._context.wrap_socket(sock, server_hostname=self.host)
            # sendall() with a timeout is bounded as a whole (Python 3.5+).
            sock.settimeout(_left(self._deadline))
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.connected = True

    def close(self) -> None:
        # http.client hands the socket over to a response it will read to
        # EOF by closing the connection; the response's reader does not hold
        # the socket open itself, so keep it until release().
        if self.sock is not None:
            self._kept.append(self.sock)
            self.sock = None
        super().close()

    def release(self) -> None:
        """Close the connection and its socket (the exchange is over)."""
        self.close()
        for sock in self._kept:
            sock.close()
        self._kept.clear()

    def send(self, data) -> None:
        if self.sock is not None:
            self.sock.settimeout(_left(self._deadline))
        super().send(data)


def _reason(reason: object) -> str:
    """An exception (or URLError reason) as a short text for the log."""
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def open_token_source(source: str, **options) -> Union[TokenTable, TokenService]:
    """The token lookup for ``--token-source``: a service for an http(s) URL, else a file table.

    ``options`` go to the :class:`TokenService` or :class:`TokenTable`
    constructor.  Raises :class:`ConfigError` naming ``token-source``.
    """
    if source.strip().lower().startswith(("http://", "https://")):
        return TokenService(source, **options)
    return TokenTable(source, **options)


def parse_token_line(line: str) -> Tuple[str, Target]:
    """Split one non-comment line ``token: target`` into its token and :class:`Target`.

    The token ends at the first ``:`` and may not be empty or hold white
    space.  Raises ``ValueError`` saying what was expected.
    """
    token, colon, rest = line.partition(":")
    token = token.strip()
    if not colon or not token or any(ch.isspace() for ch in token):
        raise ValueError("expected TOKEN: HOST:PORT, TOKEN: [IPV6]:PORT or TOKEN: unix:/PATH")
    return token, parse_target(rest)


def token_from_request(path: str, headers: Mapping[str, str], host_token: bool) -> Optional[str]:
    """Return the token a request names, or ``None`` when it names none.

    ``path`` is the raw request target, ``headers`` maps lower-case header
    names to values.  By default the token is the first ``token`` query
    parameter, else the ``token`` cookie.  With ``host_token`` it is the host
    name of the ``Host`` header with its port removed (the whole name, as
    websockify's ``--host-token`` takes it); an IPv6 literal host can name no
    token, as a token cannot contain ``:``.
    """
    if host_token:
        return _token_from_host(headers.get("host", ""))
    query = urllib.parse.urlsplit(path).query
    for value in urllib.parse.parse_qs(query).get("token", []):
        value = value.strip()
        if value:
            return value
    return _token_from_cookie(headers.get("cookie", ""))


def _token_from_host(host: str) -> Optional[str]:
    host = host.strip()
    if not host or host.startswith("["):
        return None
    # RFC 7230 §5.4: Host = uri-host [ ":" port ]
    name = host.partition(":")[0]
    return name or None


def _token_from_cookie(cookie_header: str) -> Optional[str]:
    # RFC 6265 §4.2.1: cookie-pair *( ";" SP cookie-pair ).  Split by hand so
    # one malformed cookie from another application does not hide ours.
    for pair in cookie_header.split(";"):
        name, equals, value = pair.partition("=")
        if not equals or name.strip() != "token":
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if value:
            return value
    return None
