"""Tests of wsproxy.protocol.b64: the streaming decoder of the base64 subprotocol."""

import base64
import random

import pytest

from wsproxy.protocol.b64 import Base64Decoder, encode
from wsproxy.protocol.errors import ProtocolError


def feed_all(pieces) -> bytes:
    decoder = Base64Decoder()
    return b"".join(decoder.feed(piece) for piece in pieces)


def assert_invalid(*pieces) -> None:
    """Feeding ``pieces`` in order fails with 1007 at the latest on the last one."""
    decoder = Base64Decoder()
    with pytest.raises(ProtocolError) as info:
        for piece in pieces:
            decoder.feed(piece)
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
    assert feed_all([b"QQ==", b"QUI="]) == b"AAB"
    assert feed_all([b"QQ==QUI="]) == b"AAB"
    assert feed_all([b"QQ==QUI=QUJD"]) == b"AABABC"
    assert feed_all([b"QUI=QQ==", b"QQ=="]) == b"ABAA"


@pytest.mark.parametrize("pieces", [
    [b"QUI", b"="], [b"QQ", b"=="], [b"QQ=", b"="], [b"Q", b"Q", b"=", b"="],
    [b"QQ=", b"=QUI", b"="], [b"QQ==Q", b"UI="],
])
def test_padding_split_across_feeds(pieces):
    expected = base64.b64decode(b"".join(pieces)[:4]) + base64.b64decode(b"".join(pieces)[4:])
    assert feed_all(pieces) == expected


def test_every_split_and_byte_by_byte():
    rng = random.Random(6455)
    for length in range(0, 40):
        data = bytes(rng.randrange(256) for _ in range(length))
        text = encode(data)
        assert feed_all([text]) == data
        assert feed_all([text[i:i + 1] for i in range(len(text))]) == data
        for cut in range(len(text) + 1):
            assert feed_all([text[:cut], text[cut:]]) == data


def test_many_padded_chunks_split_everywhere():
    chunks = [b"x", b"yz", b"123", b"", b"q", b"\xff\x00"]
    text = b"".join(encode(chunk) for chunk in chunks)
    expected = b"".join(chunks)
    for cut in range(len(text) + 1):
        for cut2 in range(cut, len(text) + 1, 3):
            assert feed_all([text[:cut], text[cut:cut2], text[cut2:]]) == expected


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
