"""Memory per session under attack: the proxy's RSS growth stays small.

Each test runs the proxy as a child process (``python3 -m wsproxy -f``) and
reads its ``/proc/PID/status``: VmHWM (the peak RSS) against VmRSS before
the session, so the figure is the most the attack ever made the proxy
hold.  The attacks are the ones docs/security.md bounds:

- a client that stops reading while the target streams, and floods pings;
- with ``--compress``, messages of ~1 KiB that each inflate to just under
  ``--max-message-size``, back to back;
- a text message (binary mode, under the limit) sent as 1-byte fragments.

The figures are printed; run with ``-s`` to see them.
"""

import os
import socket
import struct
import threading
import time
import zlib
from typing import Optional

import pytest

from conftest import wait_until
from test_load import child_proxy, proc_status, report  # noqa: F401 (child_proxy is a fixture)
from test_noloss import MIB, QUIET, wait_blocked_or_done
from wsclient import open_session

#: The per-session bounds docs/security.md states (growth of the peak RSS).
PLAIN_SESSION_BOUND = 6 * MIB
COMPRESS_SESSION_BOUND = 8 * MIB
#: The proxy's default --max-message-size.
MAX_MESSAGE = 1024 * 1024

#: A client frame's mask; any value is legal, and zero lets frames be built by repetition.
ZERO_MASK = b"\x00\x00\x00\x00"


def client_frame(first: int, payload: bytes) -> bytes:
    """One masked client frame with the all-zero mask (payload as is); ``first`` is byte 0."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, length)
    return header + ZERO_MASK + payload


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far."""
    with open("/proc/%d/stat" % pid) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settled_peak(pid: int) -> int:
    """The proxy's VmHWM once it has stopped growing (the attack fully processed)."""
    wait_blocked_or_done(lambda: proc_status(pid)["VmHWM"], lambda: False, timeout=30.0,
                         what="the proxy's peak RSS")
    return proc_status(pid)["VmHWM"]


class OneConnectionTarget:
    """A target for one connection: counts what it reads; optionally streams without end.

    ``stream`` makes it send 64 KiB blocks until the connection fails, so a
    client that stops reading leaves the proxy blocked writing to it.
    """

    def __init__(self, stream: bool = False) -> None:
        self.received = 0
        self.sent = 0
        self.eof = threading.Event()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.sock = None  # type: Optional[socket.socket]
        self._stream = stream
        self._threads = [threading.Thread(target=self._serve, daemon=True, name="memory-target")]
        self._threads[0].start()

    @property
    def address(self) -> str:
        return "127.0.0.1:%d" % self.port

    def _serve(self) -> None:
        try:
            self.sock, _ = self.listener.accept()
        except OSError:
            return
        if self._stream:
            sender = threading.Thread(target=self._send, daemon=True, name="memory-target-send")
            self._threads.append(sender)
            sender.start()
        buffer = bytearray(1024 * 1024)
        try:
            while True:
                count = self.sock.recv_into(buffer)
                if not count:
                    break
                self.received += count
        except OSError:
            pass
        self.eof.set()

    def _send(self) -> None:
        block = b"\x5a" * (64 * 1024)
        try:
            while True:
                self.sock.sendall(block)
                self.sent += len(block)
        except OSError:
            pass

    def stop(self) -> None:
        for sock in (self.listener, self.sock):
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
        for thread in self._threads:
            thread.join(5.0)


@pytest.fixture
def memory_target():
    """Factory: ``memory_target(stream=False)``; stopped after the test."""
    targets = []

    def start(stream: bool = False) -> OneConnectionTarget:
        target = OneConnectionTarget(stream)
        targets.append(target)
        return target

    yield start
    for target in targets:
        target.stop()


# -- 1. pongs for a client that does not read ---------------------------------------------

#: Ping flood: bytes of 125-byte pings offered while the proxy cannot write to the client.
PING_FLOOD = 32 * MIB


def test_ping_flood_from_a_client_that_stops_reading(child_proxy, memory_target):
    # The downstream pump is stuck writing to a client that reads nothing, so
    # no pong can leave; RFC 6455 §5.5.3 lets the proxy answer only the most
    # recent ping, and a client it cannot write to must not be read from.
    target = memory_target(stream=True)
    proxy = child_proxy(target.address)
    idle = proxy.status()["VmRSS"]
    with open_session(proxy.port, protocols=["binary"]) as ws:
        wait_blocked_or_done(lambda: target.sent, lambda: False, what="the target")
        block = client_frame(0x89, b"p" * 125) * 8192  # ~1 MiB of pings
        ws.sock.settimeout(QUIET * 3)
        offered = 0
        try:
            while offered < PING_FLOOD:
                offered += ws.sock.send(block)
        except socket.timeout:
            pass  # the proxy stopped reading: what a bounded session does
        peak = settled_peak(proxy.pid)
        growth = peak - idle
        report("ping flood: %.1f MiB of pings accepted from a client that reads nothing; "
               "proxy peak RSS grew %.1f MiB" % (offered / MIB, growth / MIB))
        assert offered < PING_FLOOD, "the proxy read every ping from a client it cannot write to"
        assert growth < PLAIN_SESSION_BOUND, "RSS grew by %.1f MiB" % (growth / MIB)


# -- 2. messages that inflate to the limit, back to back ----------------------------------

#: Compressed messages sent at once, each inflating to just under the limit.
BOMBS = 600
BOMB_SIZE = MAX_MESSAGE - 1024


def test_deflate_bombs_back_to_back(child_proxy, memory_target):
    target = memory_target()
    proxy = child_proxy(target.address, "--compress")
    idle = proxy.status()["VmRSS"]
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    message = compressor.compress(b"\0" * BOMB_SIZE) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert message.endswith(b"\x00\x00\xff\xff")
    # RFC 7692 §7.2.1: the tail is removed; RSV1 (0x40) marks the message compressed.
    frame = client_frame(0x80 | 0x40 | 0x02, message[:-4])
    # With context takeover a repeated identical input compresses differently after
    # the first; a fresh compressor per message keeps every frame the same.
    with open_session(proxy.port, protocols=["binary"],
                      headers={"Sec-WebSocket-Extensions":
                               "permessage-deflate; client_no_context_takeover"}) as ws:
        assert "permessage-deflate" in (ws.response.header("Sec-WebSocket-Extensions") or "")
        started = time.monotonic()
        ws.send_raw(frame * BOMBS)
        wait_until(lambda: target.received >= BOMBS * BOMB_SIZE, 60.0,
                   lambda: "the target to get %d MiB (has %.1f)" % (BOMBS * BOMB_SIZE // MIB,
                                                                   target.received / MIB))
        elapsed = time.monotonic() - started
        peak = settled_peak(proxy.pid)
        growth = peak - idle
        report("deflate: %d messages of %d bytes inflating to %d KiB each (%.0f MiB) in %.1f s; "
               "proxy peak RSS grew %.1f MiB" % (BOMBS, len(frame), BOMB_SIZE // 1024,
                                                 BOMBS * BOMB_SIZE / MIB, elapsed, growth / MIB))
        assert target.received == BOMBS * BOMB_SIZE
        assert growth < COMPRESS_SESSION_BOUND, "RSS grew by %.1f MiB" % (growth / MIB)


# -- 3. a text message in 1-byte fragments ------------------------------------------------

TEXT_SIZE = MAX_MESSAGE - 1


def test_text_message_in_one_byte_fragments(child_proxy, memory_target):
    target = memory_target()
    proxy = child_proxy(target.address)
    idle = proxy.status()["VmRSS"]
    # TEXT without FIN, continuations, a final continuation: 7 wire bytes per payload byte.
    frames = (client_frame(0x01, b"a") + client_frame(0x00, b"a") * (TEXT_SIZE - 2)
              + client_frame(0x80, b"a"))
    with open_session(proxy.port, protocols=["binary"], timeout=60.0) as ws:
        cpu_before = cpu_seconds(proxy.pid)
        ws.send_raw(frames)
        wait_until(lambda: target.received >= TEXT_SIZE, 60.0,
                   lambda: "the target to get the message (has %d bytes)" % target.received)
        cpu = cpu_seconds(proxy.pid) - cpu_before
        peak = settled_peak(proxy.pid)
        growth = peak - idle
        report("1-byte fragments: a %d KiB text message as %d frames (%.1f MiB on the wire) "
               "cost %.2f s of proxy CPU; proxy peak RSS grew %.1f MiB"
               % (TEXT_SIZE // 1024, TEXT_SIZE, len(frames) / MIB, cpu, growth / MIB))
        assert target.received == TEXT_SIZE
        assert growth < PLAIN_SESSION_BOUND, "RSS grew by %.1f MiB" % (growth / MIB)
