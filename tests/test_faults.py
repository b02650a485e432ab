"""Faults on either side of a session, each with a bystander session running alongside.

Every test routes with a token file: ``echo`` reaches the echo target, the
other tokens reach the faulty one, so the faulty session and a
:class:`Bystander` (a session doing echo round trips non-stop, answering
pings) share one proxy.  Each fault must end its session with the right
close code and log line, give back its threads and file descriptors, and
leave the bystander untouched: it keeps its round trips going throughout
and closes cleanly at the end.
"""

import os
import select
import socket
import ssl
import struct
import threading
import time
from typing import List, Optional

import pytest

from certs import pki
from conftest import free_port, wait_until
from wsclient import (OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, ConnectionClosed, WSClient,
                      open_session, parse_close)

#: Seconds everything a fault leaves behind has to disappear.
CLEANUP_DEADLINE = 10.0
#: Short timeouts for the reaping tests.
SESSION_TIMEOUT = 0.5
HEARTBEAT = 0.2
#: The proxy's wait for a close answer, shortened so a vanished client is reaped fast.
SHORT_CLOSE_TIMEOUT = 1.0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def session_threads() -> List[str]:
    """Threads serving proxy connections (handlers, pumps, closers, watchdogs)."""
    return [thread.name for thread in threading.enumerate()
            if "process_request" in thread.name
            or thread.name.startswith("wsproxy-") and thread.name != "wsproxy-housekeeper"]


def lines_about(log, client_port: int) -> List[str]:
    return log.find("127.0.0.1:%d:" % client_port)


class Bystander:
    """A session doing echo round trips in a thread until :meth:`finish`.

    Pings from the proxy (heartbeat) are answered; anything else unexpected
    is kept in :attr:`error` and raised by :meth:`finish`.
    """

    def __init__(self, port: int, path: str = "/?token=echo") -> None:
        self.ws = open_session(port, protocols=["binary"], path=path, timeout=10.0)
        self.round_trips = 0
        self.error = None  # type: Optional[BaseException]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bystander", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ws = self.ws
        size = 1
        try:
            while not self._stop.is_set():
                payload = os.urandom(size)
                size = size * 7 % 3001 + 1
                ws.send_binary(payload)
                echoed = b""
                while len(echoed) < len(payload):
                    message = ws.recv_message()
                    if message.opcode == OP_PING:
                        ws.send_pong(message.payload)
                    elif message.opcode == OP_BINARY:
                        echoed += message.payload
                    elif message.opcode != OP_PONG:
                        raise AssertionError("bystander got opcode %d (%r)"
                                             % (message.opcode, message.payload[:60]))
                assert echoed == payload, "bystander echo differs"
                self.round_trips += 1
                self._stop.wait(0.02)  # a steady trickle, not a flood
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def wait_round_trips(self, more: int = 3) -> None:
        """Wait until ``more`` further round trips completed (the session is alive)."""
        goal = self.round_trips + more
        wait_until(lambda: self.round_trips >= goal or self.error is not None, CLEANUP_DEADLINE,
                   lambda: "the bystander to go on (%d round trips)" % self.round_trips)
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        """Stop, check nothing went wrong, and close cleanly with 1000."""
        self._stop.set()
        self._thread.join(CLEANUP_DEADLINE)
        assert not self._thread.is_alive(), "the bystander is stuck"
        if self.error is not None:
            raise self.error
        assert self.round_trips > 0
        self.ws.send_close(1000)
        code, _ = self.ws.recv_close()
        assert code == 1000
        self.ws.expect_closed()
        self.ws.close()


class Baseline:
    """Threads and descriptors of this process with the bystander running, to return to."""

    def __init__(self) -> None:
        self.threads = session_threads()
        self.fds = open_fds()

    def wait_restored(self) -> None:
        wait_until(lambda: len(session_threads()) <= len(self.threads) and open_fds() <= self.fds,
                   CLEANUP_DEADLINE,
                   lambda: "session threads %s -> %s and fds %d -> %d to return"
                   % (self.threads, session_threads(), self.fds, open_fds()))


@pytest.fixture
def routed_proxy(proxy, echo_target, tmp_path):
    """Factory: ``routed_proxy(tokens, **settings)``: a proxy with ``echo`` plus ``tokens``.

    ``tokens`` maps token names to ``host:port``; the bystander uses ``echo``.
    """
    def start(tokens, **settings):
        path = tmp_path / "tokens"
        lines = ["echo: %s" % echo_target.address]
        lines += ["%s: %s" % pair for pair in sorted(tokens.items())]
        path.write_text("\n".join(lines) + "\n")
        return proxy(target_port=echo_target.port, token_source=str(path), **settings)
    return start


@pytest.fixture
def bystander():
    """Factory: ``bystander(port)``; :meth:`Bystander.finish` runs after the test."""
    started = []  # type: List[Bystander]

    def start(port: int) -> Bystander:
        byst = Bystander(port)
        started.append(byst)
        byst.wait_round_trips(1)
        return byst

    yield start
    for byst in started:
        byst.finish()


def reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP reset (SO_LINGER on, timeout 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# -- the target refuses -------------------------------------------------------------------


def test_target_refusing_is_502(routed_proxy, bystander, wsproxy_log):
    dead = "127.0.0.1:%d" % free_port()
    running = routed_proxy({"dead": dead})
    byst = bystander(running.port)
    baseline = Baseline()
    with WSClient(running.port) as ws:
        client_port = ws.local_port
        response = ws.handshake(protocols=["binary"], path="/?token=dead", expect_status=502)
        assert b"target unreachable" in response.body
        ws.expect_closed()
    line = wsproxy_log.wait_for(lambda text: "127.0.0.1:%d:" % client_port in text
                                and "cannot reach target" in text, what="the 502 log line")
    assert dead in line and "refused" in line.lower(), line
    baseline.wait_restored()
    byst.wait_round_trips()


# -- the target resets mid-stream ----------------------------------------------------------


class ResettingTarget:
    """Accepts one connection, answers ``reply`` to the first bytes, then resets it."""

    def __init__(self, reply: bytes = b"last words") -> None:
        self.reply = reply
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.received = b""
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resetting-target", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.listener.settimeout(CLEANUP_DEADLINE)
            sock, _ = self.listener.accept()
            sock.settimeout(CLEANUP_DEADLINE)
            self.received = sock.recv(65536)
            sock.sendall(self.reply)
            reset(sock)
        except OSError:
            pass
        finally:
            self.listener.close()
            self.done.set()

    def stop(self) -> None:
        self._thread.join(CLEANUP_DEADLINE)


def test_target_reset_mid_stream_is_1011(routed_proxy, bystander, wsproxy_log):
    target = ResettingTarget()
    try:
        running = routed_proxy({"reset": "127.0.0.1:%d" % target.port})
        byst = bystander(running.port)
        baseline = Baseline()
        with open_session(running.port, protocols=["binary"], path="/?token=reset") as ws:
            client_port = ws.local_port
            ws.send_binary(b"x" * 1000)
            assert target.done.wait(CLEANUP_DEADLINE), "the target never reset"
            # The reply may or may not beat the reset; then close 1011 or the end.
            try:
                code, reason = ws.recv_close()
            except ConnectionClosed:
                code = None
            else:
                assert code == 1011, "close %s %r after the target's reset" % (code, reason)
                ws.send_close(1011, tolerate_close=True)
                ws.expect_closed()
            data = b"".join(message.payload for message in ws.messages_before_close)
            assert target.reply.startswith(data)
        line = wsproxy_log.wait_for(lambda text: "127.0.0.1:%d: closed" % client_port in text,
                                    what="the session's closed line")
        assert "close 1011" in line and "target" in line, line
        assert target.received.startswith(b"x")
        baseline.wait_restored()
        byst.wait_round_trips()
    finally:
        target.stop()


# -- the client resets mid-stream ------------------------------------------------------------


def test_client_reset_mid_stream_ends_the_target_connection(routed_proxy, bystander,
                                                             echo_target, wsproxy_log):
    running = routed_proxy({})
    byst = bystander(running.port)
    baseline = Baseline()
    connections_before = len(echo_target.connections)
    ws = open_session(running.port, protocols=["binary"], path="/?token=echo")
    client_port = ws.local_port
    ws.send_binary(b"y" * 5000)
    assert ws.recv_stream(5000) == b"y" * 5000
    # Half a frame on its way, then the reset.
    ws.send_raw(b"\x82\xfe\x10\x00" + b"\x00\x00\x00\x00" + b"z" * 100)
    target_side = echo_target.wait_connection(connections_before)
    target_side.wait_received(5100)
    reset(ws.sock)
    target_side.wait_eof()
    line = wsproxy_log.wait_for(lambda text: "127.0.0.1:%d: closed" % client_port in text,
                                what="the session's closed line")
    assert "close 1006" in line, line
    assert "5100 bytes from client" in line, line
    baseline.wait_restored()
    byst.wait_round_trips()


# -- the client vanishes without a FIN --------------------------------------------------------


@pytest.mark.parametrize("reaper, code, words", [
    ({"session_timeout": SESSION_TIMEOUT}, 1000, "idle timeout"),
    ({"heartbeat": HEARTBEAT}, 1011, "heartbeat"),
], ids=["session-timeout", "heartbeat"])
def test_vanished_client_is_reaped(routed_proxy, bystander, echo_target, wsproxy_log,
                                   monkeypatch, reaper, code, words):
    # Only the wait for the close answer is shortened; the reaping is real.
    import wsproxy.relay
    monkeypatch.setattr(wsproxy.relay, "CLOSE_TIMEOUT", SHORT_CLOSE_TIMEOUT)
    running = routed_proxy({}, **reaper)
    byst = bystander(running.port)
    baseline = Baseline()
    connections_before = len(echo_target.connections)
    ws = open_session(running.port, protocols=["binary"], path="/?token=echo")
    try:
        client_port = ws.local_port
        ws.send_binary(b"still here")
        message = ws.recv_message()
        while message.opcode == OP_PING:  # a heartbeat may come first
            message = ws.recv_message()
        assert message.payload == b"still here"
        # From now on the client neither reads nor sends, and never closes.
        started = time.monotonic()
        line = wsproxy_log.wait_for(lambda text: "127.0.0.1:%d: closed" % client_port in text,
                                    timeout=CLEANUP_DEADLINE, what="the session to be reaped")
        reaped_after = time.monotonic() - started
        assert "close %d" % code in line and words in line, line
        echo_target.wait_connection(connections_before).wait_eof()
        # What the vanished client would have read: maybe pings, the close, then the end.
        received_code = None
        while True:
            try:
                message = ws.recv_message(timeout=CLEANUP_DEADLINE)
            except ConnectionClosed:
                break
            if message.opcode == OP_CLOSE:
                received_code = parse_close(message.payload)[0]
                ws.expect_closed()
                break
            assert message.opcode == OP_PING, "unexpected opcode %d" % message.opcode
        assert received_code == code, "the close sent to the client carried %s" % received_code
    finally:
        ws.close()
    print("vanished client reaped by %s after %.2f s" % (words, reaped_after))
    baseline.wait_restored()
    byst.wait_round_trips()


# -- a TLS client aborts its handshake ---------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    return pki(tmp_path_factory)


def client_hello() -> bytes:
    """The bytes of a real ClientHello, made in memory."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def read_some(sock: socket.socket, timeout: float = 5.0) -> bytes:
    readable, _, _ = select.select([sock], [], [], timeout)
    return sock.recv(65536) if readable else b""


@pytest.mark.parametrize("abort", ["half hello then FIN", "half hello then reset",
                                   "hello, server flight, then reset"])
def test_tls_client_aborting_its_handshake(routed_proxy, bystander, tls_files, wsproxy_log,
                                           abort):
    running = routed_proxy({}, cert=tls_files.cert, key=tls_files.key)
    byst = bystander(running.port)  # plain ws:// on the same port
    baseline = Baseline()
    hello = client_hello()
    sock = socket.create_connection(("127.0.0.1", running.port), timeout=5)
    client_port = sock.getsockname()[1]
    if abort == "hello, server flight, then reset":
        sock.sendall(hello)
        flight = read_some(sock)
        assert flight[:1] == b"\x16", "expected the server's TLS records, got %r" % flight[:20]
        reset(sock)
    else:
        sock.sendall(hello[:len(hello) // 2])
        if abort.endswith("FIN"):
            sock.shutdown(socket.SHUT_WR)
            assert read_some(sock) == b"", "the proxy answered half a hello"
            sock.close()
        else:
            reset(sock)
    line = wsproxy_log.wait_for(lambda text: "127.0.0.1:%d:" % client_port in text,
                                what="the TLS failure's log line")
    assert "TLS handshake" in line, line
    assert len(lines_about(wsproxy_log, client_port)) == 1, lines_about(wsproxy_log, client_port)
    baseline.wait_restored()
    byst.wait_round_trips()
