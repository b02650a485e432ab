"""The legacy WebSocket drafts hixie-75 and hixie-76: handshake and framing.

Browsers from before RFC 6455 speak draft-hixie-thewebsocketprotocol-75 or -76.
Their handshake answer is built here from the request the RFC 6455 parser has
already read; their framing is a text message between a 0x00 and a 0xFF byte.
These drafts carry text only, so every payload travels base64-encoded in both
directions.

:class:`HixieConnection` has the same sans-I/O interface as the RFC 6455
connection, so the relay drives both alike: feed client bytes to
:meth:`~HixieConnection.receive_data`, send what
:meth:`~HixieConnection.data_to_send` and :meth:`~HixieConnection.send_data`
return.
"""

import binascii
import collections
import hashlib
import re
import struct
import threading
from typing import Deque, List, Mapping, Optional, Tuple, Union

from .errors import HandshakeError, ProtocolError

__all__ = [
    "CLOSE_FRAME",
    "KEY3_LENGTH",
    "HixieConnection",
    "hixie76_answer",
    "hixie_response",
    "is_hixie",
    "is_hixie76",
]

BytesLike = Union[bytes, bytearray, memoryview]

# hixie-76 §5.1: after the header block the client sends 8 random bytes, the
# third part of the challenge (/key_3/).
KEY3_LENGTH = 8

# hixie-76 §4.2 / §5.3: the closing handshake is a 0xFF byte then a 0x00 byte.
CLOSE_FRAME = b"\xff\x00"

# Close codes reported through ``close_received`` and ``failure``.  The drafts
# have none; these are the RFC 6455 §7.4.1 values, so the relay logs and
# handles both protocols alike.
_CLOSE_NORMAL = 1000
_CLOSE_PROTOCOL_ERROR = 1002
_CLOSE_INVALID_DATA = 1007
_CLOSE_MESSAGE_TOO_BIG = 1009

# Above this size an outgoing frame is returned as three parts rather than
# joined, so a large payload is not copied once more just to add two bytes.
_JOIN_LIMIT = 64 * 1024

# Canonical base64 (RFC 4648 §4): the alphabet, then at most two "=" at the
# end; the caller also requires a length that is a multiple of four.
_BASE64_TEXT = re.compile(rb"[A-Za-z0-9+/]*={0,2}")


# --------------------------------------------------------------------------
# Handshake
# --------------------------------------------------------------------------

def is_hixie(headers: Mapping[str, str]) -> bool:
    """Tell whether an upgrade request speaks hixie-75 or hixie-76.

    ``headers`` maps lower-case header names to values.  True when
    ``Upgrade`` is ``WebSocket`` (any case) and neither RFC 6455 header
    ``Sec-WebSocket-Version`` nor ``Sec-WebSocket-Key`` is present.
    """
    upgrade = headers.get("upgrade")
    return (upgrade is not None and upgrade.strip().lower() == "websocket"
            and "sec-websocket-version" not in headers
            and "sec-websocket-key" not in headers)


def is_hixie76(headers: Mapping[str, str]) -> bool:
    """Tell whether a hixie request is hixie-76 (it carries Key1 and Key2).

    A hixie-76 client sends :data:`KEY3_LENGTH` more bytes after the blank
    line that ends its headers; the caller reads them and passes them to
    :func:`hixie_response` as ``key3``.
    """
    return "sec-websocket-key1" in headers and "sec-websocket-key2" in headers


_NOT_DIGITS = re.compile(r"[^0-9]")


def _key_number(value: str, name: str) -> int:
    """Turn a hixie-76 ``Sec-WebSocket-Key1``/``Key2`` value into its number.

    hixie-76 §5.2: the digits of the value, read as one decimal number,
    divided by the number of U+0020 SPACE characters; the quotient is sent
    as a 32-bit big-endian number.  Raises ``HandshakeError(400)`` when the
    value has no digits or no spaces, when the number does not fit 32 bits
    (a client cannot produce one: hixie-76 §4.1 picks it below 2**32), or
    when it is not an integral multiple of the spaces.
    """
    digits = _NOT_DIGITS.sub("", value)
    if not digits:
        raise HandshakeError(400, "%s has no digits" % name)
    spaces = value.count(" ")
    if spaces == 0:
        raise HandshakeError(400, "%s has no spaces" % name)
    significant = digits.lstrip("0") or "0"
    # Ten digits bound the work int() does before the range check.
    if len(significant) > 10 or int(significant) > 0xFFFFFFFF:
        raise HandshakeError(400, "%s number is over 32 bits" % name)
    number = int(significant)
    if number % spaces:
        raise HandshakeError(400, "%s number is not a multiple of its spaces" % name)
    return number // spaces


def hixie76_answer(key1: str, key2: str, key3: BytesLike) -> bytes:
    """Compute the 16-byte hixie-76 challenge answer.

    hixie-76 §5.2: MD5 of the Key1 number and the Key2 number, each as a
    32-bit big-endian integer, followed by the 8 bytes of ``key3``.  Raises
    ``HandshakeError(400)`` for a bad key (see :func:`_key_number`) or a
    ``key3`` that is not exactly 8 bytes.
    """
    if not isinstance(key3, (bytes, bytearray, memoryview)) or len(key3) != KEY3_LENGTH:
        raise HandshakeError(400, "hixie-76 key3 must be %d bytes" % KEY3_LENGTH)
    challenge = struct.pack(">II", _key_number(key1, "Sec-WebSocket-Key1"),
                            _key_number(key2, "Sec-WebSocket-Key2")) + bytes(key3)
    return hashlib.md5(challenge).digest()


# What may be echoed into the response.  Anything else (CR, LF or any other
# control character, non-ASCII) is refused rather than escaped, so a request
# can never add a header or a line of its own to the response.
_HOST = re.compile(r"[A-Za-z0-9\-._~%!$&'()*+,;=:\[\]]+")   # RFC 3986 §3.2.2 host[:port]
_PATH = re.compile(r"/[!-~]*")                                 # visible ASCII, no space
_FIELD_VALUE = re.compile(r"[ -~]*")                           # visible ASCII and space


def _echoable(value: str, pattern: "re.Pattern[str]", name: str) -> str:
    """Return ``value`` if ``pattern`` matches all of it, else raise 400."""
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise HandshakeError(400, "%s holds characters that cannot be echoed" % name)
    return value


def hixie_response(path: str, headers: Mapping[str, str], key3: Optional[BytesLike],
                   secure: bool, subprotocol: Optional[str]) -> bytes:
    """Build the whole 101 answer to a hixie-75 or hixie-76 upgrade request.

    ``path`` is the request target (it must start with ``/``); ``headers``
    maps lower-case header names to values; ``key3`` is the 8 bytes that
    follow a hixie-76 request's headers (ignored for hixie-75); ``secure``
    picks ``wss://`` over ``ws://`` for the location; ``subprotocol``, when
    not ``None``, is echoed as the protocol header.

    hixie-76 (Key1 and Key2 present): ``Sec-WebSocket-Origin``,
    ``Sec-WebSocket-Location``, optional ``Sec-WebSocket-Protocol``, a blank
    line and the 16-byte challenge answer.  hixie-75: ``WebSocket-Origin``,
    ``WebSocket-Location``, optional ``WebSocket-Protocol`` and the blank
    line.  The origin header is left out when the request has no ``Origin``.

    Raises ``HandshakeError(400)`` when Host is missing, only one of Key1 and
    Key2 is present, a key or ``key3`` is bad, or an echoed value (path,
    Host, Origin, subprotocol) holds a control character such as CR or LF or
    anything outside printable ASCII.
    """
    host = headers.get("host")
    if not host:
        raise HandshakeError(400, "missing Host header")
    host = _echoable(host.strip(), _HOST, "Host header")
    path = _echoable(path, _PATH, "request path")
    origin = headers.get("origin")
    if origin is not None:
        origin = _echoable(origin.strip(), _FIELD_VALUE, "Origin header")
    if subprotocol is not None:
        subprotocol = _echoable(subprotocol, _FIELD_VALUE, "subprotocol")

    has_key1 = "sec-websocket-key1" in headers
    if has_key1 != ("sec-websocket-key2" in headers):
        raise HandshakeError(400, "Sec-WebSocket-Key1 and Sec-WebSocket-Key2 must come together")
    location = "%s://%s%s" % ("wss" if secure else "ws", host, path)

    if has_key1:
        # hixie-76 §5.2, the server's handshake.
        answer = hixie76_answer(headers["sec-websocket-key1"],
                                headers["sec-websocket-key2"],
                                key3 if key3 is not None else b"")
        lines = ["HTTP/1.1 101 WebSocket Protocol Handshake",
                 "Upgrade: WebSocket", "Connection: Upgrade"]
        prefix = "Sec-WebSocket-"
    else:
        # A hixie-75 client compares these first three lines byte for
        # byte, so their spelling ("Web Socket") must not change.
        answer = b""
        lines = ["HTTP/1.1 101 Web Socket Protocol Handshake",
                 "Upgrade: WebSocket", "Connection: Upgrade"]
        prefix = "WebSocket-"
    if origin is not None:
        lines.append("%sOrigin: %s" % (prefix, origin))
    lines.append("%sLocation: %s" % (prefix, location))
    if subprotocol is not None:
        lines.append("%sProtocol: %s" % (prefix, subprotocol))
    head = "\r\n".join(lines) + "\r\n\r\n"
    return head.encode("ascii") + answer


# --------------------------------------------------------------------------
# Framing
# --------------------------------------------------------------------------

class HixieConnection:
    """One hixie-75/76 connection's framing, without I/O.

    Every message is a 0x00 byte, the base64 text of the payload and a
    0xFF byte (hixie-76 §4.2 text frames; hixie-75 frames alike).  The
    interface matches the RFC 6455 connection's:

    ``receive_data(data)`` takes client bytes in any split and returns the
    decoded payloads; ``data_to_send()`` pops queued control bytes (the
    close); ``send_data(payload)`` frames a payload for the client;
    ``send_close(code, reason)`` queues the close; ``send_ping()`` does
    nothing (the drafts have no ping); ``receive_more()`` returns nothing
    and ``input_pending`` stays False (decoding only shrinks the input, so
    nothing is ever held back).

    Attributes: ``close_sent`` (the close is queued or sent),
    ``close_received`` (``(1000, "")`` once the client's ``0xFF 0x00``
    arrived, else ``None``), ``failure`` (the :class:`ProtocolError` that
    ended the reading, else ``None``) and ``max_message_size`` (the longest
    base64 text accepted in one frame).
    """

    def __init__(self, max_message_size: int = 1024 * 1024) -> None:
        self.max_message_size = max_message_size
        self.close_sent = False
        self.close_received = None  # type: Optional[Tuple[int, str]]
        self.failure = None  # type: Optional[ProtocolError]
        self._buffer = bytearray()
        # How many bytes at the start of the buffered partial frame are known
        # to hold no 0xFF, so a frame fed in small pieces is scanned once.
        self._scanned = 0
        # Appended by the reading thread, drained by the writing one: a deque's
        # append/popleft are atomic where a list swap is not.
        self._outgoing = collections.deque()  # type: Deque[bytes]
        # The reading side (the client's close, a failure) and the target
        # side may queue the close at once: the check and the append are
        # one step under this lock, so the close goes out exactly once.
        self._close_lock = threading.Lock()
        #: Input is never held back: decoding base64 only shrinks it.
        self.input_pending = False

    # -- reading ------------------------------------------------------------

    def receive_data(self, data: BytesLike) -> List[bytes]:
        """Feed bytes from the client; return the decoded payloads in order.

        Bytes may be split anywhere and many frames may come at once; a
        partial frame waits in the buffer for its 0xFF.  Empty messages
        yield nothing.  Never raises on bad input: a frame whose base64 text
        is longer than ``max_message_size`` (1009), text that is not
        base64 (1007) or a frame type other than 0x00 text or the 0xFF 0x00
        close (1002) sets ``failure``, queues the close and returns the
        payloads decoded before it.  After a failure or the client's close,
        further input is ignored.
        """
        if self.failure is not None or self.close_received is not None:
            return []
        buffer = self._buffer
        buffer += data
        payloads = []  # type: List[bytes]
        consumed = 0
        view = memoryview(buffer)
        try:
            consumed = self._read_frames(buffer, view, payloads)
        finally:
            view.release()
        if self.failure is not None or self.close_received is not None:
            buffer.clear()
        else:
            del buffer[:consumed]
        return payloads

    def _read_frames(self, buffer: bytearray, view: memoryview,
                     payloads: List[bytes]) -> int:
        """Decode the complete frames in ``buffer``; return how many bytes they used."""
        position = 0
        end_of_data = len(buffer)
        while position < end_of_data:
            frame_type = buffer[position]
            if frame_type == 0x00:
                start = position + max(1, self._scanned)
                end = buffer.find(0xFF, start)
                text_length = (end if end >= 0 else end_of_data) - position - 1
                if text_length > self.max_message_size:
                    self._fail(_CLOSE_MESSAGE_TOO_BIG, "message over %d bytes of base64"
                               % self.max_message_size)
                    return position
                if end < 0:
                    self._scanned = end_of_data - position
                    return position
                self._scanned = 0
                payload = _decode_base64(view[position + 1:end])
                if payload is None:
                    self._fail(_CLOSE_INVALID_DATA, "message is not valid base64")
                    return position
                if payload:
                    payloads.append(payload)
                position = end + 1
            elif frame_type == 0xFF:
                if position + 1 == end_of_data:
                    return position
                if buffer[position + 1] != 0x00:
                    # hixie-76 §4.2 length-prefixed frames: no client sends
                    # them, and wsproxy does not accept them.
                    self._fail(_CLOSE_PROTOCOL_ERROR, "unsupported frame type 0xff")
                    return position
                # hixie-76 §4.2: 0xFF 0x00 is the client's closing handshake.
                self.close_received = (_CLOSE_NORMAL, "")
                self._queue_close()
                return end_of_data
            else:
                self._fail(_CLOSE_PROTOCOL_ERROR, "unsupported frame type 0x%02x" % frame_type)
                return position
        return position

    def _fail(self, code: int, reason: str) -> None:
        """Record the failure and queue the close; reading stops here."""
        self.failure = ProtocolError(code, reason)
        self._queue_close()

    # -- writing ------------------------------------------------------------

    def data_to_send(self) -> List[bytes]:
        """Pop the control bytes queued for the client (the closing handshake)."""
        outgoing = []
        queue = self._outgoing
        while queue:
            outgoing.append(queue.popleft())
        return outgoing

    def receive_more(self) -> List[bytes]:
        """Nothing is ever held back (``input_pending`` stays False); for the shared interface."""
        return []

    @property
    def has_data_to_send(self) -> bool:
        """True when :meth:`data_to_send` would return something."""
        return bool(self._outgoing)

    def send_data(self, payload: BytesLike) -> List[bytes]:
        """Frame ``payload`` for the client; return the bytes to send, in order.

        A small frame comes as one ``bytes``; a large one as three parts
        (0x00, the base64 text, 0xFF) to spare a copy.  Returns ``[]`` for
        an empty payload and once the close was sent (no data may follow
        it).
        """
        if self.close_sent or not payload:
            return []
        text = binascii.b2a_base64(payload, newline=False)
        if len(text) <= _JOIN_LIMIT:
            return [b"\x00" + text + b"\xff"]
        return [b"\x00", text, b"\xff"]

    def send_close(self, code: int = 1000, reason: str = "") -> None:
        """Queue the closing handshake ``0xFF 0x00`` unless already sent.

        The drafts carry no close code or reason; ``code`` and ``reason``
        are accepted for the shared interface and not sent.
        """
        self._queue_close()

    def send_ping(self, payload: BytesLike = b"") -> None:
        """Do nothing: hixie-75/76 have no ping frame."""

    def _queue_close(self) -> None:
        with self._close_lock:
            if not self.close_sent:
                self._outgoing.append(CLOSE_FRAME)
                self.close_sent = True


def _decode_base64(text: memoryview) -> Optional[bytes]:
    """Decode canonical base64 ``text``; return ``None`` if it is not base64."""
    # RFC 4648 §3.3: reject characters outside the alphabet rather than skip
    # them (binascii would skip them before Python 3.11's strict_mode).
    if len(text) % 4 or _BASE64_TEXT.fullmatch(text) is None:
        return None
    try:
        return binascii.a2b_base64(text)
    except binascii.Error:
        return None
