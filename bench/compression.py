#!/usr/bin/env python3
"""Bytes on the wire and MB/s with and without ``--compress``: one command.

Usage (from the checkout)::

    python3 bench/compression.py [--rounds N] [--mib M] [--level L]

Starts a TCP source target (this script with ``--target``) and two
``python3 -m wsproxy -f`` children in front of it, one plain and one with
``--compress``, all on 127.0.0.1.  Each transfer is one session: the client
offers permessage-deflate the way browsers do, asks the target for ``M`` MiB
of one kind of data, and reads it to the end, inflating compressed messages
with ``zlib`` as a browser would.  Two kinds:

``text``
    terminal-like output (prompts, file listings, compiler lines, ANSI
    colour codes), which deflates well;
``random``
    random bytes, which do not deflate at all (like already-compressed
    VNC tight/JPEG rectangles).

Rounds are interleaved (each round runs every kind through both proxies,
alternating which goes first) because the machine is shared; the table shows
medians.  Per transfer it records the bytes received on the client's socket
(frame headers included), the payload MB/s timed at the client from the
request to the last byte, and the CPU seconds the proxy process used (from
``/proc``).  Standard library only.
"""

import argparse
import base64
import hashlib
import os
import random
import socket
import statistics
import struct
import subprocess
import sys
import time
import zlib
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1024 * 1024
#: The target writes this much at a time (a VNC server or a shell writes less;
#: larger writes are the proxy's best case without compression).
WRITE_SIZE = 64 * 1024
#: Size of the pattern pool each kind cycles through: far beyond any LZ77
#: window, so cycling adds no redundancy a 32 KiB window could find.
POOL_SIZE = 4 * MIB
START_DEADLINE = 15.0
STEP_TIMEOUT = 60.0
OFFER = "permessage-deflate; client_max_window_bits"
TAIL = b"\x00\x00\xff\xff"
KINDS = ("text", "random")
MODES = ("plain", "compress")


# -- the data ---------------------------------------------------------------------------------


def terminal_text(size: int, seed: int = 1) -> bytes:
    """Shell-session-like output: prompts, ls -l lines, compiler output, colour codes."""
    rng = random.Random(seed)
    users = ["root", "alice", "build"]
    names = ["main.c", "util.c", "Makefile", "README.md", "config.h", "server.py", "tests",
             "debian", "src", "docs", "a.out", ".gitignore", "LICENSE", "setup.py"]
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    out = []
    total = 0
    while total < size:
        pick = rng.random()
        user = rng.choice(users)
        if pick < 0.1:
            line = "\x1b[01;32m%s@host\x1b[00m:\x1b[01;34m~/src/%s\x1b[00m$ %s\r\n" % (
                user, rng.choice(names), rng.choice(["ls -l", "make", "git status", "cat log"]))
        elif pick < 0.6:
            line = "%s %2d %s %s %7d %s %2d %02d:%02d %s\r\n" % (
                rng.choice(["-rw-r--r--", "drwxr-xr-x", "-rwxr-xr-x"]), rng.randrange(1, 9),
                user, user, rng.randrange(100, 9999999), rng.choice(months), rng.randrange(1, 29),
                rng.randrange(24), rng.randrange(60), rng.choice(names))
        else:
            line = "%s:%d:%d: %s: %s '%s' [-W%s]\r\n" % (
                rng.choice(names), rng.randrange(1, 2000), rng.randrange(1, 80),
                rng.choice(["warning", "error", "note"]),
                rng.choice(["unused variable", "implicit declaration of function",
                            "comparison of integer expressions of different signedness"]),
                rng.choice(["count", "buffer", "len", "sock", "i"]),
                rng.choice(["unused-variable", "sign-compare", "implicit-function-declaration"]))
        data = line.encode("ascii")
        out.append(data)
        total += len(data)
    return b"".join(out)[:size]


def pool(kind: str) -> bytes:
    if kind == "text":
        return terminal_text(POOL_SIZE)
    return random.Random(2).randbytes(POOL_SIZE)


# -- the target (a child process) ---------------------------------------------------------------


def serve_target() -> int:
    """``--target``: print ``port N``; serve connections until killed.

    Each connection sends ``KIND COUNT\\n`` and gets COUNT bytes of KIND, then EOF.
    """
    pools = {kind: pool(kind) for kind in KINDS}
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    print("port %d" % listener.getsockname()[1], flush=True)
    while True:
        sock, _ = listener.accept()
        with sock:
            request = b""
            while not request.endswith(b"\n") and len(request) < 100:
                chunk = sock.recv(100)
                if not chunk:
                    break
                request += chunk
            try:
                kind, count = request.decode("ascii").split()
                data, left = memoryview(pools[kind]), int(count)
            except (ValueError, KeyError, UnicodeDecodeError):
                continue
            offset = 0
            while left > 0:
                size = min(WRITE_SIZE, left, len(data) - offset)
                sock.sendall(data[offset:offset + size])
                offset = (offset + size) % len(data)
                left -= size
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass


# -- a small client -----------------------------------------------------------------------------


class Client:
    """One WebSocket session that may use permessage-deflate; counts bytes on the wire."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=STEP_TIMEOUT)
        self.buffer = bytearray()
        self.wire_bytes = 0
        self.compressed = False
        self.inflater = zlib.decompressobj(-15)

    def handshake(self) -> None:
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        request = ("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
                   "Sec-WebSocket-Protocol: binary\r\nSec-WebSocket-Extensions: %s\r\n\r\n"
                   % (key, OFFER))
        self.sock.sendall(request.encode("ascii"))
        while b"\r\n\r\n" not in self.buffer:
            self._recv()
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        self.buffer = bytearray(rest)
        lines = head.decode("latin-1").split("\r\n")
        if not lines[0].startswith("HTTP/1.1 101"):
            raise RuntimeError("handshake refused: %s" % lines[0])
        accept = base64.b64encode(hashlib.sha1(
            (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode("ascii")).digest()).decode()
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("sec-websocket-accept") != accept:
            raise RuntimeError("wrong Sec-WebSocket-Accept")
        answer = headers.get("sec-websocket-extensions", "")
        self.compressed = answer.split(";")[0].strip() == "permessage-deflate"
        if "server_max_window_bits" in answer or "server_no_context_takeover" in answer:
            raise RuntimeError("this client only handles the default parameters: %r" % answer)
        self.wire_bytes = len(self.buffer)

    def _recv(self) -> None:
        chunk = self.sock.recv(256 * 1024)
        if not chunk:
            raise RuntimeError("connection closed early")
        self.wire_bytes += len(chunk)
        self.buffer += chunk

    def send_binary(self, payload: bytes) -> None:
        mask = os.urandom(4)
        header = struct.pack("!BB", 0x82, 0x80 | len(payload))  # short payloads only
        key = (mask * (len(payload) // 4 + 1))[:len(payload)]
        self.sock.sendall(header + mask + bytes(a ^ b for a, b in zip(payload, key)))

    def read_payload(self, count: int) -> bytes:
        """Read data frames until ``count`` payload bytes (inflated) arrived; return their hash."""
        digest = hashlib.sha256()
        received = 0
        while received < count:
            while True:
                frame = self._parse_frame()
                if frame is not None:
                    break
                self._recv()
            first, payload = frame
            opcode = first & 0x0F
            if opcode == 0x8:
                raise RuntimeError("closed after %d of %d bytes" % (received, count))
            if opcode not in (0x1, 0x2):
                continue
            if first & 0x40:
                payload = self.inflater.decompress(payload + TAIL)
            digest.update(payload)
            received += len(payload)
        return digest.digest()

    def _parse_frame(self) -> Optional[Tuple[int, bytes]]:
        buffer = self.buffer
        if len(buffer) < 2:
            return None
        length, offset = buffer[1] & 0x7F, 2
        if length == 126:
            if len(buffer) < 4:
                return None
            length, offset = struct.unpack_from("!H", buffer, 2)[0], 4
        elif length == 127:
            if len(buffer) < 10:
                return None
            length, offset = struct.unpack_from("!Q", buffer, 2)[0], 10
        if len(buffer) < offset + length:
            return None
        first, payload = buffer[0], bytes(buffer[offset:offset + length])
        del buffer[:offset + length]
        return first, payload

    def close(self) -> None:
        self.sock.close()


# -- processes -----------------------------------------------------------------------------------


def start_target() -> Tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--target"],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    line = proc.stdout.readline().decode("ascii").split()
    if len(line) != 2 or line[0] != "port":
        stop(proc)
        raise RuntimeError("the target did not start")
    return proc, int(line[1])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_wsproxy(target_port: int, extra: List[str]) -> Tuple[subprocess.Popen, int]:
    """``python3 -m wsproxy -f -q`` from this checkout on a free port."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for _ in range(3):
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "wsproxy", "-f", "-q"] + extra
                                + ["127.0.0.1:%d" % port, "127.0.0.1:%d" % target_port],
                                cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return proc, port
            except OSError:
                time.sleep(0.05)
        stop(proc)
    raise RuntimeError("wsproxy did not start")


def stop(proc: Optional[subprocess.Popen]) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far (Linux /proc)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


# -- the measurement ---------------------------------------------------------------------------


def transfer(port: int, pid: int, kind: str, count: int, expected: bytes) -> Dict[str, float]:
    client = Client(port)
    try:
        client.handshake()
        cpu_before = cpu_seconds(pid)
        wire_before = client.wire_bytes
        started = time.perf_counter()
        client.send_binary(("%s %d\n" % (kind, count)).encode("ascii"))
        digest = client.read_payload(count)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(pid) - cpu_before
    finally:
        client.close()
    if digest != expected:
        raise RuntimeError("%s: the payload arrived corrupted" % kind)
    return {"wire": client.wire_bytes - wire_before, "mbps": count / elapsed / 1e6,
            "cpu_per_mb": cpu / (count / 1e6), "compressed": client.compressed}


def expected_digest(kind: str, count: int) -> bytes:
    data = pool(kind)
    digest = hashlib.sha256()
    left, offset = count, 0
    while left:
        size = min(WRITE_SIZE, left, len(data) - offset)
        digest.update(data[offset:offset + size])
        offset = (offset + size) % len(data)
        left -= size
    return digest.digest()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--mib", type=int, default=32, help="MiB per transfer (default 32)")
    parser.add_argument("--level", type=int, default=6, help="--compress-level (default 6)")
    parser.add_argument("--target", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.target:
        return serve_target()
    count = args.mib * MIB
    expected = {kind: expected_digest(kind, count) for kind in KINDS}
    processes = []
    results: Dict[Tuple[str, str], List[Dict[str, float]]] = {}
    try:
        target, target_port = start_target()
        processes.append(target)
        proxies = {}
        for mode, extra in (("plain", []),
                            ("compress", ["--compress", "--compress-level=%d" % args.level])):
            proc, port = start_wsproxy(target_port, extra)
            processes.append(proc)
            proxies[mode] = (port, proc.pid)
        for round_number in range(args.rounds):
            order = MODES if round_number % 2 == 0 else MODES[::-1]
            for kind in KINDS:
                for mode in order:
                    port, pid = proxies[mode]
                    result = transfer(port, pid, kind, count, expected[kind])
                    if result["compressed"] != (mode == "compress"):
                        raise RuntimeError("%s proxy: extension answer unexpected" % mode)
                    results.setdefault((kind, mode), []).append(result)
            print("round %d/%d done" % (round_number + 1, args.rounds), file=sys.stderr, flush=True)
    except RuntimeError as exc:
        print("compression bench: %s" % exc, file=sys.stderr)
        return 1
    finally:
        for proc in processes:
            stop(proc)
    print_table(results, count, args)
    return 0


def print_table(results, count: int, args) -> None:
    print("%d MiB per transfer, target writes of %d KiB, %d interleaved rounds, medians; "
          "--compress-level %d" % (args.mib, WRITE_SIZE // 1024, args.rounds, args.level))
    print()
    print("| data | proxy | bytes on the wire | wire / payload | MB/s | proxy CPU s per MB |")
    print("|---|---|---:|---:|---:|---:|")
    for kind in KINDS:
        for mode in MODES:
            runs = results[(kind, mode)]
            wire = statistics.median(run["wire"] for run in runs)
            print("| %s | %s | %d | %.3f | %.1f | %.4f |" % (
                kind, "wsproxy --compress" if mode == "compress" else "wsproxy", wire,
                wire / count, statistics.median(run["mbps"] for run in runs),
                statistics.median(run["cpu_per_mb"] for run in runs)))


if __name__ == "__main__":
    sys.exit(main())
