"""Byte-level tests of wsproxy.protocol.frames: encoder, masking, close payloads.

Expected bytes come from RFC 6455 §5.7's example frames or are built here
by hand with ``struct``, never with the encoder under test.
"""

import os
import struct

import pytest

from wsproxy.protocol.errors import ProtocolError
from wsproxy.protocol.frames import (CONTROL_OPCODES, DATA_OPCODES, KNOWN_OPCODES,
                                     MAX_CONTROL_PAYLOAD, CloseCode, Opcode, apply_mask,
                                     encode_close_payload, encode_frame, encode_header,
                                     is_valid_close_code, parse_close_payload, rotate_mask)

RFC_MASK = bytes.fromhex("37fa213d")


def naive_mask(payload: bytes, mask: bytes) -> bytes:
    """RFC 6455 §5.3 written out byte by byte: the reference for apply_mask."""
    return bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))


# -- opcodes and close codes -------------------------------------------------------


def test_opcode_values_are_rfc_6455_section_5_2():
    assert [int(op) for op in (Opcode.CONTINUATION, Opcode.TEXT, Opcode.BINARY,
                               Opcode.CLOSE, Opcode.PING, Opcode.PONG)] == [0, 1, 2, 8, 9, 10]
    assert DATA_OPCODES == {0, 1, 2}
    assert CONTROL_OPCODES == {8, 9, 10}
    assert KNOWN_OPCODES == {0, 1, 2, 8, 9, 10}
    assert MAX_CONTROL_PAYLOAD == 125


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011,
                                  1012, 1013, 1014, 3000, 3999, 4000, 4999])
def test_sendable_close_codes(code):
    assert is_valid_close_code(code)


@pytest.mark.parametrize("code", [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1999, 2000,
                                  2999, 5000, 65535])
def test_close_codes_a_peer_may_not_send(code):
    assert not is_valid_close_code(code)


# -- the encoder ---------------------------------------------------------------------


def test_rfc_single_frame_unmasked_text():
    # RFC 6455 §5.7: a single-frame unmasked text message containing "Hello".
    assert encode_frame(Opcode.TEXT, b"Hello") == bytes.fromhex("810548656c6c6f")


def test_rfc_single_frame_masked_text():
    # RFC 6455 §5.7: the same message masked with 37 fa 21 3d.
    frame = encode_header(Opcode.TEXT, 5, mask=RFC_MASK) + apply_mask(b"Hello", RFC_MASK)
    assert frame == bytes.fromhex("818537fa213d7f9f4d5158")


def test_rfc_fragmented_unmasked_text():
    # RFC 6455 §5.7: "Hel" then "lo" as two fragments.
    first = encode_header(Opcode.TEXT, 3, fin=False) + b"Hel"
    second = encode_header(Opcode.CONTINUATION, 2) + b"lo"
    assert first == bytes.fromhex("010348656c")
    assert second == bytes.fromhex("80026c6f")


def test_rfc_ping_and_masked_pong():
    assert encode_frame(Opcode.PING, b"Hello") == bytes.fromhex("890548656c6c6f")
    pong = encode_header(Opcode.PONG, 5, mask=RFC_MASK) + apply_mask(b"Hello", RFC_MASK)
    assert pong == bytes.fromhex("8a8537fa213d7f9f4d5158")


def test_rfc_256_byte_binary_header():
    assert encode_header(Opcode.BINARY, 256) == bytes.fromhex("827e0100")


def test_rfc_64_kib_binary_header():
    assert encode_header(Opcode.BINARY, 65536) == bytes.fromhex("827f0000000000010000")


@pytest.mark.parametrize("length, expected", [
    (0, b"\x82\x00"),
    (1, b"\x82\x01"),
    (125, b"\x82\x7d"),
    (126, b"\x82\x7e" + struct.pack("!H", 126)),
    (65535, b"\x82\x7e\xff\xff"),
    (65536, b"\x82\x7f" + struct.pack("!Q", 65536)),
    (2 ** 32, b"\x82\x7f" + struct.pack("!Q", 2 ** 32)),
])
def test_header_length_forms(length, expected):
    assert encode_header(Opcode.BINARY, length) == expected


def test_masked_header_length_forms_put_the_mask_last():
    assert encode_header(Opcode.BINARY, 125, mask=b"abcd") == b"\x82\xfd" + b"abcd"
    assert encode_header(Opcode.BINARY, 126, mask=b"abcd") == b"\x82\xfe\x00\x7e" + b"abcd"
    assert encode_header(Opcode.BINARY, 65536, mask=b"abcd") == \
        b"\x82\xff" + struct.pack("!Q", 65536) + b"abcd"


def test_header_flags():
    assert encode_header(Opcode.CONTINUATION, 0, fin=False) == b"\x00\x00"
    assert encode_header(Opcode.BINARY, 0, rsv1=True) == b"\xc2\x00"
    assert encode_header(Opcode.CLOSE, 2) == b"\x88\x02"


def test_encode_frame_accepts_buffers():
    assert encode_frame(Opcode.BINARY, bytearray(b"ab")) == b"\x82\x02ab"
    assert encode_frame(Opcode.BINARY, memoryview(b"xabx")[1:3]) == b"\x82\x02ab"
    assert encode_frame(Opcode.PONG) == b"\x8a\x00"


# -- masking -------------------------------------------------------------------------


def test_apply_mask_matches_the_rfc_definition():
    rng_payloads = [b"", b"a", os.urandom(3), os.urandom(4), os.urandom(5), os.urandom(7),
                    os.urandom(64), os.urandom(1001), b"\x00" * 9, b"\xff" * 13]
    for payload in rng_payloads:
        assert apply_mask(payload, RFC_MASK) == naive_mask(payload, RFC_MASK)


def test_apply_mask_keeps_leading_and_trailing_zero_bytes():
    # Big-integer arithmetic must not drop zero bytes at either end.
    mask = b"\x00\x00\x00\x00"
    payload = b"\x00\x00abc\x00\x00"
    assert apply_mask(payload, mask) == payload
    assert apply_mask(b"\x37\xfa", RFC_MASK) == b"\x00\x00"


def test_apply_mask_is_its_own_inverse_and_takes_any_buffer():
    payload = os.urandom(999)
    masked = apply_mask(payload, RFC_MASK)
    assert masked != payload
    assert apply_mask(masked, RFC_MASK) == payload
    assert apply_mask(bytearray(masked), bytearray(RFC_MASK)) == payload
    assert apply_mask(memoryview(b"--" + masked)[2:], memoryview(RFC_MASK)) == payload
    # A fresh object the caller may keep: never a view into the input.
    assert isinstance(apply_mask(memoryview(masked), RFC_MASK), (bytes, bytearray))
    assert isinstance(apply_mask(memoryview(masked[:9]), RFC_MASK), (bytes, bytearray))


def test_apply_mask_both_strategies_agree_around_the_switch():
    # Small payloads go through one big integer, large ones through translate
    # tables; every length near the switch and every lane must match.
    for length in list(range(500, 530)) + [4096, 4097, 65535, 65536, 65537]:
        payload = os.urandom(length)
        for mask in (RFC_MASK, b"\x00\xff\x80\x01", os.urandom(4)):
            assert apply_mask(payload, mask) == naive_mask(payload, mask), (length, mask)
            assert apply_mask(bytearray(payload), memoryview(mask)) == naive_mask(payload, mask)


def test_rotate_mask_continues_the_mask_at_any_offset():
    payload = os.urandom(40)
    whole = naive_mask(payload, RFC_MASK)
    for offset in range(len(payload)):
        assert apply_mask(payload[offset:], rotate_mask(RFC_MASK, offset)) == whole[offset:]
    assert rotate_mask(RFC_MASK, 0) == RFC_MASK
    assert rotate_mask(RFC_MASK, 4) == RFC_MASK
    assert rotate_mask(RFC_MASK, 1) == bytes.fromhex("fa213d37")


# -- close payloads --------------------------------------------------------------------


def test_encode_close_payload():
    assert encode_close_payload(None) == b""
    assert encode_close_payload(CloseCode.NO_STATUS) == b""
    assert encode_close_payload(1000) == b"\x03\xe8"
    assert encode_close_payload(1002, "bad") == b"\x03\xeabad"
    assert encode_close_payload(4000, "é") == b"\x0f\xa0\xc3\xa9"


def test_encode_close_payload_fits_a_control_frame():
    payload = encode_close_payload(1000, "x" * 300)
    assert len(payload) == MAX_CONTROL_PAYLOAD
    assert payload == b"\x03\xe8" + b"x" * 123


def test_encode_close_payload_never_cuts_a_utf8_character():
    # 2 + 61 * 2 = 124 bytes fit; the 62nd "é" would end at byte 126.  Cutting
    # at 125 would leave half a character, a reason the peer must fail (1007).
    payload = encode_close_payload(1000, "é" * 100)
    assert len(payload) <= MAX_CONTROL_PAYLOAD
    assert payload == b"\x03\xe8" + "é".encode() * 61
    assert parse_close_payload(payload) == (1000, "é" * 61)
    four_byte = encode_close_payload(1000, "\U0001f600" * 40)
    assert parse_close_payload(four_byte) == (1000, "\U0001f600" * 30)


def test_encode_close_payload_with_an_unencodable_reason_does_not_raise():
    payload = encode_close_payload(1011, "lone \ud800 surrogate")
    code, reason = parse_close_payload(payload)
    assert code == 1011
    assert reason.startswith("lone ") and reason.endswith(" surrogate")


def test_parse_close_payload_valid():
    assert parse_close_payload(b"") == (CloseCode.NO_STATUS, "")
    assert parse_close_payload(b"\x03\xe8") == (1000, "")
    assert parse_close_payload(b"\x03\xe8bye") == (1000, "bye")
    assert parse_close_payload(b"\x0f\xa0" + "é€".encode()) == (4000, "é€")
    assert parse_close_payload(struct.pack("!H", 4999)) == (4999, "")


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000])
def test_parse_close_payload_forbidden_code_is_1002(code):
    with pytest.raises(ProtocolError) as info:
        parse_close_payload(struct.pack("!H", code))
    assert info.value.code == 1002


def test_parse_close_payload_one_byte_is_1002():
    with pytest.raises(ProtocolError) as info:
        parse_close_payload(b"\x03")
    assert info.value.code == 1002


@pytest.mark.parametrize("reason", [b"\xff", b"ok\xc3", b"\xc0\xaf", b"\xed\xa0\x80"])
def test_parse_close_payload_reason_not_utf8_is_1007(reason):
    with pytest.raises(ProtocolError) as info:
        parse_close_payload(b"\x03\xe8" + reason)
    assert info.value.code == 1007
