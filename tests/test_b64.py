"""Tests of wsproxy.protocol.b64: the streaming decoder of the base64 subprotocol."""

import base64
import random

import pytest

from wsproxy.protocol.b64 import Base64Decoder, encode
from wsproxy.protocol.errors import ProtocolError


def feed_message(pieces) -> bytes:
    """Decode one message fed as ``pieces``; it must end whole."""
    decoder = Base64Decoder()
    out = b"".join(decoder.feed(piece) for piece in pieces)
    decoder.finish()
    return out


def assert_invalid(*pieces) -> None:
    """Feeding ``pieces`` as one message fails with 1007 at the latest when it ends."""
    decoder = Base64Decoder()
    with pytest.raises(ProtocolError) as info:
        for piece in pieces:
            decoder.feed(piece)
        decoder.finish()
    assert info.value.code == 1007


def test_encode_is_plain_base64_without_newline():
    assert encode(b"") == b""
    assert encode(b"A") == b"QQ=="
    assert encode(bytearray(b"AB")) == b"QUI="
    assert encode(memoryview(b"ABC")) == b"QUJD"
    data = bytes(range(256)) * 3
    assert encode(data) == base64.b64encode(data)


def test_whole_groups_decode_at_once():
    decoder = Base64Decoder()
    assert decoder.feed(b"SGVsbG8h") == b"Hello!"
    assert decoder.pending == 0
    assert decoder.feed(b"") == b""


def test_incomplete_group_is_held_back():
    decoder = Base64Decoder()
    assert decoder.feed(b"SGVsb") == b"Hel"
    assert decoder.pending == 1
    assert decoder.feed(b"G8") == b""
    assert decoder.pending == 3
    assert decoder.feed(b"h") == b"lo!"
    assert decoder.pending == 0


def test_padded_messages_back_to_back():
    # Each message is decoded on its own, padding and all.
    decoder = Base64Decoder()
    out = []
    for message in (b"QQ==", b"QUI=", b"QUJD", b"QQ=="):
        out.append(decoder.feed(message))
        decoder.finish()
    assert b"".join(out) == b"AABABCA"


def test_padding_inside_a_message_is_1007():
    # Padding ends a message: two encodings run together are not one.
    for text in (b"QQ==QUI=", b"QQ==QUI=QUJD", b"QUI=QQ=="):
        assert_invalid(text)
    assert_invalid(b"QQ==", b"QUI=")


def test_a_message_that_is_not_whole_base64_is_1007():
    # "QQ" then "QkNE": the first message is two characters short of a group;
    # nothing of it may join the next one.
    decoder = Base64Decoder()
    assert decoder.feed(b"QQ") == b""
    with pytest.raises(ProtocolError) as info:
        decoder.finish()
    assert info.value.code == 1007
    assert decoder.pending == 0
    assert decoder.feed(b"QkNE") == b"BCD"
    decoder.finish()


@pytest.mark.parametrize("pieces", [
    [b"QUI", b"="], [b"QQ", b"=="], [b"QQ=", b"="], [b"Q", b"Q", b"=", b"="],
    [b"QUJDQQ=", b"="], [b"QUJDQ", b"Q==", b""],
])
def test_padding_split_across_feeds(pieces):
    assert feed_message(pieces) == base64.b64decode(b"".join(pieces))


def test_every_split_and_byte_by_byte():
    rng = random.Random(6455)
    for length in range(0, 40):
        data = bytes(rng.randrange(256) for _ in range(length))
        text = encode(data)
        assert feed_message([text]) == data
        assert feed_message([text[i:i + 1] for i in range(len(text))]) == data
        for cut in range(len(text) + 1):
            assert feed_message([text[:cut], text[cut:]]) == data


def test_many_messages_split_everywhere():
    chunks = [b"x", b"yz", b"123", b"", b"q", b"\xff\x00"]
    for cut in range(0, 5):
        decoder = Base64Decoder()
        out = []
        for chunk in chunks:
            text = encode(chunk)
            out.append(decoder.feed(text[:cut]))
            out.append(decoder.feed(text[cut:]))
            decoder.finish()
        assert b"".join(out) == b"".join(chunks)


def test_accepts_any_bytes_like():
    decoder = Base64Decoder()
    assert decoder.feed(bytearray(b"QU")) == b""
    assert decoder.feed(memoryview(b"--JD--")[2:4]) == b"ABC"


@pytest.mark.parametrize("pieces", [
    [b"QUJ!"], [b"QU\nI"], [b"QUI=\n"], [b"QU I"], [b" QUI="], [b"QUJD\r\n"], [b"QUJD\t"],
    [b"QU-_"], [b"QUJ\xc3\xa9"], [b"QUJ\x00"],
    [b"QU", b"J*"],
])
def test_non_alphabet_characters_are_1007(pieces):
    assert_invalid(*pieces)


@pytest.mark.parametrize("pieces", [
    [b"===="], [b"Q==="], [b"=QUI"], [b"Q=UI"], [b"QU=I"], [b"QQ=A"], [b"QQ==="],
    [b"QQ====QUI"], [b"QQ=", b"A"], [b"QQ==", b"="], [b"Q="], [b"="], [b"QUI=", b"=QUI"],
    [b"QUJD", b"Q=", b"=="],
])
def test_misplaced_padding_is_1007(pieces):
    assert_invalid(*pieces)


def test_invalid_input_fails_before_the_group_is_complete():
    # An invalid character is reported at once, not when its group fills up.
    decoder = Base64Decoder()
    with pytest.raises(ProtocolError):
        decoder.feed(b"Q!")
    decoder = Base64Decoder()
    with pytest.raises(ProtocolError):
        decoder.feed(b"Q=")


@pytest.mark.parametrize("bad", [b"!", b"=", b"\n", b"-", b"\x00"])
@pytest.mark.parametrize("where", [0, 1, 4095, 4096, 8190])
def test_one_bad_character_in_a_long_piece_is_1007(bad, where):
    """Long pieces of whole groups decode in one strict pass; any one foreign character still fails."""
    text = bytearray(base64.b64encode(random.Random(where).randbytes(6144)))  # 8,192 characters, no padding
    text[where] = bad[0]
    for pieces in ([bytes(text)], [bytes(text[:7]), bytes(text[7:])], [bytearray(text)]):
        assert_invalid(*pieces)


def test_long_pieces_with_a_held_back_tail_decode_whole():
    payload = random.Random(3).randbytes(10000)
    text = base64.b64encode(payload)
    decoder = Base64Decoder()
    out = decoder.feed(bytearray(text[:4099])) + decoder.feed(text[4099:])
    decoder.finish()
    assert out == payload
