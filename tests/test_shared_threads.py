"""Threads that serve many sessions never wait on one client (docs/security.md).

The heartbeat housekeeper and ``shutdown()`` act on every session; a client
that stopped reading (its socket buffer full) must not stall them, and once
``shutdown()`` began no connection still handshaking may become a session.
"""

import socket
import threading
import time

import pytest

import wsproxy.relay as relay_module
import wsproxy.server as server_module
from conftest import RunningProxy, wait_until
from wsclient import OP_CLOSE, OP_PING, WSClient, open_session, parse_close

from wsproxy import ProxyRequestHandler, ProxyServer, Settings
from wsproxy.server import UnixProxyServer

_DONTWAIT = socket.MSG_DONTWAIT


def session_of(server: ProxyServer, client: WSClient):
    """The server's handler for ``client``'s session."""
    def find():
        with server._sessions_lock:
            for handler in server._sessions:
                if handler.client_address[1] == client.local_port:
                    return handler
        return None
    return wait_until(find, 5, "the client's session to register")


def fill_send_buffer(sock: socket.socket) -> None:
    """Fill the proxy's socket towards a client that reads nothing, to the last byte.

    This is the state a slow reader reaches by chance when the last data
    frame went out just as its buffer filled: no write in progress (the
    relay's lock is free), yet not one more byte can be written.  Writing
    straight into the proxy's socket makes that state certain (over AF_UNIX,
    whose buffer, unlike TCP's, never frees room by itself).
    """
    size = 65536
    while size:
        try:
            sock.send(b"\0" * size, _DONTWAIT)
        except BlockingIOError:
            size //= 2  # a smaller write may still fit


class UnixRunningProxy:
    """A ProxyServer on a Unix socket, serving in a thread."""

    def __init__(self, server: UnixProxyServer) -> None:
        self.server = server
        self.clients = []
        self.thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True, name="proxy-serve-unix")
        self.thread.start()

    def connect(self) -> WSClient:
        """A client whose handshake passed."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.server.server_address)
        client = WSClient(0, host="localhost", sock=sock)
        self.clients.append(client)
        client.handshake(protocols=["binary"])
        return client

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def unix_proxy(tmp_path, echo_target, wsproxy_log):
    """Factory: ``unix_proxy(**settings_fields)`` starts a ProxyServer on a Unix socket."""
    running = []

    def start(**fields) -> UnixRunningProxy:
        settings = Settings(target_host="127.0.0.1", target_port=echo_target.port, **fields)
        proxy_run = UnixRunningProxy(UnixProxyServer(str(tmp_path / "proxy.sock"), settings))
        running.append(proxy_run)
        return proxy_run

    yield start
    for proxy_run in running:
        proxy_run.stop()


def stuck_session(running) -> WSClient:
    """A session whose client reads nothing and whose socket buffer is full."""
    client = running.connect()
    wait_until(lambda: running.server.open_sessions == 1, 5, "the session to register")
    with running.server._sessions_lock:
        handler = next(iter(running.server._sessions))
    fill_send_buffer(handler.stream.sock)
    return client


def recv_until_close(ws: WSClient, within: float):
    """Read frames until a close frame; return (pings seen, close code)."""
    deadline = time.monotonic() + within
    pings = 0
    while True:
        frame = ws.recv_frame(timeout=max(0.1, deadline - time.monotonic()))
        if frame.opcode == OP_PING:
            pings += 1
        elif frame.opcode == OP_CLOSE:
            ws.send_close(1000, tolerate_close=True)
            return pings, parse_close(frame.payload)[0]


# -- 5: the heartbeat housekeeper ----------------------------------------------------------


def test_a_client_with_a_full_buffer_does_not_stop_heartbeats_for_others(unix_proxy,
                                                                         wsproxy_log):
    running = unix_proxy(heartbeat=0.2, write_timeout=1.0)
    stuck_session(running)
    other = running.connect()
    pings, code = recv_until_close(other, 3)
    assert pings >= 2, "the other session got %d heartbeat pings" % pings
    assert code == 1011
    # The stuck client is closed for its missed pings too: the close frame
    # cannot be written, the write timeout ends it, both its pumps end.
    wait_until(lambda: running.server.open_sessions == 0, 5, "both sessions to end")
    assert len(wsproxy_log.find("no answer to 3 heartbeat pings")) == 2


def test_a_client_with_a_full_buffer_does_not_stop_idle_closes_for_others(unix_proxy,
                                                                         wsproxy_log):
    # The first heartbeat (0.2 s) comes before any idle close (0.3 s): the
    # stuck client is pinged first.
    running = unix_proxy(heartbeat=0.2, session_timeout=0.3, write_timeout=1.0)
    stuck_session(running)
    other = running.connect()
    assert recv_until_close(other, 3)[1] == 1000
    wait_until(lambda: running.server.open_sessions == 0, 5, "both sessions to end")
    assert len(wsproxy_log.find("idle timeout (0.3 s)")) == 2


# -- 6: shutdown closes every session at once ----------------------------------------------


def test_shutdown_with_20_clients_that_stopped_reading_takes_one_grace_period(proxy, make_target,
                                                                              monkeypatch):
    grace = 1.0
    monkeypatch.setattr(relay_module, "CLOSE_TIMEOUT", grace)
    monkeypatch.setattr(server_module, "SHUTDOWN_GRACE", grace)
    target = make_target(flood=True)
    running = proxy(target_port=target.port)
    clients = [running.session(protocols=["binary"]) for _ in range(20)]
    handlers = [session_of(running.server, client) for client in clients]
    # Every downstream pump is blocked writing to a client that reads nothing.
    wait_until(lambda: all(h.relay._client_lock.locked() for h in handlers), 10,
               "every session to block on its client")
    started = time.monotonic()
    running.server.shutdown()
    took = time.monotonic() - started
    assert running.server.open_sessions == 0
    assert took < grace + 1.5, "shutdown took %.1f s" % took


# -- 7: no session after shutdown() ------------------------------------------------------


def test_a_connection_handshaking_at_shutdown_gets_503_and_no_session(proxy, echo_target):
    running = proxy()
    early = running.client()
    wait_until(lambda: running.server._pending_handshakes == 1, 5, "the connection to be pending")
    running.server.shutdown()
    early.handshake(expect_status=503, timeout=5)
    early.expect_closed(timeout=5)
    wait_until(lambda: running.server._pending_handshakes == 0, 5, "the handshake to end")
    assert running.server.open_sessions == 0
    assert not echo_target.connections, "no target connection may be opened after shutdown"


class ShutdownMidHandshake(ProxyRequestHandler):
    """Runs ``shutdown()`` to its end while this connection chooses its target."""

    def select_target(self, request):
        stopper = threading.Thread(target=self.server.shutdown, name="test-shutdown")
        stopper.start()
        stopper.join(10)
        return super().select_target(request)


def test_a_session_whose_101_crossed_shutdown_is_closed_at_once(echo_target, wsproxy_log):
    settings = Settings(target_host="127.0.0.1", target_port=echo_target.port)
    server = ProxyServer(("127.0.0.1", 0), settings, handler_class=ShutdownMidHandshake)
    running = RunningProxy(server, settings)
    try:
        with open_session(running.port, protocols=["binary"], timeout=5) as ws:
            assert ws.recv_close(timeout=5)[0] == 1001
            ws.expect_closed(timeout=5)
        wait_until(lambda: server._pending_handshakes == 0, 5, "the handler to end")
        assert server.open_sessions == 0
        assert wsproxy_log.find("the server is shutting down")
    finally:
        running.stop()
