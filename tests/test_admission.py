"""Per-address fairness: pending handshakes shared between addresses, ``--max-connections-per-ip``.

Loopback has a whole /8: a socket bound to 127.0.0.2 is another client
address than 127.0.0.1, on real sockets.
"""

import socket
import threading
import time

import pytest

import wsproxy.server as server_module
from conftest import wait_until
from wsclient import WSClient, build_request, open_session

OTHER = "127.0.0.2"


def connect_from(source: str, port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def echo_once(port: int) -> None:
    with open_session(port, protocols=["binary"], timeout=5) as ws:
        ws.send_binary(b"fair")
        assert ws.recv_stream(4) == b"fair"
        ws.send_close(1000)
        ws.recv_close()


@pytest.fixture
def small_bounds(monkeypatch):
    """Six pending handshakes in all, three per address, stalled after 0.2 s."""
    monkeypatch.setattr(server_module, "MAX_PENDING_HANDSHAKES", 6)
    monkeypatch.setattr(server_module, "MAX_PENDING_PER_ADDRESS", 3)
    monkeypatch.setattr(server_module, "STALL_GRACE", 0.2)


def pending_older_than(server, seconds: float) -> bool:
    now = time.monotonic()
    return all(now - record.started >= seconds for record in server._pending._records.values())


def test_silent_sockets_of_one_address_do_not_lock_out_another(proxy, small_bounds, wsproxy_log):
    running = proxy(handshake_timeout=30)
    silent = [connect_from(OTHER, running.port) for _ in range(6)]
    try:
        wait_until(lambda: running.server._pending_handshakes == 6, 5, "six pending handshakes")
        wait_until(lambda: pending_older_than(running.server, 0.2), 5, "them to count as stalled")
        # The bound is full, but a prompt client from another address gets in.
        echo_once(running.port)
        assert closed_by_peer(silent[0]), "the oldest silent socket must be evicted"
        wsproxy_log.wait_for(lambda text: "closed a stalled connection" in text
                             and OTHER in text, what="the eviction line")
    finally:
        for sock in silent:
            sock.close()


def test_an_address_over_its_share_evicts_its_own_oldest_silent_one(proxy, small_bounds):
    running = proxy(handshake_timeout=30)
    silent = [connect_from(OTHER, running.port) for _ in range(3)]
    try:
        wait_until(lambda: running.server._pending_handshakes == 3, 5, "three pending handshakes")
        wait_until(lambda: pending_older_than(running.server, 0.2), 5, "them to count as stalled")
        silent.append(connect_from(OTHER, running.port))
        assert closed_by_peer(silent[0])
        wait_until(lambda: running.server._pending_handshakes == 3, 5, "three pending again")
    finally:
        for sock in silent:
            sock.close()


def test_a_burst_of_prompt_clients_from_one_address_is_never_refused(proxy, monkeypatch):
    """Far more prompt clients than the address's share, while its silent ones wait."""
    monkeypatch.setattr(server_module, "MAX_PENDING_PER_ADDRESS", 3)
    monkeypatch.setattr(server_module, "STALL_GRACE", 0.2)
    running = proxy(handshake_timeout=30)
    silent = [socket.create_connection(("127.0.0.1", running.port)) for _ in range(3)]
    wait_until(lambda: running.server._pending_handshakes == 3, 5, "three pending handshakes")
    wait_until(lambda: pending_older_than(running.server, 0.2), 5, "them to count as stalled")
    failures = []
    clients = []

    def prompt_client():
        try:
            client = WSClient(running.port, timeout=10)
            clients.append(client)
            client.handshake(protocols=["binary"])  # the request leaves at once
            client.send_binary(b"x")
            assert client.recv_stream(1) == b"x"
        except (AssertionError, OSError) as exc:  # wsclient's failures, refused connections
            failures.append(exc)

    threads = [threading.Thread(target=prompt_client) for _ in range(100)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert not failures, failures[:3]
        # Its silent ones went first.
        assert closed_by_peer(silent[0])
    finally:
        for client in clients:
            client.close()
        for sock in silent:
            sock.close()


# -- --max-connections-per-ip ----------------------------------------------------------


def request_from(source: str, port: int, headers=None) -> bytes:
    """Send an upgrade request from ``source``; return the status line."""
    sock = connect_from(source, port)
    request, _key = build_request(protocols=["binary"], headers=headers or {})
    sock.sendall(request)
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    sock.close()
    return head.split(b"\r\n", 1)[0]


def test_sessions_per_address_are_capped_with_503_and_one_log_line(proxy, wsproxy_log):
    running = proxy(max_connections_per_ip=2)
    first = running.session(protocols=["binary"])
    second = running.session(protocols=["binary"])
    for _ in range(5):
        with WSClient(running.port) as refused:
            refused.handshake(expect_status=503)
    lines = wsproxy_log.find("--max-connections-per-ip")
    assert len([line for line in lines if "refusing more" in line]) == 1, lines
    # Another address is not affected.
    assert b" 101 " in request_from(OTHER, running.port) + b" "
    # A place freed is a place taken again.
    first.send_close(1000)
    first.recv_close()
    wait_until(lambda: running.server.open_sessions == 1, 5, "the first session to end")
    with open_session(running.port, protocols=["binary"]):
        pass
    second.close()


def test_the_cap_counts_the_forwarded_client_address(proxy):
    running = proxy(max_connections_per_ip=1, trusted_proxy=["127.0.0.1"])
    sessions = [running.session(protocols=["binary"],
                                headers={"X-Forwarded-For": "203.0.113.5"})]
    with WSClient(running.port) as refused:
        refused.handshake(expect_status=503, headers={"X-Forwarded-For": "203.0.113.5"})
    sessions.append(running.session(protocols=["binary"],
                                    headers={"X-Forwarded-For": "203.0.113.6"}))
    for ws in sessions:
        ws.close()


def test_each_prompt_connection_is_asked_for_unread_bytes_once(monkeypatch):
    """A burst from one address past its share stays linear.

    Every connection of an address over its share makes the server look for
    a stalled one to evict, oldest first.  The prompt ones (their bytes
    wait, unread by their busy threads) are skipped; each must be asked
    once, not again for every later connection: with thousands pending that
    was a system call per pending connection per accept, all in the accept
    loop.
    """
    from wsproxy import admission
    asked = []
    real = admission._has_unread_bytes

    def counting(sock):
        asked.append(sock)
        return real(sock)

    monkeypatch.setattr(admission, "_has_unread_bytes", counting)
    pending = admission.PendingHandshakes(limit=1000, share=2, stall_grace=0.0)
    pairs = []
    try:
        for _ in range(60):
            server_side, client_side = socket.socketpair()
            pairs += [server_side, client_side]
            client_side.sendall(b"GET / HTTP/1.1\r\n")  # prompt: its request is there
            assert pending.admit(server_side, ("127.0.0.1", 1), lambda key, why: None)
        assert len(pending) == 60  # nothing evicted: none is stalled
        assert len(asked) <= 60, "%d looks at 60 connections" % len(asked)
    finally:
        for sock in pairs:
            sock.close()


def test_a_stalled_connection_is_still_found_behind_prompt_ones(monkeypatch):
    """The prompt ones leave the suspects for good; a silent one behind them is still evicted."""
    from wsproxy import admission
    pending = admission.PendingHandshakes(limit=1000, share=3, stall_grace=0.0)
    evicted = []
    pairs = [socket.socketpair() for _ in range(5)]
    try:
        for index, (server_side, client_side) in enumerate(pairs[:4]):
            if index != 2:
                client_side.sendall(b"GET")  # prompt; number 2 stays silent
            assert pending.admit(server_side, ("127.0.0.1", 1), lambda key, why: evicted.append(key))
        assert evicted == ["127.0.0.1"] and len(pending) == 3
        pairs[2][1].settimeout(5)
        assert pairs[2][1].recv(1) == b""  # the silent one was shut down
        assert pending.admit(pairs[4][0], ("127.0.0.1", 1), lambda key, why: evicted.append(key))
        assert evicted == ["127.0.0.1"], "no silent connection was left to evict"
        for server_side, _ in pairs:
            pending.finished(server_side)
        assert len(pending) == 0 and not pending._suspects and not pending._counts
    finally:
        for pair in pairs:
            for sock in pair:
                sock.close()
