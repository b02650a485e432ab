"""Connection threads: counted, not kept in a list.

socketserver keeps every connection thread in a list that it scans at each
new connection: with thousands of sessions, a serial cost of the accept
loop that grows with every session (see docs/performance.md).
"""

import socket

from conftest import wait_until
from wsclient import open_session


def test_connection_threads_are_not_kept_in_a_list(proxy):
    """socketserver's list of threads, scanned at every accept, is never built."""
    running = proxy()
    for _ in range(20):
        with open_session(running.port, protocols=["binary"]) as ws:
            ws.send_binary(b"x")
            assert ws.recv_stream(1) == b"x"
    assert not vars(running.server).get("_threads")
    wait_until(lambda: running.server._handlers == 0, 5, "every connection thread to end")


def test_server_close_waits_for_connection_threads(proxy):
    """As socketserver's own: server_close() returns once every connection's thread ended."""
    running = proxy(handshake_timeout=0.5)
    silent = socket.create_connection(("127.0.0.1", running.port), timeout=5)
    try:
        wait_until(lambda: running.server._handlers == 1, 5, "the connection's thread")
        running.server.shutdown()
        running.server.server_close()  # the thread ends at the handshake timeout
        assert running.server._handlers == 0
        assert silent.recv(1) == b""
    finally:
        silent.close()
