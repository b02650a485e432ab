"""permessage-deflate (``compress``) through a real proxy on 127.0.0.1.

The client here is the raw test client (``wsclient``, which imports nothing
from wsproxy) plus its own ``zlib``: it deflates what it sends and inflates
what it gets exactly as RFC 7692 §7.2 describes, so the proxy's codec is
checked against an independent one.  Targets are real TCP servers.
"""

import base64
import os
import random
import tracemalloc
import zlib

import pytest

from conftest import wait_until
from wsclient import (OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT,
                      parse_close)

RSV1 = 4  # wsclient's ``rsv`` counts RSV1 as 4
TAIL = b"\x00\x00\xff\xff"
OFFER = "permessage-deflate; client_max_window_bits"
EXTENSIONS = "Sec-WebSocket-Extensions"


def terminal_text(size: int, seed: int = 0) -> bytes:
    """Something like a shell session's output: compressible, not trivially."""
    rng = random.Random(seed)
    words = [b"$", b"ls", b"-la", b"drwxr-xr-x", b"root", b"4096", b"Nov", b"src", b"\r\n",
             b"make:", b"Entering", b"directory", b"gcc", b"-Wall", b"-O2", b"main.c"]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + b" " + str(rng.randrange(1000)).encode() + b" "
    return bytes(out[:size])


class Inflater:
    """The client's view of the server's compressed stream (RFC 7692 §7.2.2)."""

    def __init__(self, no_context: bool = False, bits: int = 15) -> None:
        self.no_context = no_context
        self.bits = bits
        self.decompressor = zlib.decompressobj(-bits)
        self.compressed_messages = 0
        self.plain_messages = 0

    def message(self, payload: bytes, rsv: int) -> bytes:
        if not rsv:
            self.plain_messages += 1
            return payload
        assert rsv == RSV1, "only RSV1 may be set"
        self.compressed_messages += 1
        if self.no_context:
            self.decompressor = zlib.decompressobj(-self.bits)
        return self.decompressor.decompress(payload + TAIL)


class Deflater:
    """The client's compressor: one sync-flushed message at a time (RFC 7692 §7.2.1)."""

    def __init__(self, no_context: bool = False) -> None:
        self.no_context = no_context
        self.compressor = zlib.compressobj(6, zlib.DEFLATED, -15)

    def message(self, data: bytes) -> bytes:
        if self.no_context:
            self.compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        out = self.compressor.compress(data) + self.compressor.flush(zlib.Z_SYNC_FLUSH)
        assert out.endswith(TAIL)
        return out[:-4]


def compressed_session(running, offer: str = OFFER, protocols=("binary",)):
    ws = running.session(protocols=list(protocols), extra_headers=[(EXTENSIONS, offer)])
    return ws, ws.response.header(EXTENSIONS) if ws.response else None


def recv_payload(ws, count: int, inflater: Inflater, opcode: int = OP_BINARY) -> bytes:
    """Read data messages (any RSV1) until ``count`` bytes of inflated payload arrived."""
    received = bytearray()
    while len(received) < count:
        frame = ws.recv_frame(strict=False)
        if frame.opcode in (OP_PING, OP_PONG):
            continue
        assert frame.opcode != OP_CLOSE, "close %r after %d of %d bytes" % (
            parse_close(frame.payload), len(received), count)
        assert frame.fin and frame.opcode == opcode, frame
        received += inflater.message(frame.payload, frame.rsv)
    assert len(received) == count
    return bytes(received)


def recv_close_code(ws):
    """Skip any data frames; return the close frame's code."""
    while True:
        frame = ws.recv_frame(strict=False)
        if frame.opcode == OP_CLOSE:
            return parse_close(frame.payload)[0]


def end_session(ws) -> None:
    ws.send_close(1000)
    assert recv_close_code(ws) == 1000
    ws.expect_closed()


# -- negotiation through the proxy --------------------------------------------------------


def test_extension_is_answered_when_enabled(proxy):
    running = proxy(compress=True)
    ws, answer = compressed_session(running)
    assert answer == "permessage-deflate"
    end_session(ws)


def test_extension_is_ignored_when_disabled(proxy):
    running = proxy()
    ws, answer = compressed_session(running)
    assert answer is None
    # RFC 6455 §5.2: without a negotiated extension RSV1 fails the connection.
    ws.send_text(Deflater().message(b"Hello"), rsv=RSV1)
    assert recv_close_code(ws) == 1002
    ws.expect_closed()


def test_rsv1_without_an_offer_is_1002(proxy):
    running = proxy(compress=True)
    ws = running.session(protocols=["binary"])
    assert ws.response.header(EXTENSIONS) is None
    ws.send_binary(Deflater().message(b"Hello Hello Hello"), rsv=RSV1)
    assert recv_close_code(ws) == 1002
    ws.expect_closed()


def test_malformed_offer_is_refused_with_400(proxy, echo_target):
    running = proxy(compress=True)
    client = running.client()
    response = client.handshake(protocols=["binary"], expect_status=400,
                                extra_headers=[(EXTENSIONS, "permessage-deflate; =10")])
    assert b"Sec-WebSocket-Extensions" in response.body
    assert not echo_target.connections


# -- both directions ------------------------------------------------------------------------


@pytest.mark.parametrize("offer, no_context", [
    (OFFER, False),
    ("permessage-deflate; server_no_context_takeover; client_no_context_takeover", True),
], ids=["context-takeover", "no-context-takeover"])
def test_both_directions(proxy, echo_target, offer, no_context):
    running = proxy(compress=True)
    ws, answer = compressed_session(running, offer)
    if no_context:
        assert "server_no_context_takeover" in answer and "client_no_context_takeover" in answer
    deflater, inflater = Deflater(no_context), Inflater(no_context)
    messages = [terminal_text(size, seed) for seed, size in enumerate((40, 2000, 30000, 2000))]
    for message in messages:
        ws.send_binary(deflater.message(message), rsv=RSV1)
        assert recv_payload(ws, len(message), inflater) == message
    target = echo_target.wait_connection()
    assert target.received_bytes() == b"".join(messages)
    assert inflater.compressed_messages >= len(messages)
    end_session(ws)


def json_text(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    out = bytearray(b"[")
    while len(out) < size:
        out += b'{"id": %d, "name": "item-%d", "tags": ["a", "b"], "ok": %s}, ' % (
            rng.randrange(10 ** 6), rng.randrange(100), rng.choice([b"true", b"false"]))
    return bytes(out[:size])


# The offers of Autobahn|Testsuite's cases 13.1-13.7 and the parameters wsproxy
# answers them with; its text messages cannot come back as text through a
# byte proxy, so the same parameter sets are replayed here with binary ones.
AUTOBAHN_13 = [
    ("permessage-deflate; client_no_context_takeover; client_max_window_bits",
     "permessage-deflate; client_no_context_takeover"),
    ("permessage-deflate; client_no_context_takeover; client_max_window_bits; "
     "server_no_context_takeover",
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
    ("permessage-deflate; client_no_context_takeover; client_max_window_bits; "
     "server_max_window_bits=9",
     "permessage-deflate; client_no_context_takeover; server_max_window_bits=9"),
    ("permessage-deflate; client_no_context_takeover; client_max_window_bits; "
     "server_max_window_bits=15",
     "permessage-deflate; client_no_context_takeover; server_max_window_bits=15"),
    ("permessage-deflate; client_no_context_takeover; client_max_window_bits; "
     "server_no_context_takeover; server_max_window_bits=9",
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
     "server_max_window_bits=9"),
    ("permessage-deflate; client_no_context_takeover; client_max_window_bits; "
     "server_no_context_takeover; server_max_window_bits=15",
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
     "server_max_window_bits=15"),
    ("permessage-deflate; client_no_context_takeover; client_max_window_bits; "
     "server_no_context_takeover; server_max_window_bits=9, "
     "permessage-deflate; client_no_context_takeover; client_max_window_bits; "
     "server_no_context_takeover, permessage-deflate",
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
     "server_max_window_bits=9"),
    # Not in the suite: the smallest window, which zlib cannot compress with.
    ("permessage-deflate; server_max_window_bits=8",
     "permessage-deflate; server_max_window_bits=8"),
]


@pytest.mark.parametrize("offer, answer", AUTOBAHN_13,
                         ids=["13.%d" % n for n in range(1, 8)] + ["window-8"])
def test_autobahn_13_parameter_sets(proxy, echo_target, offer, answer):
    running = proxy(compress=True)
    ws, answered = compressed_session(running, offer)
    assert answered == answer
    bits = 15
    if "server_max_window_bits" in answer:
        bits = int(answer.rsplit("server_max_window_bits=", 1)[1])
    inflater = Inflater("server_no_context_takeover" in answer, bits)
    deflater = Deflater(no_context="client_no_context_takeover" in answer)
    sizes = (16, 64, 256, 1024, 4096, 8192, 16384)
    for index in range(70):
        message = json_text(sizes[index % len(sizes)], index)
        ws.send_binary(deflater.message(message), rsv=RSV1)
        assert recv_payload(ws, len(message), inflater) == message, index
    assert inflater.compressed_messages >= 60
    end_session(ws)


def test_compression_shrinks_what_goes_on_the_wire(proxy, make_target):
    text = terminal_text(200000, 3)
    source = make_target(echo=False, send_on_connect=text, close_after_send=True)
    running = proxy(target=source, compress=True)
    ws, _ = compressed_session(running)
    inflater = Inflater()
    wire = 0
    received = bytearray()
    while len(received) < len(text):
        frame = ws.recv_frame(strict=False)
        assert frame.opcode == OP_BINARY
        wire += len(frame.payload)
        received += inflater.message(frame.payload, frame.rsv)
    assert bytes(received) == text
    assert wire < len(text) // 2, (wire, len(text))
    assert recv_close_code(ws) == 1000


def test_incompressible_reads_go_plain(proxy, make_target):
    noise = os.urandom(300000)
    source = make_target(echo=False, send_on_connect=noise, close_after_send=True)
    running = proxy(target=source, compress=True)
    ws, _ = compressed_session(running)
    inflater = Inflater()
    assert recv_payload(ws, len(noise), inflater) == noise
    assert inflater.compressed_messages == 0 and inflater.plain_messages > 0
    assert recv_close_code(ws) == 1000


def test_mixed_stream_keeps_both_windows_in_step(proxy, echo_target):
    # Plain (skipped) messages between compressed ones, context takeover on:
    # the proxy's window must only ever hold what the client inflated.
    running = proxy(compress=True)
    ws, _ = compressed_session(running)
    deflater, inflater = Deflater(), Inflater()
    for index in range(6):
        message = os.urandom(3000) if index % 2 else terminal_text(3000, 10)
        ws.send_binary(deflater.message(message), rsv=RSV1)
        assert recv_payload(ws, len(message), inflater) == message
    assert inflater.compressed_messages and inflater.plain_messages
    end_session(ws)


def test_fragmented_compressed_message(proxy, echo_target):
    running = proxy(compress=True)
    ws, _ = compressed_session(running)
    message = terminal_text(20000, 4)
    payload = Deflater().message(message)
    third = len(payload) // 3
    ws.send_binary(payload[:third], fin=False, rsv=RSV1)
    ws.send_frame(OP_PING, b"between")
    ws.send_frame(OP_CONTINUATION, payload[third:2 * third], fin=False)
    ws.send_frame(OP_CONTINUATION, payload[2 * third:])
    assert recv_payload(ws, len(message), Inflater()) == message
    end_session(ws)


def test_base64_subprotocol_compresses_the_base64_text(proxy, echo_target):
    running = proxy(compress=True)
    ws, answer = compressed_session(running, protocols=["base64"])
    assert ws.protocol == "base64" and answer == "permessage-deflate"
    deflater, inflater = Deflater(), Inflater()
    message = terminal_text(12000, 5)
    ws.send_text(deflater.message(base64.b64encode(message)), rsv=RSV1)
    text = recv_payload(ws, len(base64.b64encode(message)), inflater, opcode=OP_TEXT)
    assert base64.b64decode(text) == message
    assert inflater.compressed_messages >= 1
    assert echo_target.wait_connection().received_bytes() == message
    end_session(ws)


# -- limits -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bomb():
    """A compressed message of 64 MiB of zeros: about 64 KB on the wire."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = bytes(1 << 20)
    data = b"".join(compressor.compress(block) for _ in range(64))
    data += compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4]


def test_decompression_bomb_closes_1009_with_bounded_memory(proxy, make_target, bomb):
    sink = make_target(echo=False, keep=False)
    limit = 1 << 20
    running = proxy(target=sink, compress=True, max_message_size=limit)
    ws, _ = compressed_session(running)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        ws.send_binary(bomb, rsv=RSV1)
        code = recv_close_code(ws)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 1009
    ws.expect_closed()
    # Everything this process allocated meanwhile (client and proxy): a few
    # copies of the 64 KB message and the 1 MiB allowed, never the 64 MiB.
    assert peak < 8 * limit, peak
    target = sink.wait_connection()
    target.wait_eof()
    assert target.received_count <= limit


def test_limit_applies_to_the_inflated_size(proxy, echo_target):
    running = proxy(compress=True, max_message_size=50000)
    ws, _ = compressed_session(running)
    deflater = Deflater()
    fits = bytes(50000)
    ws.send_binary(deflater.message(fits), rsv=RSV1)
    assert recv_payload(ws, len(fits), Inflater()) == fits
    ws.send_binary(deflater.message(bytes(50001)), rsv=RSV1)
    assert recv_close_code(ws) == 1009
    ws.expect_closed()


def test_invalid_compressed_data_is_1002(proxy):
    running = proxy(compress=True)
    ws, _ = compressed_session(running)
    ws.send_binary(b"\xff\xff\xff\xff", rsv=RSV1)
    assert recv_close_code(ws) == 1002
    ws.expect_closed()


# -- recording --------------------------------------------------------------------------------


def test_recorder_records_the_uncompressed_payload(proxy, tmp_path):
    from wsproxy.record import FROM_CLIENT, TO_CLIENT, read_recording

    base = str(tmp_path / "rec")
    running = proxy(compress=True, record=base)
    ws, _ = compressed_session(running)
    deflater, inflater = Deflater(), Inflater()
    messages = [terminal_text(5000, 20), terminal_text(100, 21)]
    for message in messages:
        ws.send_binary(deflater.message(message), rsv=RSV1)
        assert recv_payload(ws, len(message), inflater) == message
    assert inflater.compressed_messages
    end_session(ws)
    path = base + ".1"

    def finished():
        recording = read_recording(path) if os.path.exists(path) else None
        return recording if recording is not None and recording.complete else None
    recording = wait_until(finished, 10, "the recording to be complete")
    from_client = b"".join(f.data for f in recording.frames if f.direction == FROM_CLIENT)
    to_client = b"".join(f.data for f in recording.frames if f.direction == TO_CLIENT)
    assert from_client == b"".join(messages)
    assert to_client == b"".join(messages)
