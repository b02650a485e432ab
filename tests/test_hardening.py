"""Fixes from the security review (docs/security.md): bounds and file safety.

Every accepted connection gets a thread before anything is known of it;
a flood of silent connections must not grow threads without bound.
"""

import socket

import wsproxy.server as server_module
from conftest import wait_until
from wsclient import WSClient


def test_connections_past_the_handshake_bound_are_closed_at_once(proxy, wsproxy_log, monkeypatch):
    monkeypatch.setattr(server_module, "MAX_PENDING_HANDSHAKES", 5)
    running = proxy(handshake_timeout=30)
    silent = [socket.create_connection(("127.0.0.1", running.port)) for _ in range(5)]
    try:
        wait_until(lambda: running.server._pending_handshakes == 5, 5, "five handshakes pending")
        extra = socket.create_connection(("127.0.0.1", running.port))
        extra.settimeout(5)
        assert extra.recv(1) == b"", "the sixth connection must be closed at once"
        extra.close()
        wsproxy_log.wait_for(lambda text: "still handshaking" in text, what="the refusal line")
    finally:
        for sock in silent:
            sock.close()
    # Once the silent ones are gone, the count is back to zero and clients are served.
    wait_until(lambda: running.server._pending_handshakes == 0, 5, "pending count back to 0")
    with WSClient(running.port) as client:
        client.handshake()
        client.send_binary(b"abc")
        assert client.recv_stream(3) == b"abc"


def test_the_pending_count_returns_to_zero_after_sessions_and_refusals(proxy):
    running = proxy()
    for _ in range(3):
        with WSClient(running.port) as client:
            client.handshake()
            client.send_binary(b"x")
            assert client.recv_stream(1) == b"x"
    with WSClient(running.port) as client:
        client.handshake(expect_status=426, headers={"Sec-WebSocket-Version": "8"})
    sock = socket.create_connection(("127.0.0.1", running.port))
    sock.sendall(b"<policy-file-request/>\0")
    sock.settimeout(5)
    while sock.recv(4096):
        pass
    sock.close()
    wait_until(lambda: running.server._pending_handshakes == 0, 5, "pending count back to 0")


def test_pid_file_symlink_is_refused(tmp_path):
    from test_config import run_wsproxy
    from conftest import free_port
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "wsproxy.pid"
    link.symlink_to(victim)
    result = run_wsproxy("-f", "--pid-file", str(link), "127.0.0.1:%d" % free_port(), "127.0.0.1:9")
    assert result.returncode != 0
    assert "pid-file" in result.stderr and "Traceback" not in result.stderr
    assert victim.read_text() == "precious\n"
