#!/usr/bin/env python3
"""The benchmark's load client: one process, one job, driven by run.py.

Protocol on standard input/output: the first input line is a JSON job; the
client prepares it (builds and masks every frame it will send, connects,
completes the WebSocket handshake) and prints ``READY <json>``; it then waits
for the line ``GO``, runs the job and prints ``RESULT <json>``.  A failure
prints ``RESULT {"error": ...}``.

Masking is the client's cost, so it is paid before ``READY``: upstream jobs
send the same pre-masked block of frames again and again.

Job fields (all modes): ``mode`` (``upstream``, ``downstream``, ``echo``,
``sessions``), ``host``, ``port``, ``tls`` (wss://), ``raw`` (no handshake,
no proxy: talk to the target directly, to measure this client itself),
``subprotocol`` (``binary`` or ``base64``), ``seed``.
``upstream``: ``frame`` (payload bytes per frame), ``nbytes``.
``downstream``: ``chunk`` (the source's write size), ``nbytes``.
``echo``: ``messages``, ``warmup``, ``size``.
``sessions``: ``sessions``, ``round_trips``, ``size``, ``open_concurrency``.
"""

import asyncio
import base64
import binascii
import hashlib
import json
import os
import random
import resource
import socket
import ssl
import struct
import sys
import time
from typing import List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from targetserver import READY, request, touched_buffer  # noqa: E402

#: Upstream jobs cycle through this many payload bytes (a multiple of every frame size used).
UPSTREAM_POOL = 1024 * 1024
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_TEXT, _BINARY, _CLOSE = 0x1, 0x2, 0x8
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
        return masked_frame(_TEXT, base64.b64encode(payload), rng)
    return masked_frame(_BINARY, payload, rng)


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
            sock.sendall(masked_frame(_CLOSE, struct.pack("!H", 1000), rng))
            sock.settimeout(5.0)
            while reader is not None and not reader.eof:
                if any(opcode == _CLOSE for opcode, _ in reader.receive()):
                    break
    except OSError:
        pass
    finally:
        sock.close()


# -- jobs -------------------------------------------------------------------------------


class Upstream:
    """Send ``nbytes`` (whole pools) of pre-masked frames; the sink reports what it got."""

    def __init__(self, job: dict) -> None:
        self.job = job
        rng = random.Random(job["seed"])
        self.pool = rng.randbytes(UPSTREAM_POOL)
        frame = job["frame"]
        frames = [message_frame(self.pool[i:i + frame], job.get("subprotocol", "binary"), rng)
                  for i in range(0, UPSTREAM_POOL, frame)]
        self.block = b"".join(frames)
        self.repeats = max(1, -(-job["nbytes"] // UPSTREAM_POOL))
        unit = self.block if job.get("raw") else self.pool
        self.nbytes = self.repeats * len(unit)
        self.rng = rng
        self.sock, leftover = open_session(job)
        self.reader = FrameReader(self.sock, leftover)

    def ready(self) -> dict:
        return {"nbytes": self.nbytes}

    def run(self) -> dict:
        job, sock = self.job, self.sock
        send_request(sock, job, request("SINK", self.nbytes), self.rng)
        if self._read_exactly(len(READY)) != READY:
            raise ConnectionError("the sink did not answer READY")
        started, cpu_started = time.monotonic(), cpu_seconds()
        block = self.block
        for _ in range(self.repeats):
            sock.sendall(block)
        sent, cpu_sent = time.monotonic(), cpu_seconds()
        report = json.loads(self._read_line())
        close_session(sock, self.reader, job, self.rng)
        expected = hashlib.sha256()
        unit = block if job.get("raw") else self.pool
        for _ in range(self.repeats):
            expected.update(unit)
        seconds = report["last"] - report["first"]
        return {"bytes": report["bytes"], "seconds": seconds,
                "mbps": report["bytes"] / seconds / 1e6 if seconds > 0 else 0.0,
                "sha_ok": report["sha256"] == expected.hexdigest() and report["bytes"] == self.nbytes,
                "client_cores": (cpu_sent - cpu_started) / (sent - started) if sent > started else None,
                "first": report["first"], "last": report["last"]}

    def _read_line(self) -> bytes:
        return self._read_until(lambda data: data.endswith(b"\n"))

    def _read_exactly(self, count: int) -> bytes:
        return self._read_until(lambda data: len(data) >= count)

    def _read_until(self, done) -> bytes:
        """Payload from the sink (raw, or in frames) until ``done(data)``."""
        data = b""
        if self.job.get("raw"):
            while not done(data):
                chunk = self.sock.recv(4096)
                if not chunk:
                    raise ConnectionError("the sink closed the connection")
                data += chunk
            return data
        text = Base64Text() if self.job.get("subprotocol") == "base64" else None
        while not done(data):
            pieces = self.reader.receive()
            if self.reader.eof:
                raise ConnectionError("closed before the sink answered")
            for opcode, piece in pieces:
                if opcode == _CLOSE:
                    raise ConnectionError("closed before the sink answered")
                data += text.decode(piece) if text else bytes(piece)
        return data


class Downstream:
    """Ask the source for ``nbytes``; keep what arrives in memory; hash it afterwards.

    While the transfer is timed the client only receives into one large
    pre-mapped buffer and walks the frame headers (payload is never copied
    or looked at), so the client stays far from being the bottleneck; the
    SHA-256 of the payload is compared with the source's after the last byte.
    In raw mode the source writes plain bytes straight to this client.
    """

    def __init__(self, job: dict) -> None:
        self.job = job
        self.rng = random.Random(job["seed"])
        self.base64 = job.get("subprotocol") == "base64" and not job.get("raw")
        expansion = 1.4 if self.base64 else 1.02  # base64 text, frame headers
        self.buffer = touched_buffer(int((job["nbytes"] + 64) * expansion) + 4 * 1024 * 1024)
        self.view = memoryview(self.buffer)
        self.sock, leftover = open_session(job)
        self.buffer[:len(leftover)] = leftover
        self.end = len(leftover)

    def ready(self) -> dict:
        return {"nbytes": self.job["nbytes"]}

    def run(self) -> dict:
        job, nbytes = self.job, self.job["nbytes"]
        send_request(self.sock, job, request("SOURCE", nbytes, job["seed"], job["chunk"], 0), self.rng)
        frames = FrameWalker(self.buffer, self.base64)
        wanted = nbytes + 64  # then the source's SHA-256 in hex
        view, end, capacity = self.view, self.end, len(self.buffer)
        first = last = cpu_first = cpu_last = 0.0
        recv_into = self.sock.recv_into
        raw = job.get("raw")
        waitall = raw and not job.get("tls")
        while True:
            got = end if raw else frames.walk(end)
            if got >= nbytes and not last:
                last, cpu_last = time.monotonic(), cpu_seconds()
            if got >= wanted or frames.closed:
                break
            if end == capacity:
                raise RuntimeError("receive buffer full (frames far smaller than expected)")
            if waitall:  # raw: the total is known; wake once per MiB, not per segment
                count = recv_into(view[end:min(wanted, end + 1024 * 1024)], 0, socket.MSG_WAITALL)
            else:
                count = recv_into(view[end:])
            if not count:
                break
            end += count
            if not first:
                first, cpu_first = time.monotonic(), cpu_seconds()
        close_session(self.sock, None, job, self.rng)
        payload = [view[:end]] if raw else frames.payload(end)
        digest, got, trailer = hashlib.sha256(), 0, b""
        decoder = Base64Text() if self.base64 else None
        for piece in payload:
            if decoder is not None:
                piece = decoder.decode(piece)
            take = min(len(piece), nbytes - got)
            digest.update(piece[:take])
            got += take
            trailer += bytes(piece[take:take + 64 - len(trailer)])
        seconds = last - first
        return {"bytes": got, "seconds": seconds,
                "mbps": got / seconds / 1e6 if seconds > 0 else 0.0,
                "sha_ok": got == nbytes and trailer.decode("ascii", "replace") == digest.hexdigest(),
                "client_cores": (cpu_last - cpu_first) / seconds if seconds > 0 else None,
                "mean_frame": None if raw else (got + len(trailer)) / max(1, len(frames.spans)),
                "first": first, "last": last}


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
            if opcode == _CLOSE:
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


class Echo:
    """Round trips of small messages, one at a time; every echo is compared."""

    def __init__(self, job: dict) -> None:
        self.job = job
        self.rng = random.Random(job["seed"])
        size = job.get("size", 32)
        self.payloads = [self.rng.randbytes(size) for _ in range(64)]
        subprotocol = job.get("subprotocol", "binary")
        self.frames = [message_frame(p, subprotocol, self.rng) for p in self.payloads]
        self.sock, leftover = open_session(job)
        self.reader = FrameReader(self.sock, leftover, size=65536)

    def ready(self) -> dict:
        return {}

    def run(self) -> dict:
        job, sock, reader = self.job, self.sock, self.reader
        send_request(sock, job, request("ECHO"), self.rng)
        text = Base64Text() if job.get("subprotocol") == "base64" else None
        clock = time.perf_counter_ns
        warmup, messages = job.get("warmup", 200), job["messages"]
        times = []
        mismatches = 0
        first = 0.0
        for i in range(warmup + messages):
            if i == warmup:
                first = time.monotonic()
            expected = self.payloads[i % len(self.payloads)]
            frame = self.frames[i % len(self.frames)]
            got = b""
            start = clock()
            sock.sendall(frame)
            while len(got) < len(expected):
                pieces = reader.receive()
                if reader.eof:
                    raise ConnectionError("echo closed after %d messages" % i)
                for _, piece in pieces:
                    got += text.decode(piece) if text else bytes(piece)
            elapsed = clock() - start
            if got != expected:
                mismatches += 1
            if i >= warmup:
                times.append(elapsed / 1000.0)
        last = time.monotonic()
        close_session(sock, reader, job, self.rng)
        times.sort()
        return {"messages": messages, "p50_us": percentile(times, 50), "p99_us": percentile(times, 99),
                "sha_ok": mismatches == 0, "mismatches": mismatches, "first": first, "last": last}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(sorted_values: List[float], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, int(round(pct / 100.0 * (len(sorted_values) - 1))))
    return sorted_values[index]


# -- many sessions at once (asyncio) ----------------------------------------------------


class Sessions:
    """Open many sessions, wait for GO, then run echo round trips on all of them at once."""

    def __init__(self, job: dict) -> None:
        self.job = job
        self.rng = random.Random(job["seed"])
        self.loop = asyncio.new_event_loop()
        self.streams: List[Tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.open_errors: List[str] = []
        started = time.monotonic()
        self.loop.run_until_complete(self._open_all())
        self.open_seconds = time.monotonic() - started

    def ready(self) -> dict:
        return {"opened": len(self.streams), "open_errors": len(self.open_errors),
                "open_seconds": self.open_seconds, "first_errors": self.open_errors[:3]}

    async def _open_all(self) -> None:
        limit = asyncio.Semaphore(self.job.get("open_concurrency", 64))
        tasks = [self._open_one(limit) for _ in range(self.job["sessions"])]
        await asyncio.gather(*tasks)

    async def _open_one(self, limit: asyncio.Semaphore) -> None:
        job = self.job
        async with limit:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(job["host"], job["port"]), STEP_TIMEOUT)
                data, accept = handshake_request(job)
                writer.write(data)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP_TIMEOUT)
                check_response(head, accept)
                writer.write(message_frame(request("ECHO"), "binary", self.rng))
                self.streams.append((reader, writer))
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError) as exc:
                self.open_errors.append("%s: %s" % (exc.__class__.__name__, exc))

    def run(self) -> dict:
        started = time.monotonic()
        outcomes = self.loop.run_until_complete(self._echo_all())
        seconds = time.monotonic() - started
        for _, writer in self.streams:
            try:
                writer.write(masked_frame(_CLOSE, struct.pack("!H", 1000), self.rng))
                writer.close()
            except OSError:
                pass
        self.loop.run_until_complete(asyncio.sleep(0))
        times = sorted(t for outcome in outcomes if isinstance(outcome, list) for t in outcome)
        errors = [o for o in outcomes if not isinstance(o, list)]
        return {"sessions": self.job["sessions"], "completed": len(outcomes) - len(errors),
                "errors": len(errors) + len(self.open_errors), "echo_seconds": seconds,
                "open_seconds": self.open_seconds, "p50_us": percentile(times, 50),
                "p99_us": percentile(times, 99), "first_errors": (self.open_errors + errors)[:3],
                "sha_ok": not errors and not self.open_errors}

    async def _echo_all(self) -> list:
        tasks = [self._echo_one(reader, writer, index) for index, (reader, writer) in enumerate(self.streams)]
        return await asyncio.gather(*tasks)

    async def _echo_one(self, reader, writer, index: int):
        size = self.job.get("size", 32)
        rng = random.Random(self.job["seed"] * 100003 + index)
        times = []
        try:
            for _ in range(self.job["round_trips"]):
                payload = rng.randbytes(size)
                frame = masked_frame(_BINARY, payload, rng)
                start = time.perf_counter_ns()
                writer.write(frame)
                got = b""
                while len(got) < size:
                    head = await asyncio.wait_for(reader.readexactly(2), STEP_TIMEOUT)
                    length = head[1] & 0x7F
                    if length == 126:
                        length = int.from_bytes(await reader.readexactly(2), "big")
                    elif length == 127:
                        length = int.from_bytes(await reader.readexactly(8), "big")
                    if head[0] & 0x0F == _CLOSE:
                        return "closed by the proxy"
                    got += await asyncio.wait_for(reader.readexactly(length), STEP_TIMEOUT)
                times.append((time.perf_counter_ns() - start) / 1000.0)
                if got != payload:
                    return "echo mismatch"
            return times
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
            return "%s: %s" % (exc.__class__.__name__, exc)


JOBS = {"upstream": Upstream, "downstream": Downstream, "echo": Echo, "sessions": Sessions}


def main() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    job = json.loads(sys.stdin.readline())
    ready = False
    try:
        runner = JOBS[job["mode"]](job)
        print("READY " + json.dumps(runner.ready()), flush=True)
        ready = True
        if sys.stdin.readline().strip() != "GO":
            return 1
        result = runner.run()
    except Exception as exc:  # reported to run.py, which shows it in the table
        result = {"error": "%s: %s" % (exc.__class__.__name__, exc)}
        if not ready:
            print("READY " + json.dumps(result), flush=True)
            sys.stdin.readline()
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
