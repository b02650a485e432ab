"""Connection threads: started without waiting in line, counted without a list.

``Thread.start()`` waits until the new thread has run, which behind
thousands of busy threads means waiting for the GIL; socketserver also
keeps every connection thread in a list it scans at each new connection.
Both were serial costs of the accept loop (see docs/performance.md).
"""

import socket
import threading

from conftest import wait_until
from wsclient import open_session

from wsproxy.threads import start_unwaited


class _HeldAtStart(threading.Thread):
    """A thread that cannot begin running until ``gate`` is set."""

    def __init__(self, gate: threading.Event, ran: threading.Event) -> None:
        super().__init__(target=ran.set, daemon=True, name="held-at-start")
        self.gate = gate

    def _bootstrap_inner(self):
        self.gate.wait(10)
        super()._bootstrap_inner()


def test_start_unwaited_returns_before_the_thread_runs():
    gate, ran = threading.Event(), threading.Event()
    thread = _HeldAtStart(gate, ran)
    start_unwaited(thread)  # Thread.start() would wait here until the gate's 10 s ran out
    try:
        assert not ran.is_set()
        assert not thread.is_alive()  # not yet announced
    finally:
        gate.set()
    assert ran.wait(5)
    wait_until(lambda: not thread.is_alive(), 5, "the thread to end")
    thread.join(5)  # once it ran, it joins as any thread does


def test_start_unwaited_thread_is_an_ordinary_thread_once_running():
    release, inside = threading.Event(), threading.Event()

    def body():
        inside.set()
        release.wait(5)

    thread = threading.Thread(target=body, daemon=True, name="unwaited")
    start_unwaited(thread)
    assert inside.wait(5)
    assert thread.is_alive() and thread in threading.enumerate() and thread.ident
    release.set()
    thread.join(5)
    assert not thread.is_alive()


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
