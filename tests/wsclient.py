"""A raw RFC 6455 WebSocket client for the tests, written from the RFC alone.

It imports nothing from ``wsproxy``: a misunderstanding of the RFC shared by
the proxy and its test client would otherwise pass both sides.  It gives the
tests full control over what goes on the wire (any bit of a frame header, a
lying length, raw bytes, a hand-written handshake) and checks what comes back
against the RFC (server frames unmasked, minimal length encoding, ...).

Every blocking call has a deadline (default :data:`DEFAULT_TIMEOUT` seconds)
so a broken proxy fails a test instead of hanging it.  Failures raise
:class:`ClientError` (an ``AssertionError``), so pytest reports them as test
failures with a message saying what was expected.

Typical use::

    with WSClient(port) as ws:
        ws.handshake(protocols=["binary"])
        ws.send_binary(b"hello")
        assert ws.recv_stream(5) == b"hello"
        ws.send_close(1000)
        assert ws.recv_close() == (1000, "")
        ws.expect_closed()
"""

import base64
import binascii
import hashlib
import os
import select
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Iterable, List, Mapping, Optional, Sequence, Tuple, Union

#: RFC 6455 §1.3: the GUID appended to the key to compute Sec-WebSocket-Accept.
WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: Seconds any single blocking operation may take before the test fails.
DEFAULT_TIMEOUT = 10.0

#: How much of an HTTP response head we accept before calling it broken.
MAX_RESPONSE_HEAD = 64 * 1024

# RFC 6455 §5.2 / §11.8: opcodes.
OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

DATA_OPCODES = (OP_TEXT, OP_BINARY)
CONTROL_OPCODES = (OP_CLOSE, OP_PING, OP_PONG)
KNOWN_OPCODES = (OP_CONTINUATION,) + DATA_OPCODES + CONTROL_OPCODES


class ClientError(AssertionError):
    """Something the test expected did not happen; the message says what."""


class Timeout(ClientError):
    """A deadline passed while waiting for the peer."""


class ConnectionClosed(ClientError):
    """The peer closed (or reset) the connection before we got what we needed.

    ``partial`` holds the bytes read so far for the thing being read.
    """

    def __init__(self, message: str, partial: bytes = b"") -> None:
        super().__init__(message)
        self.partial = partial


class ServerViolation(ClientError):
    """The server sent something RFC 6455 forbids a server to send."""


# -- pure helpers -------------------------------------------------------------


def accept_for(key: str) -> str:
    """Return the ``Sec-WebSocket-Accept`` value RFC 6455 §4.2.2 requires for ``key``."""
    digest = hashlib.sha1((key + WEBSOCKET_GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def new_key() -> str:
    """Return a fresh ``Sec-WebSocket-Key``: 16 random bytes, base64 (RFC 6455 §4.1)."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def mask_bytes(payload: bytes, mask_key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask_key`` repeated (RFC 6455 §5.3).

    Done as one big-integer XOR so multi-megabyte payloads stay fast.
    """
    length = len(payload)
    if length == 0:
        return b""
    if len(mask_key) != 4:
        raise ValueError("a mask key is 4 bytes, got %d" % len(mask_key))
    repeated = (bytes(mask_key) * (length // 4 + 1))[:length]
    value = int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")
    return value.to_bytes(length, "big")


def encode_frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0,
                 mask: bool = True, mask_key: Optional[bytes] = None,
                 length: Optional[int] = None) -> bytes:
    """Build one frame exactly as asked, legal or not.

    ``rsv`` is the three RSV bits as a number 0-7 (RSV1 is 4).  ``mask`` sets
    the MASK bit and masks the payload with ``mask_key`` (random if None).
    ``length`` is the payload length written in the header; it defaults to
    the real length and may lie.  The shortest length encoding is used
    (RFC 6455 §5.2).
    """
    if not 0 <= opcode <= 0xF:
        raise ValueError("opcode is 4 bits")
    if not 0 <= rsv <= 7:
        raise ValueError("rsv is 3 bits")
    payload = bytes(payload)
    declared = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if mask else 0
    if declared < 126:
        header = struct.pack("!BB", first, mask_bit | declared)
    elif declared < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, declared)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, declared)
    if not mask:
        return header + payload
    if mask_key is None:
        mask_key = os.urandom(4)
    return header + bytes(mask_key) + mask_bytes(payload, mask_key)


def close_payload(code: Optional[int] = None, reason: Union[str, bytes] = b"") -> bytes:
    """The body of a close frame: a 2-byte code then the reason (RFC 6455 §5.5.1)."""
    if code is None:
        return b""
    if isinstance(reason, str):
        reason = reason.encode("utf-8")
    return struct.pack("!H", code) + reason


def build_request(host: str = "127.0.0.1", path: str = "/", key: Optional[str] = None,
                  protocols: Optional[Sequence[str]] = None,
                  headers: Optional[Mapping[str, Optional[str]]] = None,
                  extra_headers: Iterable[Tuple[str, str]] = (),
                  method: str = "GET", http_version: str = "HTTP/1.1") -> Tuple[bytes, str]:
    """Build an opening handshake request (RFC 6455 §4.1); return ``(bytes, key)``.

    ``protocols`` becomes one ``Sec-WebSocket-Protocol`` header.  ``headers``
    overrides default headers by name (case-insensitive); a value of None
    removes that header.  ``extra_headers`` are appended as given, so a
    header may appear twice.
    """
    if key is None:
        key = new_key()
    fields = [
        ("Host", host),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13"),
    ]  # type: List[Tuple[str, Optional[str]]]
    if protocols:
        fields.append(("Sec-WebSocket-Protocol", ", ".join(protocols)))
    for name, value in (headers or {}).items():
        for index, (existing, _) in enumerate(fields):
            if existing.lower() == name.lower():
                fields[index] = (existing, value)
                break
        else:
            fields.append((name, value))
    fields.extend(extra_headers)
    lines = ["%s %s %s" % (method, path, http_version)]
    lines.extend("%s: %s" % (name, value) for name, value in fields if value is not None)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), key


# -- values -----------------------------------------------------------------


@dataclass
class HttpResponse:
    """An HTTP response head and body as read off the socket.

    ``headers`` keeps every header line in order; :meth:`header` joins
    repeated ones.  ``body`` is the body (by Content-Length, else until EOF;
    empty for 101).  ``raw`` is every byte of head and body.
    """

    version: str
    status: int
    reason: str
    headers: List[Tuple[str, str]]
    body: bytes = b""
    raw: bytes = b""

    def header(self, name: str) -> Optional[str]:
        """The value of header ``name`` (case-insensitive), repeated ones joined by ", "."""
        values = [value for key, value in self.headers if key.lower() == name.lower()]
        return ", ".join(values) if values else None

    def header_tokens(self, name: str) -> List[str]:
        """The comma-separated tokens of header ``name``, lower-cased."""
        value = self.header(name) or ""
        return [token.strip().lower() for token in value.split(",") if token.strip()]


@dataclass
class Frame:
    """One frame as received: ``fin``, ``rsv`` bits, ``opcode``, unmasked ``payload``."""

    fin: bool
    rsv: int
    opcode: int
    payload: bytes
    masked: bool = False


@dataclass
class Message:
    """A complete message: a data message reassembled from its frames, or a control frame.

    ``frames`` holds the payload length of each frame it came in.
    """

    opcode: int
    payload: bytes
    frames: List[int] = field(default_factory=list)

    @property
    def is_control(self) -> bool:
        return self.opcode in CONTROL_OPCODES

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8")


# -- the client ---------------------------------------------------------------


class WSClient:
    """One TCP connection to a WebSocket server, driven by hand.

    ``WSClient(port)`` connects at once.  Use it as a context manager: the
    socket is closed on exit whatever happened.
    """

    def __init__(self, port: int, host: str = "127.0.0.1",
                 timeout: float = DEFAULT_TIMEOUT, sock: Optional[socket.socket] = None) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        if sock is not None:  # already connected (e.g. AF_UNIX): use it as it is
            self.sock = sock
            sock.settimeout(timeout)
        else:
            self.sock = socket.create_connection((host, port), timeout=timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = bytearray()
        self._fragments = []  # type: List[bytes]
        self._fragment_opcode = None  # type: Optional[int]
        self._fragment_sizes = []  # type: List[int]
        self.key = None  # type: Optional[str]
        self.response = None  # type: Optional[HttpResponse]
        self.protocol = None  # type: Optional[str]
        #: Data messages skipped by :meth:`recv_close`.
        self.messages_before_close = []  # type: List[Message]
        #: Largest data frame payload seen, for checking the server's chunking.
        self.largest_data_frame = 0
        self.reset_seen = False

    # -- context manager / closing ---------------------------------------------

    def __enter__(self) -> "WSClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket (idempotent)."""
        try:
            self.sock.close()
        except OSError:
            pass

    @property
    def local_port(self) -> int:
        return self.sock.getsockname()[1]

    # -- raw I/O ------------------------------------------------------------

    def _deadline(self, timeout: Optional[float]) -> float:
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    def _recv_some(self, deadline: float, what: str) -> bytes:
        """Read what is available (b"" at EOF or reset) before ``deadline``."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout("timed out waiting for %s" % what)
        readable, _, _ = select.select([self.sock], [], [], remaining)
        if not readable:
            raise Timeout("timed out after %.1fs waiting for %s" % (self.timeout, what))
        try:
            return self.sock.recv(256 * 1024)
        except ConnectionResetError:
            self.reset_seen = True
            return b""
        except socket.timeout:
            raise Timeout("timed out reading %s" % what) from None

    def _fill(self, count: int, deadline: float, what: str) -> None:
        """Make the buffer hold at least ``count`` bytes or raise."""
        while len(self._buffer) < count:
            chunk = self._recv_some(deadline, what)
            if not chunk:
                raise ConnectionClosed("connection closed while reading %s (%d of %d bytes)"
                                       % (what, len(self._buffer), count), bytes(self._buffer))
            self._buffer += chunk

    def send_raw(self, data: bytes, tolerate_close: bool = False) -> bool:
        """Send ``data`` as is.  Returns False if the peer had closed and
        ``tolerate_close`` is set; otherwise a closed peer raises."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError) as exc:
            if tolerate_close:
                return False
            raise ConnectionClosed("peer closed while we were sending: %s" % exc) from None
        except socket.timeout:
            raise Timeout("timed out sending %d bytes (peer not reading)" % len(data)) from None

    # -- handshake ----------------------------------------------------------------

    def send_request(self, raw: Optional[bytes] = None, piece_size: Optional[int] = None,
                     **request_options) -> None:
        """Send a handshake request: ``raw`` bytes, or one built by :func:`build_request`.

        With ``piece_size`` the request goes out in pieces of that many bytes,
        one system call each.
        """
        if raw is None:
            request_options.setdefault("host", "%s:%d" % (self.host, self.port))
            raw, self.key = build_request(**request_options)
        step = piece_size or len(raw) or 1
        for start in range(0, len(raw), step):
            self.send_raw(raw[start:start + step])

    def read_response(self, timeout: Optional[float] = None) -> HttpResponse:
        """Read an HTTP response head, and its body unless the status is 101.

        The body is read by ``Content-Length``, else until EOF.  Raises
        :class:`ConnectionClosed` if the connection ends before a full head.
        """
        deadline = self._deadline(timeout)
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(self._buffer) > MAX_RESPONSE_HEAD:
                raise ClientError("response head longer than %d bytes" % MAX_RESPONSE_HEAD)
            chunk = self._recv_some(deadline, "the HTTP response")
            if not chunk:
                raise ConnectionClosed("connection closed before a complete HTTP response "
                                       "(got %r)" % bytes(self._buffer[:200]), bytes(self._buffer))
            self._buffer += chunk
        head = bytes(self._buffer[:end + 4])
        del self._buffer[:end + 4]
        lines = head[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise ClientError("not an HTTP status line: %r" % lines[0])
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                raise ClientError("malformed header line %r" % line)
            headers.append((name.strip(), value.strip()))
        response = HttpResponse(parts[0], int(parts[1]), parts[2] if len(parts) > 2 else "",
                                headers)
        if response.status != 101:
            response.body = self._read_body(response, deadline)
        response.raw = head + response.body
        self.response = response
        return response

    def _read_body(self, response: HttpResponse, deadline: float) -> bytes:
        length_text = response.header("Content-Length")
        if length_text is not None:
            if not length_text.strip().isdigit():
                raise ClientError("bad Content-Length %r" % length_text)
            length = int(length_text)
            self._fill(length, deadline, "the response body")
            body = bytes(self._buffer[:length])
            del self._buffer[:length]
            return body
        while True:  # no Content-Length: the body runs until EOF
            chunk = self._recv_some(deadline, "the end of a response body without Content-Length")
            if not chunk:
                body = bytes(self._buffer)
                self._buffer.clear()
                return body
            self._buffer += chunk

    def handshake(self, protocols: Optional[Sequence[str]] = None, expect_status: int = 101,
                  raw: Optional[bytes] = None, timeout: Optional[float] = None,
                  **request_options) -> HttpResponse:
        """Send a handshake, read the answer and check it.

        ``request_options`` go to :func:`build_request`, except ``piece_size``
        (see :meth:`send_request`) and, with ``raw``, ``key`` (the key inside
        the raw request, to check the accept value).  With ``expect_status``
        101 (the default) this checks the upgrade headers and
        ``Sec-WebSocket-Accept`` (RFC 6455 §4.1, client steps 1-4) and
        records the chosen subprotocol in :attr:`protocol`.  Pass
        ``expect_status=None`` to accept any status.
        """
        piece_size = request_options.pop("piece_size", None)
        if raw is None:
            self.send_request(protocols=protocols, piece_size=piece_size, **request_options)
        else:
            self.key = request_options.get("key")
            self.send_request(raw=raw, piece_size=piece_size)
        response = self.read_response(timeout)
        if expect_status is not None and response.status != expect_status:
            raise ClientError("expected HTTP %d, got %d %s: %r"
                              % (expect_status, response.status, response.reason,
                                 response.raw[:500]))
        if response.status == 101:
            self._check_upgrade(response)
        return response

    def _check_upgrade(self, response: HttpResponse) -> None:
        # RFC 6455 §4.1: the client MUST fail the connection unless these hold.
        if "websocket" not in response.header_tokens("Upgrade"):
            raise ServerViolation("101 without Upgrade: websocket: %r" % response.raw)
        if "upgrade" not in response.header_tokens("Connection"):
            raise ServerViolation("101 without Connection: Upgrade: %r" % response.raw)
        if self.key is not None:
            accept = response.header("Sec-WebSocket-Accept")
            if accept != accept_for(self.key):
                raise ServerViolation("Sec-WebSocket-Accept is %r, expected %r"
                                      % (accept, accept_for(self.key)))
        self.protocol = response.header("Sec-WebSocket-Protocol")

    # -- sending frames -----------------------------------------------------------

    def send_frame(self, opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0,
                   mask: bool = True, mask_key: Optional[bytes] = None,
                   length: Optional[int] = None, tolerate_close: bool = False) -> bool:
        """Send one frame built by :func:`encode_frame` (see there for the options)."""
        frame = encode_frame(opcode, payload, fin=fin, rsv=rsv, mask=mask,
                             mask_key=mask_key, length=length)
        return self.send_raw(frame, tolerate_close=tolerate_close)

    def send_binary(self, data: bytes, fin: bool = True, **options) -> bool:
        return self.send_frame(OP_BINARY, data, fin=fin, **options)

    def send_text(self, text: Union[str, bytes], fin: bool = True, **options) -> bool:
        """Send a text frame; ``bytes`` are sent as is, so they may be invalid UTF-8."""
        payload = text.encode("utf-8") if isinstance(text, str) else text
        return self.send_frame(OP_TEXT, payload, fin=fin, **options)

    def send_continuation(self, data: Union[str, bytes], fin: bool = True, **options) -> bool:
        payload = data.encode("utf-8") if isinstance(data, str) else data
        return self.send_frame(OP_CONTINUATION, payload, fin=fin, **options)

    def send_ping(self, payload: bytes = b"", **options) -> bool:
        return self.send_frame(OP_PING, payload, **options)

    def send_pong(self, payload: bytes = b"", **options) -> bool:
        return self.send_frame(OP_PONG, payload, **options)

    def send_close(self, code: Optional[int] = 1000, reason: Union[str, bytes] = b"",
                   **options) -> bool:
        """Send a close frame with ``code`` and ``reason`` (no body if ``code`` is None)."""
        return self.send_frame(OP_CLOSE, close_payload(code, reason), **options)

    # -- receiving ------------------------------------------------------------------

    def recv_frame(self, timeout: Optional[float] = None, strict: bool = True) -> Frame:
        """Read one frame; with ``strict`` check it is a legal server frame.

        Raises :class:`Timeout`, :class:`ConnectionClosed`, or
        :class:`ServerViolation` for a frame no server may send.
        """
        deadline = self._deadline(timeout)
        self._fill(2, deadline, "a frame header")
        first, second = self._buffer[0], self._buffer[1]
        fin, rsv, opcode = bool(first & 0x80), (first >> 4) & 0x7, first & 0x0F
        masked, length = bool(second & 0x80), second & 0x7F
        offset = 2
        if length == 126:
            self._fill(4, deadline, "a 16-bit frame length")
            length = struct.unpack_from("!H", self._buffer, 2)[0]
            offset = 4
            minimal = length >= 126
        elif length == 127:
            self._fill(10, deadline, "a 64-bit frame length")
            length = struct.unpack_from("!Q", self._buffer, 2)[0]
            offset = 10
            minimal = length >= 1 << 16
            if length >> 63:
                raise ServerViolation("64-bit frame length has its top bit set")
        else:
            minimal = True
        mask_key = b""
        if masked:
            self._fill(offset + 4, deadline, "a mask key")
            mask_key = bytes(self._buffer[offset:offset + 4])
            offset += 4
        self._fill(offset + length, deadline, "a %d-byte frame payload" % length)
        payload = bytes(self._buffer[offset:offset + length])
        del self._buffer[:offset + length]
        if masked:
            payload = mask_bytes(payload, mask_key)
        frame = Frame(fin, rsv, opcode, payload, masked)
        if strict:
            self._check_server_frame(frame, minimal)
        if opcode in DATA_OPCODES or opcode == OP_CONTINUATION:
            self.largest_data_frame = max(self.largest_data_frame, length)
        return frame

    @staticmethod
    def _check_server_frame(frame: Frame, minimal: bool) -> None:
        # RFC 6455 §5.1: "A server MUST NOT mask any frames that it sends to the client."
        if frame.masked:
            raise ServerViolation("server sent a masked frame")
        # RFC 6455 §5.2: RSV bits MUST be 0 unless an extension was negotiated.
        if frame.rsv:
            raise ServerViolation("server set RSV bits %d" % frame.rsv)
        if frame.opcode not in KNOWN_OPCODES:
            raise ServerViolation("server sent reserved opcode %#x" % frame.opcode)
        # RFC 6455 §5.2: "the minimal number of bytes MUST be used to encode the length".
        if not minimal:
            raise ServerViolation("server used a non-minimal length encoding")
        # RFC 6455 §5.5: control frames are at most 125 bytes and not fragmented.
        if frame.opcode in CONTROL_OPCODES and (not frame.fin or len(frame.payload) > 125):
            raise ServerViolation("server sent a fragmented or oversized control frame")

    def recv_message(self, timeout: Optional[float] = None) -> Message:
        """Return the next control frame or the next complete data message.

        Fragmented server messages are reassembled; control frames that
        arrive between fragments are returned at once (RFC 6455 §5.4) and the
        partial message is kept for the next call.
        """
        deadline = self._deadline(timeout)
        while True:
            frame = self.recv_frame(timeout=max(0.0, deadline - time.monotonic()))
            if frame.opcode in CONTROL_OPCODES:
                return Message(frame.opcode, frame.payload, [len(frame.payload)])
            if frame.opcode == OP_CONTINUATION:
                if self._fragment_opcode is None:
                    raise ServerViolation("server sent a continuation with no message open")
            elif self._fragment_opcode is not None:
                raise ServerViolation("server started a new message inside a fragmented one")
            else:
                self._fragment_opcode = frame.opcode
            self._fragments.append(frame.payload)
            self._fragment_sizes.append(len(frame.payload))
            if frame.fin:
                message = Message(self._fragment_opcode, b"".join(self._fragments),
                                  self._fragment_sizes)
                self._fragments, self._fragment_sizes = [], []
                self._fragment_opcode = None
                if message.opcode == OP_TEXT:
                    try:
                        message.payload.decode("utf-8")
                    except UnicodeDecodeError:
                        raise ServerViolation("server sent a text message that is not UTF-8")
                return message

    def recv_data_message(self, timeout: Optional[float] = None) -> Message:
        """The next data message, skipping pongs; a close or ping raises."""
        deadline = self._deadline(timeout)
        while True:
            message = self.recv_message(timeout=max(0.0, deadline - time.monotonic()))
            if message.opcode == OP_PONG:
                continue
            if message.opcode == OP_CLOSE:
                code, reason = parse_close(message.payload)
                raise ConnectionClosed("got close %s %r while waiting for data" % (code, reason))
            if message.opcode == OP_PING:
                raise ClientError("unexpected ping %r while waiting for data" % message.payload)
            return message

    def recv_stream(self, count: int, decode_base64: bool = False,
                    timeout: Optional[float] = None, opcode: Optional[int] = None) -> bytes:
        """Collect data messages until ``count`` bytes of payload arrived.

        With ``decode_base64`` each message must be a text message holding
        base64 on its own (one target read per frame), which is decoded.
        With ``opcode`` every message must have that opcode.  Raises if more
        than ``count`` bytes arrive or a close comes first.
        """
        deadline = self._deadline(timeout)
        chunks = []  # type: List[bytes]
        received = 0
        while received < count:
            try:
                message = self.recv_data_message(timeout=max(0.0, deadline - time.monotonic()))
            except ClientError as exc:
                raise type(exc)("%s (after %d of %d bytes)" % (exc, received, count)) from None
            payload = message.payload
            if opcode is not None and message.opcode != opcode:
                raise ClientError("expected messages with opcode %d, got opcode %d"
                                  % (opcode, message.opcode))
            if decode_base64:
                if message.opcode != OP_TEXT:
                    raise ClientError("base64 mode: expected a text message, got opcode %d"
                                      % message.opcode)
                try:
                    payload = base64.b64decode(payload, validate=True)
                except (binascii.Error, ValueError) as exc:
                    raise ClientError("base64 mode: message is not valid base64 (%s): %r"
                                      % (exc, message.payload[:80])) from None
            chunks.append(payload)
            received += len(payload)
        data = b"".join(chunks)
        if len(data) != count:
            raise ClientError("expected %d bytes, got %d" % (count, len(data)))
        return data

    def recv_close(self, timeout: Optional[float] = None) -> Tuple[Optional[int], str]:
        """Read until a close frame; return its ``(code, reason)``.

        ``code`` is None for an empty close body.  Data messages read on the
        way are kept in :attr:`messages_before_close`; pings and pongs are
        skipped.
        """
        deadline = self._deadline(timeout)
        while True:
            try:
                message = self.recv_message(timeout=max(0.0, deadline - time.monotonic()))
            except ConnectionClosed as exc:
                raise ConnectionClosed("connection closed without a close frame: %s" % exc,
                                       exc.partial) from None
            if message.opcode == OP_CLOSE:
                return parse_close(message.payload)
            if not message.is_control:
                self.messages_before_close.append(message)

    def expect_closed(self, timeout: Optional[float] = None) -> bytes:
        """Wait until the server closes the TCP connection; return bytes read meanwhile."""
        deadline = self._deadline(timeout)
        received = bytearray(self._buffer)
        self._buffer.clear()
        while True:
            try:
                chunk = self._recv_some(deadline, "the server to close the connection")
            except Timeout:
                raise Timeout("the server did not close the TCP connection within %.1fs"
                              % (self.timeout if timeout is None else timeout)) from None
            if not chunk:
                return bytes(received)
            received += chunk


def parse_close(payload: bytes) -> Tuple[Optional[int], str]:
    """Split a server close body into ``(code, reason)``, checking RFC 6455 §5.5.1."""
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise ServerViolation("server sent a 1-byte close body")
    code = struct.unpack("!H", payload[:2])[0]
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ServerViolation("server close reason is not UTF-8: %r" % payload[2:]) from None
    return code, reason


def open_session(port: int, protocols: Optional[Sequence[str]] = None,
                 host: str = "127.0.0.1", timeout: float = DEFAULT_TIMEOUT,
                 **request_options) -> WSClient:
    """Connect and complete a handshake that must succeed; return the client.

    The caller owns the client (use it in a ``with`` block).
    """
    client = WSClient(port, host=host, timeout=timeout)
    try:
        client.handshake(protocols=protocols, **request_options)
    except BaseException:
        client.close()
        raise
    return client
