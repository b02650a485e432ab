"""wsproxy.logs: peer text escaped into one line, repeated warnings throttled.

The pure helpers are tested with literals and a hand-driven clock; the
server's use of them over real sockets on 127.0.0.1 (PROXY protocol
headers, TLS hellos to a server without a certificate).
"""

import logging
import socket
import ssl
import struct
import unicodedata

import pytest

from conftest import LogCapture, wait_until
from wsclient import DEFAULT_TIMEOUT

from wsproxy.logs import Throttle, escape, escape_controls
from wsproxy.protocol.proxy_protocol import V2_SIGNATURE
from wsproxy.session import format_address

FORGED = "session 999 10.6.6.6:1: open to evil"


def single_clean_lines(messages):
    for text in messages:
        assert len(text.splitlines()) <= 1, "a log message spans several lines: %r" % text
        bad = [ch for ch in text if unicodedata.category(ch) in ("Cc", "Zl", "Zp")]
        assert not bad, "control characters %r in log message %r" % (bad, text)


# -- escaping ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["a\nb", "a\rb", "\x1b[2J", "a\u2028b", "a\x85b", "a\x00b",
                                  "tab\there", "\\n literal"])
def test_escape_gives_one_printable_ascii_line(text):
    escaped = escape(text)
    assert escaped.isascii() and escaped.isprintable(), escaped
    assert escaped.encode().decode("unicode_escape") == text  # nothing lost, nothing ambiguous


def test_escape_controls_keeps_readable_text():
    assert escape_controls("café /srv/données") == "café /srv/données"
    assert escape_controls("a\nb\u2028c\x9bd") == "a\\nb\\u2028c\\x9bd"


@pytest.mark.parametrize("address, shown", [
    (("203.0.113.7", 40001), "203.0.113.7:40001"),
    (("2001:db8::1", 443, 0, 0), "[2001:db8::1]:443"),
    ("/run/balancer.sock", "/run/balancer.sock"),
    ("", "unix"),
    ("/run/x\n" + FORGED, "/run/x\\n" + FORGED),
    (("evil\nhost", 1), "evil\\nhost:1"),
], ids=["ipv4", "ipv6", "unix", "unnamed-unix", "unix-newline", "host-newline"])
def test_format_address_is_always_one_safe_line(address, shown):
    assert format_address(address) == shown


# -- throttling (a clock driven by hand) ------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def throttle():
    logger = logging.getLogger("wsproxy.test-throttle")
    capture = LogCapture()
    logger.addHandler(capture)
    logger.setLevel(logging.DEBUG)
    clock = Clock()
    try:
        yield Throttle(logger, interval=10.0, clock=clock), capture, clock
    finally:
        logger.removeHandler(capture)


def test_first_warning_passes_repeats_are_counted_then_reported(throttle):
    limiter, capture, clock = throttle
    assert limiter.warning("tls", "%s: TLS hello", "peer1")
    for index in range(49):
        clock.now += 0.1
        assert not limiter.warning("tls", "%s: TLS hello", "peer%d" % index)
    assert capture.messages() == ["peer1: TLS hello"]
    assert limiter.held("tls") == 49
    clock.now += 10.0
    assert limiter.warning("tls", "%s: TLS hello", "peer99")
    assert capture.messages()[-1] == "peer99: TLS hello (49 more like this in the last 15 s)"
    assert limiter.held("tls") == 0


def test_kinds_are_throttled_apart_and_interval_may_be_given_per_call(throttle):
    limiter, capture, clock = throttle
    assert limiter.warning("a", "one")
    assert limiter.warning("b", "two")
    assert not limiter.warning("a", "one again")
    clock.now += 1.0
    assert limiter.warning("a", "crowded", interval=1.0)
    assert capture.messages() == ["one", "two", "crowded (1 more like this in the last 1 s)"]


# -- the server's warnings, over real sockets ----------------------------------------------


def v2_unix(source: bytes, destination: bytes) -> bytes:
    block = source.ljust(108, b"\x00") + destination.ljust(108, b"\x00")
    return V2_SIGNATURE + bytes([0x21, 0x31]) + struct.pack("!H", len(block)) + block


def read_until_closed(sock: socket.socket) -> bytes:
    sock.settimeout(DEFAULT_TIMEOUT)
    received = b""
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not data:
            return received
        received += data


def test_proxy_v2_unix_path_cannot_forge_a_log_line(proxy, wsproxy_log):
    running = proxy(proxy_protocol=True, trusted_proxy=["127.0.0.1"], status="/status")
    header = v2_unix(b"/run/client\n2030-01-01 00:00:00,000 wsproxy[1] INFO " + FORGED.encode(),
                     b"/run/wsproxy")
    with socket.create_connection(("127.0.0.1", running.port), timeout=DEFAULT_TIMEOUT) as sock:
        sock.sendall(header + b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 200 ")
    line = wsproxy_log.wait_for(lambda text: "status page" in text, what="the status line")
    assert "/run/client\\n2030" in line, line
    single_clean_lines(wsproxy_log.messages())


def test_untrusted_proxy_peers_warn_once_per_interval(proxy, wsproxy_log):
    running = proxy(proxy_protocol=True, trusted_proxy=["10.0.0.0/8"])
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", running.port), timeout=DEFAULT_TIMEOUT) as sock:
            sock.sendall(b"PROXY TCP4 203.0.113.7 192.0.2.1 40001 443\r\n")
            read_until_closed(sock)
    wait_until(lambda: running.server.warnings.held("untrusted-proxy-peer") == 19,
               message="19 repeats held back")
    assert len(wsproxy_log.find("not a --trusted-proxy")) == 1, wsproxy_log.messages()


def test_tls_hellos_without_a_certificate_warn_once_per_interval(proxy, wsproxy_log):
    running = proxy()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", running.port), timeout=DEFAULT_TIMEOUT) as raw:
            with pytest.raises((ssl.SSLError, OSError)):
                context.wrap_socket(raw).close()
    wait_until(lambda: running.server.warnings.held("tls-without-cert") == 19,
               message="19 repeats held back")
    assert len(wsproxy_log.find("no certificate configured")) == 1, wsproxy_log.messages()


def test_an_unreachable_target_warns_once_per_interval(proxy, wsproxy_log):
    from conftest import free_port
    running = proxy(target_port=free_port())
    for _ in range(5):
        with running.client() as ws:
            ws.handshake(expect_status=502)
    wait_until(lambda: running.server.warnings.held("target-unreachable") == 4,
               message="4 repeats held back")
    assert len(wsproxy_log.find("cannot reach target")) == 1
    assert len(wsproxy_log.find("refused: 502")) == 5, "each refusal keeps its own line"
