"""hixie-75 and hixie-76 sessions from a raw-socket client, plain and over TLS.

The client here is written from the drafts alone (it imports nothing from
wsproxy): it builds hixie-76 keys the way a browser did, checks the MD5
challenge answer, and frames every message as ``0x00``, base64 text,
``0xFF`` -- split over many TCP segments, or many messages to one segment.
"""

import base64
import hashlib
import os
import random
import re
import select
import socket
import ssl
import struct
import time
from typing import List, Optional, Tuple

import pytest

from certs import pki

#: draft-hixie-thewebsocketprotocol-76 §1.2's example handshake and answer.
SPEC_KEY1 = "4 @1  46546xW%0l 1 5"
SPEC_KEY2 = "12998 5 Y3 1  .P00"
SPEC_KEY3 = b"^n:ds[4U"
SPEC_ANSWER = b"8jKS'y:G*Co,Wxa-"

CLOSE = b"\xff\x00"
TIMEOUT = 5.0


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    return pki(tmp_path_factory)


# -- a hixie client, from the drafts ---------------------------------------------------


def make_key(rng: random.Random) -> Tuple[str, int]:
    """A Sec-WebSocket-Key1/2 value and the number it stands for (hixie-76 §4.1 step 17-21)."""
    spaces = rng.randint(1, 12)
    number = rng.randint(0, 0xFFFFFFFF // spaces)
    chars = list(str(number * spaces))
    for _ in range(rng.randint(1, 12)):
        chars.insert(rng.randint(0, len(chars)), rng.choice("!\"#$%&'()*+,-./:;<=>?@ABCxyz~"))
    for _ in range(spaces):
        chars.insert(rng.randint(1, len(chars) - 1), " ")
    return "".join(chars), number


def challenge_answer(key1: str, key2: str, key3: bytes) -> bytes:
    """hixie-76 §5.2: MD5 of both key numbers (32-bit big-endian) and key3."""
    def number(key: str) -> int:
        return int(re.sub(r"[^0-9]", "", key)) // key.count(" ")
    return hashlib.md5(struct.pack(">II", number(key1), number(key2)) + key3).digest()


def hixie_request(version: int, host: str = "example.com", path: str = "/demo",
                  origin: Optional[str] = "http://example.com",
                  key1: Optional[str] = None, key2: Optional[str] = None,
                  protocol: Optional[str] = None) -> bytes:
    """The request head of a hixie-75 or hixie-76 handshake (key3 not included)."""
    lines = ["GET %s HTTP/1.1" % path, "Upgrade: WebSocket", "Connection: Upgrade",
             "Host: %s" % host]
    if origin is not None:
        lines.append("Origin: %s" % origin)
    if version == 76:
        lines.append("Sec-WebSocket-Key1: %s" % key1)
        lines.append("Sec-WebSocket-Key2: %s" % key2)
        if protocol:
            lines.append("Sec-WebSocket-Protocol: %s" % protocol)
    elif protocol:
        lines.append("WebSocket-Protocol: %s" % protocol)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def frame(data: bytes) -> bytes:
    """One hixie text frame carrying ``data`` as base64."""
    return b"\x00" + base64.b64encode(data) + b"\xff"


class HixieClient:
    """A raw socket (optionally TLS) speaking hixie-75/76 by hand."""

    def __init__(self, port: int, tls_context: Optional[ssl.SSLContext] = None) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls_context is not None:
            try:
                sock = tls_context.wrap_socket(sock, server_hostname="localhost")
            except BaseException:
                sock.close()
                raise
        self.sock = sock
        self.buffer = bytearray()
        self.closed = False

    def __enter__(self) -> "HixieClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.sock.close()

    def _recv_some(self, deadline: float, what: str) -> bytes:
        pending = getattr(self.sock, "pending", None)
        if pending is None or not pending():
            left = deadline - time.monotonic()
            readable, _, _ = select.select([self.sock], [], [], max(0.0, left))
            if not readable:
                pytest.fail("timed out waiting for %s (have %r)" % (what, bytes(self.buffer[:200])))
        try:
            return self.sock.recv(65536)
        except ConnectionResetError:
            return b""

    def _fill(self, count: int, deadline: float, what: str) -> None:
        while len(self.buffer) < count:
            chunk = self._recv_some(deadline, what)
            if not chunk:
                pytest.fail("connection closed while waiting for %s (have %r)"
                            % (what, bytes(self.buffer[:200])))
            self.buffer += chunk

    def read_head(self) -> Tuple[str, List[Tuple[str, str]]]:
        """The response's status line and its header lines, in order."""
        deadline = time.monotonic() + TIMEOUT
        while b"\r\n\r\n" not in self.buffer:
            chunk = self._recv_some(deadline, "the response head")
            if not chunk:
                pytest.fail("closed before a response head: %r" % bytes(self.buffer))
            self.buffer += chunk
        end = self.buffer.index(b"\r\n\r\n")
        lines = self.buffer[:end].decode("latin-1").split("\r\n")
        del self.buffer[:end + 4]
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
        return lines[0], headers

    def read_bytes(self, count: int) -> bytes:
        self._fill(count, time.monotonic() + TIMEOUT, "%d bytes" % count)
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    def read_message(self) -> Optional[bytes]:
        """The next message's decoded payload, or None for the closing ``0xFF 0x00``."""
        deadline = time.monotonic() + TIMEOUT
        self._fill(1, deadline, "a frame")
        if self.buffer[0] == 0xFF:
            self._fill(2, deadline, "the closing handshake")
            assert self.buffer[1] == 0x00, "0xFF not followed by 0x00: %r" % bytes(self.buffer[:10])
            del self.buffer[:2]
            return None
        assert self.buffer[0] == 0x00, "frame type %#x, expected 0x00" % self.buffer[0]
        while 0xFF not in self.buffer:
            chunk = self._recv_some(deadline, "the end of a frame")
            if not chunk:
                pytest.fail("closed inside a frame: %r" % bytes(self.buffer[:200]))
            self.buffer += chunk
        end = self.buffer.index(0xFF)
        text = bytes(self.buffer[1:end])
        del self.buffer[:end + 1]
        return base64.b64decode(text, validate=True)

    def read_stream(self, count: int) -> bytes:
        """Decode messages until ``count`` payload bytes arrived."""
        received = bytearray()
        while len(received) < count:
            message = self.read_message()
            assert message is not None, "closed after %d of %d bytes" % (len(received), count)
            received += message
        assert len(received) == count
        return bytes(received)

    def expect_closed(self) -> bytes:
        """Read until the server closes the connection; return the bytes read meanwhile."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            chunk = self._recv_some(deadline, "the server to close")
            if not chunk:
                data = bytes(self.buffer)
                self.buffer.clear()
                return data
            self.buffer += chunk


def header(headers: List[Tuple[str, str]], name: str) -> Optional[str]:
    values = [value for key, value in headers if key.lower() == name.lower()]
    assert len(values) <= 1, "header %s repeated: %r" % (name, values)
    return values[0] if values else None


def open76(port: int, tls_context: Optional[ssl.SSLContext] = None, host: str = "example.com",
           path: str = "/demo", rng: Optional[random.Random] = None,
           protocol: Optional[str] = None) -> HixieClient:
    """A hixie-76 session whose handshake was checked (challenge answer, location)."""
    rng = rng or random.Random()
    key1, _ = make_key(rng)
    key2, _ = make_key(rng)
    key3 = os.urandom(8)
    client = HixieClient(port, tls_context)
    try:
        client.sock.sendall(hixie_request(76, host=host, path=path, key1=key1, key2=key2,
                                          protocol=protocol) + key3)
        status, headers = client.read_head()
        assert status.startswith("HTTP/1.1 101"), status
        scheme = "wss" if tls_context is not None else "ws"
        assert header(headers, "Sec-WebSocket-Location") == "%s://%s%s" % (scheme, host, path)
        assert client.read_bytes(16) == challenge_answer(key1, key2, key3)
    except BaseException:
        client.sock.close()
        raise
    return client


def open75(port: int, tls_context: Optional[ssl.SSLContext] = None) -> HixieClient:
    """A hixie-75 session whose handshake was checked."""
    client = HixieClient(port, tls_context)
    try:
        client.sock.sendall(hixie_request(75))
        status, headers = client.read_head()
        assert status == "HTTP/1.1 101 Web Socket Protocol Handshake", status
        scheme = "wss" if tls_context is not None else "ws"
        assert header(headers, "WebSocket-Location") == "%s://example.com/demo" % scheme
    except BaseException:
        client.sock.close()
        raise
    return client


def tls_client_context(tls_files) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=tls_files.ca)


# -- the client checks itself against the draft ---------------------------------------


def test_client_key_numbers_follow_the_draft():
    assert challenge_answer(SPEC_KEY1, SPEC_KEY2, SPEC_KEY3) == SPEC_ANSWER
    rng = random.Random(76)
    for _ in range(200):
        key, number = make_key(rng)
        digits = int(re.sub(r"[^0-9]", "", key))
        assert key.count(" ") and digits % key.count(" ") == 0
        assert digits // key.count(" ") == number
        assert key[0] != " " and key[-1] != " "


# -- handshakes ---------------------------------------------------------------------------


def test_hixie76_spec_example_answer(proxy):
    running = proxy()
    with HixieClient(running.port) as client:
        client.sock.sendall(hixie_request(76, key1=SPEC_KEY1, key2=SPEC_KEY2, protocol="sample")
                            + SPEC_KEY3)
        status, headers = client.read_head()
        assert status == "HTTP/1.1 101 WebSocket Protocol Handshake"
        assert header(headers, "Upgrade") == "WebSocket"
        assert header(headers, "Connection") == "Upgrade"
        assert header(headers, "Sec-WebSocket-Origin") == "http://example.com"
        assert header(headers, "Sec-WebSocket-Location") == "ws://example.com/demo"
        assert header(headers, "Sec-WebSocket-Protocol") == "sample"
        assert client.read_bytes(16) == SPEC_ANSWER


def test_hixie76_random_keys_many_times(proxy):
    running = proxy()
    rng = random.Random(2010)
    for _ in range(20):
        with open76(running.port, rng=rng) as client:
            client.sock.sendall(frame(b"k"))
            assert client.read_stream(1) == b"k"


def test_hixie76_key3_in_a_later_segment(proxy):
    running = proxy()
    rng = random.Random()
    key1, key2, key3 = make_key(rng)[0], make_key(rng)[0], os.urandom(8)
    with HixieClient(running.port) as client:
        client.sock.sendall(hixie_request(76, key1=key1, key2=key2))
        select.select([], [], [], 0.05)  # let the head arrive alone; valid either way
        for index in range(8):
            client.sock.sendall(key3[index:index + 1])
        status, _ = client.read_head()
        assert status.startswith("HTTP/1.1 101")
        assert client.read_bytes(16) == challenge_answer(key1, key2, key3)


def test_hixie76_over_tls_says_wss(proxy, tls_files):
    running = proxy(cert=tls_files.cert, key=tls_files.key)
    with open76(running.port, tls_client_context(tls_files)) as client:
        payload = os.urandom(3000)
        client.sock.sendall(frame(payload))
        assert client.read_stream(len(payload)) == payload


def test_hixie75_handshake_headers(proxy):
    running = proxy()
    with HixieClient(running.port) as client:
        client.sock.sendall(hixie_request(75, protocol="chat"))
        status, headers = client.read_head()
        assert status == "HTTP/1.1 101 Web Socket Protocol Handshake"
        assert header(headers, "Upgrade") == "WebSocket"
        assert header(headers, "Connection") == "Upgrade"
        assert header(headers, "WebSocket-Origin") == "http://example.com"
        assert header(headers, "WebSocket-Location") == "ws://example.com/demo"
        assert header(headers, "WebSocket-Protocol") == "chat"
        assert header(headers, "Sec-WebSocket-Location") is None
        # No challenge answer: the first bytes after the head are framed data.
        client.sock.sendall(frame(b"seventy-five"))
        assert client.read_stream(12) == b"seventy-five"


def test_hixie75_over_tls_says_wss(proxy, tls_files):
    running = proxy(cert=tls_files.cert, key=tls_files.key)
    with open75(running.port, tls_client_context(tls_files)) as client:
        client.sock.sendall(frame(b"secure"))
        assert client.read_stream(6) == b"secure"


@pytest.mark.parametrize("key1,key2", [
    ("12345", SPEC_KEY2),                    # no spaces
    ("1 2 3", SPEC_KEY2),                    # 123 over 2 spaces: not an integer
    (SPEC_KEY1, "no digits here"),           # no digits
    (SPEC_KEY1, "99999999999 9"),            # over 32 bits
], ids=["no-spaces", "not-integral", "no-digits", "over-32-bits"])
def test_hixie76_bad_key_is_400_and_close(proxy, key1, key2):
    running = proxy()
    with HixieClient(running.port) as client:
        client.sock.sendall(hixie_request(76, key1=key1, key2=key2) + SPEC_KEY3)
        status, _ = client.read_head()
        assert status.startswith("HTTP/1.1 400"), status
        client.expect_closed()


# -- framing -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [75, 76])
def test_echo_of_random_binary(proxy, version):
    running = proxy()
    with (open76 if version == 76 else open75)(running.port) as client:
        for size in (1, 2, 3, 100, 4096, 100000):
            payload = os.urandom(size)
            client.sock.sendall(frame(payload))
            assert client.read_stream(size) == payload


@pytest.mark.parametrize("version", [75, 76])
def test_frames_split_across_many_segments(proxy, version):
    running = proxy()
    with (open76 if version == 76 else open75)(running.port) as client:
        payloads = [os.urandom(size) for size in (1, 50, 700)]
        wire = b"".join(frame(p) for p in payloads)
        for start in range(0, len(wire), 7):
            client.sock.sendall(wire[start:start + 7])
        expected = b"".join(payloads)
        assert client.read_stream(len(expected)) == expected


@pytest.mark.parametrize("version", [75, 76])
def test_frames_coalesced_in_one_segment(proxy, version):
    running = proxy()
    with (open76 if version == 76 else open75)(running.port) as client:
        payloads = [os.urandom(random.randint(1, 300)) for _ in range(40)]
        client.sock.sendall(b"".join(frame(p) for p in payloads))
        expected = b"".join(payloads)
        assert client.read_stream(len(expected)) == expected


def test_frames_in_the_handshake_segment_are_not_lost(proxy):
    running = proxy()
    rng = random.Random()
    key1, key2, key3 = make_key(rng)[0], make_key(rng)[0], os.urandom(8)
    early = os.urandom(500)
    with HixieClient(running.port) as client:
        client.sock.sendall(hixie_request(76, key1=key1, key2=key2) + key3 + frame(early))
        status, _ = client.read_head()
        assert status.startswith("HTTP/1.1 101")
        assert client.read_bytes(16) == challenge_answer(key1, key2, key3)
        assert client.read_stream(len(early)) == early


@pytest.mark.parametrize("version", [75, 76])
def test_client_close_handshake(proxy, echo_target, version):
    running = proxy()
    with (open76 if version == 76 else open75)(running.port) as client:
        client.sock.sendall(frame(b"last words"))
        assert client.read_stream(10) == b"last words"
        client.sock.sendall(CLOSE)
        # The answer is the closing handshake and nothing after it.
        assert client.read_message() is None
        assert client.expect_closed() == b""
    connection = echo_target.wait_connection()
    connection.wait_eof()
    assert connection.received_bytes() == b"last words"


def test_oversized_frame_closes_the_connection(proxy):
    running = proxy(max_message_size=1024)
    with open76(running.port) as client:
        client.sock.sendall(frame(b"fits"))
        assert client.read_stream(4) == b"fits"
        # 1500 bytes of base64 and still no 0xFF: over the limit before it ends.
        client.sock.sendall(b"\x00" + b"QUFB" * 375)
        rest = client.expect_closed()
        assert rest in (b"", CLOSE), rest


def test_complete_oversized_frame_closes_the_connection(proxy):
    running = proxy(max_message_size=1024)
    with open75(running.port) as client:
        client.sock.sendall(frame(os.urandom(2000)))
        rest = client.expect_closed()
        assert rest in (b"", CLOSE), rest


def test_frame_at_the_limit_passes(proxy):
    running = proxy(max_message_size=1024)
    with open76(running.port) as client:
        payload = os.urandom(768)  # exactly 1024 bytes of base64
        client.sock.sendall(frame(payload))
        assert client.read_stream(768) == payload


def test_target_bytes_arrive_as_base64_frames(proxy, source_target):
    source = source_target(200000)
    running = proxy(target=source)
    with open76(running.port) as client:
        data = client.read_stream(200000)
        assert client.read_message() is None, "the target's close must end in 0xFF 0x00"
    assert hashlib.sha256(data).hexdigest() == source.wait_connection().sent_sha256
