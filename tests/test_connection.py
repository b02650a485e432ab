"""Byte-in/byte-out tests of wsproxy.protocol.connection.Connection (RFC 6455 server side).

Client frames are built here by hand (``client_frame``: struct and a fixed
mask) and server frames are read back by hand (``server_frames``), so a
misunderstanding in wsproxy's own encoder cannot hide one in its decoder.
"""

import base64
import random
import struct
import threading

import pytest

from wsproxy.protocol.connection import MAX_PENDING_PONGS, Connection

MASK = bytes.fromhex("37fa213d")  # RFC 6455 §5.7's example mask
TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def xor(payload: bytes, mask: bytes) -> bytes:
    return bytes(byte ^ mask[index & 3] for index, byte in enumerate(payload))


def client_frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0,
                 masked: bool = True, mask: bytes = MASK, length=None) -> bytes:
    """One client frame; ``length`` overrides the header's payload length."""
    first = (0x80 if fin else 0) | rsv | opcode
    size = len(payload) if length is None else length
    mask_bit = 0x80 if masked else 0
    if size < 126:
        header = struct.pack("!BB", first, mask_bit | size)
    elif size < 65536:
        header = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, size)
    if not masked:
        return header + payload
    return header + mask + xor(payload, mask)


def close_frame(code=None, reason: bytes = b"") -> bytes:
    payload = b"" if code is None else struct.pack("!H", code) + reason
    return client_frame(CLOSE, payload)


def server_frames(data: bytes):
    """Split unmasked server frames into (fin, opcode, payload); fail on leftovers."""
    frames = []
    pos = 0
    while pos < len(data):
        first, second = data[pos], data[pos + 1]
        assert not second & 0x80, "server frames must not be masked"
        assert not first & 0x70
        length, pos = second & 0x7F, pos + 2
        if length == 126:
            length, pos = struct.unpack_from("!H", data, pos)[0], pos + 2
            assert length >= 126
        elif length == 127:
            length, pos = struct.unpack_from("!Q", data, pos)[0], pos + 8
            assert length >= 65536
        payload = data[pos:pos + length]
        assert len(payload) == length, "truncated server frame"
        frames.append((bool(first & 0x80), first & 0x0F, payload))
        pos += length
    return frames


def replies(connection: Connection):
    """The control frames the connection queued, parsed."""
    queued = connection.data_to_send()
    assert all(isinstance(item, bytes) for item in queued)
    return server_frames(b"".join(queued))


def feed(connection: Connection, pieces) -> bytes:
    out = []
    for piece in pieces:
        result = connection.receive_data(piece)
        while True:
            # Fresh objects the relay may keep, never views into the receive buffer.
            assert all(isinstance(item, (bytes, bytearray)) for item in result)
            out.extend(result)
            if not connection.input_pending:
                break
            result = connection.receive_more()
    return b"".join(out)


def whole(stream: bytes):
    return [stream]


def bytewise(stream: bytes):
    return [stream[index:index + 1] for index in range(len(stream))]


def assert_closed_with(connection: Connection, code: int) -> None:
    """Exactly one close frame carrying ``code`` is queued, and input is over."""
    frames = replies(connection)
    closes = [frame for frame in frames if frame[1] == CLOSE]
    assert len(closes) == 1, frames
    assert closes[0][0] is True
    assert struct.unpack("!H", closes[0][2][:2])[0] == code
    closes[0][2][2:].decode("utf-8")
    assert frames[-1][1] == CLOSE
    assert connection.close_sent


def assert_dead(connection: Connection) -> None:
    """After a failure or close: later input, data and closes produce nothing."""
    assert connection.receive_data(client_frame(BINARY, b"late")) == []
    assert connection.receive_data(client_frame(PING, b"late")) == []
    assert connection.send_data(b"late") == []
    connection.send_close(1000)
    connection.send_ping(b"late")
    assert connection.data_to_send() == []


def fail_code(stream: bytes, pieces=whole, **options):
    """Feed ``stream``; return (payload returned, the failure's close code)."""
    connection = Connection(**options)
    out = feed(connection, pieces(stream))
    assert connection.failure is not None, "no failure for %r" % stream
    code = connection.failure.code
    assert_closed_with(connection, code)
    assert_dead(connection)
    return out, code


def assert_fails(stream: bytes, code: int, before: bytes = b"", **options) -> None:
    """``stream`` fails with ``code`` fed whole and byte by byte, returning ``before`` first."""
    for pieces in (whole, bytewise):
        assert fail_code(stream, pieces, **options) == (before, code)


# -- the RFC 6455 §5.7 examples ---------------------------------------------------------


def test_rfc_masked_hello():
    connection = Connection()
    assert connection.receive_data(bytes.fromhex("818537fa213d7f9f4d5158")) == [b"Hello"]
    assert connection.data_to_send() == []
    assert connection.failure is None and connection.close_received is None


def test_rfc_unmasked_hello_is_1002():
    assert_fails(bytes.fromhex("810548656c6c6f"), 1002)


def test_rfc_fragmented_hello_masked():
    stream = client_frame(TEXT, b"Hel", fin=False) + client_frame(CONT, b"lo")
    assert stream[:2] == b"\x01\x83" and stream[9:11] == b"\x80\x82"
    for pieces in (whole, bytewise):
        assert feed(Connection(), pieces(stream)) == b"Hello"


def test_rfc_ping_gets_pong_with_the_same_payload():
    connection = Connection()
    ping = client_frame(PING, b"Hello")
    assert ping[:2] == b"\x89\x85"
    assert connection.receive_data(ping) == []
    assert connection.data_to_send() == [bytes.fromhex("8a0548656c6c6f")]


def test_rfc_unmasked_ping_is_1002():
    assert_fails(bytes.fromhex("890548656c6c6f"), 1002)


def test_rfc_256_byte_and_64_kib_binary_frames():
    for size, header in ((256, "82fe0100"), (65536, "82ff0000000000010000")):
        payload = random.Random(size).randbytes(size)
        frame = client_frame(BINARY, payload)
        assert frame.startswith(bytes.fromhex(header) + MASK)
        assert feed(Connection(), [frame]) == payload


# -- splitting ----------------------------------------------------------------------------

BIN300 = bytes(range(256)) + bytes(range(44))
MIXED = b"".join([
    bytes.fromhex("818537fa213d7f9f4d5158"),                      # "Hello"
    client_frame(BINARY, BIN300, mask=b"\x01\x02\x03\x04"),        # 8-byte header
    client_frame(TEXT, b"H\xc3", fin=False),                       # "é" split across fragments
    client_frame(PING, b"p"),                                      # control inside a message
    client_frame(CONT, b"\xa9\xe2\x82", fin=False),                # "€" split too
    client_frame(CONT, b"\xacllo", mask=b"\xff\x00\xff\x00"),
    client_frame(BINARY, b""),                                     # zero-length frames
    client_frame(PING, b""),
    client_frame(BINARY, b"ab", fin=False),
    client_frame(CONT, b"", fin=False),
    client_frame(CONT, b"cd"),
    client_frame(TEXT, b""),
    client_frame(TEXT, b"xyz", fin=False),
    client_frame(CONT, b""),                                       # zero-length final fragment
    client_frame(PONG, b"ignored"),
    client_frame(BINARY, b"\x00" * 7, mask=b"\x00\x00\x00\x00"),
    client_frame(CLOSE, b"\x03\xe8bye"),
])
MIXED_PAYLOAD = b"Hello" + BIN300 + "Hé€llo".encode() + b"abcd" + b"xyz" + b"\x00" * 7
MIXED_REPLIES = [(True, PONG, b"p"), (True, PONG, b""), (True, CLOSE, b"\x03\xe8")]


def check_mixed(pieces) -> None:
    connection = Connection()
    assert feed(connection, pieces) == MIXED_PAYLOAD
    assert replies(connection) == MIXED_REPLIES
    assert connection.failure is None
    assert connection.close_received == (1000, "bye")


def test_mixed_stream_whole_and_byte_by_byte():
    check_mixed(whole(MIXED))
    check_mixed(bytewise(MIXED))


def test_mixed_stream_at_every_split_point():
    for cut in range(len(MIXED) + 1):
        check_mixed([MIXED[:cut], MIXED[cut:]])


def test_mixed_stream_three_way_splits():
    rng = random.Random(13)
    for _ in range(400):
        first, second = sorted(rng.randrange(len(MIXED) + 1) for _ in range(2))
        check_mixed([MIXED[:first], MIXED[first:second], MIXED[second:]])


def test_mixed_stream_through_a_reused_receive_buffer():
    # The relay receives into one bytearray and passes memoryview slices of it:
    # nothing returned or held back may still point into that buffer.
    rng = random.Random(7)
    buffer = bytearray(16)
    connection = Connection()
    out = []
    pos = 0
    while pos < len(MIXED):
        count = rng.randrange(1, len(buffer) + 1)
        piece = MIXED[pos:pos + count]
        buffer[:len(piece)] = piece
        out.extend(connection.receive_data(memoryview(buffer)[:len(piece)]))
        buffer[:] = b"\xee" * len(buffer)
        pos += count
    assert b"".join(out) == MIXED_PAYLOAD
    assert replies(connection) == MIXED_REPLIES


@pytest.mark.parametrize("size", [0, 5, 125, 126, 300, 65535, 65536])
def test_header_split_at_every_point(size):
    # Headers of 6 (7-bit length), 8 (16-bit) and 14 bytes (64-bit) with the mask.
    payload = random.Random(size).randbytes(size)
    frame = client_frame(BINARY, payload) + client_frame(BINARY, b"next")
    header_size = 6 if size < 126 else 8 if size < 65536 else 14
    for cut in range(1, header_size + 2):
        assert feed(Connection(), [frame[:cut], frame[cut:]]) == payload + b"next"
    pieces = bytewise(frame[:header_size]) + [frame[header_size:]]
    assert feed(Connection(), pieces) == payload + b"next"


def test_zero_length_frames_with_split_headers():
    # Each zero-length frame ends with its header: the header's last byte
    # arriving alone must finish the frame (and the message).
    cases = [
        (client_frame(TEXT, b"ab", fin=False) + client_frame(CONT, b""), b"ab", []),
        (client_frame(BINARY, b"") + client_frame(BINARY, b"x"), b"x", []),
        (client_frame(BINARY, b"a", fin=False) + client_frame(CONT, b"")
         + client_frame(BINARY, b"b"), b"ab", []),
        (client_frame(PING, b""), b"", [(True, PONG, b"")]),
        (client_frame(CLOSE, b""), b"", [(True, CLOSE, b"")]),
    ]
    for stream, payload, expected_replies in cases:
        for cut in range(len(stream) + 1):
            connection = Connection()
            assert feed(connection, [stream[:cut], stream[cut:]]) == payload, (stream, cut)
            assert connection.failure is None, (stream, cut, connection.failure)
            assert replies(connection) == expected_replies


def test_mask_rotates_when_payload_is_split_off_a_multiple_of_4():
    payload = bytes(range(1, 41))
    frame = client_frame(BINARY, payload, mask=b"\x10\x20\x40\x80")
    header = 6
    for first in range(1, 12):
        for second in range(first + 1, first + 10):
            pieces = [frame[:header + first], frame[header + first:header + second],
                      frame[header + second:]]
            assert feed(Connection(), pieces) == payload, (first, second)


def test_64_kib_frame_byte_by_byte_and_at_odd_offsets():
    payload = random.Random(64).randbytes(65536)
    frame = client_frame(BINARY, payload, mask=b"\x9a\xbc\xde\xf1")
    assert feed(Connection(), bytewise(frame)) == payload
    pieces = []
    pos = 0
    step = 1
    while pos < len(frame):
        pieces.append(frame[pos:pos + step])
        pos += step
        step = step * 3 + 1 if step < 20000 else 7
    assert feed(Connection(), pieces) == payload


def test_many_frames_in_one_call():
    frames = [client_frame(BINARY, bytes([index % 256]) * (index % 130)) for index in range(1000)]
    expected = b"".join(bytes([index % 256]) * (index % 130) for index in range(1000))
    connection = Connection()
    assert feed(connection, [b"".join(frames)]) == expected
    assert connection.data_to_send() == []


def test_binary_payload_is_streamed_before_the_frame_ends():
    payload = b"x" * 1000
    frame = client_frame(BINARY, payload)  # 8-byte header
    connection = Connection()
    assert connection.receive_data(frame[:8 + 10]) == [b"x" * 10]
    assert connection.receive_data(frame[18:500]) == [b"x" * 482]
    assert feed(connection, [frame[500:]]) == b"x" * 508


def test_empty_input_does_nothing():
    connection = Connection()
    assert connection.receive_data(b"") == []
    assert connection.receive_data(memoryview(b"")) == []
    assert connection.data_to_send() == []


# -- violations and their close codes ------------------------------------------------------


@pytest.mark.parametrize("stream", [
    client_frame(TEXT, b"Hello", masked=False),
    client_frame(BINARY, b"x" * 300, masked=False),
    client_frame(BINARY, b"", masked=False),
    client_frame(CLOSE, b"\x03\xe8", masked=False),
    client_frame(PING, b"", masked=False),
    client_frame(CONT, b"", masked=False),
])
def test_unmasked_frame_is_1002(stream):
    assert_fails(stream, 1002)


def test_short_unmasked_frame_fails_without_waiting_for_more():
    # A whole unmasked frame shorter than a masked header must still be refused.
    for stream in (b"\x82\x00", b"\x88\x00", b"\x88\x02\x03\xe8", b"\x89\x01x"):
        connection = Connection()
        assert connection.receive_data(stream) == []
        assert connection.failure is not None and connection.failure.code == 1002, stream
        assert_closed_with(connection, 1002)


@pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10, 0x70])
@pytest.mark.parametrize("opcode", [TEXT, BINARY, PING, CLOSE])
def test_reserved_bits_are_1002(rsv, opcode):
    assert_fails(client_frame(opcode, b"", rsv=rsv), 1002)


def test_reserved_bits_on_a_continuation_are_1002():
    assert_fails(client_frame(BINARY, b"ab", fin=False) + client_frame(CONT, b"cd", rsv=0x40),
                 1002, before=b"ab")


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_unknown_opcodes_are_1002(opcode):
    assert_fails(client_frame(opcode, b"data"), 1002)
    assert_fails(client_frame(opcode, b"", fin=False), 1002)
    assert_fails(client_frame(BINARY, b"a", fin=False) + client_frame(opcode, b""), 1002,
                 before=b"a")


@pytest.mark.parametrize("opcode", [PING, PONG, CLOSE])
def test_fragmented_control_frame_is_1002(opcode):
    assert_fails(client_frame(opcode, b"", fin=False), 1002)
    assert_fails(client_frame(opcode, b"\x03\xe8", fin=False), 1002)


@pytest.mark.parametrize("opcode", [PING, PONG, CLOSE])
def test_control_frame_over_125_bytes_is_1002(opcode):
    assert_fails(client_frame(opcode, b"\x03\xe8" + b"x" * 124), 1002)
    assert_fails(client_frame(opcode, b"", length=70000)[:14], 1002)


def test_control_frame_of_125_bytes_is_fine():
    connection = Connection()
    assert connection.receive_data(client_frame(PING, b"p" * 125)) == []
    assert replies(connection) == [(True, PONG, b"p" * 125)]
    connection.receive_data(client_frame(CLOSE, b"\x03\xe8" + b"r" * 123))
    assert connection.close_received == (1000, "r" * 123)


def test_continuation_without_a_message_is_1002():
    assert_fails(client_frame(CONT, b"x"), 1002)
    assert_fails(client_frame(CONT, b"x", fin=False), 1002)
    assert_fails(client_frame(BINARY, b"a") + client_frame(CONT, b"b"), 1002, before=b"a")
    assert_fails(client_frame(TEXT, b"a", fin=False) + client_frame(CONT, b"b")
                 + client_frame(CONT, b"c"), 1002, before=b"ab")


@pytest.mark.parametrize("first, second", [(TEXT, TEXT), (TEXT, BINARY), (BINARY, BINARY),
                                           (BINARY, TEXT)])
def test_new_data_frame_inside_a_fragmented_message_is_1002(first, second):
    before = b"a" if first == BINARY else b""
    assert_fails(client_frame(first, b"a", fin=False) + client_frame(second, b"b"), 1002,
                 before=before)


def test_64_bit_length_with_the_top_bit_set_is_1002():
    header = b"\x82\xff" + struct.pack("!Q", 1 << 63) + MASK
    assert_fails(header, 1002)
    assert_fails(b"\x82\xff" + b"\xff" * 8 + MASK, 1002)
    # 2**63 - 1 is a legal (if optimistic) length: the decoder just waits.
    connection = Connection()
    connection.receive_data(b"\x82\xff" + struct.pack("!Q", (1 << 63) - 1) + MASK + b"\x37")
    assert connection.failure is None


def test_only_the_first_violation_counts():
    stream = client_frame(BINARY, b"x", masked=False) + client_frame(CONT, b"y")
    assert fail_code(stream) == (b"", 1002)
    connection = Connection()
    connection.receive_data(client_frame(TEXT, b"\xff") + client_frame(BINARY, b"", rsv=0x40))
    assert connection.failure.code == 1007


# -- text messages in binary mode ------------------------------------------------------------


@pytest.mark.parametrize("bad", [b"\xff", b"\xfe", b"\xc0\xaf", b"\xe0\x80\xaf",
                                 b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80",
                                 b"ok\x80", b"\xc3\x28"])
def test_invalid_utf8_text_is_1007(bad):
    assert_fails(client_frame(TEXT, bad), 1007)
    assert_fails(client_frame(TEXT, b"fine ", fin=False) + client_frame(CONT, bad), 1007)


def test_text_truncated_inside_a_character_at_the_message_end_is_1007():
    assert_fails(client_frame(TEXT, b"\xe2\x82"), 1007)
    assert_fails(client_frame(TEXT, b"\xe2", fin=False) + client_frame(CONT, b"\x82"), 1007)


def test_valid_text_split_inside_characters_everywhere():
    text = "a€é\U0001f600z".encode()
    for cut in range(len(text) + 1):
        stream = client_frame(TEXT, text[:cut], fin=False) + client_frame(CONT, text[cut:])
        for pieces in (whole, bytewise):
            connection = Connection()
            assert feed(connection, pieces(stream)) == text
            assert connection.failure is None


def test_invalid_utf8_fails_fast_before_the_message_ends():
    connection = Connection()
    assert connection.receive_data(client_frame(TEXT, b"ok\xff", fin=False)) == []
    assert connection.failure is not None and connection.failure.code == 1007
    # Within one frame too: the bad byte fails before the frame's payload ends.
    connection = Connection()
    frame = client_frame(TEXT, b"\xffabcdefgh")
    assert connection.receive_data(frame[:6 + 1]) == []
    assert connection.failure is not None and connection.failure.code == 1007
    assert_closed_with(connection, 1007)


def test_text_is_held_until_the_message_is_complete():
    connection = Connection()
    assert connection.receive_data(client_frame(TEXT, b"par", fin=False)) == []
    assert connection.receive_data(client_frame(CONT, b"tial", fin=False)) == []
    assert connection.receive_data(client_frame(CONT, b"!")) == [b"partial!"]


def test_text_up_to_the_size_limit_passes():
    assert feed(Connection(max_message_size=10), [client_frame(TEXT, b"0123456789")]) \
        == b"0123456789"
    stream = client_frame(TEXT, b"01234", fin=False) + client_frame(CONT, b"56789")
    assert feed(Connection(max_message_size=10), [stream]) == b"0123456789"


def test_text_over_the_size_limit_is_1009_and_nothing_of_it_is_returned():
    assert_fails(client_frame(TEXT, b"0123456789A"), 1009, max_message_size=10)
    stream = client_frame(TEXT, b"012345", fin=False) + client_frame(CONT, b"6789A")
    assert_fails(stream, 1009, max_message_size=10)
    stream = (client_frame(TEXT, b"ok") + client_frame(TEXT, b"0123", fin=False)
              + client_frame(PING, b"") + client_frame(CONT, b"", fin=False)
              + client_frame(CONT, b"456789AB"))
    assert_fails(stream, 1009, before=b"ok", max_message_size=10)


def test_text_over_the_size_limit_fails_on_the_header_alone():
    connection = Connection()  # default limit: 1 MiB
    header = client_frame(TEXT, b"", length=1024 * 1024 + 1)[:14]
    assert connection.receive_data(header) == []
    assert connection.failure is not None and connection.failure.code == 1009


def test_binary_is_not_bound_by_the_text_limit():
    payload = b"b" * 100
    stream = client_frame(BINARY, payload[:60], fin=False) + client_frame(CONT, payload[60:])
    assert feed(Connection(max_message_size=10), [stream]) == payload


def test_payload_before_a_violation_in_the_same_call_is_returned():
    stream = (client_frame(BINARY, b"abc") + client_frame(TEXT, "é".encode())
              + client_frame(BINARY, b"def", fin=False) + client_frame(CONT, b"gh", fin=False)
              + client_frame(PING, b"x", masked=False) + client_frame(CONT, b"never"))
    assert_fails(stream, 1002, before=b"abc" + "é".encode() + b"defgh")
    connection = Connection()
    assert b"".join(connection.receive_data(stream)) == b"abc" + "é".encode() + b"defgh"
    frames = replies(connection)
    assert frames == [(True, CLOSE, frames[0][2])]


def test_partial_binary_frame_before_a_violation_is_returned():
    frame = client_frame(BINARY, b"0123456789")
    stream = frame[:6 + 4]
    connection = Connection()
    assert connection.receive_data(stream) == [b"0123"]
    stream = frame[10:] + client_frame(TEXT, b"", rsv=0x20)
    assert connection.receive_data(stream) == [b"456789"]
    assert connection.failure.code == 1002


# -- the closing handshake ------------------------------------------------------------------


def test_close_with_a_one_byte_payload_is_1002():
    assert_fails(client_frame(CLOSE, b"\x03"), 1002)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
def test_close_with_a_forbidden_code_is_1002(code):
    assert_fails(close_frame(code), 1002)


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011,
                                  1012, 1013, 1014, 3000, 4999])
def test_close_with_a_valid_code_is_echoed(code):
    for pieces in (whole, bytewise):
        connection = Connection()
        assert feed(connection, pieces(close_frame(code, b"why"))) == b""
        assert connection.close_received == (code, "why")
        assert connection.failure is None
        assert replies(connection) == [(True, CLOSE, struct.pack("!H", code))]
        assert_dead(connection)


def test_close_reason_not_utf8_is_1007():
    assert_fails(close_frame(1000, b"\xff"), 1007)
    assert_fails(close_frame(1000, b"caf\xc3"), 1007)


def test_empty_close_gets_an_empty_close():
    connection = Connection()
    assert connection.receive_data(close_frame()) == []
    assert connection.close_received == (1005, "")
    assert connection.data_to_send() == [b"\x88\x00"]
    assert_dead(connection)


def test_input_after_the_close_is_ignored():
    stream = (client_frame(BINARY, b"before") + close_frame(1000)
              + client_frame(BINARY, b"after") + client_frame(PING, b"p")
              + client_frame(BINARY, b"x", masked=False))
    for pieces in (whole, bytewise):
        connection = Connection()
        assert feed(connection, pieces(stream)) == b"before"
        assert connection.failure is None
        assert replies(connection) == [(True, CLOSE, b"\x03\xe8")]


def test_client_close_after_server_close_is_not_answered_twice():
    connection = Connection()
    connection.send_close(1001, "going away")
    assert replies(connection) == [(True, CLOSE, b"\x03\xe9going away")]
    assert connection.receive_data(client_frame(BINARY, b"in flight")) == [b"in flight"]
    assert connection.receive_data(close_frame(1001)) == []
    assert connection.close_received == (1001, "")
    assert connection.data_to_send() == []


# -- pings and pongs ----------------------------------------------------------------------------


def test_ping_inside_a_fragmented_message():
    stream = (client_frame(TEXT, b"frag", fin=False) + client_frame(PING, b"one")
              + client_frame(CONT, b"men", fin=False) + client_frame(PING, b"two")
              + client_frame(CONT, b"ted"))
    for pieces in (whole, bytewise):
        connection = Connection()
        assert feed(connection, pieces(stream)) == b"fragmented"
        assert replies(connection) == [(True, PONG, b"one"), (True, PONG, b"two")]


def test_ping_payload_is_echoed_exactly():
    payload = bytes(range(125))
    connection = Connection()
    feed(connection, bytewise(client_frame(PING, payload, mask=b"\x01\x02\x03\x05")))
    assert connection.data_to_send() == [b"\x8a\x7d" + payload]


def test_pong_is_ignored():
    connection = Connection()
    assert connection.receive_data(client_frame(PONG, b"unsolicited")) == []
    assert connection.receive_data(client_frame(PONG, b"")) == []
    assert connection.data_to_send() == []
    assert connection.failure is None


def test_a_ping_flood_queues_a_bounded_number_of_pongs():
    # §5.5.3: "MAY elect to send a Pong frame for only the most recently
    # processed Ping frame": the reply queue keeps the newest pongs, a
    # bounded number, however many pings arrive while nothing can be written.
    connection = Connection()
    pings = b"".join(client_frame(PING, b"%d" % index) for index in range(20000))
    assert connection.receive_data(pings) == []
    assert replies(connection) == [(True, PONG, b"%d" % index)
                                   for index in range(20000 - MAX_PENDING_PONGS, 20000)]
    assert connection.data_to_send() == []
    assert not connection.has_data_to_send


def test_pongs_taken_between_pings_all_go_out():
    connection = Connection()
    sent = []
    for payload in (b"a", b"b", b"c"):
        connection.receive_data(client_frame(PING, payload))
        sent.extend(replies(connection))
    assert sent == [(True, PONG, b"a"), (True, PONG, b"b"), (True, PONG, b"c")]


def test_no_pong_after_the_close_was_sent():
    connection = Connection()
    connection.send_close()
    connection.data_to_send()
    assert connection.receive_data(client_frame(PING, b"late")) == []
    assert connection.data_to_send() == []


# -- base64 mode --------------------------------------------------------------------------------


def test_base64_text_is_decoded():
    connection = Connection("base64")
    assert connection.receive_data(client_frame(TEXT, b"SGVsbG8=")) == [b"Hello"]


def test_base64_padded_messages_back_to_back():
    stream = client_frame(TEXT, b"QQ==") + client_frame(TEXT, b"QUI=")
    for pieces in (whole, bytewise):
        assert feed(Connection("base64"), pieces(stream)) == b"AAB"


def test_base64_split_at_every_character_across_fragments():
    data = random.Random(64).randbytes(20)
    text = base64.b64encode(data)
    for first in range(len(text) + 1):
        for second in range(first, len(text) + 1):
            stream = (client_frame(TEXT, text[:first], fin=False) + client_frame(PING, b"")
                      + client_frame(CONT, text[first:second], fin=False)
                      + client_frame(CONT, text[second:]))
            connection = Connection("base64")
            assert feed(connection, [stream]) == data, (first, second)
            assert connection.failure is None


def test_base64_split_at_every_character_across_messages():
    # Each message is decoded on its own: a cut inside a 4-character group
    # leaves two messages that are not base64 (1007); a cut between groups
    # leaves two that are.
    data = random.Random(65).randbytes(31)
    text = base64.b64encode(data)
    for cut in range(len(text) + 1):
        stream = client_frame(TEXT, text[:cut]) + client_frame(TEXT, text[cut:])
        for pieces in (whole, bytewise):
            connection = Connection("base64")
            out = feed(connection, pieces(stream))
            if cut % 4 == 0:
                assert out == data and connection.failure is None, cut
            else:
                assert out == data[:cut // 4 * 3], cut
                assert_closed_with(connection, 1007)


def test_base64_text_is_decoded_as_it_arrives():
    connection = Connection("base64", max_message_size=8)
    text = base64.b64encode(b"x" * 30)
    frame = client_frame(TEXT, text, fin=False)
    assert connection.receive_data(frame[:6 + 9]) == [b"x" * 6]
    assert b"".join(connection.receive_data(frame[15:])) == b"x" * 24
    assert connection.failure is None


def assert_base64_fails(stream: bytes, valid_prefix: bytes) -> None:
    """1007 fed whole or byte by byte; what came out is a prefix of ``valid_prefix``.

    How much of the valid part is decoded before the error shows depends
    on how the bytes were split; it is never more than the valid part.
    """
    for pieces in (whole, bytewise):
        out, code = fail_code(stream, pieces, subprotocol="base64")
        assert code == 1007
        assert valid_prefix.startswith(out)


@pytest.mark.parametrize("bad", [b"QUJ!", b"QU I", b" QUI", b"QU-_", "é".encode(), b"QUJ\x00",
                                 b"QUJD\r\n", b"QUI=\n", b"QUJDQ\tUJD"])
def test_base64_invalid_character_is_1007(bad):
    assert_base64_fails(client_frame(TEXT, bad), b"ABCABC")


@pytest.mark.parametrize("bad", [b"====", b"Q===", b"=QUI", b"Q=UI", b"QQ=A", b"QQ===",
                                 b"Q=", b"QUI==", b"QUJD=QUI"])
def test_base64_misplaced_padding_is_1007(bad):
    assert_base64_fails(client_frame(TEXT, bad), b"ABC")


def test_base64_misplaced_padding_across_frames_is_1007():
    assert_base64_fails(client_frame(TEXT, b"QQ=") + client_frame(TEXT, b"A"), b"")
    assert_base64_fails(client_frame(TEXT, b"QQ=", fin=False) + client_frame(CONT, b"=Q=="),
                        b"A")


def test_base64_error_keeps_what_came_before():
    stream = (client_frame(TEXT, b"QUJD") + client_frame(TEXT, b"QU", fin=False)
              + client_frame(CONT, b"I=!"))
    assert fail_code(stream, subprotocol="base64") == (b"ABC", 1007)


def test_base64_mode_forwards_binary_frames_as_is():
    payload = b"\x00\xff not base64 =="
    stream = client_frame(BINARY, payload[:5], fin=False) + client_frame(CONT, payload[5:])
    assert feed(Connection("base64"), [stream]) == payload


def test_base64_send_data_is_a_text_frame_of_base64():
    connection = Connection("base64")
    parts = connection.send_data(b"Hello")
    assert b"".join(parts) == b"\x81\x08SGVsbG8="
    data = bytes(range(256)) * 2
    assert server_frames(b"".join(connection.send_data(data))) == \
        [(True, TEXT, base64.b64encode(data))]
    assert server_frames(b"".join(connection.send_data(memoryview(data)[1:4]))) == \
        [(True, TEXT, base64.b64encode(data[1:4]))]


@pytest.mark.parametrize("subprotocol", [None, "binary"])
def test_binary_modes_pass_text_through_undecoded(subprotocol):
    connection = Connection(subprotocol)
    assert connection.receive_data(client_frame(TEXT, b"QUJD")) == [b"QUJD"]
    assert b"".join(connection.send_data(b"QUJD")) == b"\x82\x04QUJD"


# -- output -------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, header", [
    (0, b"\x82\x00"),
    (125, b"\x82\x7d"),
    (126, b"\x82\x7e\x00\x7e"),
    (256, bytes.fromhex("827e0100")),
    (65535, b"\x82\x7e\xff\xff"),
    (65536, bytes.fromhex("827f0000000000010000")),
])
def test_send_data_binary_framing(size, header):
    payload = bytes(size)
    parts = Connection().send_data(payload)
    assert parts[0] == header
    assert parts[-1] is payload  # no copy of the payload
    assert b"".join(parts) == header + payload
    assert server_frames(b"".join(parts)) == [(True, BINARY, payload)]


def test_send_data_takes_views_without_copying():
    buffer = bytearray(b"0123456789")
    view = memoryview(buffer)[2:5]
    parts = Connection().send_data(view)
    assert parts[0] == b"\x82\x03"
    assert bytes(parts[-1]) == b"234"


def test_send_close_once_only():
    connection = Connection()
    connection.send_close()
    connection.send_close(1011, "again")
    assert connection.data_to_send() == [b"\x88\x02\x03\xe8"]
    assert connection.close_sent
    assert connection.send_data(b"x") == []
    connection.send_close(1000)
    assert connection.data_to_send() == []


def test_send_close_with_code_reason_and_none():
    connection = Connection()
    connection.send_close(1011, "target unreachable")
    assert replies(connection) == [(True, CLOSE, b"\x03\xf3target unreachable")]
    connection = Connection()
    connection.send_close(None)
    assert connection.data_to_send() == [b"\x88\x00"]
    connection = Connection()
    connection.send_close(1000, "é" * 200)
    frames = replies(connection)
    assert len(frames[0][2]) <= 125
    frames[0][2][2:].decode("utf-8")


def test_send_close_from_two_threads_queues_one_close():
    for _ in range(50):
        connection = Connection()
        barrier = threading.Barrier(2)

        def close(code):
            barrier.wait()
            connection.send_close(code)

        threads = [threading.Thread(target=close, args=(code,)) for code in (1000, 1001)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        frames = replies(connection)
        assert len(frames) == 1 and frames[0][1] == CLOSE


def test_close_sent_while_input_fails_is_still_one_close():
    connection = Connection()
    connection.send_close(1000)
    connection.receive_data(client_frame(BINARY, b"x", masked=False))
    assert connection.failure.code == 1002
    assert replies(connection) == [(True, CLOSE, b"\x03\xe8")]


def test_send_ping():
    connection = Connection()
    connection.send_ping(b"beat")
    connection.send_ping()  # replaces the one not yet sent
    assert connection.data_to_send() == [b"\x89\x00"]
    connection.send_ping(b"p" * 300)
    frames = replies(connection)
    assert frames[0][1] == PING and len(frames[0][2]) <= 125
    connection.send_close()
    connection.data_to_send()
    connection.send_ping(b"late")
    assert connection.data_to_send() == []


def test_data_to_send_keeps_order_of_pongs_and_close():
    connection = Connection()
    connection.receive_data(client_frame(PING, b"1") + client_frame(PING, b"2")
                            + close_frame(1000))
    assert replies(connection) == [(True, PONG, b"1"), (True, PONG, b"2"),
                                   (True, CLOSE, b"\x03\xe8")]
    assert connection.data_to_send() == []


# -- one atomic step: the close-sent check and the queueing of a control frame ------------------


class RacingConnection(Connection):
    """Runs a competing ``send_close`` (another thread's) the moment ``close_sent`` is read.

    The competitor runs only if ``_close_lock`` would let a thread in at
    that point: where the check and the queueing are one step under that
    lock, it cannot get between them; where they are not, it does, which is
    the interleaving two real threads hit under load.
    """

    armed = False

    @property
    def close_sent(self):
        value = self.__dict__.get("_close_sent_flag", False)
        if self.armed and not self._close_lock.locked():
            self.armed = False
            self.send_close(1001)
        return value

    @close_sent.setter
    def close_sent(self, value):
        self.__dict__["_close_sent_flag"] = value


def wire_order(connection: Connection):
    """Every control frame the connection would write, in order, until nothing is left."""
    frames = replies(connection)
    connection.send_close(1001)  # the competitor, if it did not run yet
    return frames + replies(connection)


def test_a_pong_never_follows_the_close():
    connection = RacingConnection()
    connection.armed = True
    connection.receive_data(client_frame(PING, b"late"))
    frames = wire_order(connection)
    closes = [index for index, frame in enumerate(frames) if frame[1] == CLOSE]
    assert len(closes) == 1 and closes[0] == len(frames) - 1, frames


def test_a_heartbeat_ping_never_follows_the_close():
    connection = RacingConnection()
    connection.armed = True
    connection.send_ping(b"beat")
    frames = wire_order(connection)
    closes = [index for index, frame in enumerate(frames) if frame[1] == CLOSE]
    assert len(closes) == 1 and closes[0] == len(frames) - 1, frames


# -- base64: each message on its own --------------------------------------------------------------


def test_base64_message_that_is_not_whole_is_1007():
    # "QQ" then "QkNE": before, the decoder carried "QQ" into the next message
    # and the target got b"A\x04\x1a" instead of an error.
    connection = Connection("base64")
    out = connection.receive_data(client_frame(TEXT, b"QQ") + client_frame(TEXT, b"QkNE"))
    assert out == []
    assert_closed_with(connection, 1007)


def test_base64_message_split_across_fragments_is_one_message():
    connection = Connection("base64")
    stream = (client_frame(TEXT, b"Q", fin=False) + client_frame(CONT, b"kN", fin=False)
              + client_frame(CONT, b"E") + client_frame(TEXT, b"QQ=", fin=False)
              + client_frame(CONT, b"="))
    for pieces in (whole, bytewise):
        assert feed(Connection("base64"), pieces(stream)) == b"BCDA"
    assert connection.failure is None


# -- bounded buffers --------------------------------------------------------------------------------


def test_text_in_one_byte_fragments_is_one_buffer():
    # One growing buffer, handed on whole: not an object per fragment.
    size = 5000
    stream = (client_frame(TEXT, b"a", fin=False) + client_frame(CONT, b"a", fin=False) * (size - 2)
              + client_frame(CONT, b"a"))
    connection = Connection()
    out = connection.receive_data(stream)
    assert len(out) == 1 and out[0] == b"a" * size


def test_a_run_of_tiny_binary_frames_is_one_buffer():
    # Each 1-byte frame as its own object would cost ~40 bytes per byte.
    size = 5000
    stream = client_frame(BINARY, b"b", fin=False) + client_frame(CONT, b"b", fin=False) * (size - 1)
    out = Connection().receive_data(stream)
    assert len(out) == 1 and out[0] == b"b" * size


# -- whole binary frames in one receive (the parser's fast path) -------------------------


def test_runs_of_whole_binary_frames_match_any_split():
    """Whole binary frames take a shorter path; the bytes out are those of any other split."""
    rng = random.Random(15)
    payloads = [rng.randbytes(size) for size in
                (0, 1, 5, 125, 126, 127, 1000, 1024, 4096, 65535, 3, 200, 70000, 2)]
    stream = b"".join(client_frame(BINARY, payload, mask=rng.randbytes(4)) for payload in payloads)
    expected = b"".join(payloads)
    assert feed(Connection(), whole(stream)) == expected
    assert feed(Connection(), bytewise(stream)) == expected
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(stream)), 12))
        pieces = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
        assert feed(Connection(), pieces) == expected


def test_whole_binary_frames_around_other_frames():
    """Pings, fragments and text between whole binary frames are handled as ever."""
    stream = (client_frame(BINARY, b"one") + client_frame(PING, b"p")
              + client_frame(BINARY, b"tw", fin=False) + client_frame(CONT, b"o")
              + client_frame(BINARY, b"three") + client_frame(TEXT, "four".encode())
              + client_frame(BINARY, b"five"))
    for pieces in (whole, bytewise):
        connection = Connection()
        assert feed(connection, pieces(stream)) == b"onetwothreefourfive"
        assert [frame[1:] for frame in replies(connection)] == [(PONG, b"p")]


def test_whole_binary_frame_inside_a_fragmented_message_is_1002():
    """A complete binary frame is still a new message: not allowed inside a fragmented one."""
    stream = client_frame(TEXT, b"par", fin=False) + client_frame(BINARY, b"x" * 300)
    assert_fails(stream, 1002)


def test_whole_binary_frames_with_reserved_bits_or_unmasked_still_fail():
    assert_fails(client_frame(BINARY, b"a") + client_frame(BINARY, b"b", rsv=0x20), 1002, b"a")
    assert_fails(client_frame(BINARY, b"a") + client_frame(BINARY, b"b", masked=False), 1002, b"a")
