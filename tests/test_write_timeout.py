"""``--write-timeout``: a peer that accepts no byte for that long ends its session.

A client that stops reading would otherwise pin both pump threads forever
(no heartbeat and no session timeout by default).  The deadline is per write
and every accepted byte extends it, so a slow reader is never cut.
"""

import hashlib
import os
import socket
import threading
import time

import pytest

import wsproxy.relay as relay_module

from certs import pki
from conftest import wait_until
from test_tls import TLSClient, client_context
from wsclient import OP_BINARY, encode_frame, open_session

from wsproxy import Settings

STALL = 0.5


@pytest.fixture(autouse=True)
def short_close_timeout(monkeypatch):
    """After the write timeout the relay drains the target for up to CLOSE_TIMEOUT; keep it short."""
    monkeypatch.setattr(relay_module, "CLOSE_TIMEOUT", 1.0)


@pytest.fixture
def flood_target(make_target):
    """A target that sends to every connection as fast as it is read."""
    return make_target(flood=True)


def test_the_default_is_five_minutes_and_zero_means_never():
    assert Settings().write_timeout == 300.0


def test_a_client_that_reads_nothing_ends_its_session(proxy, flood_target, wsproxy_log):
    running = proxy(target_port=flood_target.port, write_timeout=STALL)
    client = running.session(protocols=["binary"])
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    wait_until(lambda: running.server.open_sessions == 1, 5, "the session to open")
    started = time.monotonic()
    # Both pumps end: the handler's thread (upstream) unregisters the session
    # only after joining the downstream pump.
    wait_until(lambda: running.server.open_sessions == 0, 5, "the stalled session to end")
    assert time.monotonic() - started < STALL + 1.0 + 1.5
    line = wsproxy_log.wait_for(lambda text: "closed:" in text, what="the close line")
    assert "close 1006" in line and "the peer accepted no byte for 0.5 s (--write-timeout)" in line
    wait_until(lambda: flood_target.connections and _closed(flood_target.connections[0].sock), 5,
               "the target connection to be closed")


def test_a_tls_client_that_reads_nothing_ends_its_session(proxy, flood_target, wsproxy_log,
                                                           tmp_path_factory):
    files = pki(tmp_path_factory)
    running = proxy(target_port=flood_target.port, write_timeout=STALL,
                    cert=files.cert, key=files.key)
    client = TLSClient(running.port, client_context(files.ca))
    running.clients.append(client)
    client.handshake(protocols=["binary"])
    wait_until(lambda: running.server.open_sessions == 1, 5, "the session to open")
    wait_until(lambda: running.server.open_sessions == 0, 5, "the stalled session to end")
    assert wsproxy_log.find("close 1006", "the peer accepted no byte for 0.5 s")


def test_a_slow_reader_is_never_cut(proxy, flood_target):
    """A reader taking 32 KiB every 0.1 s stays connected for 4 timeouts of 0.5 s.

    At that pace the proxy's send buffer never empties enough for the kernel
    to report room within a timeout: the bytes the client takes must count.
    """
    running = proxy(target_port=flood_target.port, write_timeout=STALL)
    with open_session(running.port, protocols=["binary"]) as ws:
        received = 0
        started = time.monotonic()
        while time.monotonic() - started < 4 * STALL:
            received += len(ws.sock.recv(32 * 1024))
            time.sleep(0.1)  # the slow reader under test, not a synchronisation
        assert running.server.open_sessions == 1
        assert received > 0


def test_a_target_that_reads_nothing_ends_its_session(proxy, wsproxy_log):
    """The same deadline guards the target: a stalled target would pin the upstream pump."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []
    acceptor = threading.Thread(target=lambda: accepted.append(listener.accept()[0]),
                                daemon=True)
    acceptor.start()
    try:
        running = proxy(target_port=listener.getsockname()[1], write_timeout=STALL)
        client = running.session(protocols=["binary"])
        acceptor.join(5)
        accepted[0].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        frame = encode_frame(OP_BINARY, b"\x01" * 65536, mask=True)

        def flood():  # until the proxy stops reading, then until it closes
            try:
                while True:
                    client.sock.sendall(frame)
            except OSError:
                pass
        sender = threading.Thread(target=flood, daemon=True, name="test-client-flood")
        sender.start()
        wait_until(lambda: running.server.open_sessions == 0, 5, "the stalled session to end")
        line = wsproxy_log.wait_for(lambda text: "closed:" in text, what="the close line")
        assert "close 1011" in line and "the peer accepted no byte for 0.5 s" in line
        sender.join(5)
    finally:
        listener.close()
        for sock in accepted:
            sock.close()


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(65536, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True



def test_a_write_the_socket_takes_only_in_part_goes_on_where_it_stopped():
    """The first non-blocking try may send part of a write: the rest follows, nothing twice."""
    from wsproxy.streams import send_before
    left, right = socket.socketpair()
    try:
        left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        data = os.urandom(1024 * 1024)
        for buffers in ([data], [data[:100], data[100:]], [b"x" * 10, b"y" * 20]):
            expected = b"".join(buffers)
            received = []

            def read_all():
                got = 0
                while got < len(expected):
                    chunk = right.recv(65536)
                    received.append(chunk)
                    got += len(chunk)

            reader = threading.Thread(target=read_all, daemon=True)
            reader.start()
            send_before(left, buffers, 5.0)
            reader.join(10)
            assert hashlib.sha256(b"".join(received)).digest() == hashlib.sha256(expected).digest()
    finally:
        left.close()
        right.close()
