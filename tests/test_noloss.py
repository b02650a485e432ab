"""No lost bytes: bulk streams both ways at once, and the two close paths.

A :class:`DuplexTarget` sends its own stream while it reads the client's;
the client sends in one thread while it reads in another.  Each end hashes
what it sent and what it received (SHA-256), so the test compares four
digests and two counts, never the data itself.

Sizes: 64 MiB each way in binary mode and 16 MiB in base64 mode by
default; with ``WSPROXY_LONG_TESTS=1``, 1 GiB and 64 MiB.  The close-path
tests move several MiB while one side is not reading, so the bytes sit in
socket buffers and in the proxy when the close begins.
"""

import base64
import hashlib
import os
import random
import socket
import struct
import threading
import time
from typing import Callable, Iterator, List, Optional

import pytest

from conftest import wait_until
from wsclient import OP_BINARY, OP_CLOSE, OP_TEXT, encode_frame, open_session, parse_close

MIB = 1024 * 1024
LONG_TESTS = os.environ.get("WSPROXY_LONG_TESTS") == "1"
BINARY_SIZE = 1024 * MIB if LONG_TESTS else 64 * MIB
BASE64_SIZE = 64 * MIB if LONG_TESTS else 16 * MIB
#: Bytes moved through each close path while the receiving side waits.
CLOSE_PATH_SIZE = 12 * MIB
#: Seconds a whole transfer may take (generous: the machine is shared).
TRANSFER_DEADLINE = 600.0 if LONG_TESTS else 60.0
#: How long progress must stand still before a side counts as blocked.
QUIET = 0.3

#: XOR tables for masking at C speed (RFC 6455 §5.3), one per key byte.
_XOR = [bytes(value ^ key for value in range(256)) for key in range(256)]


def mask_fast(payload, key: bytes) -> bytearray:
    """``payload`` XOR the 4-byte ``key`` repeated, as four interleaved lanes."""
    data = bytes(payload)
    out = bytearray(len(data))
    for lane in range(4):
        out[lane::4] = data[lane::4].translate(_XOR[key[lane]])
    return out


def masked_header(opcode: int, length: int, key: bytes) -> bytes:
    """A client frame header (FIN set, MASK set) for ``length`` payload bytes."""
    if length < 126:
        return struct.pack("!BB", 0x80 | opcode, 0x80 | length) + key
    if length < 1 << 16:
        return struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length) + key
    return struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length) + key


class Stream:
    """A reproducible stream of ``total`` bytes in chunks, hashed as it is produced.

    Chunks are slices of a 4 MiB random pool at random offsets and sizes
    (so no two neighbours are alike and reordering shows in the digest).
    """

    POOL = 4 * MIB

    def __init__(self, total: int, seed: int, largest: int = 256 * 1024) -> None:
        self.total = total
        self.largest = largest
        self._rng = random.Random(seed)
        self._pool = memoryview(self._rng.randbytes(self.POOL))
        self.digest = hashlib.sha256()
        self.produced = 0

    def chunks(self) -> Iterator[memoryview]:
        rng, pool = self._rng, self._pool
        while self.produced < self.total:
            size = min(self.total - self.produced, rng.randint(1, self.largest))
            start = rng.randrange(self.POOL - size + 1)
            chunk = pool[start:start + size]
            self.digest.update(chunk)
            self.produced += size
            yield chunk

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()


class Worker:
    """Runs ``work`` in a thread; :meth:`join` re-raises what it raised."""

    def __init__(self, work: Callable[[], None], name: str) -> None:
        self.error = None  # type: Optional[BaseException]
        self.done = threading.Event()
        self._work = work
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self._work()
        except BaseException as exc:  # handed to join()
            self.error = exc
        finally:
            self.done.set()

    def join(self, timeout: float = TRANSFER_DEADLINE) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "%s did not finish within %.0fs" % (
            self.thread.name, timeout)
        if self.error is not None:
            raise self.error


def wait_blocked_or_done(progress: Callable[[], int], done: Callable[[], bool],
                         timeout: float = 20.0, what: str = "the sender") -> None:
    """Wait until ``done()``, or until ``progress()`` has stood still for :data:`QUIET` s.

    Used to make sure a sender has filled every buffer on the way (or
    finished) before the other side starts reading.
    """
    state = {"value": -1, "since": time.monotonic()}

    def settled() -> bool:
        if done():
            return True
        value, now = progress(), time.monotonic()
        if value != state["value"]:
            state["value"], state["since"] = value, now
            return False
        return value > 0 and now - state["since"] >= QUIET

    wait_until(settled, timeout, "%s to finish or block" % what)


# -- the target ----------------------------------------------------------------------


class DuplexTarget:
    """A one-connection TCP target that reads and writes at the same time.

    It sends ``outgoing`` (a :class:`Stream`, or nothing) once ``send_gate``
    is set, and reads and hashes everything once ``read_gate`` is set.
    ``close_after_send`` shuts its write side as soon as the stream is sent;
    otherwise it does so only after the proxy's EOF.  Counters
    (``sent``, ``received``) can be polled while it runs.
    """

    def __init__(self, outgoing: Optional[Stream] = None, close_after_send: bool = False) -> None:
        self.outgoing = outgoing
        self.close_after_send = close_after_send
        self.send_gate = threading.Event()
        self.read_gate = threading.Event()
        self.send_gate.set()
        self.read_gate.set()
        self.sent = 0
        self.received = 0
        self.received_digest = hashlib.sha256()
        self.eof = threading.Event()
        self.sent_all = threading.Event()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.sock = None  # type: Optional[socket.socket]
        self._main = Worker(self._serve, "duplex-target")

    def _serve(self) -> None:
        self.listener.settimeout(TRANSFER_DEADLINE)
        try:
            self.sock, _ = self.listener.accept()
        finally:
            self.listener.close()
        sock = self.sock
        sender = Worker(self._send, "duplex-target-send")
        try:
            self.read_gate.wait(TRANSFER_DEADLINE)
            buffer = bytearray(1024 * 1024)
            view = memoryview(buffer)
            while True:
                count = sock.recv_into(buffer)
                if not count:
                    break
                self.received_digest.update(view[:count])
                self.received += count
            self.eof.set()
            sender.join()
            if not self.close_after_send:
                sock.shutdown(socket.SHUT_WR)
        finally:
            sock.close()

    def _send(self) -> None:
        self.send_gate.wait(TRANSFER_DEADLINE)
        if self.outgoing is not None:
            for chunk in self.outgoing.chunks():
                self.sock.sendall(chunk)
                self.sent += len(chunk)
        self.sent_all.set()
        if self.close_after_send:
            self.sock.shutdown(socket.SHUT_WR)

    @property
    def received_sha256(self) -> str:
        return self.received_digest.hexdigest()

    def join(self) -> None:
        self._main.join()

    def stop(self) -> None:
        """Make sure the threads end even when the test failed half-way."""
        self.send_gate.set()
        self.read_gate.set()
        for sock in (self.listener, self.sock):
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._main.thread.join(5.0)


@pytest.fixture
def duplex_target():
    """Factory: ``duplex_target(outgoing, close_after_send)``; stopped after the test."""
    targets = []  # type: List[DuplexTarget]

    def start(outgoing: Optional[Stream] = None, close_after_send: bool = False) -> DuplexTarget:
        target = DuplexTarget(outgoing, close_after_send)
        targets.append(target)
        return target

    yield start
    for target in targets:
        target.stop()


# -- the client side -------------------------------------------------------------------


class ServerFrames:
    """Incremental parser of the proxy's frames; data goes to ``on_data`` piece by piece.

    Checks what any server frame must satisfy (unmasked, RSV clear) and that
    data frames are single-frame messages of ``data_opcode``.  Control
    frames are kept whole in :attr:`controls` as ``(opcode, payload)``.
    ``on_data(piece, frame_done)`` sees the payload of data frames.
    """

    def __init__(self, data_opcode: int, on_data: Callable[[memoryview, bool], None]) -> None:
        self.data_opcode = data_opcode
        self.on_data = on_data
        self.controls = []  # type: List[tuple]
        self.data_frames = 0
        self._header = bytearray()
        self._remaining = 0
        self._opcode = None  # type: Optional[int]
        self._control = bytearray()

    @property
    def close(self):
        """``(code, reason)`` of the close frame received, or None."""
        for opcode, payload in self.controls:
            if opcode == OP_CLOSE:
                return parse_close(payload)
        return None

    def feed(self, data: memoryview) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self._opcode is None:
                need = self._header_size()
                take = min(end - pos, need - len(self._header))
                self._header += data[pos:pos + take]
                pos += take
                if len(self._header) < self._header_size():
                    continue
                self._start_frame()
                if self._remaining:
                    continue
            else:
                take = min(end - pos, self._remaining)
                self._payload(data[pos:pos + take], take == self._remaining)
                pos += take
                self._remaining -= take
                if self._remaining:
                    continue
            self._opcode = None

    def _header_size(self) -> int:
        if len(self._header) < 2:
            return 2
        length = self._header[1] & 0x7F
        return 2 + (2 if length == 126 else 8 if length == 127 else 0)

    def _start_frame(self) -> None:
        header = bytes(self._header)
        self._header = bytearray()
        first, second = header[0], header[1]
        assert not second & 0x80, "the proxy sent a masked frame"
        assert not first & 0x70, "the proxy set RSV bits"
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", header[2:4])[0]
        elif length == 127:
            length = struct.unpack("!Q", header[2:10])[0]
        opcode = first & 0x0F
        assert opcode >= 8 or (opcode == self.data_opcode and first & 0x80), \
            "expected whole messages of opcode %d, got a frame %#04x" % (self.data_opcode, first)
        assert self.close is None, "a frame %#04x after the close" % first
        self._opcode, self._remaining = opcode, length
        self._control = bytearray()
        if opcode < 8:
            self.data_frames += 1
        if not length:
            self._payload(memoryview(b""), True)

    def _payload(self, piece: memoryview, frame_done: bool) -> None:
        if self._opcode >= 8:
            self._control += piece
            if frame_done:
                self.controls.append((self._opcode, bytes(self._control)))
        else:
            self.on_data(piece, frame_done)


class Receiver:
    """Reads the proxy's frames on ``ws``'s socket in a thread, decoding base64 if asked.

    Counts and hashes the payload; stops at the close frame (or EOF).  It
    starts once ``reading`` is set (at once unless ``start`` is False), with
    the bytes the client read together with the handshake answer.
    """

    def __init__(self, ws, base64_mode: bool = False, start: bool = True) -> None:
        self.sock = ws.sock
        self._early = bytes(ws._buffer)
        ws._buffer.clear()
        self.base64_mode = base64_mode
        self.digest = hashlib.sha256()
        self.count = 0
        self.eof = False
        self.reading = threading.Event()
        if start:
            self.reading.set()
        self._text = bytearray()
        self.frames = ServerFrames(OP_TEXT if base64_mode else OP_BINARY, self._on_data)
        self.worker = Worker(self._run, "client-receive")

    def _on_data(self, piece: memoryview, frame_done: bool) -> None:
        if not self.base64_mode:
            self.digest.update(piece)
            self.count += len(piece)
            return
        self._text += piece
        if frame_done:  # each text message is base64 on its own
            data = base64.b64decode(bytes(self._text), validate=True)
            self._text = bytearray()
            self.digest.update(data)
            self.count += len(data)

    def _run(self) -> None:
        self.reading.wait(TRANSFER_DEADLINE)
        self.frames.feed(memoryview(self._early))
        buffer = bytearray(1024 * 1024)
        view = memoryview(buffer)
        self.sock.settimeout(TRANSFER_DEADLINE)
        while self.frames.close is None:
            count = self.sock.recv_into(buffer)
            if not count:
                self.eof = True
                return
            self.frames.feed(view[:count])

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()


def send_stream(sock: socket.socket, stream: Stream, base64_mode: bool = False,
                progress: Optional[List[int]] = None) -> None:
    """Send ``stream`` as masked binary messages (or base64 text messages)."""
    rng = random.Random(stream.total)
    for chunk in stream.chunks():
        key = rng.getrandbits(32).to_bytes(4, "big")
        payload = base64.b64encode(chunk) if base64_mode else chunk
        opcode = OP_TEXT if base64_mode else OP_BINARY
        sock.sendall(masked_header(opcode, len(payload), key) + mask_fast(payload, key))
        if progress is not None:
            progress[0] += len(chunk)


def finish_with_close(ws, receiver: Receiver, code: int = 1000) -> None:
    """Send close ``code``, then the proxy's close must come back and the TCP connection end."""
    ws.send_raw(encode_frame(OP_CLOSE, struct.pack("!H", code)))
    receiver.worker.join()
    assert receiver.frames.close is not None, "no close frame came back (EOF: %s)" % receiver.eof
    assert receiver.frames.close[0] == code
    ws.sock.settimeout(10.0)
    assert ws.sock.recv(1) == b"", "the proxy kept the connection open after the close"


# -- both directions at once -----------------------------------------------------------


@pytest.mark.parametrize("mode, size", [("binary", BINARY_SIZE), ("base64", BASE64_SIZE)])
def test_both_directions_at_once_lose_nothing(proxy, duplex_target, mode, size):
    base64_mode = mode == "base64"
    downstream = Stream(size, seed=1)
    upstream = Stream(size, seed=2)
    target = duplex_target(downstream)
    running = proxy(target_port=target.port)
    started = time.monotonic()
    with open_session(running.port, protocols=[mode], timeout=TRANSFER_DEADLINE) as ws:
        receiver = Receiver(ws, base64_mode)
        sender = Worker(lambda: send_stream(ws.sock, upstream, base64_mode), "client-send")
        sender.join()
        wait_until(lambda: receiver.count >= size or receiver.worker.done.is_set(),
                   TRANSFER_DEADLINE,
                   lambda: "the target's %d bytes (got %d)" % (size, receiver.count))
        assert receiver.frames.close is None, "closed early: %r" % (receiver.frames.close,)
        finish_with_close(ws, receiver)
    target.join()
    elapsed = time.monotonic() - started
    print("%s: %d MiB each way at once in %.1f s" % (mode, size // MIB, elapsed))
    assert target.received == size, "the target got %d of %d bytes" % (target.received, size)
    assert target.received_sha256 == upstream.sha256, "client -> target stream differs"
    assert receiver.count == size, "the client got %d of %d bytes" % (receiver.count, size)
    assert receiver.sha256 == downstream.sha256, "target -> client stream differs"


# -- the close paths deliver everything already accepted -------------------------------


@pytest.mark.parametrize("mode", ["binary", "base64"])
def test_target_close_delivers_everything_buffered(proxy, duplex_target, mode):
    """The target sends X and closes while the client is not reading: all X, then 1000."""
    outgoing = Stream(CLOSE_PATH_SIZE, seed=3)
    target = duplex_target(outgoing, close_after_send=True)
    running = proxy(target_port=target.port)
    with open_session(running.port, protocols=[mode], timeout=TRANSFER_DEADLINE) as ws:
        receiver = Receiver(ws, mode == "base64", start=False)
        # Fill every buffer between target and client (or send it all).
        wait_blocked_or_done(lambda: target.sent, target.sent_all.is_set, what="the target")
        print("%s: %.1f MiB sent by the target before the client read a byte%s"
              % (mode, target.sent / MIB, " (all of it)" if target.sent_all.is_set() else ""))
        receiver.reading.set()
        receiver.worker.join()
        assert receiver.count == CLOSE_PATH_SIZE, "the client got %d of %d bytes" % (
            receiver.count, CLOSE_PATH_SIZE)
        assert receiver.sha256 == outgoing.sha256
        assert receiver.frames.close is not None and receiver.frames.close[0] == 1000, \
            "expected close 1000 after the data, got %r (EOF: %s)" % (receiver.frames.close,
                                                                     receiver.eof)
        ws.send_raw(encode_frame(OP_CLOSE, struct.pack("!H", 1000)), tolerate_close=True)
        ws.sock.settimeout(10.0)
        assert ws.sock.recv(1) == b""
    target.join()


@pytest.mark.parametrize("mode", ["binary", "base64"])
def test_client_close_delivers_everything_buffered(proxy, duplex_target, mode):
    """The client sends Y then close while the target is not reading: all Y, then EOF."""
    outgoing = Stream(CLOSE_PATH_SIZE, seed=4)
    target = duplex_target()
    target.read_gate.clear()
    running = proxy(target_port=target.port)
    with open_session(running.port, protocols=[mode], timeout=TRANSFER_DEADLINE) as ws:
        receiver = Receiver(ws, mode == "base64")
        progress = [0]
        closed = threading.Event()

        def send_then_close() -> None:
            send_stream(ws.sock, outgoing, mode == "base64", progress)
            ws.send_raw(encode_frame(OP_CLOSE, struct.pack("!H", 1000)))
            closed.set()

        sender = Worker(send_then_close, "client-send")
        wait_blocked_or_done(lambda: progress[0], closed.is_set, what="the client")
        print("%s: %.1f MiB sent by the client before the target read a byte%s"
              % (mode, progress[0] / MIB, " (and its close)" if closed.is_set() else ""))
        target.read_gate.set()
        sender.join()
        receiver.worker.join()
        assert receiver.frames.close is not None and receiver.frames.close[0] == 1000, \
            "expected the close echoed, got %r (EOF: %s)" % (receiver.frames.close, receiver.eof)
        ws.sock.settimeout(10.0)
        assert ws.sock.recv(1) == b""
    target.join()
    assert target.eof.is_set()
    assert target.received == CLOSE_PATH_SIZE, "the target got %d of %d bytes" % (
        target.received, CLOSE_PATH_SIZE)
    assert target.received_sha256 == outgoing.sha256
