"""Load: a thousand sessions at once, slowloris clients, a client that stops reading.

The thousand sessions and the slow reader run the proxy as a child process
(``python3 -m wsproxy -f``) so its memory can be read from
``/proc/PID/status`` (VmRSS now, VmHWM the peak) and its file descriptors
do not count against this process.  The client side of the load test is
one thread driving every socket through a selector, and the echo target is
another, so the test process stays small whatever the session count.

The figures measured (peak RSS, durations) are printed; run with ``-s`` to
see them.
"""

import base64
import os
import random
import resource
import select
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional

import pytest

from conftest import EXIT_DEADLINE, ROOT, child_env, echo_round_trip, free_port, wait_until
from test_noloss import MIB, DuplexTarget, Receiver, Stream, wait_blocked_or_done
from wsclient import OP_BINARY, OP_CLOSE, WSClient, accept_for, build_request, encode_frame, \
    open_session

#: Concurrent sessions in the load test.
SESSIONS = 1000
#: Echo round trips per session.
ROUND_TRIPS = 3
#: Seconds the whole load run may take before it counts as stuck.
LOAD_DEADLINE = 120.0
#: A generous bound on the proxy's peak RSS with :data:`SESSIONS` sessions.
LOAD_RSS_LIMIT = 400 * MIB
#: Slowloris: silent connections and connections sending a byte a second.
SILENT = 50
TRICKLING = 50
#: How long a real client's handshake may take behind them.
HANDSHAKE_LIMIT = 1.0
#: Slow reader: what the target streams, and how much the proxy may grow meanwhile.
SLOW_READER_BYTES = 200 * MIB
SLOW_READER_GROWTH = 64 * MIB


def report(text: str) -> None:
    """A measured figure: printed (``pytest -s`` shows it)."""
    print("\n[load] " + text)


# -- the proxy as a child process ------------------------------------------------------


def proc_status(pid: int) -> Dict[str, int]:
    """The ``kB`` fields of ``/proc/PID/status`` (VmRSS, VmHWM, Threads...), in bytes or units."""
    fields = {}
    with open("/proc/%d/status" % pid) as status:
        for line in status:
            name, _, value = line.partition(":")
            parts = value.split()
            if parts and parts[0].isdigit():
                fields[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return fields


class ChildProxy:
    """``python3 -m wsproxy -f 127.0.0.1:PORT TARGET [options]``, output in a file."""

    def __init__(self, target: str, *options: str, directory: str) -> None:
        self.port = free_port()
        self.log_path = os.path.join(directory, "wsproxy.log")
        args = [sys.executable, "-m", "wsproxy", "-f", "127.0.0.1:%d" % self.port, target]
        args += list(options)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(args, cwd=ROOT, env=child_env(),
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        wait_until(self._listening, EXIT_DEADLINE, lambda: "wsproxy to listen: %s" % self.log())

    def _listening(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail("wsproxy exited with %s: %s" % (self.process.returncode, self.log()))
        return "listening on" in self.log()

    @property
    def pid(self) -> int:
        return self.process.pid

    def status(self) -> Dict[str, int]:
        return proc_status(self.pid)

    def log(self) -> str:
        with open(self.log_path, "rb") as log:
            return log.read().decode("utf-8", "replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(EXIT_DEADLINE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(EXIT_DEADLINE)
                pytest.fail("wsproxy did not stop on SIGTERM")
        assert "Traceback" not in self.log(), "the proxy logged a traceback:\n" + self.log()[-5000:]


@pytest.fixture
def child_proxy(tmp_path):
    """Factory: ``child_proxy(target, *options)``; every child is stopped after the test."""
    children = []  # type: List[ChildProxy]

    def start(target: str, *options: str) -> ChildProxy:
        directory = str(tmp_path / ("proxy%d" % len(children)))
        os.mkdir(directory)
        child = ChildProxy(target, *options, directory=directory)
        children.append(child)
        return child

    yield start
    for child in children:
        child.stop()


def ensure_open_files(needed: int) -> None:
    """Raise this process's RLIMIT_NOFILE to ``needed``, or skip saying why."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip("needs %d open files, the hard limit is %d" % (needed, hard))
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    except (ValueError, OSError) as exc:
        pytest.skip("cannot raise the open-file limit to %d: %s" % (needed, exc))


def ensure_threads(needed: int) -> None:
    """Skip, saying why, when the proxy could not start ``needed`` threads."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    if os.geteuid() != 0 and soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip("needs %d threads, RLIMIT_NPROC allows %d" % (needed, hard))
        resource.setrlimit(resource.RLIMIT_NPROC, (needed, hard))
    for path in ("/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max"):
        try:
            with open(path) as limit:
                text = limit.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < needed:
            pytest.skip("needs %d threads, the cgroup allows %s (%s)" % (needed, text, path))


# -- a selector-driven echo target -------------------------------------------------------


class SelectorEcho:
    """An echo target serving any number of connections from one thread.

    ``open`` is the number of connections open now, ``peak`` the most at once.
    """

    def __init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4096)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.open = 0
        self.peak = 0
        self.accepted = 0
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ, None)
        self._pending = {}  # type: Dict[socket.socket, bytearray]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="selector-echo", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        selector = self._selector
        while not self._stop.is_set():
            for key, events in selector.select(0.1):
                if key.data is None:
                    self._accept()
                else:
                    self._serve(key.fileobj, events)
        for key in list(selector.get_map().values()):
            key.fileobj.close()
        selector.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            self._pending[sock] = bytearray()
            self._selector.register(sock, selectors.EVENT_READ, "conn")
            self.accepted += 1
            self.open += 1
            self.peak = max(self.peak, self.open)

    def _serve(self, sock: socket.socket, events: int) -> None:
        pending = self._pending[sock]
        try:
            if events & selectors.EVENT_READ:
                data = sock.recv(65536)
                if not data:
                    self._drop(sock)
                    return
                pending += data
            if pending:
                sent = sock.send(pending)
                del pending[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._drop(sock)
            return
        wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if pending else 0)
        if self._selector.get_key(sock).events != wanted:
            self._selector.modify(sock, wanted, "conn")

    def _drop(self, sock: socket.socket) -> None:
        self._selector.unregister(sock)
        del self._pending[sock]
        sock.close()
        self.open -= 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10.0)


# -- the load client ---------------------------------------------------------------------


class LoadSession:
    """One client session as a state machine driven by :func:`run_load`.

    Phases: ``connect`` → ``handshake`` → ``ready`` (waits for every other
    session) → ``echo`` (one round trip per payload) → ``closing`` → ``eof``
    → ``done``.  Any surprise sets :attr:`error` and ends the session.
    """

    def __init__(self, index: int, port: int) -> None:
        rng = random.Random(index)
        self.index = index
        self.payloads = [rng.randbytes(rng.choice([1, 2, 125, 126, 1000, rng.randint(1, 9000)]))
                         for _ in range(ROUND_TRIPS)]
        self.key = base64.b64encode(rng.randbytes(16)).decode("ascii")
        self.request = build_request(host="127.0.0.1:%d" % port, key=self.key,
                                     protocols=["binary"])[0]
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.sock.connect_ex(("127.0.0.1", port))
        self.phase = "connect"
        self.out = bytearray()
        self.inbuf = bytearray()
        self.round = 0
        self.echoed = bytearray()
        self.error = None  # type: Optional[str]
        self.started = time.monotonic()
        self.handshake_time = 0.0

    @property
    def finished(self) -> bool:
        return self.phase == "done" or self.error is not None

    def fail(self, message: str) -> None:
        if self.error is None:
            self.error = "session %d in phase %s: %s" % (self.index, self.phase, message)

    def writable(self) -> None:
        if self.phase == "connect":
            error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                self.fail("connect failed: %s" % os.strerror(error))
                return
            self.phase = "handshake"
            self.out += self.request
        if self.out:
            sent = self.sock.send(self.out)
            del self.out[:sent]

    def readable(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            if self.phase == "eof":
                self.phase = "done"
            else:
                self.fail("the proxy closed the connection")
            return
        if self.phase == "eof":
            self.fail("bytes after the close frame: %r" % data[:40])
            return
        self.inbuf += data
        if self.phase == "handshake":
            self._read_handshake()
        elif self.phase in ("echo", "closing"):
            self._read_frames()
        else:
            self.fail("unexpected bytes %r" % data[:40])

    def _read_handshake(self) -> None:
        end = self.inbuf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.inbuf[:end]).decode("latin-1")
        del self.inbuf[:end + 4]
        lines = head.split("\r\n")
        if not lines[0].startswith("HTTP/1.1 101 "):
            self.fail("answered %r" % lines[0])
            return
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        if headers.get("Sec-WebSocket-Accept") != accept_for(self.key):
            self.fail("wrong accept value in %r" % head)
            return
        if self.inbuf:
            self.fail("bytes after the 101: %r" % bytes(self.inbuf[:40]))
            return
        self.handshake_time = time.monotonic() - self.started
        self.phase = "ready"

    def start_round(self) -> None:
        """Send the next payload (or the close after the last one)."""
        if self.round < len(self.payloads):
            self.phase = "echo"
            self.echoed = bytearray()
            self.out += encode_frame(OP_BINARY, self.payloads[self.round])
        else:
            self.phase = "closing"
            self.out += encode_frame(OP_CLOSE, struct.pack("!H", 1000))

    def _read_frames(self) -> None:
        buffer = self.inbuf
        while len(buffer) >= 2:
            first, second = buffer[0], buffer[1]
            length, offset = second & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length, offset = struct.unpack_from("!H", buffer, 2)[0], 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length, offset = struct.unpack_from("!Q", buffer, 2)[0], 10
            if len(buffer) < offset + length:
                return
            payload = bytes(buffer[offset:offset + length])
            del buffer[:offset + length]
            if second & 0x80 or first & 0x70 or not first & 0x80:
                self.fail("illegal server frame header %#04x %#04x" % (first, second))
                return
            opcode = first & 0x0F
            if self.phase == "echo" and opcode == OP_BINARY:
                self.echoed += payload
                expected = self.payloads[self.round]
                if len(self.echoed) > len(expected) or not expected.startswith(bytes(self.echoed)):
                    self.fail("echo differs from what was sent (round %d)" % self.round)
                    return
                if len(self.echoed) == len(expected):
                    self.round += 1
                    self.start_round()
            elif self.phase == "closing" and opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                if code != 1000:
                    self.fail("close answered with %s" % code)
                    return
                self.phase = "eof"
            else:
                self.fail("unexpected frame opcode %d" % opcode)
                return


def run_load(port: int, count: int, deadline: float) -> List[LoadSession]:
    """Drive ``count`` sessions to the proxy on ``port`` from this thread.

    Every session first completes its handshake; once all have (so all are
    open at the same time), each does its round trips and closes.
    """
    selector = selectors.DefaultSelector()
    sessions = [LoadSession(index, port) for index in range(count)]
    for session in sessions:
        selector.register(session.sock, selectors.EVENT_WRITE, session)
    live = len(sessions)
    rounds_started = False
    try:
        while live:
            if time.monotonic() > deadline:
                stuck = [s for s in sessions if not s.finished]
                phases = {}  # type: Dict[str, int]
                for session in stuck:
                    phases[session.phase] = phases.get(session.phase, 0) + 1
                pytest.fail("%d sessions stuck after the deadline, by phase: %s"
                            % (len(stuck), phases))
            if not rounds_started and all(s.phase == "ready" or s.finished for s in sessions):
                rounds_started = True
                for session in sessions:
                    if not session.finished:
                        session.start_round()
                        selector.modify(session.sock, selectors.EVENT_READ | selectors.EVENT_WRITE,
                                        session)
            for key, events in selector.select(0.5):
                session = key.data
                try:
                    if events & selectors.EVENT_WRITE:
                        session.writable()
                    if events & selectors.EVENT_READ and not session.finished:
                        session.readable()
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as exc:
                    session.fail("socket error: %s" % exc)
                if session.finished:
                    selector.unregister(session.sock)
                    session.sock.close()
                    live -= 1
                    continue
                wanted = (selectors.EVENT_READ if session.phase != "connect" else 0) | \
                    (selectors.EVENT_WRITE if session.out or session.phase == "connect" else 0)
                if key.events != wanted:
                    selector.modify(session.sock, wanted, session)
    finally:
        for session in sessions:
            session.sock.close()
        selector.close()
    return sessions


def test_a_thousand_concurrent_sessions(child_proxy):
    # Client sockets and target sockets both live in this process (and the
    # child inherits the limit); the proxy runs two threads per session.
    ensure_open_files(2 * SESSIONS + 256)
    ensure_threads(2 * SESSIONS + 256)
    target = SelectorEcho()
    try:
        proxy = child_proxy("127.0.0.1:%d" % target.port)
        idle = proxy.status()
        started = time.monotonic()
        sessions = run_load(proxy.port, SESSIONS, started + LOAD_DEADLINE)
        elapsed = time.monotonic() - started
        status = proxy.status()
        errors = [session.error for session in sessions if session.error]
        assert not errors, "%d of %d sessions failed; the first: %s" % (
            len(errors), SESSIONS, "\n".join(errors[:10]))
        assert all(session.phase == "done" for session in sessions)
        assert target.peak == SESSIONS, "only %d target connections were open at once" % target.peak
        handshakes = sorted(session.handshake_time for session in sessions)
        report("%d concurrent sessions x %d round trips: 0 errors in %.1f s; handshakes: "
               "median %.2f s, slowest %.2f s" % (SESSIONS, ROUND_TRIPS, elapsed,
                                                  handshakes[len(handshakes) // 2], handshakes[-1]))
        report("proxy RSS: idle %.1f MiB, peak (VmHWM) with %d sessions %.1f MiB, after %.1f MiB; "
               "%d threads after" % (idle["VmRSS"] / MIB, SESSIONS, status["VmHWM"] / MIB,
                                     status["VmRSS"] / MIB, status.get("Threads", 0)))
        assert status["VmHWM"] < LOAD_RSS_LIMIT, "peak RSS %.1f MiB" % (status["VmHWM"] / MIB)
        # Every session ended in the proxy's log too, closed by the client with 1000.
        wait_until(lambda: proxy.log().count("close 1000 (client closed)") >= SESSIONS, 30.0,
                   lambda: "%d 'closed' lines with 1000 in the proxy's log (has %d)"
                   % (SESSIONS, proxy.log().count("close 1000 (client closed)")))
        wait_until(lambda: target.open == 0, 30.0,
                   lambda: "the proxy to close its %d target connections" % target.open)
        echo_round_trip(proxy.port)
    finally:
        target.stop()


# -- slowloris ----------------------------------------------------------------------------


class Trickler:
    """Sends one byte a second on each socket (staggered) from a thread until stopped."""

    def __init__(self, sockets: List[socket.socket], data: List[bytes]) -> None:
        self.sockets = sockets
        self.data = data
        self.sent = [0] * len(sockets)
        self.errors = []  # type: List[str]
        self._stop = threading.Event()
        start = time.monotonic()
        self._due = [start + index / len(sockets) for index in range(len(sockets))]
        self._thread = threading.Thread(target=self._run, name="trickler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for index, sock in enumerate(self.sockets):
                if self._due[index] <= now and self.sent[index] < len(self.data[index]):
                    position = self.sent[index]
                    try:
                        sock.send(self.data[index][position:position + 1])
                    except OSError as exc:
                        self.errors.append("connection %d: %s" % (index, exc))
                        self.sent[index] = len(self.data[index])
                        continue
                    self.sent[index] += 1
                    self._due[index] += 1.0
            # Pacing, not synchronisation: the next byte is due at a fixed time.
            self._stop.wait(max(0.0, min(self._due) - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)


def still_open(sock: socket.socket) -> bool:
    """True when the peer has neither closed nor sent anything on ``sock``."""
    readable, _, _ = select.select([sock], [], [], 0)
    return not readable


def test_slowloris_connections_do_not_delay_a_real_handshake(proxy, wsproxy_log):
    running = proxy()
    threads_before = threading.active_count()
    slow = []  # type: List[socket.socket]
    trickler = None
    try:
        for _ in range(SILENT):
            slow.append(socket.create_connection(("127.0.0.1", running.port), timeout=5))
        trickling = [socket.create_connection(("127.0.0.1", running.port), timeout=5)
                     for _ in range(TRICKLING)]
        slow += trickling
        requests = [build_request(host="127.0.0.1:%d" % running.port)[0] for _ in trickling]
        trickler = Trickler(trickling, requests)
        # The proxy has a thread waiting on each of them.
        # (plus the trickler's own thread)
        wait_until(lambda: threading.active_count() - threads_before > SILENT + TRICKLING, 10.0,
                   lambda: "the proxy to take all %d slow connections (%d threads)"
                   % (SILENT + TRICKLING, threading.active_count() - threads_before))
        times = []
        pause = threading.Event()
        for _ in range(8):
            started = time.monotonic()
            with WSClient(running.port, timeout=5) as ws:
                ws.handshake(protocols=["binary"])
                times.append(time.monotonic() - started)
                ws.send_binary(b"served")
                assert ws.recv_stream(6) == b"served"
                ws.send_close(1000)
                assert ws.recv_close()[0] == 1000
            pause.wait(0.3)  # spread the real clients over a few trickled bytes
        report("handshakes behind %d silent and %d trickling connections: slowest %.3f s, "
               "median %.3f s" % (SILENT, TRICKLING, max(times), sorted(times)[len(times) // 2]))
        assert max(times) < HANDSHAKE_LIMIT, "a handshake took %.2f s" % max(times)
        assert min(trickler.sent) >= 2, "the slow clients did not trickle: %s" % trickler.sent
        assert not trickler.errors, trickler.errors[:5]
        closed = [index for index, sock in enumerate(slow) if not still_open(sock)]
        assert not closed, "the proxy dropped slow connections early: %s" % closed
    finally:
        if trickler is not None:
            trickler.stop()
        for sock in slow:
            sock.close()


# -- a client that stops reading ---------------------------------------------------------


def test_slow_reader_pushes_back_to_the_target(child_proxy):
    stream = Stream(SLOW_READER_BYTES, seed=200)
    target = DuplexTarget(stream, close_after_send=True)
    try:
        proxy = child_proxy("127.0.0.1:%d" % target.port)
        idle_rss = proxy.status()["VmRSS"]
        with open_session(proxy.port, protocols=["binary"], timeout=60.0) as ws:
            receiver = Receiver(ws, start=False)
            started = time.monotonic()
            wait_blocked_or_done(lambda: target.sent, target.sent_all.is_set, timeout=30.0,
                                 what="the target")
            stalled = proxy.status()
            in_flight = target.sent
            assert not target.sent_all.is_set(), \
                "the target sent all %d MiB to a client that reads nothing" % (stream.total // MIB)
            growth = stalled["VmRSS"] - idle_rss
            report("slow reader: target blocked after %.1f MiB; proxy RSS %.1f MiB idle, "
                   "%.1f MiB while blocked (growth %.1f MiB)" % (in_flight / MIB,
                                                                 idle_rss / MIB,
                                                                 stalled["VmRSS"] / MIB,
                                                                 growth / MIB))
            assert growth < SLOW_READER_GROWTH, "RSS grew by %.1f MiB" % (growth / MIB)
            receiver.reading.set()
            receiver.worker.join()
            elapsed = time.monotonic() - started
            final = proxy.status()
            assert receiver.count == stream.total, "got %d of %d bytes" % (receiver.count,
                                                                          stream.total)
            assert receiver.sha256 == stream.sha256
            assert receiver.frames.close is not None and receiver.frames.close[0] == 1000, \
                "expected close 1000 after the stream, got %r" % (receiver.frames.close,)
            ws.send_close(1000, tolerate_close=True)
            report("slow reader: all %d MiB then close 1000 in %.1f s; proxy peak RSS (VmHWM) "
                   "%.1f MiB" % (stream.total // MIB, elapsed, final["VmHWM"] / MIB))
            assert final["VmHWM"] - idle_rss < SLOW_READER_GROWTH, \
                "peak RSS grew by %.1f MiB" % ((final["VmHWM"] - idle_rss) / MIB)
        target.join()
    finally:
        target.stop()
