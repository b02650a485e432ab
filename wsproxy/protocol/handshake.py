"""The opening handshake: parse an HTTP upgrade request, build the answers.

RFC 6455 §4.2 (server side) plus the plain HTTP responses wsproxy gives to
requests it refuses.  The hixie-75/76 answers live in :mod:`.hixie`.
"""

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

from .errors import HandshakeError

#: RFC 6455 §1.3: the GUID appended to the client's key.
WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WEBSOCKET_VERSION = "13"
#: Subprotocols wsproxy speaks, most preferred first.
SUBPROTOCOLS = ("binary", "base64")

_HEADER_END = b"\r\n\r\n"
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789"
                         "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass
class Request:
    """A parsed HTTP request head.

    Fields: ``method``, ``target`` (the raw request target, path and query),
    ``version`` (e.g. ``"HTTP/1.1"``), ``header_list`` (name/value pairs as
    sent) and ``headers`` (lower-case names; repeated headers joined with
    ``", "`` as RFC 7230 §3.2.2 allows).
    """

    method: str
    target: str
    version: str
    header_list: List[Tuple[str, str]] = field(default_factory=list)
    headers: Dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> str:
        """The request target without its query string."""
        return self.target.split("?", 1)[0]

    def header_tokens(self, name: str) -> List[str]:
        """A comma-separated header as a list of lower-case tokens."""
        value = self.headers.get(name, "")
        return [token.strip().lower() for token in value.split(",") if token.strip()]

    def count(self, name: str) -> int:
        """How many times header ``name`` (lower-case) was sent."""
        return sum(1 for key, _ in self.header_list if key.lower() == name)


def find_head_end(buffer, max_size: int) -> int:
    """Index just past the blank line ending the request head, or -1.

    Raises ``HandshakeError(431)`` once ``max_size`` bytes hold no end.  A
    head of at most ``max_size`` bytes (blank line included) is accepted
    however it was split across receives; a longer one never is.
    """
    end = buffer.find(_HEADER_END, 0, max_size)
    if end >= 0:
        return end + len(_HEADER_END)
    if len(buffer) >= max_size:
        raise HandshakeError(431, "request header block too large")
    return -1


def parse_request(head: bytes) -> Request:
    """Parse a request head (up to and including the blank line).

    Raises ``HandshakeError(400)`` for anything that is not well-formed
    HTTP/1.x: bad request line, folded headers (RFC 7230 §3.2.4), control
    characters, non-token header names, non-ASCII names.
    """
    try:
        text = bytes(head).decode("latin-1")
    except Exception:  # pragma: no cover - latin-1 decodes every byte
        raise HandshakeError(400, "unreadable request") from None
    lines = text.split("\r\n")
    while lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise HandshakeError(400, "empty request")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not all(parts):
        raise HandshakeError(400, "malformed request line")
    method, target, version = parts
    if len(version) != 8 or not version.startswith("HTTP/1.") or version[7] not in "0123456789":
        raise HandshakeError(400, "unsupported HTTP version")
    if not method or not set(method) <= _TOKEN_CHARS:
        raise HandshakeError(400, "malformed method")
    if any(ord(ch) < 0x21 or ord(ch) > 0x7E for ch in target):
        raise HandshakeError(400, "malformed request target")
    header_list: List[Tuple[str, str]] = []
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        if not line or line[0] in " \t":
            raise HandshakeError(400, "folded or empty header line")
        name, colon, value = line.partition(":")
        if not colon or not name or not set(name) <= _TOKEN_CHARS:
            raise HandshakeError(400, "malformed header line")
        value = value.strip(" \t")
        if any(ord(ch) < 0x20 and ch != "\t" or ord(ch) == 0x7F for ch in value):
            raise HandshakeError(400, "control character in header value")
        header_list.append((name, value))
        key = name.lower()
        headers[key] = headers[key] + ", " + value if key in headers else value
    return Request(method, target, version, header_list, headers)


def accept_key(key: str) -> str:
    """RFC 6455 §4.2.2: base64 of SHA-1 of the key and the GUID."""
    digest = hashlib.sha1((key + WEBSOCKET_GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def is_upgrade(request: Request) -> bool:
    """True when the request asks to upgrade to WebSocket (any version)."""
    return "websocket" in request.header_tokens("upgrade")


_WEBSOCKET_HEADERS = ("upgrade", "sec-websocket-key", "sec-websocket-version",
                      "sec-websocket-key1", "sec-websocket-protocol")


def is_websocket_attempt(request: Request) -> bool:
    """True when the request carries any sign of a WebSocket handshake.

    Such a request is answered as a (possibly broken) handshake: 400/426
    when it is wrong.  A request with none of them is plain HTTP (web root,
    status page, or 405).
    """
    return (any(name in request.headers for name in _WEBSOCKET_HEADERS)
            or "upgrade" in request.header_tokens("connection"))


def check_rfc6455(request: Request) -> str:
    """Validate an RFC 6455 opening handshake (§4.2.1); return the client's key.

    Raises ``HandshakeError``: 405 for a method other than GET, 426 (with
    ``Sec-WebSocket-Version: 13``) for a missing or other version, 400 for
    everything else that is wrong.
    """
    if request.method != "GET":
        raise HandshakeError(405, "only GET can open a WebSocket", {"Allow": "GET"})
    if request.version != "HTTP/1.1":
        raise HandshakeError(400, "WebSocket needs HTTP/1.1")
    if "host" not in request.headers:
        raise HandshakeError(400, "missing Host header")
    if request.count("host") != 1:
        # RFC 7230 §5.4: a server MUST answer 400 to more than one Host header.
        raise HandshakeError(400, "more than one Host header")
    if not is_upgrade(request):
        raise HandshakeError(400, "missing Upgrade: websocket")
    if "upgrade" not in request.header_tokens("connection"):
        raise HandshakeError(400, "Connection header lacks the upgrade token")
    versions = request.header_tokens("sec-websocket-version")
    if versions != [WEBSOCKET_VERSION]:
        raise HandshakeError(426, "unsupported WebSocket version",
                             {"Sec-WebSocket-Version": WEBSOCKET_VERSION})
    if request.count("sec-websocket-key") != 1:
        raise HandshakeError(400, "need exactly one Sec-WebSocket-Key")
    key = request.headers["sec-websocket-key"]
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raw = b""
    if len(raw) != 16:
        raise HandshakeError(400, "Sec-WebSocket-Key is not 16 bytes of base64")
    return key


def choose_subprotocol(offered: Iterable[str]) -> Optional[str]:
    """Pick ``binary`` over ``base64`` among the client's offers; None if neither."""
    offers = {token.strip() for token in offered}
    for name in SUBPROTOCOLS:
        if name in offers:
            return name
    return None


def accept_response(key: str, subprotocol: Optional[str],
                    extra_headers: Mapping[str, str] = ()) -> bytes:
    """The ``101 Switching Protocols`` answer for an accepted RFC 6455 request."""
    lines = ["HTTP/1.1 101 Switching Protocols",
             "Upgrade: websocket",
             "Connection: Upgrade",
             "Sec-WebSocket-Accept: " + accept_key(key)]
    if subprotocol:
        lines.append("Sec-WebSocket-Protocol: " + subprotocol)
    for name, value in dict(extra_headers).items():
        lines.append("%s: %s" % (name, value))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def reason_phrase(status: int) -> str:
    """The standard reason phrase of an HTTP status, or ``"Error"``."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def http_response(status: int, body: bytes = b"", headers: Mapping[str, str] = (),
                  content_type: str = "text/plain; charset=utf-8",
                  close: bool = True) -> bytes:
    """A complete small HTTP/1.1 response (head and body) as bytes."""
    lines = ["HTTP/1.1 %d %s" % (status, reason_phrase(status))]
    merged = {"Content-Type": content_type, "Content-Length": str(len(body))}
    if close:
        merged["Connection"] = "close"
    merged.update(dict(headers))
    for name, value in merged.items():
        lines.append("%s: %s" % (name, value))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def error_response(error: HandshakeError) -> bytes:
    """The HTTP answer for a refused handshake: status, headers, short text."""
    body = ("%d %s: %s\n" % (error.status, reason_phrase(error.status), error.reason)).encode("utf-8")
    return http_response(error.status, body, error.headers)
