"""The Flash socket policy answer, through real sockets on the proxy's own port.

A connection whose first bytes are ``<policy-file-request/>`` and a NUL gets
the cross-domain policy document (NUL-terminated) and is closed, however the
request is split into TCP segments; a partial request is bounded by the
handshake timeout; anything else starting with ``<`` is plain HTTP.
"""

import select
import socket
import time

import pytest

from conftest import wait_until

REQUEST = b"<policy-file-request/>\x00"
DEFAULT_POLICY = (b'<cross-domain-policy><allow-access-from domain="*" to-ports="*" />'
                  b'</cross-domain-policy>\x00')

#: A pause between segments so the server is likely to read them apart.
#: Nothing waits on it: the test is valid however the segments arrive.
SEGMENT_GAP = 0.05


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes; fails if it stays open past ``timeout``."""
    deadline = time.monotonic() + timeout
    received = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail("the server kept the connection open for %.1fs (sent %r)"
                        % (timeout, bytes(received[:200])))
        readable, _, _ = select.select([sock], [], [], left)
        if not readable:
            continue
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(received)
        if not chunk:
            return bytes(received)
        received += chunk


def ask(port: int, *segments: bytes, timeout: float = 5.0) -> bytes:
    """Send ``segments`` as separate writes; return all the server sent before closing."""
    with connect(port) as sock:
        for index, segment in enumerate(segments):
            if index:
                select.select([], [], [], SEGMENT_GAP)
            sock.sendall(segment)
        return read_until_closed(sock, timeout)


def test_policy_request_in_one_segment(proxy, wsproxy_log):
    running = proxy()
    assert ask(running.port, REQUEST) == DEFAULT_POLICY
    wsproxy_log.wait_for(lambda text: "Flash policy" in text, what="the Flash answer log line")


@pytest.mark.parametrize("cuts", [(1, 12), (5, 22), (21, 22)], ids=["1-12", "5-22", "21-22"])
def test_policy_request_split_in_three_segments(proxy, cuts):
    running = proxy()
    first, second = cuts
    segments = (REQUEST[:first], REQUEST[first:second], REQUEST[second:])
    assert b"".join(segments) == REQUEST and all(segments)
    assert ask(running.port, *segments) == DEFAULT_POLICY


def test_policy_request_one_byte_per_segment(proxy):
    running = proxy()
    assert ask(running.port, *[REQUEST[i:i + 1] for i in range(len(REQUEST))]) == DEFAULT_POLICY


def test_configured_domain_and_ports(proxy):
    running = proxy(flash_policy_domain="*.example.com", flash_policy_ports="5900-5910,443")
    answer = ask(running.port, REQUEST)
    assert answer == (b'<cross-domain-policy><allow-access-from domain="*.example.com" '
                      b'to-ports="5900-5910,443" /></cross-domain-policy>\x00')


def test_policy_also_answered_on_a_tls_enabled_port(proxy, tmp_path_factory):
    from certs import pki
    files = pki(tmp_path_factory)
    running = proxy(cert=files.cert, key=files.key, ssl_only=True)
    assert ask(running.port, REQUEST) == DEFAULT_POLICY


def test_no_flash_policy_closes_without_a_document(proxy, wsproxy_log):
    running = proxy(flash_policy=False)
    with connect(running.port) as sock:
        client_port = sock.getsockname()[1]
        sock.sendall(REQUEST)
        assert read_until_closed(sock, 5) == b""
    wsproxy_log.wait_for(lambda text: "127.0.0.1:%d" % client_port in text,
                         what="a log line for the refused policy request")


def test_partial_request_is_closed_by_the_handshake_timeout(proxy, wsproxy_log):
    running = proxy(handshake_timeout=0.5)
    with connect(running.port) as sock:
        client_port = sock.getsockname()[1]
        started = time.monotonic()
        sock.sendall(REQUEST[:10])
        assert read_until_closed(sock, 3.0) == b""
        elapsed = time.monotonic() - started
    assert elapsed >= 0.4, "closed after %.2fs, before the timeout" % elapsed
    line = wsproxy_log.wait_for(lambda text: "127.0.0.1:%d" % client_port in text,
                                what="the timeout log line")
    assert "timeout" in line or "timed out" in line, line


def test_request_without_its_nul_times_out(proxy):
    running = proxy(handshake_timeout=0.5)
    with connect(running.port) as sock:
        sock.sendall(REQUEST[:-1])
        assert read_until_closed(sock, 3.0) == b""


def test_trickled_partial_request_is_bounded_overall(proxy):
    # One byte every 50 ms: each read is quick, the whole request is not.
    running = proxy(handshake_timeout=0.5)
    with connect(running.port) as sock:
        started = time.monotonic()
        closed = False
        for index in range(len(REQUEST) - 1):
            try:
                sock.sendall(REQUEST[index:index + 1])
            except OSError:
                closed = True
                break
            readable, _, _ = select.select([sock], [], [], SEGMENT_GAP)
            if readable:
                try:
                    data = sock.recv(100)
                except ConnectionResetError:
                    data = b""
                assert data == b"", "unexpected answer %r" % data
                closed = True
                break
        if not closed:
            read_until_closed(sock, 2.0)
        elapsed = time.monotonic() - started
    assert elapsed < 1.5, "a trickled request held the connection for %.2fs" % elapsed


@pytest.mark.parametrize("segments", [
    (b"<GET / HTTP/1.1\r\nHost: x\r\n\r\n",),
    (b"<", b"html>\r\n\r\n"),
    (b"<policy-file-request/>X\r\n\r\n",),
], ids=["lt-then-http", "lt-alone-then-more", "wrong-terminator"])
def test_other_text_starting_with_lt_is_http(proxy, segments):
    running = proxy()
    answer = ask(running.port, *segments)
    assert answer.startswith(b"HTTP/1.1 4"), answer[:200]
    assert b"cross-domain-policy" not in answer


def test_websocket_still_works_after_policy_requests(proxy):
    running = proxy()
    for _ in range(3):
        assert ask(running.port, REQUEST) == DEFAULT_POLICY
    with running.session() as ws:
        ws.send_binary(b"after flash")
        assert ws.recv_stream(11) == b"after flash"
    wait_until(lambda: running.server.open_sessions == 0, 5, "the session to end")
