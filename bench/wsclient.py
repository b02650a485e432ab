"""A small WebSocket client for the benchmark (RFC 6455), independent of wsproxy's code.

Frames are built and masked ahead of time (:func:`masked_frame`); incoming
frames are parsed from one reusable buffer (:class:`FrameReader`), or, for
bulk downstream transfers, only located inside one large buffer
(:class:`FrameWalker`) so the payload is never copied while timed.
"""

import base64
import binascii
import hashlib
import os
import random
import socket
import ssl
import struct
from typing import List, Optional, Tuple

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE = 0x1, 0x2, 0x8
#: Seconds any single network step may take before the run counts as failed.
STEP_TIMEOUT = 60.0


# -- frames -------------------------------------------------------------------------------


def xor_mask(data: bytes, mask: bytes) -> bytes:
    """``data`` XOR the repeated 4-byte ``mask`` (RFC 6455 §5.3)."""
    if not data:
        return b""
    key = (mask * (len(data) // 4 + 1))[:len(data)]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(len(data), "little")


def masked_frame(opcode: int, payload: bytes, rng: random.Random) -> bytes:
    """One final client frame, masked with a key from ``rng`` (RFC 6455 §5.2)."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    mask = rng.randbytes(4)
    return header + mask + xor_mask(payload, mask)


def message_frame(payload: bytes, subprotocol: str, rng: random.Random) -> bytes:
    """``payload`` as one frame of the agreed subprotocol (base64 text or binary)."""
    if subprotocol == "base64":
        return masked_frame(TEXT, base64.b64encode(payload), rng)
    return masked_frame(BINARY, payload, rng)


class FrameReader:
    """Incremental frame parser over a socket, reading into one reusable buffer.

    :meth:`receive` does one ``recv_into`` and returns ``(opcode, piece)``
    pairs; ``piece`` is a memoryview into the buffer, valid until the next
    call.  Masked frames (an echo of our own frames, in raw mode) are
    unmasked.  ``eof`` is set when the peer closed; ``frames`` counts frame
    headers seen, ``data_frames`` those of data frames.
    """

    def __init__(self, sock, leftover: bytes = b"", size: int = 1024 * 1024) -> None:
        self.sock = sock
        self.buffer = bytearray(size)
        self.view = memoryview(self.buffer)
        self.buffer[:len(leftover)] = leftover
        self.end = len(leftover)
        self._unparsed = bool(leftover)
        self.pos = 0
        self.remaining = 0
        self.frame_opcode = 0
        self.message_opcode = 0
        self.mask: Optional[bytes] = None
        self.mask_offset = 0
        self.frames = 0
        self.data_frames = 0
        self.eof = False

    def receive(self) -> List[Tuple[int, memoryview]]:
        if self.pos < self.end:  # a partial header waits at the end: move it to the front
            partial = bytes(self.view[self.pos:self.end])
            self.buffer[:len(partial)] = partial
            self.end = len(partial)
        else:
            self.end = 0
        self.pos = 0
        if self._unparsed:
            # Bytes that came with the handshake: parse them before reading more.
            self._unparsed = False
            return self._parse()
        count = self.sock.recv_into(self.view[self.end:])
        if not count:
            self.eof = True
            return []
        self.end += count
        return self._parse()

    def _parse(self) -> List[Tuple[int, memoryview]]:
        out = []
        append = out.append
        buf, view = self.buffer, self.view
        pos, end = self.pos, self.end
        while pos < end:
            if self.remaining:
                take = self.remaining if self.remaining < end - pos else end - pos
                piece = view[pos:pos + take]
                if self.mask is not None:
                    piece = self._unmask(piece)
                append((self.frame_opcode, piece))
                pos += take
                self.remaining -= take
                continue
            if end - pos < 4:
                if end - pos < 2 or buf[pos + 1] & 0x7F >= 126:
                    break
            second = buf[pos + 1]
            if second < 126:  # unmasked, short: the common server frame (RFC 6455 §5.2)
                length, size = second, 2
            elif second == 126:
                length, size = (buf[pos + 2] << 8) | buf[pos + 3], 4
            else:
                length, size = second & 0x7F, 2
                if length == 126:
                    size = 4
                elif length == 127:
                    size = 10
                masked = second & 0x80
                if end - pos < size + (4 if masked else 0):
                    break
                if length == 126:
                    length = int.from_bytes(buf[pos + 2:pos + 4], "big")
                elif length == 127:
                    length = int.from_bytes(buf[pos + 2:pos + 10], "big")
            if second & 0x80:
                self.mask = bytes(buf[pos + size:pos + size + 4])
                self.mask_offset = 0
                size += 4
            else:
                self.mask = None
            opcode = buf[pos] & 0x0F
            if opcode == 0:
                opcode = self.message_opcode
            elif opcode < 8:
                self.message_opcode = opcode
            self.frame_opcode = opcode
            self.frames += 1
            if opcode < 8:
                self.data_frames += 1
            pos += size
            if self.mask is None and end - pos >= length:  # the whole payload is here
                append((opcode, view[pos:pos + length]))
                pos += length
            else:
                self.remaining = length
                if not length:
                    append((opcode, view[pos:pos]))
        self.pos = pos
        return out

    def _unmask(self, piece: memoryview) -> memoryview:
        shift = self.mask_offset & 3
        mask = self.mask[shift:] + self.mask[:shift]
        self.mask_offset += len(piece)
        return memoryview(xor_mask(bytes(piece), mask))


class Base64Text:
    """Decodes base64 text arriving in pieces split anywhere."""

    def __init__(self) -> None:
        self.carry = b""

    def decode(self, piece) -> bytes:
        data = self.carry + bytes(piece) if self.carry else bytes(piece)
        usable = len(data) & ~3
        self.carry = data[usable:]
        return binascii.a2b_base64(data[:usable]) if usable else b""


# -- connecting -------------------------------------------------------------------------


def connect(job: dict):
    sock = socket.create_connection((job["host"], job["port"]), timeout=STEP_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if job.get("tls"):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        sock = context.wrap_socket(sock)
    return sock


def handshake_request(job: dict) -> Tuple[bytes, bytes]:
    """The upgrade request and the Sec-WebSocket-Accept value it must get (RFC 6455 §4.1)."""
    key = base64.b64encode(os.urandom(16))
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    lines = ["GET / HTTP/1.1", "Host: %s:%d" % (job["host"], job["port"]),
             "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Key: " + key.decode("ascii"), "Sec-WebSocket-Version: 13",
             "Sec-WebSocket-Protocol: " + job.get("subprotocol", "binary")]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii"), accept


def check_response(head: bytes, accept: bytes) -> None:
    status = head.split(b"\r\n", 1)[0]
    if b" 101 " not in status + b" ":
        raise ConnectionError("handshake refused: %r" % status)
    if accept not in head:
        raise ConnectionError("wrong Sec-WebSocket-Accept")


def open_session(job: dict):
    """Connect and (unless raw) upgrade; returns (socket, bytes read past the handshake)."""
    sock = connect(job)
    if job.get("raw"):
        return sock, b""
    data, accept = handshake_request(job)
    sock.sendall(data)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        head += chunk
    head, rest = head.split(b"\r\n\r\n", 1)
    check_response(head, accept)
    return sock, rest


def send_request(sock, job: dict, text: bytes, rng: random.Random) -> None:
    """The target request: raw, or as the first WebSocket message."""
    if job.get("raw"):
        sock.sendall(text)
    else:
        sock.sendall(message_frame(text, job.get("subprotocol", "binary"), rng))


def close_session(sock, reader: Optional[FrameReader], job: dict, rng: random.Random) -> None:
    """Send a close frame (RFC 6455 §5.5.1), wait briefly for the answer, close."""
    try:
        if not job.get("raw"):
            sock.sendall(masked_frame(CLOSE, struct.pack("!H", 1000), rng))
            sock.settimeout(5.0)
            while reader is not None and not reader.eof:
                if any(opcode == CLOSE for opcode, _ in reader.receive()):
                    break
    except OSError:
        pass
    finally:
        sock.close()


class FrameWalker:
    """Finds the frames in a buffer that fills up from the front (RFC 6455 §5.2).

    :meth:`walk` returns the payload bytes received so far (decoded size
    for base64 text, counted per complete frame); ``spans`` holds each data
    frame's payload position; ``closed`` is set at a close frame.
    """

    def __init__(self, buffer: bytearray, base64_text: bool) -> None:
        self.buffer = buffer
        self.base64 = base64_text
        self.spans: List[Tuple[int, int]] = []
        self.closed = False
        self.pos = 0            # where the next frame header starts
        self.complete = 0       # payload of the frames wholly received
        self.pending: Optional[Tuple[int, int]] = None  # the data frame still arriving

    def walk(self, end: int) -> int:
        buf = self.buffer
        while True:
            if self.pending is not None:
                start, stop = self.pending
                if stop > end:
                    partial = end - start
                    return self.complete + (partial // 4 * 3 if self.base64 else partial)
                self.complete += self._size(start, stop)
                self.pending = None
            pos = self.pos
            if end - pos < 2:
                return self.complete
            second = buf[pos + 1]
            length, size = second & 0x7F, 2
            if length == 126:
                size = 4
            elif length == 127:
                size = 10
            if second & 0x80:
                raise ConnectionError("masked frame from the server")
            if end - pos < size:
                return self.complete
            if length == 126:
                length = int.from_bytes(buf[pos + 2:pos + 4], "big")
            elif length == 127:
                length = int.from_bytes(buf[pos + 2:pos + 10], "big")
            opcode = buf[pos] & 0x0F
            start = pos + size
            self.pos = start + length
            if opcode == CLOSE:
                self.closed = True
                return self.complete
            if opcode < 8:
                self.spans.append((start, start + length))
                self.pending = (start, start + length)

    def _size(self, start: int, stop: int) -> int:
        if not self.base64:
            return stop - start
        padding = 0
        if stop - start >= 2:
            padding = (self.buffer[stop - 1] == 61) + (self.buffer[stop - 2] == 61)  # '='
        return (stop - start) // 4 * 3 - padding

    def payload(self, end: int) -> List[memoryview]:
        view = memoryview(self.buffer)
        return [view[start:min(stop, end)] for start, stop in self.spans if start < end]
