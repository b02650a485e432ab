"""Relaying through the proxy: echo in every mode, framing rules, close paths, the log.

Each test drives the proxy with the independent client in ``wsclient`` and
checks both ends: what the client got back and what reached the TCP target.
Target replies come one frame per target read, so streams are compared by
concatenating payloads, never message by message.
"""

import base64
import hashlib
import os
import random
import re
import struct
import threading

import pytest

from conftest import wait_until
from wsclient import (OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, ClientError,
                      encode_frame)

KIB = 1024
MIB = 1024 * 1024

MODES = {"binary": ["binary"], "base64": ["base64"], "none": None}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Sender:
    """Runs ``send`` in a thread so the test can read replies meanwhile.

    Large echoes would otherwise deadlock: the client blocks sending while
    the proxy blocks sending the echo back to a client that is not reading.
    """

    def __init__(self, send) -> None:
        self.error = None
        self._send = send
        self._thread = threading.Thread(target=self._run, name="test-sender", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._send()
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self, timeout: float = 10.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "sending did not finish within %.1fs" % timeout
        if self.error is not None:
            raise self.error


def send_payload(ws, mode: str, payload: bytes) -> None:
    """Send ``payload`` as one message in ``mode``'s framing."""
    if mode == "base64":
        ws.send_text(base64.b64encode(payload))
    else:
        ws.send_binary(payload)


def assert_nothing_more(ws) -> None:
    """A ping's pong must be the very next thing: no stray data frames."""
    ws.send_ping(b"sync")
    message = ws.recv_message()
    assert (message.opcode, message.payload) == (OP_PONG, b"sync"), \
        "expected only the pong, got opcode %d %r" % (message.opcode, message.payload[:60])


def close_cleanly(ws) -> None:
    ws.send_close(1000)
    code, _ = ws.recv_close()
    assert code == 1000
    assert ws.messages_before_close == []
    ws.expect_closed()


def expect_close_code(ws, code: int, sender: "Sender" = None) -> None:
    """The proxy must send a close frame carrying ``code``, then close TCP.

    The client answers the close as RFC 6455 §5.5.1 asks (after ``sender``,
    a send still in progress, has finished, so frames do not interleave).
    """
    got, reason = ws.recv_close()
    assert got == code, "expected close %d, got %s %r" % (code, got, reason)
    if sender is not None:
        sender.finish()
    ws.send_close(1000, tolerate_close=True)
    ws.expect_closed()


# -- echo -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 2 * MIB])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_echo(proxy, echo_target, mode, size):
    payload = os.urandom(size)
    with proxy().session(protocols=MODES[mode]) as ws:
        sender = Sender(lambda: send_payload(ws, mode, payload))
        if mode == "base64":
            echoed = ws.recv_stream(size, decode_base64=True)
        else:
            echoed = ws.recv_stream(size, opcode=OP_BINARY)
        sender.finish()
        assert sha(echoed) == sha(payload)
        connection = echo_target.wait_connection()
        connection.wait_received(size)
        assert connection.received_sha256 == sha(payload)
        assert ws.largest_data_frame <= (87384 if mode == "base64" else 64 * KIB), \
            "one frame per target read of at most 64 KiB"
        assert_nothing_more(ws)
        close_cleanly(ws)


def test_echo_many_messages_of_random_sizes(proxy, echo_target):
    chooser = random.Random(6455)
    payloads = [os.urandom(chooser.choice([1, 7, 125, 126, 127, 1000, 65536, 70000]))
                for _ in range(40)]
    total = b"".join(payloads)
    with proxy().session(protocols=["binary"]) as ws:
        sender = Sender(lambda: [ws.send_binary(part) for part in payloads])
        assert sha(ws.recv_stream(len(total))) == sha(total)
        sender.finish()
        close_cleanly(ws)


def test_concurrent_sessions_do_not_mix(proxy, echo_target):
    proxy_run = proxy()
    clients = [proxy_run.session(protocols=["binary"]) for _ in range(4)]
    payloads = [os.urandom(200 * KIB + index) for index in range(4)]
    senders = [Sender(lambda ws=ws, data=data: ws.send_binary(data))
               for ws, data in zip(clients, payloads)]
    for ws, data in zip(clients, payloads):
        assert sha(ws.recv_stream(len(data))) == sha(data)
    for sender in senders:
        sender.finish()
    for ws in clients:
        close_cleanly(ws)
        ws.close()


def test_binary_frame_streams_before_it_is_complete(proxy, echo_target):
    payload = os.urandom(MIB)
    frame = encode_frame(OP_BINARY, payload)
    head = 14 + 1000  # 2 + 8-byte length + 4-byte mask, then 1000 payload bytes
    with proxy().session(protocols=["binary"]) as ws:
        ws.send_raw(frame[:head])
        echo_target.wait_connection().wait_received(1000)
        sender = Sender(lambda: ws.send_raw(frame[head:]))
        assert sha(ws.recv_stream(len(payload))) == sha(payload)
        sender.finish()
        close_cleanly(ws)


def test_binary_fragment_streams_before_the_message_ends(proxy, echo_target):
    with proxy().session(protocols=["binary"]) as ws:
        ws.send_binary(b"a" * 1000, fin=False)
        echo_target.wait_connection().wait_received(1000)
        ws.send_continuation(b"b" * 10, fin=False)
        ws.send_continuation(b"c" * 5, fin=True)
        assert ws.recv_stream(1015) == b"a" * 1000 + b"b" * 10 + b"c" * 5
        close_cleanly(ws)


def test_empty_fragments_are_fine(proxy, echo_target):
    with proxy().session(protocols=["binary"]) as ws:
        ws.send_binary(b"", fin=False)
        ws.send_continuation(b"xy", fin=False)
        ws.send_continuation(b"", fin=True)
        assert ws.recv_stream(2) == b"xy"
        close_cleanly(ws)


# -- base64 ------------------------------------------------------------------------------


def test_base64_chunk_split_across_fragments(proxy, echo_target):
    with proxy().session(protocols=["base64"]) as ws:
        ws.send_text("QUJ", fin=False)
        ws.send_continuation("D", fin=True)
        assert ws.recv_stream(3, decode_base64=True) == b"ABC"
        assert echo_target.wait_connection().received_bytes() == b"ABC"
        close_cleanly(ws)


def test_base64_message_that_is_not_whole_is_1007(proxy, echo_target, wsproxy_log):
    # Each message is base64 on its own: "QQ" is not, and must not be joined
    # to the next message (before, the target got b"A\x04\x1a" from "QQ" + "QkNE").
    with proxy().session(protocols=["base64"]) as ws:
        ws.send_text("QQ")
        ws.send_text("QkNE", tolerate_close=True)
        assert ws.recv_close()[0] == 1007
        ws.expect_closed()
    wsproxy_log.wait_for(lambda text: "close 1007" in text and "base64" in text)
    assert echo_target.wait_connection().received_bytes() == b""


def test_base64_group_split_across_fragments(proxy, echo_target):
    with proxy().session(protocols=["base64"]) as ws:
        ws.send_text("QU", fin=False)
        ws.send_continuation("JD")
        assert ws.recv_stream(3, decode_base64=True) == b"ABC"
        close_cleanly(ws)


def test_base64_each_message_padded_on_its_own(proxy, echo_target):
    # What a browser client does: base64-encode each send separately.
    with proxy().session(protocols=["base64"]) as ws:
        ws.send_text("QQ==")
        ws.send_text("Qg==")
        ws.send_text("QUM=")
        assert ws.recv_stream(4, decode_base64=True) == b"ABAC"
        close_cleanly(ws)


def test_base64_split_at_random_places(proxy, echo_target):
    chooser = random.Random(4648)
    payload = os.urandom(100 * KIB + 1)
    encoded = base64.b64encode(payload)
    with proxy().session(protocols=["base64"]) as ws:
        def send_pieces():
            position, open_message = 0, False
            while position < len(encoded):
                step = chooser.choice([1, 2, 3, 5, 7, 1001, 4099, 65537])
                piece = encoded[position:position + step]
                position += len(piece)
                last = position >= len(encoded)
                # A message ends only where its base64 is whole (each is decoded on its own).
                fin = last or (position % 4 == 0 and chooser.random() < 0.5)
                if open_message:
                    ws.send_continuation(piece, fin=fin)
                else:
                    ws.send_text(piece, fin=fin)
                open_message = not fin
        sender = Sender(send_pieces)
        assert sha(ws.recv_stream(len(payload), decode_base64=True)) == sha(payload)
        sender.finish()
        assert echo_target.wait_connection().received_sha256 == sha(payload)
        close_cleanly(ws)


def test_base64_padded_chunks_of_random_sizes(proxy, echo_target):
    chooser = random.Random(1)
    chunks = [os.urandom(chooser.randint(1, 3000)) for _ in range(50)]
    total = b"".join(chunks)
    with proxy().session(protocols=["base64"]) as ws:
        sender = Sender(lambda: [ws.send_text(base64.b64encode(chunk)) for chunk in chunks])
        assert sha(ws.recv_stream(len(total), decode_base64=True)) == sha(total)
        sender.finish()
        close_cleanly(ws)


@pytest.mark.parametrize("text", ["QUJD!!!!", "@@@@", "QUJD\x00\x00\x00\x00", "QUJD\xe9\xe9\xe9\xe9"])
def test_invalid_base64_is_1007(proxy, echo_target, text):
    with proxy().session(protocols=["base64"]) as ws:
        ws.send_text(text)
        expect_close_code(ws, 1007)


# -- text frames in binary mode --------------------------------------------------------------


@pytest.mark.parametrize("mode", ["binary", "none"])
def test_text_message_in_binary_mode_is_forwarded(proxy, echo_target, mode):
    text = "h\u00e9llo w\u00f6rld \u2713 \U0001f600"
    data = text.encode("utf-8")
    with proxy().session(protocols=MODES[mode]) as ws:
        ws.send_text(text)
        assert ws.recv_stream(len(data), opcode=OP_BINARY) == data, \
            "target bytes go back as binary frames"
        assert echo_target.wait_connection().received_bytes() == data
        close_cleanly(ws)


def test_fragmented_text_with_split_character_is_forwarded(proxy, echo_target):
    data = "h\u00e9llo \U0001f600".encode("utf-8")
    with proxy().session(protocols=["binary"]) as ws:
        ws.send_text(data[:2], fin=False)          # "h" + first byte of "é"
        ws.send_continuation(data[2:8], fin=False)  # ends inside the emoji
        ws.send_continuation(data[8:], fin=True)
        assert ws.recv_stream(len(data)) == data
        close_cleanly(ws)


def send_before(ws, connection_of) -> object:
    """Send b"before" and wait until the target holds it; return the target connection."""
    ws.send_binary(b"before")
    assert ws.recv_stream(6) == b"before"
    connection = connection_of()
    connection.wait_received(6)
    return connection


def assert_target_got_only_before(connection) -> None:
    # The proxy shuts the target down when the session ends; after that EOF
    # nothing more can arrive, so the record is final.
    connection.wait_eof()
    assert connection.received_bytes() == b"before"


def test_invalid_utf8_text_is_1007_and_forwards_nothing(proxy, echo_target):
    with proxy().session(protocols=["binary"]) as ws:
        connection = send_before(ws, echo_target.wait_connection)
        ws.send_text(b"valid start \xff\xfe")
        expect_close_code(ws, 1007)
    assert_target_got_only_before(connection)


def test_invalid_utf8_in_last_fragment_forwards_nothing(proxy, echo_target):
    with proxy().session(protocols=["binary"]) as ws:
        connection = send_before(ws, echo_target.wait_connection)
        ws.send_text(b"abc" * 100, fin=False)
        ws.send_continuation(b"def\xc3", fin=False)
        ws.send_continuation(b"(", fin=True)  # \xc3 ( is not UTF-8
        expect_close_code(ws, 1007)
    assert_target_got_only_before(connection)


def test_text_ending_inside_a_character_is_1007(proxy, echo_target):
    with proxy().session(protocols=["binary"]) as ws:
        connection = send_before(ws, echo_target.wait_connection)
        ws.send_text("\u00e9".encode("utf-8")[:1])
        expect_close_code(ws, 1007)
    assert_target_got_only_before(connection)


def test_text_over_one_mib_in_fragments_is_1009(proxy, echo_target):
    with proxy().session(protocols=["binary"]) as ws:
        connection = send_before(ws, echo_target.wait_connection)
        chunk = b"a" * (64 * KIB)

        def send_oversized():
            ws.send_text(chunk, fin=False, tolerate_close=True)
            for _ in range(14):
                ws.send_continuation(chunk, fin=False, tolerate_close=True)
            ws.send_continuation(chunk + b"a", fin=True, tolerate_close=True)  # 1 MiB + 1
        expect_close_code(ws, 1009, Sender(send_oversized))
    assert_target_got_only_before(connection)


def test_text_over_one_mib_in_one_frame_is_1009(proxy, echo_target):
    with proxy().session(protocols=["binary"]) as ws:
        connection = send_before(ws, echo_target.wait_connection)
        sender = Sender(lambda: ws.send_text(b"a" * (MIB + 1), tolerate_close=True))
        expect_close_code(ws, 1009, sender)
    assert_target_got_only_before(connection)


def test_text_of_exactly_one_mib_is_forwarded(proxy, echo_target):
    data = b"z" * MIB
    with proxy().session(protocols=["binary"]) as ws:
        sender = Sender(lambda: ws.send_text(data))
        assert ws.recv_stream(len(data)) == data
        sender.finish()
        close_cleanly(ws)


def test_configured_message_limit(proxy, echo_target):
    with proxy(max_message_size=1000).session(protocols=["binary"]) as ws:
        ws.send_text(b"q" * 1000)
        assert ws.recv_stream(1000) == b"q" * 1000
        ws.send_text(b"q" * 600, fin=False)
        ws.send_continuation(b"q" * 401, fin=True, tolerate_close=True)
        expect_close_code(ws, 1009)


# -- framing errors -----------------------------------------------------------------------


def _close_body(code, reason=b""):
    return struct.pack("!H", code) + reason


PROTOCOL_ERRORS = {
    "unmasked": lambda ws: ws.send_binary(b"abc", mask=False),
    "unmasked-empty": lambda ws: ws.send_binary(b"", mask=False),
    "unmasked-long": lambda ws: ws.send_binary(b"x" * 300, mask=False),
    "unmasked-text": lambda ws: ws.send_text("abc", mask=False),
    "unmasked-ping": lambda ws: ws.send_ping(b"abc", mask=False),
    "rsv1": lambda ws: ws.send_binary(b"abc", rsv=4),
    "rsv2": lambda ws: ws.send_binary(b"abc", rsv=2),
    "rsv3": lambda ws: ws.send_binary(b"abc", rsv=1),
    "rsv-on-ping": lambda ws: ws.send_ping(b"abc", rsv=4),
    "opcode-3": lambda ws: ws.send_frame(0x3, b"abc"),
    "opcode-7": lambda ws: ws.send_frame(0x7, b""),
    "opcode-b": lambda ws: ws.send_frame(0xB, b""),
    "opcode-f": lambda ws: ws.send_frame(0xF, b"abc"),
    "fragmented-ping": lambda ws: ws.send_frame(OP_PING, b"x", fin=False),
    "fragmented-pong": lambda ws: ws.send_frame(OP_PONG, b"x", fin=False),
    "fragmented-close": lambda ws: ws.send_frame(OP_CLOSE, _close_body(1000), fin=False),
    "ping-126": lambda ws: ws.send_ping(b"x" * 126),
    "pong-126": lambda ws: ws.send_pong(b"x" * 126),
    "close-126": lambda ws: ws.send_frame(OP_CLOSE, _close_body(1000, b"r" * 124)),
    "lone-continuation": lambda ws: ws.send_continuation(b"abc", fin=True),
    "lone-continuation-nofin": lambda ws: ws.send_continuation(b"abc", fin=False),
    "binary-inside-fragmented": lambda ws: (ws.send_binary(b"abc", fin=False),
                                            ws.send_binary(b"def")),
    "text-inside-fragmented": lambda ws: (ws.send_text("abc", fin=False),
                                          ws.send_text("def")),
    "binary-inside-fragmented-text": lambda ws: (ws.send_text("abc", fin=False),
                                                 ws.send_binary(b"def", fin=False)),
    "close-one-byte": lambda ws: ws.send_frame(OP_CLOSE, b"\x03"),
}


@pytest.mark.parametrize("case", sorted(PROTOCOL_ERRORS))
def test_protocol_error_is_1002(proxy, echo_target, case):
    with proxy().session(protocols=["binary"]) as ws:
        PROTOCOL_ERRORS[case](ws)
        expect_close_code(ws, 1002)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535])
def test_close_with_invalid_code_is_1002(proxy, echo_target, code):
    with proxy().session(protocols=["binary"]) as ws:
        ws.send_close(code)
        expect_close_code(ws, 1002)


def test_close_reason_not_utf8_is_1007(proxy, echo_target):
    # RFC 6455 §8.1: a close reason that is not UTF-8 fails the connection; §7.4.1: 1007.
    with proxy().session(protocols=["binary"]) as ws:
        ws.send_close(1000, b"bad \xff\xfe reason")
        expect_close_code(ws, 1007)


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011,
                                  1012, 1013, 1014, 3000, 3999, 4000, 4999])
def test_close_with_valid_code_is_answered(proxy, echo_target, code):
    with proxy().session(protocols=["binary"]) as ws:
        ws.send_close(code, "bye \u2713")
        got, _ = ws.recv_close()
        assert got in (code, 1000), "a valid close %d was answered with %s" % (code, got)
        ws.expect_closed()


def test_close_without_body_is_answered(proxy, echo_target):
    with proxy().session(protocols=["binary"]) as ws:
        ws.send_close(None)
        got, _ = ws.recv_close()
        assert got in (None, 1000)
        ws.expect_closed()


def test_close_1000_is_echoed_and_target_shut_down(proxy, echo_target):
    with proxy().session(protocols=["binary"]) as ws:
        ws.send_binary(b"hello")
        assert ws.recv_stream(5) == b"hello"
        ws.send_close(1000, "done")
        assert ws.recv_close()[0] == 1000
        echo_target.wait_connection().wait_eof()
        ws.expect_closed()


# -- control frames -------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"hello", bytes(range(125))])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_ping_gets_pong_with_same_payload(proxy, echo_target, payload, mode):
    with proxy().session(protocols=MODES[mode]) as ws:
        ws.send_ping(payload)
        message = ws.recv_message()
        assert (message.opcode, message.payload) == (OP_PONG, payload)
        close_cleanly(ws)


def collect_pong_and_data(ws, pong_payload: bytes, data_length: int):
    """Read until the pong and ``data_length`` data bytes arrived, in any order."""
    data, pong_seen = b"", False
    while not pong_seen or len(data) < data_length:
        message = ws.recv_message()
        if message.opcode == OP_PONG:
            assert message.payload == pong_payload
            pong_seen = True
        elif message.opcode in (OP_BINARY, OP_TEXT):
            data += message.payload
        else:
            raise ClientError("unexpected opcode %d %r" % (message.opcode, message.payload))
    return data


def test_ping_inside_fragmented_binary_message(proxy, echo_target):
    with proxy().session(protocols=["binary"]) as ws:
        ws.send_binary(b"abc", fin=False)
        ws.send_ping(b"in the middle")
        ws.send_continuation(b"def", fin=True)
        assert collect_pong_and_data(ws, b"in the middle", 6) == b"abcdef"
        close_cleanly(ws)


def test_ping_inside_fragmented_text_message(proxy, echo_target):
    with proxy().session(protocols=["binary"]) as ws:
        ws.send_text("ab", fin=False)
        ws.send_ping(b"p")
        ws.send_continuation("cd", fin=True)
        assert collect_pong_and_data(ws, b"p", 4) == b"abcd"
        assert echo_target.wait_connection().received_bytes() == b"abcd"
        close_cleanly(ws)


def test_ping_inside_fragmented_base64_message(proxy, echo_target):
    with proxy().session(protocols=["base64"]) as ws:
        ws.send_text("QU", fin=False)
        ws.send_ping(b"p")
        ws.send_continuation("JD", fin=True)
        pong_seen, data = False, b""
        while not pong_seen or len(data) < 3:
            message = ws.recv_message()
            if message.opcode == OP_PONG:
                pong_seen = True
            else:
                assert message.opcode == OP_TEXT
                data += base64.b64decode(message.payload, validate=True)
        assert data == b"ABC"
        close_cleanly(ws)


def test_unsolicited_pong_is_ignored(proxy, echo_target):
    with proxy().session(protocols=["binary"]) as ws:
        ws.send_pong(b"nobody asked")
        ws.send_binary(b"still here")
        assert ws.recv_stream(10) == b"still here"
        close_cleanly(ws)


# -- closing without loss ----------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 3 * 64 * KIB + 5, MIB + 7])
@pytest.mark.parametrize("mode", ["binary", "base64"])
def test_target_close_delivers_everything_then_1000(proxy, source_target, mode, size):
    target = source_target(size)
    with proxy(target=target).session(protocols=MODES[mode]) as ws:
        received = ws.recv_stream(size, decode_base64=(mode == "base64"))
        code, _ = ws.recv_close()
        assert code == 1000
        assert ws.messages_before_close == [], "data arrived beyond what the target sent"
        connection = target.wait_connection()
        assert sha(received) == connection.sent_sha256
        if mode == "binary":
            assert ws.largest_data_frame <= 64 * KIB
        ws.send_close(1000)
        ws.expect_closed()


def test_target_closing_after_echo(proxy, make_target):
    target = make_target(close_after=5)
    with proxy(target=target).session(protocols=["binary"]) as ws:
        ws.send_binary(b"hello")
        assert ws.recv_stream(5) == b"hello"
        assert ws.recv_close()[0] == 1000
        ws.send_close(1000)
        ws.expect_closed()


@pytest.mark.parametrize("mode", ["binary", "base64"])
def test_client_close_delivers_everything_then_eof(proxy, sink_target, mode):
    parts = [os.urandom(size) for size in (1, 300 * KIB, 7, MIB, 65536)]
    total = b"".join(parts)
    with proxy(target=sink_target).session(protocols=MODES[mode]) as ws:
        for part in parts:
            send_payload(ws, mode, part)
        ws.send_close(1000)
        assert ws.recv_close()[0] == 1000
        connection = sink_target.wait_connection()
        connection.wait_eof()
        assert connection.received_count == len(total)
        assert connection.received_sha256 == sha(total)
        ws.expect_closed()


def test_no_data_frames_after_client_close(proxy, make_target):
    # The target answers only once the proxy shut it down, i.e. strictly
    # after the proxy received the client's close: none of it may be relayed.
    target = make_target(send_on_eof=b"late answer " * 1000)
    with proxy(target=target).session(protocols=["binary"]) as ws:
        ws.send_binary(b"hi")
        assert ws.recv_stream(2) == b"hi"
        ws.send_close(1000)
        code, _ = ws.recv_close()
        assert code == 1000
        after_close = ws.expect_closed()
        assert ws.messages_before_close == [], "data frames were sent after the client's close"
        assert after_close == b"", "bytes after the close frame: %r" % after_close[:60]
        target.wait_connection().wait_eof()


def test_no_data_frames_after_proxy_close(proxy, make_target):
    # After a protocol error the proxy sent close 1002; the echo of data sent
    # before must not follow it, and nothing sent after reaches the target.
    target = make_target()
    with proxy(target=target).session(protocols=["binary"]) as ws:
        ws.send_binary(b"hi")
        assert ws.recv_stream(2) == b"hi"
        ws.send_frame(0x3, b"bad opcode")
        assert ws.recv_close()[0] == 1002
        ws.send_binary(b"after close", tolerate_close=True)
        ws.send_close(1002, tolerate_close=True)
        after_close = ws.expect_closed()
        assert after_close == b""
        connection = target.wait_connection()
        connection.wait_eof()
        assert connection.received_bytes() == b"hi"


# -- the log ----------------------------------------------------------------------------------


def test_session_close_is_logged_with_counts_and_code(proxy, make_target, wsproxy_log):
    target = make_target(send_on_connect=os.urandom(4321))
    with proxy(target=target).session(protocols=["binary"]) as ws:
        client_port = ws.local_port
        ws.recv_stream(4321)
        ws.send_binary(os.urandom(1234))
        ws.recv_stream(1234)
        close_cleanly(ws)

    def is_close_line(text):
        return "127.0.0.1" in text and all(re.search(r"(?<![\d.])%s(?![\d.])" % re.escape(str(part)), text)
                   for part in (client_port, target.port, 1234, 4321 + 1234, 1000))

    wsproxy_log.wait_for(is_close_line, what="a session close line naming client port %d, "
                         "target port %d, 1234 bytes in, 5555 bytes out and code 1000"
                         % (client_port, target.port))
    wait_until(lambda: len([t for t in wsproxy_log.messages() if is_close_line(t)]) == 1,
               message="exactly one close line for the session")


def test_protocol_error_is_logged_without_traceback(proxy, echo_target, wsproxy_log):
    with proxy().session(protocols=["binary"]) as ws:
        client_port = ws.local_port
        ws.send_binary(b"abc", mask=False)
        expect_close_code(ws, 1002)
    wsproxy_log.wait_for(lambda text: str(client_port) in text and "1002" in text,
                         what="a log line for the session closed with 1002")
    wsproxy_log.assert_no_traceback()


# -- the close handshake ends the client's TCP connection at once ------------------------


class HoldingTarget:
    """A one-connection target that reads to the proxy's EOF and then keeps its side open."""

    def __init__(self) -> None:
        import socket
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.received = bytearray()
        self.eof = threading.Event()
        self.sock = None
        self.thread = threading.Thread(target=self._serve, daemon=True, name="holding-target")
        self.thread.start()

    def _serve(self) -> None:
        try:
            self.sock, _ = self.listener.accept()
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                self.received += data
        except OSError:
            return
        self.eof.set()

    def stop(self) -> None:
        import socket
        for sock in (self.listener, self.sock):
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
        self.thread.join(5.0)


def test_client_connection_ends_right_after_the_close_echo(proxy):
    # RFC 6455 §5.5.1: after sending and receiving a close frame the server
    # MUST close the TCP connection immediately; the target, which has not
    # closed, finishes on its own and loses none of the bytes sent before.
    target = HoldingTarget()
    try:
        payload = os.urandom(300 * KIB)
        with proxy(target_port=target.port).session(protocols=["binary"]) as ws:
            ws.send_binary(payload)
            ws.send_close(1000)
            assert ws.recv_close(timeout=2.0)[0] == 1000
            # The target holds its side open: before, the client waited for
            # the target's EOF (up to 5 s) to see its own.
            ws.expect_closed(timeout=1.0)
        wait_until(target.eof.is_set, 5.0, "the target to see the proxy's EOF")
        assert bytes(target.received) == payload
    finally:
        target.stop()
