"""Timeouts through real sockets: idle sessions, heartbeats, slow handshakes.

Short timeouts (fractions of a second) keep this file fast.  Where a test
has to show that nothing happens for a while, it waits on the socket itself
(``select`` with a timeout) so anything that does arrive is seen at once.
"""

import select
import socket
import threading
import time

from conftest import wait_until
from wsclient import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, WSClient, parse_close

IDLE = 0.5
BEAT = 0.3


def echo_once(ws, payload=b"\x07tick"):
    ws.send_binary(payload)
    assert ws.recv_stream(len(payload), opcode=OP_BINARY) == payload


def close_cleanly(ws):
    ws.send_close(1000)
    assert ws.recv_close()[0] == 1000
    ws.expect_closed()


def nothing_arrives(ws, seconds: float) -> bool:
    """True when no byte arrives on ``ws`` for ``seconds`` (and none is buffered)."""
    if ws._buffer:
        return False
    readable, _, _ = select.select([ws.sock], [], [], seconds)
    return not readable


def session_threads():
    """Threads that belong to proxy sessions (handler, pumps, closers)."""
    return [thread.name for thread in threading.enumerate()
            if "process_request" in thread.name or thread.name.startswith("wsproxy-")
            and thread.name != "wsproxy-housekeeper"]


# -- --session-timeout --------------------------------------------------------------


def test_idle_session_is_closed_with_1000_and_a_reason(proxy, wsproxy_log):
    running = proxy(session_timeout=IDLE)
    with running.session(protocols=["binary"]) as ws:
        echo_once(ws)
        started = time.monotonic()
        code, reason = ws.recv_close(timeout=5.0)
        waited = time.monotonic() - started
        assert code == 1000
        assert reason, "the close frame should say why"
        assert IDLE * 0.8 <= waited <= IDLE + 2.0, "closed after %.2fs" % waited
        ws.send_close(1000)
        ws.expect_closed()
    wsproxy_log.wait_for(lambda text: "closed" in text and "1000" in text,
                         what="the close line for the idle session")


def test_active_session_is_kept(proxy):
    running = proxy(session_timeout=IDLE)
    with running.session(protocols=["binary"]) as ws:
        deadline = time.monotonic() + IDLE * 2.5
        while time.monotonic() < deadline:
            echo_once(ws)
            # Pacing (the scenario itself): traffic every IDLE / 4 seconds.
            assert nothing_arrives(ws, IDLE / 4), "the proxy sent something unasked"
        echo_once(ws)
        close_cleanly(ws)


def test_session_timeout_is_off_by_default(proxy):
    running = proxy()
    with running.session(protocols=["binary"]) as ws:
        assert nothing_arrives(ws, 0.7)
        echo_once(ws)
        close_cleanly(ws)


# -- --heartbeat ----------------------------------------------------------------------


def test_heartbeat_pings_the_client(proxy):
    running = proxy(heartbeat=BEAT)
    with running.session(protocols=["binary"]) as ws:
        started = time.monotonic()
        frame = ws.recv_frame(timeout=BEAT * 5)
        assert frame.opcode == OP_PING
        assert time.monotonic() - started >= BEAT * 0.5
        ws.send_pong(frame.payload)
        echo_once(ws)
        close_cleanly(ws)


def test_client_answering_pongs_is_kept(proxy):
    running = proxy(heartbeat=BEAT)
    with running.session(protocols=["binary"]) as ws:
        pings = 0
        deadline = time.monotonic() + BEAT * 5
        while time.monotonic() < deadline:
            try:
                frame = ws.recv_frame(timeout=max(0.05, deadline - time.monotonic()))
            except Exception as exc:  # a timeout at the very end is fine
                if time.monotonic() >= deadline - 0.01 and "timed out" in str(exc):
                    break
                raise
            assert frame.opcode != OP_CLOSE, "closed although every ping was answered: %r" % (
                parse_close(frame.payload),)
            assert frame.opcode == OP_PING, "unexpected frame %r" % frame
            pings += 1
            ws.send_pong(frame.payload)
        assert pings >= 3, "only %d pings in %.1fs" % (pings, BEAT * 5)
        echo_once(ws)
        close_cleanly(ws)


def test_client_that_never_answers_is_closed_with_1011_and_freed(proxy, wsproxy_log):
    running = proxy(heartbeat=BEAT)
    before = session_threads()
    ws = running.session(protocols=["binary"])
    client_port = ws.local_port
    # From here on the client neither reads nor writes.
    line = wsproxy_log.wait_for(
        lambda text: "closed" in text and str(client_port) in text, timeout=10.0,
        what="the session to be closed for not answering pings")
    assert "1011" in line, line
    wait_until(lambda: running.server.open_sessions == 0, timeout=10.0,
               message="the session to leave the server's registry")
    deadline = time.monotonic() + 10.0
    while len(session_threads()) > len(before) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(session_threads()) <= len(before), "session threads still running: %s" % (
        session_threads(),)
    # What the client would have read: pings, then close 1011 with a reason.
    frames = []
    while True:
        frame = ws.recv_frame(timeout=2.0)
        frames.append(frame.opcode)
        if frame.opcode == OP_CLOSE:
            code, reason = parse_close(frame.payload)
            break
    assert code == 1011 and reason
    assert OP_PING in frames
    ws.expect_closed(timeout=2.0)
    ws.close()


def test_heartbeat_is_off_by_default(proxy):
    running = proxy()
    with running.session(protocols=["binary"]) as ws:
        assert nothing_arrives(ws, 0.7), "a frame arrived without --heartbeat"
        close_cleanly(ws)


def test_unsolicited_pongs_do_not_confuse_the_heartbeat(proxy):
    running = proxy(heartbeat=BEAT)
    with running.session(protocols=["binary"]) as ws:
        ws.send_pong(b"unasked")
        frame = ws.recv_frame(timeout=BEAT * 5)
        while frame.opcode == OP_PONG:
            frame = ws.recv_frame(timeout=BEAT * 5)
        assert frame.opcode == OP_PING
        ws.send_pong(frame.payload)
        echo_once(ws)
        close_cleanly(ws)


# -- --handshake-timeout ---------------------------------------------------------------


def closed_after(sock: socket.socket, limit: float) -> float:
    """Seconds until the peer closes ``sock`` (reading and dropping data); fail after ``limit``."""
    started = time.monotonic()
    deadline = started + limit
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "the connection was still open after %.1fs" % limit
        readable, _, _ = select.select([sock], [], [], left)
        if readable:
            try:
                if not sock.recv(4096):
                    return time.monotonic() - started
            except ConnectionError:
                return time.monotonic() - started


def test_silent_connection_is_closed(proxy, wsproxy_log):
    running = proxy(handshake_timeout=IDLE)
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        waited = closed_after(sock, 5.0)
    assert IDLE * 0.8 <= waited <= IDLE + 2.0, "closed after %.2fs" % waited
    wsproxy_log.wait_for(lambda text: "timeout" in text or "timed out" in text,
                         what="a log line about the handshake timeout")


def test_half_sent_request_is_closed(proxy, echo_target):
    running = proxy(handshake_timeout=IDLE)
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
        waited = closed_after(sock, 5.0)
    assert IDLE * 0.8 <= waited <= IDLE + 2.0, "closed after %.2fs" % waited
    assert not echo_target.connections


def test_trickled_request_is_closed_at_the_deadline(proxy):
    # One byte every 0.05 s keeps each read short; only an overall deadline stops it.
    running = proxy(handshake_timeout=IDLE)
    trickle = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        started = time.monotonic()
        closed = None
        for byte in trickle:
            readable, _, _ = select.select([sock], [], [], 0.05)  # pacing, and a close check
            if readable:
                try:
                    if not sock.recv(4096):
                        closed = time.monotonic() - started
                        break
                except ConnectionError:
                    closed = time.monotonic() - started
                    break
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = time.monotonic() - started
                break
        assert closed is not None, "a trickled request kept the connection open for %.1fs" % (
            time.monotonic() - started)
        assert closed <= IDLE + 2.0, "closed only after %.2fs" % closed


def test_handshake_timeout_does_not_limit_the_session(proxy):
    running = proxy(handshake_timeout=IDLE)
    with running.session(protocols=["binary"]) as ws:
        assert nothing_arrives(ws, IDLE * 2), "the session was disturbed after the handshake"
        echo_once(ws)
        close_cleanly(ws)


def test_handshake_timeout_leaves_other_clients_alone(proxy):
    running = proxy(handshake_timeout=IDLE * 4)
    with socket.create_connection(("127.0.0.1", running.port), timeout=10):
        # A silent connection is pending; a real client is served at once.
        started = time.monotonic()
        with WSClient(running.port) as ws:
            ws.handshake(protocols=["binary"])
            echo_once(ws)
            close_cleanly(ws)
        assert time.monotonic() - started < IDLE * 2


def test_idle_close_frees_the_session_threads_once_the_client_answers(proxy):
    running = proxy(session_timeout=IDLE)
    baseline = set(threading.enumerate())
    with running.session(protocols=["binary"]) as ws:
        echo_once(ws)
        assert ws.recv_close(timeout=5.0)[0] == 1000
        ws.send_close(1000)
        ws.expect_closed()
    wait_until(lambda: running.server.open_sessions == 0, message="the session to end")

    def lingering():
        return [thread.name for thread in threading.enumerate()
                if thread not in baseline and thread.name != "wsproxy-housekeeper"]

    # The close handshake is complete: nothing of this session (handler,
    # pumps, close helpers, watchdogs) should wait out the close timeout.
    deadline = time.monotonic() + 2.0
    while lingering() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not lingering(), "2 s after a complete close handshake these threads still run: %s" % (
        lingering(),)
