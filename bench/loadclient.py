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
import hashlib
import json
import os
import random
import resource
import socket
import struct
import sys
import time
from typing import List, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from targetserver import READY, request, touched_buffer  # noqa: E402
from wsclient import (BINARY, CLOSE, STEP_TIMEOUT, Base64Text, FrameReader, FrameWalker,  # noqa: E402
                      check_response, close_session, handshake_request, masked_frame,
                      message_frame, open_session, send_request)

#: Upstream jobs cycle through this many payload bytes (a multiple of every frame size used).
UPSTREAM_POOL = 1024 * 1024


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
                if opcode == CLOSE:
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
            elif not raw and not job.get("tls") and frames.pending is not None \
                    and frames.pending[1] - end > 4096:
                # Inside a frame whose length is known: wake once per frame (at most per
                # MiB), as the raw rows wake once per MiB, not once per segment.
                stop = min(frames.pending[1], end + 1024 * 1024, capacity)
                count = recv_into(view[end:stop], 0, socket.MSG_WAITALL)
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
        self.open_times: List[float] = []
        started, cpu_started = time.monotonic(), cpu_seconds()
        self.loop.run_until_complete(self._open_all())
        self.open_seconds = time.monotonic() - started
        # How busy this client was while opening: far below 1 core means it waited on the proxy.
        self.open_cores = (cpu_seconds() - cpu_started) / self.open_seconds if self.open_seconds else None
        self.open_times.sort()

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
            started = time.monotonic()
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(job["host"], job["port"]), STEP_TIMEOUT)
                data, accept = handshake_request(job)
                writer.write(data)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP_TIMEOUT)
                check_response(head, accept)
                writer.write(message_frame(request("ECHO"), "binary", self.rng))
                self.streams.append((reader, writer))
                self.open_times.append(time.monotonic() - started)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError) as exc:
                self.open_errors.append("%s: %s" % (exc.__class__.__name__, exc))

    def run(self) -> dict:
        started = time.monotonic()
        outcomes = self.loop.run_until_complete(self._echo_all())
        seconds = time.monotonic() - started
        for _, writer in self.streams:
            try:
                writer.write(masked_frame(CLOSE, struct.pack("!H", 1000), self.rng))
                writer.close()
            except OSError:
                pass
        self.loop.run_until_complete(asyncio.sleep(0))
        times = sorted(t for outcome in outcomes if isinstance(outcome, list) for t in outcome)
        errors = [o for o in outcomes if not isinstance(o, list)]
        return {"sessions": self.job["sessions"], "completed": len(outcomes) - len(errors),
                "errors": len(errors) + len(self.open_errors), "echo_seconds": seconds,
                "open_seconds": self.open_seconds, "open_cores": self.open_cores,
                "open_p50_ms": percentile(self.open_times, 50) * 1000 if self.open_times else None,
                "p50_us": percentile(times, 50),
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
                frame = masked_frame(BINARY, payload, rng)
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
                    if head[0] & 0x0F == CLOSE:
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
