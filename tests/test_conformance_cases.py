"""Autobahn|Testsuite cases, replayed byte for byte through a real proxy.

``bench/conformance.py`` runs the whole suite (see ``docs/conformance.md``).
These tests pin one representative case of every section it grades, so a
regression shows up in the ordinary test run: 1.x echo at every length
encoding, 2.x ping/pong, 3.x RSV bits, 4.x reserved opcodes, 5.x
fragmentation, 6.x UTF-8 (including failing fast in the middle of a frame),
7.x close codes and reasons, 9.x large and many messages, 10.x
auto-fragmentation.  Each test names the suite's case ids it mirrors.

The proxy runs in front of an echo target on 127.0.0.1, as in the suite.
No subprotocol is offered (the suite offers none), so wsproxy is in binary
mode: a text message is forwarded once complete and valid UTF-8 and its
echo comes back in binary frames, one per target read; the tests compare
the echoed byte stream.  The client below is written from RFC 6455 for
this file and imports nothing from wsproxy.
"""

import base64
import hashlib
import os
import socket
import struct
import threading
import time
from typing import List, Optional, Tuple

import pytest

#: Seconds any single wait in a test may take before it fails.
TIMEOUT = 5.0
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
#: wsproxy's default limit for a text message held in memory (Settings).
MAX_TEXT = 1024 * 1024

#: Autobahn 6.4.1-6.4.4: valid UTF-8, then U+110000 encoded (invalid), then more text.
UTF8_VALID_PART = bytes.fromhex("cebae1bdb9cf83cebcceb5")
UTF8_INVALID_PART = bytes.fromhex("f4908080")
UTF8_TAIL = bytes.fromhex("656469746564")

Frame = Tuple[bool, int, int, bytes]  # (fin, rsv, opcode, payload)


def mask(payload: bytes, key: bytes) -> bytes:
    """RFC 6455 §5.3 masking as one big-integer XOR (fast for megabytes)."""
    if not payload:
        return b""
    repeated = (key * (len(payload) // 4 + 1))[:len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(payload), "big")


def frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0,
          length: Optional[int] = None) -> bytes:
    """One masked client frame exactly as asked, legal or not (``length`` may lie)."""
    declared = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    if declared < 126:
        header = struct.pack("!BB", first, 0x80 | declared)
    elif declared < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, declared)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, declared)
    key = os.urandom(4)
    return header + key + mask(payload, key)


def close_body(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


class RawClient:
    """A WebSocket client on a plain socket that sends exactly the bytes it is given."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray()
        key = base64.b64encode(os.urandom(16))
        self.sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key +
                          b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        self.buffer = bytearray(rest)
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        assert head.startswith(b"HTTP/1.1 101 "), head
        assert b"\r\nsec-websocket-accept: " + accept.lower() in head.lower(), head

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> None:
        data = self.sock.recv(262144)
        if not data:
            raise EOFError("the proxy closed the connection")
        self.buffer += data

    def _take(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self._fill()
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    def send(self, data: bytes, chop: Optional[int] = None) -> None:
        """Send ``data`` at once, or ``chop`` bytes per system call (the suite's "chops")."""
        if chop is None:
            self.sock.sendall(data)
            return
        for start in range(0, len(data), chop):
            self.sock.sendall(data[start:start + chop])

    def recv_frame(self) -> Frame:
        first, second = self._take(2)
        # §5.1: "A server MUST NOT mask any frames that it sends to the client."
        assert not second & 0x80, "server frame is masked"
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._take(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._take(8))[0]
        return bool(first & 0x80), (first >> 4) & 7, first & 0x0F, self._take(length)

    def recv_echo(self, count: int) -> bytes:
        """Read data frames until ``count`` payload bytes arrived; each must be a whole binary frame."""
        data = bytearray()
        while len(data) < count:
            fin, rsv, opcode, payload = self.recv_frame()
            assert (fin, rsv, opcode) == (True, 0, BINARY), \
                "expected echo data, got opcode %d fin %s rsv %d: %r" % (opcode, fin, rsv, payload[:60])
            data += payload
        assert len(data) == count, "echo longer than sent: %d > %d" % (len(data), count)
        return bytes(data)

    def recv_pong(self) -> bytes:
        fin, rsv, opcode, payload = self.recv_frame()
        assert (fin, rsv, opcode) == (True, 0, PONG), "expected a pong, got opcode %d" % opcode
        return payload

    def recv_pong_and_echo(self, count: int) -> Tuple[bytes, bytes, int]:
        """Read one pong and ``count`` echoed bytes; return (pong, echo, echo bytes before the pong).

        A binary fragment is forwarded, so may be echoed, before a ping
        that follows it is even read: the caller says how early the pong
        must come.
        """
        pong = None  # type: Optional[bytes]
        data = bytearray()
        before = 0
        while pong is None or len(data) < count:
            fin, rsv, opcode, payload = self.recv_frame()
            assert fin and not rsv, "fragmented or RSV frame from the proxy"
            if opcode == PONG and pong is None:
                pong = payload
                before = len(data)
            else:
                assert opcode == BINARY, "expected a pong or echo data, got opcode %d" % opcode
                data += payload
        assert len(data) == count, "echo longer than sent: %d > %d" % (len(data), count)
        return pong, bytes(data), before

    def recv_close(self) -> Tuple[Optional[int], bytes, List[Frame]]:
        """Read until the close frame; return (code, reason, frames that came before it)."""
        before = []  # type: List[Frame]
        while True:
            got = self.recv_frame()
            if got[2] == CLOSE:
                payload = got[3]
                if not payload:
                    return None, b"", before
                return struct.unpack("!H", payload[:2])[0], payload[2:], before
            before.append(got)

    def expect_failure(self, code: int) -> List[Frame]:
        """The proxy must fail the connection with ``code``, then end TCP; return frames before the close."""
        got, reason, before = self.recv_close()
        assert got == code, "close code %s (%r), expected %d" % (got, reason, code)
        # §7.4.1 / §5.5.1: the reason is UTF-8 and the frame a control frame.
        reason.decode("utf-8")
        assert len(reason) <= 123
        self.finish_close()
        return before

    def finish_close(self) -> None:
        """Answer the proxy's close, then wait for it to end the TCP connection."""
        try:
            self.sock.sendall(frame(CLOSE, close_body(1000)))
        except OSError:
            pass
        self.expect_eof()

    def expect_eof(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return
            if not data:
                return
            raise AssertionError("data after the close frame: %r" % data[:60])
        raise AssertionError("the proxy did not end the TCP connection")

    def close_normally(self, code: int = 1000, reason: bytes = b"") -> None:
        """Client-initiated close: the proxy echoes the code (§5.5.1) and ends TCP."""
        self.send(frame(CLOSE, close_body(code, reason)))
        got, _, before = self.recv_close()
        assert before == [], "unexpected frames before the close: %r" % before
        assert got == code
        self.expect_eof()


@pytest.fixture
def ws(proxy, echo_target):
    """A client whose handshake with a proxy (in front of an echo target) succeeded."""
    running = proxy(target=echo_target)
    client = RawClient(running.port)
    yield client
    client.close()


@pytest.fixture
def ws_and_target(proxy, echo_target):
    running = proxy(target=echo_target)
    client = RawClient(running.port)
    yield client, echo_target
    client.close()


def target_bytes(target) -> bytes:
    """What the target received over the whole session (waits for its connection to end).

    The end may be an EOF or, when the proxy closes while echoed bytes are
    still unread, a reset; either way nothing more can arrive.
    """
    connection = target.wait_connection()
    if not connection.finished.wait(TIMEOUT):
        pytest.fail("the proxy did not end its target connection within %.1fs" % TIMEOUT)
    return connection.received_bytes()


# -- 1.x framing -----------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536])
@pytest.mark.parametrize("opcode", [TEXT, BINARY], ids=["text", "binary"])
def test_1_echo_at_each_length_encoding(ws, opcode, length):
    """1.1.1-1.1.6, 1.2.1-1.2.6: 7-bit, 16-bit and 64-bit lengths; an empty message echoes nothing."""
    payload = b"*" * length if opcode == TEXT else os.urandom(length)
    ws.send(frame(opcode, payload))
    if length:
        assert ws.recv_echo(length) == payload
    ws.close_normally()


@pytest.mark.parametrize("opcode", [TEXT, BINARY], ids=["text", "binary"])
def test_1_1_8_message_in_chops_of_997(ws, opcode):
    """1.1.8 / 1.2.8: a 65536-byte message whose bytes arrive 997 at a time."""
    payload = b"*" * 65536 if opcode == TEXT else os.urandom(65536)
    ws.send(frame(opcode, payload), chop=997)
    assert ws.recv_echo(65536) == payload
    ws.close_normally()


# -- 2.x pings and pongs ----------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"Hello, world!", bytes(range(256))[:8] + b"\xff\xfe", b"*" * 125],
                         ids=["2.1-empty", "2.2-text", "2.3-binary", "2.4-125"])
def test_2_ping_answered_with_same_payload(ws, payload):
    ws.send(frame(PING, payload))
    assert ws.recv_pong() == payload
    ws.close_normally()


def test_2_5_ping_over_125_bytes_fails_1002(ws):
    """§5.5: control frames carry at most 125 bytes (here in the 16-bit length form)."""
    ws.send(frame(PING, b"*" * 126))
    assert ws.expect_failure(1002) == []


def test_2_6_ping_in_octet_chops(ws):
    payload = b"*" * 125
    ws.send(frame(PING, payload), chop=1)
    assert ws.recv_pong() == payload
    ws.close_normally()


def test_2_7_unsolicited_pong_ignored(ws):
    ws.send(frame(PONG, b"unsolicited"))
    ws.send(frame(BINARY, b"after the pong"))
    assert ws.recv_echo(14) == b"after the pong"
    ws.close_normally()


def test_2_10_ten_pings_ten_pongs_in_order(ws):
    """2.10 / 2.11: every ping is answered, in order, also when sent in one write or in chops."""
    pings = [("payload-%d" % n).encode() for n in range(10)]
    ws.send(b"".join(frame(PING, p) for p in pings), chop=None)
    assert [ws.recv_pong() for _ in pings] == pings
    ws.send(b"".join(frame(PING, p) for p in pings), chop=1)
    assert [ws.recv_pong() for _ in pings] == pings
    ws.close_normally()


# -- 3.x reserved bits -----------------------------------------------------------------


@pytest.mark.parametrize("rsv", range(1, 8))
def test_3_reserved_bits_fail_1002(ws, rsv):
    """3.1-3.7: §5.2 RSV bits MUST be 0 without an extension; text, binary, ping, close alike."""
    opcode = [None, TEXT, TEXT, TEXT, BINARY, PING, CLOSE, BINARY][rsv]
    ws.send(frame(opcode, b"Hello, world!" if opcode != CLOSE else close_body(1000), rsv=rsv))
    assert ws.expect_failure(1002) == []


def test_3_2_no_pong_after_bad_frame(ws_and_target):
    """3.2: a good text message, a frame with RSV=2, a ping: the good message reaches the target,
    the connection fails with 1002 and the ping is never answered."""
    ws, target = ws_and_target
    ws.send(frame(TEXT, b"Hello, world!") + frame(TEXT, b"Hello, world!", rsv=2) + frame(PING))
    before = ws.expect_failure(1002)
    assert all(opcode != PONG for _, _, opcode, _ in before), before
    assert target_bytes(target) == b"Hello, world!"


# -- 4.x opcodes ---------------------------------------------------------------------------


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
def test_4_reserved_opcodes_fail_1002(ws_and_target, opcode):
    """4.1.1-4.1.5, 4.2.1-4.2.5: §5.2 reserved opcodes fail the connection, before or after a message."""
    ws, target = ws_and_target
    ws.send(frame(TEXT, b"Hello, world!"))
    assert ws.recv_echo(13) == b"Hello, world!"
    ws.send(frame(opcode, b"Hello, world!") + frame(PING))
    before = ws.expect_failure(1002)
    assert all(op != PONG for _, _, op, _ in before)
    assert target_bytes(target) == b"Hello, world!"


# -- 5.x fragmentation -------------------------------------------------------------------


@pytest.mark.parametrize("opcode", [PING, PONG], ids=["5.1-ping", "5.2-pong"])
def test_5_fragmented_control_frame_fails_1002(ws, opcode):
    ws.send(frame(opcode, b"fragment1", fin=False) + frame(CONT, b"fragment2"))
    assert ws.expect_failure(1002) == []


@pytest.mark.parametrize("opcode", [TEXT, BINARY], ids=["text", "binary"])
@pytest.mark.parametrize("chop", [None, 1], ids=["5.6-whole", "5.7-octets"])
def test_5_ping_between_fragments(ws, opcode, chop):
    """5.3-5.8: a two-fragment message with a ping in between: the pong comes before the echo
    of anything sent after the ping (a text message is only forwarded once complete)."""
    # Repeated: the wrong order needs the echo to win a race it usually loses.
    for _ in range(200 if chop is None else 3):
        ws.send(frame(opcode, b"fragment1", fin=False) + frame(PING, b"ping payload")
                + frame(CONT, b"fragment2"), chop=chop)
        pong, echo, echoed_before_pong = ws.recv_pong_and_echo(18)
        assert (pong, echo) == (b"ping payload", b"fragment1fragment2")
        assert echoed_before_pong <= (0 if opcode == TEXT else len(b"fragment1"))
    ws.close_normally()


@pytest.mark.parametrize("fin", [True, False], ids=["5.9-fin", "5.10-nofin"])
def test_5_continuation_without_message_fails_1002(ws, fin):
    ws.send(frame(CONT, b"non-continuation payload", fin=fin) + frame(TEXT, b"Hello, world!"))
    assert ws.expect_failure(1002) == []


def test_5_15_continuation_after_finished_message_fails_1002(ws_and_target):
    """5.15: the first message is complete and forwarded; the stray continuation fails."""
    ws, target = ws_and_target
    ws.send(frame(TEXT, b"fragment1", fin=False) + frame(CONT, b"fragment2")
            + frame(CONT, b"fragment3", fin=False) + frame(TEXT, b"fragment4"))
    ws.expect_failure(1002)
    assert target_bytes(target) == b"fragment1fragment2"


def test_5_18_new_message_inside_fragmented_one_fails_1002(ws_and_target):
    """5.18: a text frame where a continuation was due; the unfinished text never reaches the target."""
    ws, target = ws_and_target
    ws.send(frame(TEXT, b"fragment1", fin=False) + frame(TEXT, b"fragment2"))
    assert ws.expect_failure(1002) == []
    assert target_bytes(target) == b""


@pytest.mark.parametrize("chop", [None, 1], ids=["5.19-whole", "5.20-octets"])
def test_5_19_pings_between_many_fragments(ws, chop):
    """5.19 / 5.20: five fragments with a ping after the second and the fourth; the last
    fragment follows the second ping at once, yet the pong precedes the echo."""
    ws.send(frame(TEXT, b"fragment1", fin=False) + frame(CONT, b"fragment2", fin=False)
            + frame(PING, b"pongme 1!"), chop=chop)
    assert ws.recv_pong() == b"pongme 1!"
    ws.send(frame(CONT, b"fragment3", fin=False) + frame(CONT, b"fragment4", fin=False)
            + frame(PING, b"pongme 2!") + frame(CONT, b"fragment5"), chop=chop)
    assert ws.recv_pong() == b"pongme 2!"
    assert ws.recv_echo(45) == b"fragment1fragment2fragment3fragment4fragment5"
    ws.close_normally()


# -- 6.x UTF-8 ---------------------------------------------------------------------------


def test_6_2_valid_utf8_split_at_every_octet(ws):
    """6.2.3 / 6.2.4: valid UTF-8 sent one octet per frame (characters split across frames)."""
    text = "Hello-\u00b5@\u00df\u00f6\u00e4\u00fc\u00e0\u00e1-UTF-8!!".encode("utf-8")
    frames = [frame(TEXT if i == 0 else CONT, text[i:i + 1], fin=i == len(text) - 1)
              for i in range(len(text))]
    ws.send(b"".join(frames))
    assert ws.recv_echo(len(text)) == text
    ws.close_normally()


@pytest.mark.parametrize("payload", [
    bytes.fromhex("cebae1bdb9cf83cebcceb5eda080656469746564"),  # 6.3.1: a UTF-16 surrogate
    bytes.fromhex("c0af"),                                        # 6.8.1: overlong "/"
    bytes.fromhex("f888808080"),                                  # 6.6.x: 5-byte form
    bytes.fromhex("80"),                                          # 6.9.x: lone continuation byte
    bytes.fromhex("cebae1bdb9cf83cebcceb5f4"),                   # 6.4.x: truncated at the end
], ids=["surrogate", "overlong", "5-byte", "continuation", "truncated"])
def test_6_invalid_utf8_fails_1007(ws_and_target, payload):
    ws, target = ws_and_target
    ws.send(frame(TEXT, payload))
    assert ws.expect_failure(1007) == []
    assert target_bytes(target) == b""


def test_6_4_1_fail_fast_on_invalid_fragment(ws):
    """6.4.1: the fragment carrying invalid UTF-8 fails the connection before the message ends."""
    ws.send(frame(TEXT, UTF8_VALID_PART, fin=False))
    ws.send(frame(CONT, UTF8_INVALID_PART, fin=False))
    # The last fragment is never sent: the close must come without it.
    ws.expect_failure(1007)


def test_6_4_2_fail_fast_on_sequence_split_across_fragments(ws):
    """6.4.2: 0xF4 ends one fragment; the 0x90 opening the next makes it invalid."""
    ws.send(frame(TEXT, UTF8_VALID_PART + UTF8_INVALID_PART[:1], fin=False))
    ws.send(frame(CONT, UTF8_INVALID_PART[1:], fin=False))
    ws.expect_failure(1007)


def test_6_4_3_fail_fast_inside_one_frame(ws):
    """6.4.3 / 6.4.4: one frame whose invalid bytes arrive while its payload is still incomplete."""
    payload = UTF8_VALID_PART + UTF8_INVALID_PART + UTF8_TAIL
    whole = frame(TEXT, payload)
    header = len(whole) - len(payload)
    # Everything up to and including the invalid sequence; the tail stays unsent.
    ws.send(whole[:header + len(UTF8_VALID_PART) + len(UTF8_INVALID_PART)], chop=1)
    ws.expect_failure(1007)


# -- 7.x close handling ------------------------------------------------------------------


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011,
                                  3000, 3999, 4000, 4999])
def test_7_7_valid_close_code_echoed(ws, code):
    ws.close_normally(code)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1016, 1100, 2000, 2999, 5000, 65535])
def test_7_9_invalid_close_code_fails_1002(ws, code):
    """7.9.1-7.9.9, 7.13.1-7.13.2: codes a peer may not send (§7.4)."""
    ws.send(frame(CLOSE, close_body(code)))
    ws.expect_failure(1002)


def test_7_3_1_empty_close_answered_empty(ws):
    ws.send(frame(CLOSE))
    got, reason, before = ws.recv_close()
    assert (got, reason, before) == (None, b"", [])
    ws.expect_eof()


def test_7_3_2_one_byte_close_fails_1002(ws):
    ws.send(frame(CLOSE, b"a"))
    ws.expect_failure(1002)


def test_7_3_5_close_with_123_byte_reason(ws):
    ws.close_normally(1000, b"*" * 123)


def test_7_3_6_close_over_125_bytes_fails_1002(ws):
    ws.send(frame(CLOSE, close_body(1000, b"*" * 124)))
    ws.expect_failure(1002)


def test_7_5_1_close_reason_not_utf8_fails_1007(ws):
    ws.send(frame(CLOSE, close_body(1000, bytes.fromhex("cebae1bdb9cf83cebcceb5eda080656469746564"))))
    ws.expect_failure(1007)


def test_7_1_nothing_answered_after_close(ws_and_target):
    """7.1.2-7.1.5: after the close, a second close, a ping, data and a continuation get no answer,
    and the fragment begun before the close never reaches the target."""
    ws, target = ws_and_target
    ws.send(frame(TEXT, b"fragment1", fin=False) + frame(CLOSE, close_body(1000))
            + frame(CLOSE, close_body(1000)) + frame(PING, b"ping") + frame(TEXT, b"Hello World!")
            + frame(CONT, b"fragment2"))
    got, _, before = ws.recv_close()
    assert (got, before) == (1000, [])
    ws.expect_eof()
    assert target_bytes(target) == b""


def test_7_1_6_message_before_close_reaches_target(ws_and_target):
    """7.1.6: a 256 KiB message and a close back to back: the target gets all of it.

    The echo target is still writing back when the proxy ends the session;
    the proxy must not reset the target connection before it read everything.
    """
    ws, target = ws_and_target
    payload = os.urandom(256 * 1024)
    ws.send(frame(BINARY, payload) + frame(CLOSE, close_body(1000)) + frame(PING))
    # Frames already echoed may come first; nothing may follow the close.
    got, _, before = ws.recv_close()
    assert got == 1000
    assert all(opcode == BINARY for _, _, opcode, _ in before)
    ws.expect_eof()
    assert hashlib.sha256(target_bytes(target)).digest() == hashlib.sha256(payload).digest()


# -- 9.x limits ---------------------------------------------------------------------------


def echo_concurrently(ws: RawClient, data: bytes, count: int) -> bytes:
    """Send ``data`` from a thread while reading ``count`` echoed bytes (large sends would
    otherwise fill both directions' socket buffers and stall)."""
    sender = threading.Thread(target=ws.send, args=(data,), name="conformance-sender")
    sender.start()
    try:
        return ws.recv_echo(count)
    finally:
        sender.join(TIMEOUT)


def test_9_2_4_binary_4mib_streams_through(ws):
    """9.2.4: binary messages are not held, so 4 MiB pass with a 1 MiB text limit."""
    payload = os.urandom(4 * 1024 * 1024)
    assert echo_concurrently(ws, frame(BINARY, payload), len(payload)) == payload
    ws.close_normally()


def test_9_1_3_text_at_the_limit_is_echoed(ws):
    """9.1.3: a 1 MiB text message (exactly the default limit) is forwarded whole."""
    payload = b"BAsd7&jh23" * (MAX_TEXT // 10) + b"BAsd7&"
    assert len(payload) == MAX_TEXT
    assert echo_concurrently(ws, frame(TEXT, payload), len(payload)) == payload
    ws.close_normally()


def test_9_1_4_text_over_the_limit_fails_1009_at_its_header(ws_and_target):
    """9.1.4: a frame announcing a 4 MiB text message closes 1009 before its payload is sent."""
    ws, target = ws_and_target
    ws.send(frame(TEXT, b"BAsd7&jh23", length=4 * 1024 * 1024)[:-10])
    ws.expect_failure(1009)
    assert target_bytes(target) == b""


def test_9_3_fragmented_text_over_the_limit_fails_1009(ws_and_target):
    """9.3.x: a text message in 64 KiB fragments closes 1009 at the fragment crossing 1 MiB."""
    ws, target = ws_and_target
    fragment = b"*" * 65536
    count = MAX_TEXT // len(fragment)
    ws.send(b"".join(frame(TEXT if i == 0 else CONT, fragment, fin=False) for i in range(count)))
    ws.send(frame(CONT, b"*", fin=False))
    ws.expect_failure(1009)
    assert target_bytes(target) == b""


def test_9_7_a_thousand_small_text_messages(ws):
    """9.7.1-9.7.6 (16-byte case): 1000 messages back to back, all echoed in order."""
    messages = [("%015d|" % n).encode() for n in range(1000)]
    ws.send(b"".join(frame(TEXT, m) for m in messages))
    assert ws.recv_echo(16 * 1000) == b"".join(messages)
    ws.close_normally()


# -- 10.x auto-fragmentation ---------------------------------------------------------------


def test_10_1_1_text_in_1300_byte_fragments(ws):
    payload = b"*" * 65536
    pieces = [payload[i:i + 1300] for i in range(0, len(payload), 1300)]
    ws.send(b"".join(frame(TEXT if i == 0 else CONT, p, fin=i == len(pieces) - 1)
                     for i, p in enumerate(pieces)))
    assert ws.recv_echo(len(payload)) == payload
    ws.close_normally()
