"""The two failure kinds of the protocol core, each carrying its answer.

A :class:`HandshakeError` carries the HTTP status to answer with; a
:class:`ProtocolError` carries the WebSocket close code.  The I/O layer turns
them into bytes on the wire and one log line; it never shows a traceback.
"""

from typing import Mapping, Optional


class HandshakeError(Exception):
    """The opening handshake is refused with an HTTP ``status``.

    ``reason`` is a short human text sent as the response body and logged;
    ``headers`` are extra response headers (e.g. ``Sec-WebSocket-Version``
    for 426, ``WWW-Authenticate`` for 401).
    """

    def __init__(self, status: int, reason: str,
                 headers: Optional[Mapping[str, str]] = None) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.headers = dict(headers or {})

    def __str__(self) -> str:
        return "%d %s" % (self.status, self.reason)


class ProtocolError(Exception):
    """The peer broke the framing rules; close the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return "%d %s" % (self.code, self.reason)
