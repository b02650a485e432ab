"""Zero-copy downstream (wsproxy/splice.py): which sessions take it, and that it loses nothing.

Streams are large enough that the pump leaves its copy loop for the pipe;
the log line ``zero-copy splice on`` (and the session's ``bytes spliced``
count) shows the path was taken.  Every frame is parsed by the test client,
so a control frame written inside a spliced frame breaks the parse.
"""

import hashlib
import os
import socket
import threading
import time

import pytest

from conftest import RunningProxy, wait_until
from wsclient import OP_BINARY, OP_CLOSE, OP_PONG, OP_TEXT

from wsproxy import ProxyRequestHandler, ProxyServer, Settings, splice

pytestmark = pytest.mark.skipif(not splice.AVAILABLE,
                                reason="os.splice needs Linux and Python 3.10+")

KIB = 1024
MIB = 1024 * 1024
SPLICE_ON = "zero-copy splice on"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def spliced_bytes(log) -> int:
    """The session's ``N of M bytes spliced`` count (0 when it never spliced)."""
    lines = log.find("bytes spliced")
    return int(lines[-1].split("downstream: ")[1].split()[0]) if lines else 0


def close_cleanly(ws) -> None:
    ws.send_close(1000)
    ws.expect_closed()


# -- the path taken, byte for byte ---------------------------------------------------


@pytest.mark.parametrize("size", [6 * MIB + 7])
def test_large_stream_is_spliced_byte_for_byte_then_1000(proxy, source_target, wsproxy_log, size):
    target = source_target(size)
    with proxy(target=target).session(protocols=["binary"]) as ws:
        received = ws.recv_stream(size, opcode=OP_BINARY)
        code, _ = ws.recv_close()
        assert code == 1000
        assert ws.messages_before_close == [], "data arrived beyond what the target sent"
        assert sha(received) == target.wait_connection().sent_sha256
        assert ws.largest_data_frame <= splice.MAX_FRAME
        close_cleanly(ws)
    wsproxy_log.wait_for(lambda line: "bytes to client" in line)
    assert wsproxy_log.find(SPLICE_ON), "the session never spliced"
    # Most of a bulk stream goes through the pipe; the count is in the total.
    assert size // 2 < spliced_bytes(wsproxy_log) <= size
    assert wsproxy_log.find("%d bytes to client" % size)


def test_no_subprotocol_is_spliced_too(proxy, source_target, wsproxy_log):
    target = source_target(3 * MIB)
    with proxy(target=target).session() as ws:
        assert sha(ws.recv_stream(3 * MIB, opcode=OP_BINARY)) == target.wait_connection().sent_sha256
        assert ws.recv_close()[0] == 1000
        close_cleanly(ws)
    assert wsproxy_log.find(SPLICE_ON)


class UpperHandler(ProxyRequestHandler):
    """Overrides ``target_data``: the bytes must pass through user space."""

    def target_data(self, data):
        return bytes(data).upper()


@pytest.mark.parametrize("case", ["no-splice", "base64", "record", "target_data hook"])
def test_ineligible_session_copies_byte_for_byte(proxy, make_target, wsproxy_log, tmp_path, case):
    payload = os.urandom(4 * MIB)
    target = make_target(echo=False, send_on_connect=payload, close_after_send=True)
    protocols = ["base64"] if case == "base64" else ["binary"]
    expected = payload.upper() if case == "target_data hook" else payload
    if case == "target_data hook":
        settings = Settings(target_host="127.0.0.1", target_port=target.port)
        running = RunningProxy(ProxyServer(("127.0.0.1", 0), settings, UpperHandler), settings)
    else:
        fields = {"no-splice": {"splice": False}, "base64": {},
                  "record": {"record": str(tmp_path / "session")}}[case]
        running = proxy(target=target, **fields)
    try:
        with running.session(protocols=protocols) as ws:
            received = ws.recv_stream(len(payload), decode_base64=(case == "base64"),
                                      opcode=OP_TEXT if case == "base64" else OP_BINARY)
            assert sha(received) == sha(expected)
            assert ws.recv_close()[0] == 1000
            assert ws.largest_data_frame <= (87384 if case == "base64" else 64 * KIB)
            close_cleanly(ws)
        wsproxy_log.wait_for(lambda line: "bytes to client" in line)
    finally:
        if case == "target_data hook":
            running.stop()
    assert not wsproxy_log.find(SPLICE_ON), "an ineligible session spliced"
    assert spliced_bytes(wsproxy_log) == 0


def test_eligibility_is_decided_per_session(proxy, make_target, wsproxy_log):
    """A base64 session and a binary one on the same proxy: only the binary one splices."""
    payload = os.urandom(2 * MIB)
    target = make_target(echo=False, send_on_connect=payload, close_after_send=True)
    running = proxy(target=target)
    with running.session(protocols=["base64"]) as ws:
        assert ws.recv_stream(len(payload), decode_base64=True) == payload
        assert ws.recv_close()[0] == 1000
        close_cleanly(ws)
    wsproxy_log.wait_for(lambda line: "bytes to client" in line)
    assert not wsproxy_log.find(SPLICE_ON)
    with running.session(protocols=["binary"]) as ws:
        assert ws.recv_stream(len(payload), opcode=OP_BINARY) == payload
        assert ws.recv_close()[0] == 1000
        close_cleanly(ws)
    wsproxy_log.wait_for(lambda line: SPLICE_ON in line)


# -- closing without loss ----------------------------------------------------------------


def test_client_close_while_target_streams_loses_nothing(proxy, make_target, wsproxy_log):
    """The client sends data and its close mid-stream: the target gets every byte, the
    client a prefix of the stream, then the close answer; no frame is torn."""
    stream = os.urandom(16 * MIB)
    upload = os.urandom(MIB + 3)
    target = make_target(echo=False, send_on_connect=stream, close_after_send=True)
    with proxy(target=target).session(protocols=["binary"]) as ws:
        head = b""
        while len(head) < 2 * MIB:  # whole frames: the last may end past 2 MiB
            head += ws.recv_data_message(timeout=10).payload
        wsproxy_log.wait_for(lambda line: SPLICE_ON in line)
        sender_done = threading.Event()
        errors = []

        def send() -> None:
            try:
                for offset in range(0, len(upload), 64 * KIB):
                    ws.send_binary(upload[offset:offset + 64 * KIB])
                ws.send_close(1000)
            except Exception as exc:  # reported below
                errors.append(exc)
            sender_done.set()

        threading.Thread(target=send, daemon=True).start()
        code, _ = ws.recv_close(timeout=20)
        assert sender_done.wait(10) and not errors, errors
        assert code == 1000
        got = head + b"".join(message.payload for message in ws.messages_before_close)
        assert 2 * MIB <= len(got) <= len(stream)
        assert sha(got) == sha(stream[:len(got)]), "the client's bytes are not a prefix of the stream"
        ws.expect_closed(timeout=10)
    connection = target.wait_connection()
    connection.wait_eof(timeout=10)
    connection.wait_received(len(upload))
    assert connection.received_sha256 == sha(upload)


def test_target_half_close_after_sending_delivers_everything(proxy, make_target, wsproxy_log):
    """The target sends a stream, then EOF, while the client is still sending: the client gets
    the whole stream then 1000, and what it sent before its close still reaches the target."""
    stream = os.urandom(5 * MIB)
    target = make_target(echo=False, send_on_connect=stream, close_after_send=True)
    with proxy(target=target).session(protocols=["binary"]) as ws:
        ws.send_binary(b"still talking")
        assert sha(ws.recv_stream(len(stream), opcode=OP_BINARY)) == sha(stream)
        assert ws.recv_close()[0] == 1000
        close_cleanly(ws)
    connection = target.wait_connection()
    connection.wait_received(13)
    assert connection.received_bytes() == b"still talking"
    wsproxy_log.wait_for(lambda line: SPLICE_ON in line)


# -- control frames never inside a spliced frame ----------------------------------------------


def test_pongs_are_never_interleaved_in_spliced_frames(proxy, make_target, wsproxy_log):
    stream = os.urandom(8 * MIB)
    target = make_target(echo=False, send_on_connect=stream, close_after_send=True)
    with proxy(target=target).session(protocols=["binary"]) as ws:
        # A ping per 64 KiB read, so pings (and their pongs) are spread over
        # the whole stream while the proxy is busy splicing to us; a small
        # receive buffer keeps the stream from sitting in socket buffers
        # ahead of the pongs.
        ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KIB)
        pings, data, pongs = [], [], []
        pongs_amid_data = received = 0
        while True:
            # Every frame is parsed strictly: a pong written inside a spliced
            # frame would shift every header after it.
            frame = ws.recv_frame(timeout=20)
            if frame.opcode == OP_CLOSE:
                break
            if frame.opcode == OP_PONG:
                pongs.append(frame.payload)
                pongs_amid_data += received < len(stream)
                continue
            assert frame.opcode == OP_BINARY and frame.fin
            data.append(frame.payload)
            before, received = received, received + len(frame.payload)
            for _ in range(received // (64 * KIB) - before // (64 * KIB)):
                pings.append(b"ping-%05d" % len(pings))
                ws.send_ping(pings[-1])
        assert sha(b"".join(data)) == sha(stream)
        # Pongs answer pings in order; a backlog of pings may be answered
        # only for the most recent ones (RFC 6455 §5.5.3), never invented.
        indexes = [pings.index(pong) for pong in pongs]
        assert indexes == sorted(set(indexes)), "pongs out of order or repeated"
        assert pongs_amid_data > 10, "few pongs came while the stream flowed: nothing was tested"
        close_cleanly(ws)
    wait_until(lambda: wsproxy_log.find("bytes to client"))
    assert spliced_bytes(wsproxy_log) > len(stream) // 2


# -- a client that stops reading ------------------------------------------------------------


def test_client_that_stops_reading_is_aborted(proxy, make_target, wsproxy_log, monkeypatch):
    """The pump blocked splicing into a full client socket still ends: the idle
    timeout's close cannot be written, so both connections are aborted."""
    import wsproxy.relay
    monkeypatch.setattr(wsproxy.relay, "CLOSE_TIMEOUT", 0.5)
    target = make_target(echo=False, send_on_connect=os.urandom(64 * MIB), close_after_send=True)
    with proxy(target=target, session_timeout=0.5).session(protocols=["binary"]) as ws:
        ws.recv_data_message()
        wsproxy_log.wait_for(lambda line: SPLICE_ON in line)
        # From now on the client reads nothing.
        line = wsproxy_log.wait_for(lambda text: "bytes to client" in text, timeout=10,
                                    what="the stalled session to end")
        assert "idle timeout" in line, line
        assert spliced_bytes(wsproxy_log) > 0


def test_write_timeout_ends_a_session_blocked_splicing(proxy, make_target, wsproxy_log, monkeypatch):
    """A splice into a full client socket cannot block past --write-timeout."""
    import wsproxy.relay
    monkeypatch.setattr(wsproxy.relay, "CLOSE_TIMEOUT", 0.5)
    target = make_target(echo=False, send_on_connect=os.urandom(64 * MIB), close_after_send=True)
    running = proxy(target=target, write_timeout=0.5)
    with running.session(protocols=["binary"]) as ws:
        ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        ws.recv_data_message()
        wsproxy_log.wait_for(lambda line: SPLICE_ON in line)
        # From now on the client reads nothing; no heartbeat, no idle timeout.
        line = wsproxy_log.wait_for(lambda text: "bytes to client" in text, timeout=10,
                                    what="the stalled session to end")
        assert "close 1006" in line and "no byte for 0.5 s (--write-timeout)" in line, line
        assert spliced_bytes(wsproxy_log) > 0


def test_slow_reader_is_never_cut_while_splicing(proxy, make_target, wsproxy_log):
    """Bytes the client takes count as progress for a splice waiting for room.

    The client takes 32 KiB every 0.1 s: too little for the kernel to report
    room within the 0.5 s write timeout, but never nothing.
    """
    target = make_target(echo=False, send_on_connect=os.urandom(64 * MIB), close_after_send=True)
    running = proxy(target=target, write_timeout=0.5)
    with running.session(protocols=["binary"]) as ws:
        ws.recv_data_message()
        wsproxy_log.wait_for(lambda line: SPLICE_ON in line)
        received = 0
        started = time.monotonic()
        while time.monotonic() - started < 2.0:
            received += len(ws.sock.recv(32 * 1024))
            time.sleep(0.1)  # the slow reader under test, not a synchronisation
        assert running.server.open_sessions == 1
        assert received > 0
        assert not wsproxy_log.find("--write-timeout")
