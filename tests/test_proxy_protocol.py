"""The PROXY protocol: the sans-I/O header reader, then ``--proxy-protocol`` on real sockets.

Byte literals follow HAProxy's ``doc/proxy-protocol.txt`` (section numbers
cite it).  The I/O tests stand in for the balancer: a raw socket on
127.0.0.1 that sends a header, then a WebSocket handshake.
"""

import ipaddress
import os
import random
import select
import socket
import ssl
import struct
import threading
import time

import pytest

from certs import pki
from conftest import RunningProxy, wait_until
from wsclient import WSClient

from wsproxy import ConfigError, ProxyServer, ProxyRequestHandler, Settings
from wsproxy.protocol.proxy_protocol import (
    V1_MAX_LENGTH, V2_SIGNATURE, Command, Family, ProxyHeader, ProxyHeaderError,
    ProxyHeaderReader, Transport, parse_header)

# -- header builders (from the specification's field layout) ---------------------------


def v2(command: int, family_transport: int, block: bytes = b"", version: int = 2,
       signature: bytes = V2_SIGNATURE) -> bytes:
    """A version 2 header (§2.2): signature, ver|cmd, fam|proto, length, then ``block``."""
    return signature + bytes([version << 4 | command, family_transport]) \
        + struct.pack("!H", len(block)) + block


def v2_inet(source: str, destination: str, source_port: int, destination_port: int,
            tlvs: bytes = b"", transport: int = 0x1) -> bytes:
    """PROXY over TCP4/TCP6 (or UDP with ``transport`` 2), addresses packed as §2.2 says."""
    src, dst = ipaddress.ip_address(source), ipaddress.ip_address(destination)
    family = 0x1 if src.version == 4 else 0x2
    block = src.packed + dst.packed + struct.pack("!HH", source_port, destination_port)
    return v2(0x1, family << 4 | transport, block + tlvs)


def v2_unix(source: bytes, destination: bytes) -> bytes:
    """PROXY over AF_UNIX stream: two 108-byte ``sun_path`` fields."""
    return v2(0x1, 0x31, source.ljust(108, b"\x00") + destination.ljust(108, b"\x00"))


def tlv(kind: int, value: bytes) -> bytes:
    """One TLV vector (§2.2): type, 2-byte length, value."""
    return bytes([kind]) + struct.pack("!H", len(value)) + value


# §2.1's example, and its longest lines.
SPEC_V1_EXAMPLE = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
V1_TCP4_LONGEST = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
V1_TCP6_LONGEST = (b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                   b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n")
V1_UNKNOWN_SHORT = b"PROXY UNKNOWN\r\n"
V1_UNKNOWN_WORST = (b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                    b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n")
# What HAProxy sent for a TCP4 connection from 172.19.0.1:42578 to 172.19.0.3:80.
V2_TCP4_CAPTURED = bytes.fromhex("0d0a0d0a000d0a515549540a2111000cac130001ac130003a6520050")
V2_TCP6 = v2_inet("2001:db8::1", "2001:db8::2", 4711, 443)
V2_UNIX = v2_unix(b"/run/client.sock", b"/run/wsproxy.sock")
V2_LOCAL = v2(0x0, 0x00)
V2_WITH_TLVS = v2_inet("198.51.100.7", "192.0.2.1", 50000, 443,
                       tlvs=tlv(0x01, b"http/1.1") + tlv(0x02, b"example.org")
                       + tlv(0x04, b"\0" * 5))

REQUEST = b"GET /?token=x HTTP/1.1\r\nHost: example.org\r\n\r\n"

VALID = {
    "v1-spec-example": (SPEC_V1_EXAMPLE, ProxyHeader(
        1, Command.PROXY, Family.INET, Transport.STREAM, ("192.168.0.1", 56324),
        ("192.168.0.11", 443), 47)),
    "v1-tcp4-longest": (V1_TCP4_LONGEST, ProxyHeader(
        1, Command.PROXY, Family.INET, Transport.STREAM, ("255.255.255.255", 65535),
        ("255.255.255.255", 65535), 56)),
    "v1-tcp6-longest": (V1_TCP6_LONGEST, ProxyHeader(
        1, Command.PROXY, Family.INET6, Transport.STREAM,
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535), 104)),
    "v1-tcp6-compressed": (b"PROXY TCP6 2001:DB8::1 ::1 0 65535\r\n", ProxyHeader(
        1, Command.PROXY, Family.INET6, Transport.STREAM, ("2001:db8::1", 0), ("::1", 65535), 36)),
    "v1-unknown-short": (V1_UNKNOWN_SHORT, ProxyHeader(
        1, Command.PROXY, Family.UNSPEC, Transport.UNSPEC, None, None, 15)),
    "v1-unknown-worst-case": (V1_UNKNOWN_WORST, ProxyHeader(
        1, Command.PROXY, Family.UNSPEC, Transport.UNSPEC, None, None, 107)),
    "v2-tcp4-captured": (V2_TCP4_CAPTURED, ProxyHeader(
        2, Command.PROXY, Family.INET, Transport.STREAM, ("172.19.0.1", 42578),
        ("172.19.0.3", 80), 28)),
    "v2-tcp6": (V2_TCP6, ProxyHeader(
        2, Command.PROXY, Family.INET6, Transport.STREAM, ("2001:db8::1", 4711),
        ("2001:db8::2", 443), 52)),
    "v2-udp4": (v2_inet("192.0.2.9", "192.0.2.1", 53, 5353, transport=0x2), ProxyHeader(
        2, Command.PROXY, Family.INET, Transport.DGRAM, ("192.0.2.9", 53), ("192.0.2.1", 5353),
        28)),
    "v2-unix": (V2_UNIX, ProxyHeader(
        2, Command.PROXY, Family.UNIX, Transport.STREAM, "/run/client.sock", "/run/wsproxy.sock",
        232)),
    "v2-tlvs": (V2_WITH_TLVS, ProxyHeader(
        2, Command.PROXY, Family.INET, Transport.STREAM, ("198.51.100.7", 50000),
        ("192.0.2.1", 443), 28 + 11 + 14 + 8,
        ((0x01, b"http/1.1"), (0x02, b"example.org"), (0x04, b"\0" * 5)))),
    "v2-local": (V2_LOCAL, ProxyHeader(
        2, Command.LOCAL, Family.UNSPEC, Transport.UNSPEC, None, None, 16)),
    # §2.2: "Receivers MUST always consider this field to skip the appropriate
    # number of bytes and must not assume zero is presented for LOCAL connections."
    "v2-local-with-addresses": (v2(0x0, 0x11, bytes(12)), ProxyHeader(
        2, Command.LOCAL, Family.UNSPEC, Transport.UNSPEC, None, None, 28)),
    "v2-proxy-unspec": (v2(0x1, 0x00, b"ignored"), ProxyHeader(
        2, Command.PROXY, Family.UNSPEC, Transport.UNSPEC, None, None, 23)),
}


# -- the reader: whole headers ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_header_parses_and_stops_at_its_end(name):
    header_bytes, expected = VALID[name]
    reader = ProxyHeaderReader()
    taken = reader.feed(header_bytes + REQUEST)
    assert reader.header == expected
    assert taken == len(header_bytes) == expected.length, "the client's bytes must stay unread"
    assert reader.wanted() == 0
    assert reader.feed(REQUEST) == 0, "a complete reader takes nothing more"
    assert parse_header(header_bytes + REQUEST) == expected


@pytest.mark.parametrize("name", sorted(VALID))
def test_header_split_at_every_point(name):
    header_bytes, expected = VALID[name]
    data = header_bytes + REQUEST
    for split in range(1, len(header_bytes) + 1):
        reader = ProxyHeaderReader()
        first = reader.feed(data[:split])
        assert first == split
        assert (reader.header is not None) == (split == len(header_bytes)), split
        second = reader.feed(data[first:])
        assert first + second == len(header_bytes), "split at %d" % split
        assert reader.header == expected, "split at %d" % split


@pytest.mark.parametrize("name", sorted(VALID))
def test_header_fed_in_small_pieces_up_to_wanted(name):
    """Pieces never larger than ``wanted()``: the header is taken exactly, never more."""
    header_bytes, expected = VALID[name]
    data = header_bytes + REQUEST
    offset, reads = 0, 0
    reader = ProxyHeaderReader()
    while reader.header is None:
        want = reader.wanted()
        assert want > 0
        piece = data[offset:offset + min(want, 1 if reads % 2 else 7)]
        offset += reader.feed(piece)
        reads += 1
        assert offset <= len(header_bytes)
    assert offset == len(header_bytes)
    assert reader.header == expected


@pytest.mark.parametrize("name, client", [
    ("v1-spec-example", ("192.168.0.1", 56324)),
    ("v2-tcp6", ("2001:db8::1", 4711)),
    ("v2-unix", "/run/client.sock"),
    ("v2-local", None),
    ("v2-local-with-addresses", None),
    ("v1-unknown-short", None),
    ("v2-proxy-unspec", None),
])
def test_client_address_is_none_when_the_connection_speaks_for_itself(name, client):
    assert VALID[name][1].client_address == client


def test_reader_accepts_bytearray_and_memoryview():
    assert parse_header(bytearray(SPEC_V1_EXAMPLE)) == VALID["v1-spec-example"][1]
    assert parse_header(memoryview(V2_TCP6)) == VALID["v2-tcp6"][1]


def test_incomplete_header_is_none_not_an_error():
    for data in (b"", b"P", b"PROXY TCP4 1.2.3.4", V2_SIGNATURE, V2_TCP6[:40]):
        assert parse_header(data) is None, data


# -- the reader: garbage, oversize, malformed -------------------------------------------------

INVALID = {
    # No header at all: refused on the first byte, without waiting for more.
    "http-request": b"G",
    "tls-hello": b"\x16\x03\x01",
    "flash-policy": b"<policy-file-request/>\x00",
    "blank-lines": b"\r\n\r\n\r\n",
    "lowercase-proxy": b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    "proxz": b"PROXZ",
    # Version 1 (§2.1)
    "v1-no-crlf-in-107": b"PROXY UNKNOWN " + b"x" * 93,
    "v1-lf-only": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
    "v1-cr-only": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
    "v1-cr-split": b"PROXY UNKNOWN\r",  # the LF test continues in the split test below
    "v1-tcp5": b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
    "v1-two-spaces": b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
    "v1-missing-port": b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
    "v1-extra-field": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
    "v1-leading-zero-address": b"PROXY TCP4 192.168.000.1 5.6.7.8 1 2\r\n",
    "v1-leading-zero-port": b"PROXY TCP4 1.2.3.4 5.6.7.8 0443 2\r\n",
    "v1-port-too-big": b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
    "v1-negative-port": b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
    "v1-tcp4-with-ipv6": b"PROXY TCP4 ::1 ::1 1 2\r\n",
    "v1-tcp6-with-ipv4": b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
    "v1-tcp6-scope-id": b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
    "v1-hostname": b"PROXY TCP4 localhost 5.6.7.8 1 2\r\n",
    "v1-nul-byte": b"PROXY TCP4 1.2.3.4\x00 5.6.7.8 1 2\r\n",
    "v1-not-ascii": "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \u00e9\r\n".encode("utf-8"),
    # Version 2 (§2.2)
    "v2-wrong-signature": b"\r\n\r\n\x00\r\nQUIX\n",
    "v2-version-1": v2(0x1, 0x11, bytes(12), version=1),
    "v2-version-3": v2(0x1, 0x11, bytes(12), version=3),
    "v2-command-2": v2(0x2, 0x11, bytes(12)),
    "v2-family-4": v2(0x1, 0x41, bytes(12)),
    "v2-transport-3": v2(0x1, 0x13, bytes(12)),
    "v2-tcp4-short-block": v2(0x1, 0x11, bytes(11)),
    "v2-tcp6-short-block": v2(0x1, 0x21, bytes(12)),
    "v2-unix-short-block": v2(0x1, 0x31, bytes(215)),
    "v2-oversize-length": V2_SIGNATURE + b"\x21\x11\xff\xff",
}


@pytest.mark.parametrize("name", sorted(set(INVALID) - {"v1-cr-split"}))
def test_invalid_input_raises_the_documented_error(name):
    with pytest.raises(ProxyHeaderError):
        ProxyHeaderReader().feed(INVALID[name])


@pytest.mark.parametrize("name", sorted(set(INVALID) - {"v1-cr-split"}))
def test_invalid_input_fails_whichever_way_it_is_split(name):
    data = INVALID[name]
    for split in range(1, len(data)):
        reader = ProxyHeaderReader()
        with pytest.raises(ProxyHeaderError):
            taken = reader.feed(data[:split])
            reader.feed(data[taken:])


def test_garbage_is_refused_on_its_first_byte():
    for first in range(256):
        if first in (ord("P"), 0x0D):
            continue
        with pytest.raises(ProxyHeaderError):
            ProxyHeaderReader().feed(bytes([first]))


def test_cr_then_something_else_in_the_next_piece_is_refused():
    reader = ProxyHeaderReader()
    assert reader.feed(INVALID["v1-cr-split"]) == len(INVALID["v1-cr-split"])
    with pytest.raises(ProxyHeaderError):
        reader.feed(b"X")


def test_v1_line_of_exactly_107_bytes_passes_and_108_fails():
    assert len(V1_UNKNOWN_WORST) == V1_MAX_LENGTH
    assert parse_header(V1_UNKNOWN_WORST).length == V1_MAX_LENGTH
    with pytest.raises(ProxyHeaderError, match="107"):
        parse_header(V1_UNKNOWN_WORST[:-2] + b"f\r\n")


def test_v2_oversize_is_refused_from_the_fixed_header_alone():
    reader = ProxyHeaderReader(max_v2_length=64)
    assert reader.feed(v2(0x1, 0x11, bytes(48))[:16]) == 16 and reader.wanted() == 48
    with pytest.raises(ProxyHeaderError, match="more than 64"):
        ProxyHeaderReader(max_v2_length=64).feed(v2(0x1, 0x11, bytes(49))[:16])


def test_mutated_headers_never_raise_anything_else():
    rng = random.Random(9)
    seeds = [header for header, _ in VALID.values()]
    for _ in range(3000):
        data = bytearray(rng.choice(seeds) + REQUEST)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        reader = ProxyHeaderReader()
        try:
            offset = 0
            while reader.header is None and offset < len(data):
                step = rng.randint(1, 40)
                offset += reader.feed(bytes(data[offset:offset + step]))
        except ProxyHeaderError:
            continue
        if reader.header is not None:
            assert reader.header.length == offset <= len(data)


# -- --proxy-protocol on real sockets -----------------------------------------------------

def pp_proxy(proxy, **fields):
    fields.setdefault("proxy_protocol", True)
    fields.setdefault("trusted_proxy", ["127.0.0.1"])
    fields.setdefault("status", "/status")
    return proxy(**fields)


def wait_closed(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Read until the proxy closes; return what it sent.  Fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    received = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail("the proxy did not close the connection (got %r)" % bytes(received[:100]))
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


def echo(ws: WSClient) -> None:
    payload = os.urandom(3000)
    ws.send_binary(payload)
    assert ws.recv_stream(len(payload)) == payload
    ws.send_close(1000)
    assert ws.recv_close()[0] == 1000
    ws.expect_closed()


@pytest.mark.parametrize("header", [
    b"PROXY TCP4 203.0.113.7 192.0.2.1 40001 443\r\n",
    v2_inet("203.0.113.7", "192.0.2.1", 40001, 443),
    v2_inet("203.0.113.7", "192.0.2.1", 40001, 443, tlvs=tlv(0x02, b"example.org")),
], ids=["v1", "v2", "v2-tlv"])
def test_header_from_a_trusted_peer_names_the_client(proxy, wsproxy_log, header):
    running = pp_proxy(proxy)
    with running.client() as ws:
        balancer_port = ws.local_port
        # Header and request in one segment: the request must survive intact.
        raw_request = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                       b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       b"Sec-WebSocket-Version: 13\r\n\r\n")
        ws.send_raw(header + raw_request)
        ws.key = "dGhlIHNhbXBsZSBub25jZQ=="
        response = ws.read_response()
        assert response.status == 101
        echo(ws)
    line = wsproxy_log.wait_for(lambda text: " closed: " in text,
                                what="the session's close line")
    assert "203.0.113.7:40001 (via 127.0.0.1:%d)" % balancer_port in line, line
    opened = wsproxy_log.find("open to")
    assert opened and "203.0.113.7:40001" in opened[0]


def test_header_in_pieces_then_handshake(proxy, wsproxy_log):
    running = pp_proxy(proxy)
    header = v2_inet("2001:db8::5", "2001:db8::1", 50123, 443)
    with running.client() as ws:
        for piece in (header[:5], header[5:17], header[17:]):
            ws.send_raw(piece)
        ws.handshake()
        echo(ws)
    wsproxy_log.wait_for(lambda text: "[2001:db8::5]:50123 (via 127.0.0.1:" in text
                         and "open to" in text, what="the session line naming the client")


def test_hooks_and_session_see_the_real_client(make_target, wsproxy_log):
    seen = []

    class Recording(ProxyRequestHandler):
        def session_started(self, session):
            seen.append((session.client_address, self.remote_address, self.client_address,
                         self.proxy_address))

    target = make_target()
    settings = Settings(target_host="127.0.0.1", target_port=target.port, proxy_protocol=True,
                        trusted_proxy=["127.0.0.0/8"])
    running = RunningProxy(ProxyServer(("127.0.0.1", 0), settings, Recording), settings)
    try:
        with WSClient(running.port) as ws:
            ws.send_raw(b"PROXY TCP4 198.51.100.20 192.0.2.1 61000 80\r\n")
            ws.handshake()
            balancer = ("127.0.0.1", ws.local_port)
            echo(ws)
        wait_until(lambda: seen, message="the session_started hook")
        real = ("198.51.100.20", 61000)
        assert seen[0] == (real, real, real, balancer)
    finally:
        running.stop()


def test_forwarded_headers_are_judged_by_the_real_client(proxy, wsproxy_log):
    """A client cannot pass its own X-Forwarded-For through a TCP-mode balancer."""
    running = pp_proxy(proxy)
    with running.client() as ws:
        ws.send_raw(b"PROXY TCP4 203.0.113.8 192.0.2.1 40002 443\r\n")
        ws.handshake(headers={"X-Forwarded-For": "198.51.100.66"})
        echo(ws)
    wsproxy_log.wait_for(lambda text: "203.0.113.8:40002" in text and " closed: " in text,
                         what="the close line naming the PROXY header's client")
    assert not wsproxy_log.find("198.51.100.66")


def test_untrusted_peer_is_closed_without_reading(proxy, wsproxy_log):
    running = pp_proxy(proxy, trusted_proxy=["10.0.0.0/8"])
    with running.client() as ws:
        ws.send_raw(b"PROXY TCP4 203.0.113.7 192.0.2.1 40001 443\r\n", tolerate_close=True)
        assert wait_closed(ws.sock) == b""
        port = ws.local_port
    line = wsproxy_log.wait_for(lambda text: "not a --trusted-proxy" in text,
                                what="the refusal line")
    assert "127.0.0.1:%d" % port in line and "203.0.113.7" not in line


@pytest.mark.parametrize("first_bytes", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"PROXY TCP4 203.0.113.7\r\nGET / HTTP/1.1\r\n\r\n",
    b"PROXY TCP4 203.0.113.7 192.0.2.1 40001 443\nGET / HTTP/1.1\r\n\r\n",
    V2_SIGNATURE + b"\x21\x11\xff\xffjunk",
    b"PROXY UNKNOWN " + b"z" * 200,
], ids=["missing", "v1-short", "v1-lf-only", "v2-oversize", "v1-no-crlf"])
def test_missing_or_malformed_header_closes(proxy, wsproxy_log, first_bytes):
    running = pp_proxy(proxy)
    with running.client() as ws:
        ws.send_raw(first_bytes)
        assert wait_closed(ws.sock) == b"", "nothing may be answered before a valid header"
    wsproxy_log.wait_for(lambda text: "PROXY protocol header missing or malformed" in text,
                         what="the refusal line")
    assert not wsproxy_log.find("open to")


def test_closed_before_the_header_is_one_line(proxy, wsproxy_log):
    running = pp_proxy(proxy)
    with running.client() as ws:
        ws.send_raw(b"PROXY TCP4 1.2.3.4 ")
        ws.sock.shutdown(socket.SHUT_WR)
        assert wait_closed(ws.sock) == b""
    wsproxy_log.wait_for(lambda text: "closed inside it" in text, what="the refusal line")


def test_silent_balancer_is_closed_at_the_handshake_timeout(proxy, wsproxy_log):
    running = pp_proxy(proxy, handshake_timeout=0.3)
    with running.client() as ws:
        ws.send_raw(b"PROXY TCP4 1.2.3.4")
        started = time.monotonic()
        assert wait_closed(ws.sock) == b""
        assert time.monotonic() - started < 3
    wsproxy_log.wait_for(lambda text: "no complete PROXY protocol header" in text,
                         what="the timeout line")


def test_local_header_is_a_health_check_on_the_real_peer(proxy, wsproxy_log):
    running = pp_proxy(proxy)
    with running.client() as ws:
        ws.send_raw(V2_LOCAL + b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        response = ws.read_response()
        port = ws.local_port
    assert response.status == 200 and b'"open_sessions"' in response.body
    line = wsproxy_log.wait_for(lambda text: "status page" in text, what="the status line")
    assert "127.0.0.1:%d: " % port in line and "via" not in line


def test_unknown_v1_keeps_the_real_peer(proxy, wsproxy_log):
    running = pp_proxy(proxy)
    with running.client() as ws:
        ws.send_raw(V1_UNKNOWN_SHORT)
        ws.handshake()
        port = ws.local_port
        echo(ws)
    wsproxy_log.wait_for(lambda text: "127.0.0.1:%d: open to" % port in text,
                         what="the session line with the socket's own peer")


def test_tls_after_the_header(proxy, wsproxy_log, tmp_path_factory):
    files = pki(tmp_path_factory)
    running = pp_proxy(proxy, cert=files.cert, key=files.key)
    context = ssl.create_default_context(cafile=files.ca)
    with running.client() as ws:
        ws.send_raw(b"PROXY TCP4 203.0.113.9 192.0.2.1 40009 443\r\n")
        ws.sock = context.wrap_socket(ws.sock, server_hostname="localhost")
        ws.send_request()
        # Read the 101 straight off the TLS socket (select cannot see TLS-buffered bytes).
        ws.sock.settimeout(5)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = ws.sock.recv(4096)
            assert chunk, "closed before the 101: %r" % head
            head += chunk
        assert head.startswith(b"HTTP/1.1 101 ")
    wsproxy_log.wait_for(lambda text: "203.0.113.9:40009 (via" in text and "open to" in text,
                         what="the wss session line naming the client")


def test_proxy_protocol_needs_trusted_proxies():
    with pytest.raises(ConfigError, match="trusted-proxy"):
        ProxyServer(("127.0.0.1", 0), Settings(target_host="127.0.0.1", target_port=1,
                                              proxy_protocol=True))


def test_unix_listener_takes_the_header_from_any_peer(make_target, wsproxy_log, tmp_path):
    """A Unix socket's file mode decides who connects: no --trusted-proxy needed there."""
    from wsproxy.server import UnixProxyServer

    target = make_target()
    path = str(tmp_path / "wsproxy.sock")
    settings = Settings(target_host="127.0.0.1", target_port=target.port, proxy_protocol=True)
    server = UnixProxyServer(path, settings)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True, name="proxy-serve-unix")
    thread.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(path)
            sock.sendall(b"PROXY TCP6 2001:db8::9 2001:db8::1 40123 443\r\n"
                         b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = wait_closed(sock)
        assert answer.startswith(b"HTTP/1.1 405 "), answer[:100]
        wsproxy_log.wait_for(lambda text: "[2001:db8::9]:40123 (via unix)" in text,
                             what="the refusal line naming the header's client")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- the writer: build_header, byte for byte, and back through the reader -----------------

from wsproxy.protocol.proxy_protocol import (  # noqa: E402
    SSLClient, SSLSubtype, TLVType, build_header, encode_tlvs, parse_tlvs, ssl_tlv)


def read_back(data: bytes) -> ProxyHeader:
    """Parse ``data`` fed one byte at a time; it must be exactly one header."""
    reader = ProxyHeaderReader()
    for index in range(len(data) - 1):
        assert reader.feed(data[index:index + 1]) == 1
        assert reader.header is None, "the header ended before its last byte"
    # The last byte comes with the client's request: only the header's byte is taken.
    assert reader.feed(data[-1:] + REQUEST) == 1
    assert reader.header is not None and reader.header.length == len(data)
    return reader.header


@pytest.mark.parametrize("source, destination, expected", [
    (("192.168.0.1", 56324), ("192.168.0.11", 443), SPEC_V1_EXAMPLE),
    (("2001:db8::1", 0), ("::1", 65535), b"PROXY TCP6 2001:db8::1 ::1 0 65535\r\n"),
    (("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
     ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535), V1_TCP6_LONGEST),
    # A dual-stack listener's IPv4 peer is an IPv4 client.
    (("::ffff:203.0.113.9", 40000), ("::ffff:127.0.0.1", 8080),
     b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 8080\r\n"),
    # One header, one family: the IPv4 end is mapped into IPv6 (RFC 5952 §5
    # text, the same from every Python version).
    (("203.0.113.9", 0), ("::1", 8080), b"PROXY TCP6 ::ffff:203.0.113.9 ::1 0 8080\r\n"),
    (("fe80::1%eth0", 1), ("fe80::2%eth0", 2), b"PROXY TCP6 fe80::1 fe80::2 1 2\r\n"),
])
def test_v1_header_bytes_and_round_trip(source, destination, expected):
    data = build_header(1, source, destination)
    assert data == expected
    header = read_back(data)
    assert (header.version, header.command, header.transport) == (1, Command.PROXY,
                                                                  Transport.STREAM)
    assert header.source[1] == source[1] and header.destination[1] == destination[1]


@pytest.mark.parametrize("source, destination", [
    ("", ("127.0.0.1", 80)),                      # a Unix socket client (unnamed)
    ("/run/client.sock", "/run/wsproxy.sock"),     # Unix socket paths
    (None, None),
    (("example.org", 1), ("127.0.0.1", 80)),       # not an IP address
    (("127.0.0.1", 70000), ("127.0.0.1", 80)),     # not a port
    (("127.0.0.1", 1), None),
])
def test_unknown_addresses_are_v1_unknown_and_v2_local(source, destination):
    assert build_header(1, source, destination) == V1_UNKNOWN_SHORT
    assert read_back(build_header(1, source, destination)).client_address is None
    data = build_header(2, source, destination, [(TLVType.UNIQUE_ID, b"7")])
    assert data == V2_SIGNATURE + b"\x20\x00\x00\x04" + b"\x05\x00\x017"
    header = read_back(data)
    assert header.command is Command.LOCAL and header.client_address is None
    assert header.tlv(TLVType.UNIQUE_ID) == b"7"


def test_v2_tcp4_header_is_what_haproxy_sends():
    assert build_header(2, ("172.19.0.1", 42578), ("172.19.0.3", 80)) == V2_TCP4_CAPTURED


def test_v2_tcp6_header_matches_the_specification_layout():
    assert build_header(2, ("2001:db8::1", 4711), ("2001:db8::2", 443)) == V2_TCP6
    mixed = build_header(2, ("::ffff:192.0.2.9", 5), ("192.0.2.1", 6))
    assert mixed == v2_inet("192.0.2.9", "192.0.2.1", 5, 6)


def test_v2_tlvs_round_trip_in_order():
    tlvs = [(TLVType.AUTHORITY, b"example.org"), (TLVType.UNIQUE_ID, b"12345"),
            ssl_tlv("TLSv1.3", "TLS_AES_128_GCM_SHA256", "alice", client_certificate=True)]
    data = build_header(2, ("198.51.100.7", 50000), ("192.0.2.1", 443), tlvs)
    assert data == v2_inet("198.51.100.7", "192.0.2.1", 50000, 443,
                           tlvs=b"".join(tlv(kind, value) for kind, value in tlvs))
    header = read_back(data)
    assert header.source == ("198.51.100.7", 50000)
    assert header.tlvs == tuple(tlvs)
    assert header.tlv(TLVType.AUTHORITY) == b"example.org"
    assert header.tlv(TLVType.ALPN) is None
    ssl_value = header.tlv(TLVType.SSL)
    # §2.2.6: client bits, a 4-byte verify (0: verified), then sub-TLVs.
    assert ssl_value[0] == SSLClient.SSL | SSLClient.CERT_CONN
    assert ssl_value[1:5] == b"\0\0\0\0"
    assert parse_tlvs(ssl_value[5:]) == ((SSLSubtype.VERSION, b"TLSv1.3"),
                                        (SSLSubtype.CIPHER, b"TLS_AES_128_GCM_SHA256"),
                                        (SSLSubtype.CN, b"alice"))


def test_ssl_tlv_without_a_client_certificate_says_not_verified():
    kind, value = ssl_tlv("TLSv1.2")
    assert kind == TLVType.SSL
    assert value == bytes([SSLClient.SSL]) + b"\0\0\0\x01" + tlv(SSLSubtype.VERSION, b"TLSv1.2")


def test_v1_ignores_tlvs():
    assert build_header(1, ("192.168.0.1", 56324), ("192.168.0.11", 443),
                        [(TLVType.UNIQUE_ID, b"1")]) == SPEC_V1_EXAMPLE


@pytest.mark.parametrize("call", [
    lambda: build_header(3, ("1.2.3.4", 1), ("1.2.3.4", 2)),
    lambda: build_header(2, ("1.2.3.4", 1), ("1.2.3.4", 2), [(TLVType.NOOP, bytes(65536))]),
    lambda: build_header(2, ("1.2.3.4", 1), ("1.2.3.4", 2),
                         [(TLVType.NOOP, bytes(40000)), (TLVType.NOOP, bytes(40000))]),
    lambda: encode_tlvs([(256, b"")]),
])
def test_writer_refuses_what_does_not_fit(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize("block", [b"\x05", b"\x05\x00", b"\x05\x00\x02x"])
def test_tlv_running_past_the_header_is_refused(block):
    with pytest.raises(ProxyHeaderError, match="TLV"):
        parse_header(v2_inet("192.0.2.9", "192.0.2.1", 1, 2, tlvs=block))
    with pytest.raises(ProxyHeaderError, match="TLV"):
        parse_tlvs(block)


def test_tlvs_of_a_header_whose_addresses_are_ignored_are_kept_only_when_they_parse():
    assert parse_header(v2(0x0, 0x00, b"\x05\x00\x01x")).tlvs == ((5, b"x"),)
    assert parse_header(v2(0x0, 0x11, bytes(12) + b"\x05\x00\x01x")).tlvs == ((5, b"x"),)
    assert parse_header(v2(0x0, 0x00, b"\x05\x00\x09x")).tlvs == ()
