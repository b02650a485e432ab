"""Byte-in/byte-out tests of permessage-deflate (RFC 7692): wsproxy.protocol.deflate
and its use by wsproxy.protocol.connection.Connection.

Receiving is checked against the byte literals of RFC 7692 §7.2.3 and against
streams made here with ``zlib`` for every parameter combination; sending is
checked by inflating what wsproxy sends with ``zlib`` the way a client would.
Client frames are built and server frames parsed by hand.
"""

import base64
import os
import random
import struct
import tracemalloc
import zlib

import pytest

from wsproxy.protocol.connection import Connection
from wsproxy.protocol.deflate import (BACKOFF_FIRST, BACKOFF_MAX, BACKOFF_MIN_READ,
                                      INFLATE_CHUNK, DeflateParams, PerMessageDeflate,
                                      negotiate, parse_extensions)
from wsproxy.protocol.errors import HandshakeError

MASK = bytes.fromhex("37fa213d")
TEXT, BINARY, CONT, CLOSE, PING = 0x1, 0x2, 0x0, 0x8, 0x9
RSV1, RSV2, RSV3 = 0x40, 0x20, 0x10
TAIL = b"\x00\x00\xff\xff"

# RFC 7692 §7.2.3: the payloads of its examples.
HELLO = bytes.fromhex("f248cdc9c90700")             # §7.2.3.1 "Hello", one frame
HELLO_AGAIN = bytes.fromhex("f200110000")            # §7.2.3.2 "Hello" again, shared window
HELLO_STORED = bytes.fromhex("000500faff48656c6c6f00")  # §7.2.3.3 no compression
HELLO_BFINAL = bytes.fromhex("f348cdc9c9070000")     # §7.2.3.4 BFINAL set
HELLO_TWO_BLOCKS = bytes.fromhex("f248050000" "00ffffcac9c90700")  # §7.2.3.5


def xor(payload: bytes, mask: bytes) -> bytes:
    if not payload:
        return b""
    key = (mask * (len(payload) // 4 + 1))[:len(payload)]
    value = int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")
    return value.to_bytes(len(payload), "big")


def client_frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0) -> bytes:
    first = (0x80 if fin else 0) | rsv | opcode
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", first, 0x80 | size)
    elif size < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, size)
    return header + MASK + xor(payload, MASK)


def server_frames(data: bytes):
    """Split server frames into (fin, rsv, opcode, payload)."""
    frames, pos = [], 0
    while pos < len(data):
        first, second = data[pos], data[pos + 1]
        assert not second & 0x80, "server frames must not be masked"
        length, pos = second & 0x7F, pos + 2
        if length == 126:
            length, pos = struct.unpack_from("!H", data, pos)[0], pos + 2
        elif length == 127:
            length, pos = struct.unpack_from("!Q", data, pos)[0], pos + 8
        frames.append((bool(first & 0x80), first & 0x70, first & 0x0F, data[pos:pos + length]))
        pos += length
    assert pos == len(data), "a truncated frame"
    return frames


def sent(connection: Connection, payload: bytes):
    """The one data frame ``send_data(payload)`` produces, as (fin, rsv, opcode, payload)."""
    frames = server_frames(b"".join(bytes(part) for part in connection.send_data(payload)))
    assert len(frames) == 1
    return frames[0]


def deflated(compressor, data: bytes) -> bytes:
    """What a client sends for ``data``: a sync-flushed stream without its tail (§7.2.1)."""
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(TAIL)
    return out[:-4]


def failed(connection: Connection, code: int) -> None:
    assert connection.failure is not None, "the connection should have failed"
    assert connection.failure.code == code, connection.failure
    close = server_frames(b"".join(connection.data_to_send()))[-1]
    assert close[2] == CLOSE and struct.unpack("!H", close[3][:2])[0] == code


def text_sample(size: int, seed: int = 1) -> bytes:
    """Terminal-like text: prompts, words and numbers, compressible but not trivially."""
    rng = random.Random(seed)
    words = [b"user@host:~$", b"ls", b"-la", b"drwxr-xr-x", b"total", b"README.md", b"src",
             b"make", b"gcc", b"-O2", b"error:", b"warning:", b"Makefile", b"\r\n"]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + b" " + str(rng.randrange(10000)).encode() + b" "
    return bytes(out[:size])


def deflate_connection(subprotocol="binary", max_message_size=1024 * 1024, level=6, **params):
    return Connection(subprotocol, max_message_size, deflate=DeflateParams(**params),
                      compress_level=level)


# -- receiving: RFC 7692 §7.2.3 ---------------------------------------------------------


def test_rfc_hello_in_one_frame():
    connection = deflate_connection()
    assert connection.receive_data(client_frame(TEXT, HELLO, rsv=RSV1)) == [b"Hello"]
    assert connection.failure is None


def test_rfc_hello_split_across_two_frames():
    # §7.2.3.1: the same payload fragmented; only the first frame has RSV1.
    connection = deflate_connection()
    data = client_frame(TEXT, HELLO[:3], fin=False, rsv=RSV1) + client_frame(CONT, HELLO[3:])
    assert b"".join(connection.receive_data(data)) == b"Hello"
    assert connection.failure is None


def test_rfc_shared_window_second_message():
    # §7.2.3.2: the second "Hello" is a back-reference into the first message.
    connection = deflate_connection()
    assert connection.receive_data(client_frame(TEXT, HELLO, rsv=RSV1)) == [b"Hello"]
    assert connection.receive_data(client_frame(TEXT, HELLO_AGAIN, rsv=RSV1)) == [b"Hello"]


def test_client_no_context_takeover_resets_the_window():
    # With client_no_context_takeover agreed each message starts afresh, so
    # the back-reference of §7.2.3.2 points before the start: invalid data.
    connection = deflate_connection(client_no_context_takeover=True)
    assert connection.receive_data(client_frame(TEXT, HELLO, rsv=RSV1)) == [b"Hello"]
    assert connection.receive_data(client_frame(TEXT, HELLO, rsv=RSV1)) == [b"Hello"]
    assert b"".join(connection.receive_data(client_frame(TEXT, HELLO_AGAIN, rsv=RSV1))) == b""
    failed(connection, 1002)


def test_rfc_stored_block():
    connection = deflate_connection()
    assert connection.receive_data(client_frame(TEXT, HELLO_STORED, rsv=RSV1)) == [b"Hello"]


def test_rfc_bfinal_block_then_next_message():
    # §7.2.3.4: a final block (here followed by a padding byte) ends the
    # stream; the next message starts a new one.
    connection = deflate_connection()
    assert connection.receive_data(client_frame(TEXT, HELLO_BFINAL, rsv=RSV1)) == [b"Hello"]
    assert connection.receive_data(client_frame(BINARY, HELLO, rsv=RSV1)) == [b"Hello"]
    assert connection.failure is None


def test_rfc_two_blocks_in_one_message():
    connection = deflate_connection()
    out = connection.receive_data(client_frame(TEXT, HELLO_TWO_BLOCKS, rsv=RSV1))
    assert b"".join(out) == b"Hello"


def test_rfc_compressed_empty_fragment_and_empty_message():
    # §7.2.3.6: a sender that flushed its whole output (tail included) ends
    # the message with a fragment holding 0x00; an empty message is 0x00 too.
    connection = deflate_connection()
    data = (client_frame(TEXT, HELLO + TAIL, fin=False, rsv=RSV1) + client_frame(CONT, b"\x00")
            + client_frame(BINARY, b"\x00", rsv=RSV1) + client_frame(BINARY, b"", rsv=RSV1))
    assert b"".join(connection.receive_data(data)) == b"Hello"
    assert connection.failure is None


def test_compressed_message_fed_one_byte_at_a_time():
    connection = deflate_connection()
    data = client_frame(TEXT, HELLO, rsv=RSV1) + client_frame(TEXT, HELLO_AGAIN, rsv=RSV1)
    out = []
    for index in range(len(data)):
        out += connection.receive_data(data[index:index + 1])
    assert b"".join(out) == b"HelloHello"


# -- receiving: RSV rules and bad data ----------------------------------------------------


@pytest.mark.parametrize("frames", [
    [client_frame(TEXT, HELLO[:3], fin=False, rsv=RSV1), client_frame(CONT, HELLO[3:], rsv=RSV1)],
    [client_frame(PING, b"x", rsv=RSV1)],
    [client_frame(TEXT, HELLO, rsv=RSV1 | RSV2)],
    [client_frame(BINARY, b"abc", rsv=RSV3)],
], ids=["rsv1-on-continuation", "rsv1-on-ping", "rsv2-with-rsv1", "rsv3"])
def test_reserved_bits_beyond_rsv1_on_a_first_frame_fail(frames):
    connection = deflate_connection()
    connection.receive_data(b"".join(frames))
    failed(connection, 1002)


def test_rsv1_without_the_extension_fails():
    connection = Connection("binary")
    assert connection.receive_data(client_frame(TEXT, HELLO, rsv=RSV1)) == []
    failed(connection, 1002)


def test_invalid_deflate_data_fails_with_1002():
    connection = deflate_connection()
    # BTYPE 11 is reserved (RFC 1951 §3.2.3).
    connection.receive_data(client_frame(BINARY, b"\xff\xff\xff", rsv=RSV1))
    failed(connection, 1002)


def test_compressed_text_must_be_utf8():
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    connection = deflate_connection()
    connection.receive_data(client_frame(TEXT, deflated(compressor, b"ok \xff\xfe"), rsv=RSV1))
    failed(connection, 1007)


def test_compressed_text_is_held_until_complete():
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    text = "grüße ".encode("utf-8") * 50
    payload = deflated(compressor, text)
    connection = deflate_connection()
    assert connection.receive_data(client_frame(TEXT, payload[:5], fin=False, rsv=RSV1)) == []
    assert b"".join(connection.receive_data(client_frame(CONT, payload[5:]))) == text


def test_uncompressed_messages_still_work_beside_compressed_ones():
    connection = deflate_connection()
    data = (client_frame(BINARY, b"plain") + client_frame(TEXT, HELLO, rsv=RSV1)
            + client_frame(TEXT, "é".encode("utf-8")))
    assert b"".join(connection.receive_data(data)) == b"plainHello" + "é".encode("utf-8")


def test_new_compressed_message_inside_a_fragmented_one_fails():
    connection = deflate_connection()
    connection.receive_data(client_frame(BINARY, b"a", fin=False)
                            + client_frame(BINARY, HELLO, rsv=RSV1))
    failed(connection, 1002)


# -- receiving: limits ---------------------------------------------------------------------


@pytest.mark.parametrize("opcode", [BINARY, TEXT])
def test_inflated_size_limit_closes_1009(opcode):
    limit = 100000
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    connection = deflate_connection(max_message_size=limit)
    exactly = deflated(compressor, b"a" * limit)
    out = connection.receive_data(client_frame(opcode, exactly, rsv=RSV1))
    assert b"".join(out) == b"a" * limit
    over = deflated(compressor, b"a" * (limit + 1))
    out = connection.receive_data(client_frame(opcode, over, rsv=RSV1))
    assert sum(len(chunk) for chunk in out) <= limit
    failed(connection, 1009)


def test_decompression_bomb_is_stopped_with_bounded_memory():
    # 200 MB of zeros deflate to about 200 KB; the limit stops inflating after
    # 1 MiB, and memory never holds much more than that.
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = bytes(1 << 20)
    bomb = b"".join(compressor.compress(block) for _ in range(200))
    bomb += compressor.flush(zlib.Z_SYNC_FLUSH)
    frame = client_frame(BINARY, bomb[:-4], rsv=RSV1)
    connection = deflate_connection(max_message_size=1 << 20)
    tracemalloc.start()
    try:
        out = connection.receive_data(frame)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(len(chunk) for chunk in out) <= 1 << 20
    failed(connection, 1009)
    # A few copies of the 200 KB input (unmasked, zlib's unconsumed tail),
    # the 1 MiB allowed, a few steps: nothing near the 200 MB it inflates to.
    assert peak < 4 * len(frame) + (1 << 20) + 4 * INFLATE_CHUNK, peak


def test_inflate_steps_are_bounded():
    codec = PerMessageDeflate(DeflateParams(), max_message_size=1 << 30)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = deflated(compressor, bytes(3 * INFLATE_CHUNK + 123))
    chunks = list(codec.inflate(payload, True))
    assert all(len(chunk) <= INFLATE_CHUNK for chunk in chunks)
    assert b"".join(chunks) == bytes(3 * INFLATE_CHUNK + 123)


def test_inflate_hands_on_everything_a_piece_holds():
    # Whatever a piece of the stream decodes to must come out with it, even
    # when a step fills up in the middle of a long match and the piece has
    # no more input: nothing may wait inside zlib for the next piece.
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = compressor.compress(b"ab" + bytes(3 * INFLATE_CHUNK))
    stream += compressor.flush(zlib.Z_SYNC_FLUSH)
    for cut in range(1, len(stream)):
        codec = PerMessageDeflate(DeflateParams(), max_message_size=1 << 30)
        expected = zlib.decompressobj(-15).decompress(stream[:cut])
        assert b"".join(codec.inflate(stream[:cut], False)) == expected, cut


# -- receiving: zlib streams for every parameter combination -------------------------------


CLIENT_PARAMS = [
    dict(),
    dict(client_no_context_takeover=True),
    dict(client_max_window_bits=9),
    dict(client_max_window_bits=12, client_no_context_takeover=True),
    dict(client_max_window_bits=15, server_no_context_takeover=True),
]


@pytest.mark.parametrize("params", CLIENT_PARAMS, ids=lambda p: ",".join(sorted(p)) or "default")
@pytest.mark.parametrize("subprotocol", ["binary", "base64"])
def test_client_streams_made_by_zlib(params, subprotocol):
    bits = params.get("client_max_window_bits", 15)
    no_context = params.get("client_no_context_takeover", False)
    rng = random.Random(7)
    connection = deflate_connection(subprotocol, **params)
    compressor = zlib.compressobj(6, zlib.DEFLATED, -bits)
    messages = [text_sample(size, seed) for seed, size in enumerate((10, 3000, 70000, 1, 5000))]
    received = []
    for message in messages:
        if no_context:
            compressor = zlib.compressobj(6, zlib.DEFLATED, -bits)
        wire = base64.b64encode(message) if subprotocol == "base64" else message
        payload = deflated(compressor, wire)
        # Fragment at random points; only the first frame carries RSV1.
        cuts = sorted(rng.sample(range(1, len(payload)), min(3, len(payload) - 1)))
        pieces = [payload[a:b] for a, b in zip([0] + cuts, cuts + [len(payload)])]
        opcode = TEXT if subprotocol == "base64" else BINARY
        data = b"".join(client_frame(opcode if index == 0 else CONT, piece,
                                     fin=index == len(pieces) - 1, rsv=RSV1 if index == 0 else 0)
                        for index, piece in enumerate(pieces))
        step = rng.randrange(1, 4000)
        for start in range(0, len(data), step):
            received += connection.receive_data(data[start:start + step])
    assert connection.failure is None, connection.failure
    assert b"".join(received) == b"".join(messages)


# -- sending --------------------------------------------------------------------------------


class ClientInflater:
    """A client's side of the server's stream, as RFC 7692 §7.2.2 describes it."""

    def __init__(self, bits: int = 15, no_context: bool = False) -> None:
        self.bits, self.no_context = bits, no_context
        self.decompressor = zlib.decompressobj(-bits)

    def message(self, frame) -> bytes:
        fin, rsv, opcode, payload = frame
        assert fin
        if not rsv:
            return payload
        assert rsv == RSV1
        if self.no_context:
            self.decompressor = zlib.decompressobj(-self.bits)
        return self.decompressor.decompress(payload + TAIL)


SERVER_PARAMS = [
    dict(),
    dict(server_no_context_takeover=True),
    dict(compress_window_bits=9, server_max_window_bits=9),
    dict(compress_window_bits=8, server_max_window_bits=8),
    dict(compress_window_bits=12, server_no_context_takeover=True, server_max_window_bits=12),
]


@pytest.mark.parametrize("params", SERVER_PARAMS, ids=lambda p: ",".join(
    "%s=%s" % item for item in sorted(p.items())) or "default")
def test_sent_messages_inflate_with_zlib(params):
    bits = params.get("server_max_window_bits") or 15
    no_context = params.get("server_no_context_takeover", False)
    connection = deflate_connection(**params)
    client = ClientInflater(bits, no_context)
    # Repeats 300 bytes apart: a window over 256 bytes would refer back that
    # far, which a client holding server_max_window_bits=8 could not follow.
    spaced = b"".join(os.urandom(300) + b"0123456789abcdef" for _ in range(50))
    messages = [text_sample(20000, 1), text_sample(20000, 1), spaced, os.urandom(5000),
                text_sample(3000, 2), b"Hello"]
    frames = [sent(connection, message) for message in messages]
    assert [client.message(frame) for frame in frames] == messages
    assert frames[0][1] == RSV1 and len(frames[0][3]) < 20000 // 2
    if not no_context and bits == 15:
        # The same text again is back-references into the previous message
        # (at most 258 bytes each, RFC 1951 §3.2.5).
        assert len(frames[1][3]) < 300
    assert frames[3][1] == 0, "random bytes must go uncompressed"
    assert frames[5][1] == 0 and frames[5][3] == b"Hello", "'Hello' deflates to 7 bytes: sent plain"


def test_server_no_context_takeover_messages_inflate_alone():
    connection = deflate_connection(server_no_context_takeover=True)
    text = text_sample(8000, 3)
    for _ in range(3):
        fin, rsv, opcode, payload = sent(connection, text)
        assert rsv == RSV1
        assert zlib.decompressobj(-15).decompress(payload + TAIL) == text


def test_skipped_message_does_not_desynchronise_the_window():
    # Context takeover: an attempt that did not shrink is thrown away, and the
    # client's window never sees it; later messages must not refer to it.
    connection = deflate_connection()
    client = ClientInflater()
    noise = os.urandom(4000)
    text = text_sample(5000, 4)
    messages = [text, noise, noise[:2000] + text, text]
    frames = [sent(connection, message) for message in messages]
    assert [frame[1] for frame in frames] == [RSV1, 0, RSV1, RSV1]
    assert [client.message(frame) for frame in frames] == messages


def test_long_incompressible_reads_back_off():
    # After a long read that did not shrink, the next BACKOFF_FIRST bytes of
    # long reads go plain untried; failing again doubles that.  Short reads
    # are always tried.  Whatever is skipped, the client's window stays in step.
    connection = deflate_connection()
    client = ClientInflater()
    long_text = [text_sample(BACKOFF_FIRST, seed) for seed in range(10, 14)]
    noise = [os.urandom(BACKOFF_FIRST) for _ in range(3)]
    plan = [
        (noise[0], 0),              # tried, does not shrink: skip the next 64 KiB
        (text_sample(2000, 9), RSV1),  # short: still tried
        (long_text[0], 0),          # skipped untried
        (long_text[1], RSV1),       # tried again
        (noise[1], 0),              # fails: skip 64 KiB
        (noise[2], 0),              # skipped
        (os.urandom(BACKOFF_FIRST), 0),  # tried, fails again: skip 128 KiB
        (long_text[2], 0),
        (long_text[3], 0),
        (long_text[0], RSV1),
    ]
    for message, rsv in plan:
        frame = sent(connection, message)
        assert frame[1] == rsv, (len(message), rsv)
        assert client.message(frame) == message
    assert BACKOFF_MIN_READ <= BACKOFF_FIRST <= BACKOFF_MAX


def test_level_zero_sends_everything_plain():
    connection = deflate_connection(level=0)
    text = text_sample(5000, 5)
    assert sent(connection, text) == (True, 0, BINARY, text)


def test_base64_compressed_payload_is_the_base64_text():
    connection = deflate_connection("base64")
    data = text_sample(6000, 6)
    fin, rsv, opcode, payload = sent(connection, data)
    assert (opcode, rsv) == (TEXT, RSV1)
    assert base64.b64decode(zlib.decompressobj(-15).decompress(payload + TAIL)) == data


def test_pongs_still_precede_compressed_data():
    connection = deflate_connection()
    connection.receive_data(client_frame(PING, b"p"))
    frames = server_frames(b"".join(bytes(part) for part in connection.send_data(text_sample(500))))
    assert [frame[2] for frame in frames] == [0xA, BINARY]


def test_nothing_is_sent_after_the_close():
    connection = deflate_connection()
    connection.send_close(1000)
    assert connection.send_data(text_sample(500)) == []


# -- negotiation ---------------------------------------------------------------------------


def test_no_header_no_extension():
    assert negotiate(None) is None
    assert negotiate("") is None
    assert negotiate("x-webkit-deflate-frame, foo; bar=1") is None


def test_plain_offer():
    agreed = negotiate("permessage-deflate")
    assert agreed == DeflateParams()
    assert agreed.response_header() == "permessage-deflate"


@pytest.mark.parametrize("header, answer, compress_bits, inflate_bits", [
    # What browsers send.
    ("permessage-deflate; client_max_window_bits", "permessage-deflate", 15, 15),
    ("permessage-deflate; server_no_context_takeover; client_no_context_takeover",
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover", 15, 15),
    ("permessage-deflate; server_max_window_bits=10",
     "permessage-deflate; server_max_window_bits=10", 10, 15),
    ('permessage-deflate; server_max_window_bits="9"; client_max_window_bits=11',
     "permessage-deflate; server_max_window_bits=9; client_max_window_bits=11", 9, 11),
    ("Permessage-Deflate; Server_Max_Window_Bits = 8 ; CLIENT_MAX_WINDOW_BITS",
     "permessage-deflate; server_max_window_bits=8", 8, 15),
])
def test_offer_parameters(header, answer, compress_bits, inflate_bits):
    agreed = negotiate(header)
    assert agreed.response_header() == answer
    assert agreed.compress_window_bits == compress_bits
    assert agreed.inflate_window_bits == inflate_bits


def test_configured_window_caps_the_offer():
    assert negotiate("permessage-deflate", 12).compress_window_bits == 12
    assert negotiate("permessage-deflate", 12).response_header() == "permessage-deflate"
    capped = negotiate("permessage-deflate; server_max_window_bits=14", 12)
    assert capped.response_header() == "permessage-deflate; server_max_window_bits=12"
    assert negotiate("permessage-deflate; server_max_window_bits=10", 12).compress_window_bits == 10


def test_first_offer_wsproxy_can_honour_wins():
    header = ("x-custom, permessage-deflate; unknown_param, "
              "permessage-deflate; server_max_window_bits=20, "
              "permessage-deflate; server_max_window_bits=11; client_no_context_takeover, "
              "permessage-deflate")
    agreed = negotiate(header)
    assert agreed.response_header() == ("permessage-deflate; client_no_context_takeover; "
                                        "server_max_window_bits=11")


def test_offers_in_repeated_headers_keep_their_order():
    # Two Sec-WebSocket-Extensions headers arrive joined with ", ".
    agreed = negotiate("permessage-deflate; server_no_context_takeover, permessage-deflate")
    assert agreed.server_no_context_takeover


@pytest.mark.parametrize("offer", [
    "permessage-deflate; server_max_window_bits",        # needs a value in an offer
    "permessage-deflate; server_max_window_bits=7",
    "permessage-deflate; server_max_window_bits=16",
    "permessage-deflate; server_max_window_bits=010",    # leading zero
    "permessage-deflate; client_max_window_bits=abc",
    "permessage-deflate; server_no_context_takeover=1",  # takes no value
    'permessage-deflate; client_no_context_takeover="x"',
    "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
    "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
    "permessage-deflate; mystery",
])
def test_invalid_parameters_decline_the_offer(offer):
    # RFC 7692 §7: the server "MUST decline" such an offer; a later one may still win.
    assert negotiate(offer) is None
    assert negotiate(offer + ", permessage-deflate; client_no_context_takeover") == \
        DeflateParams(client_no_context_takeover=True)


@pytest.mark.parametrize("header", [
    ";",
    "permessage-deflate;",
    "permessage-deflate; ; server_no_context_takeover",
    "permessage-deflate; =10",
    "permessage-deflate; server_max_window_bits=",
    'permessage-deflate; server_max_window_bits="10',
    'permessage-deflate; server_max_window_bits="1 0"',
    "permessage-deflate; server_max_window_bits=1@",
    "permessage deflate",
    "permessage-deflate server_no_context_takeover",
    "permessage-deflate, é",
    '"permessage-deflate"',
])
def test_malformed_header_is_a_400(header):
    with pytest.raises(HandshakeError) as info:
        negotiate(header)
    assert info.value.status == 400


def test_parse_extensions_keeps_names_params_and_quoted_values():
    parsed = parse_extensions(' , foo ;a; b = "x\\yz" ,, '
                              'permessage-deflate;server_max_window_bits=10 ,')
    assert parsed == [("foo", [("a", None), ("b", "xyz")]),
                      ("permessage-deflate", [("server_max_window_bits", "10")])]


def test_window_setting_out_of_range_is_clamped():
    assert negotiate("permessage-deflate", 30).compress_window_bits == 15
    assert negotiate("permessage-deflate", 3).compress_window_bits == 9


# -- many messages that inflate to the limit, in one receive ------------------------------


def test_one_receive_of_bombs_comes_out_in_bounded_steps():
    # Before, everything one receive inflated was returned at once: 600 such
    # messages in one receive held ~600 MiB.  Now a receive pauses once it has
    # handed out OUTPUT_STEP bytes (plus the message that crossed it).
    from wsproxy.protocol.connection import OUTPUT_STEP
    size = 256 * 1024 - 1
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = compressor.compress(b"\0" * size) + compressor.flush(zlib.Z_SYNC_FLUSH)
    frame = client_frame(BINARY, body[:-4], rsv=RSV1)
    count = 40
    connection = deflate_connection(max_message_size=size + 1, client_no_context_takeover=True)
    steps = [connection.receive_data(frame * count)]
    while connection.input_pending:
        steps.append(connection.receive_more())
    sizes = [sum(len(chunk) for chunk in step) for step in steps]
    assert sum(sizes) == count * size
    assert max(sizes) <= OUTPUT_STEP + size
    assert len(steps) > 1 and connection.failure is None


def test_feeding_while_input_is_pending_keeps_the_order():
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    frames = b""
    for byte in b"abc":
        data = bytes([byte]) * (100 * 1024)
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        body = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        frames += client_frame(BINARY, body[:-4], rsv=RSV1)
    connection = deflate_connection(client_no_context_takeover=True)
    out = connection.receive_data(frames[:len(frames) - 10])
    assert connection.input_pending
    out += connection.receive_data(frames[len(frames) - 10:])  # without receive_more first
    while connection.input_pending:
        out += connection.receive_more()
    assert b"".join(out) == b"a" * 102400 + b"b" * 102400 + b"c" * 102400
