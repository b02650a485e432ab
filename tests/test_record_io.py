"""Session recording end to end: a real session, then the reader as a child process.

An echo session with random binary both ways is recorded with ``record``;
``python3 -m wsproxy.record FILE.N --extract client|server OUT`` must give
back, byte for byte, what the client sent and what it received.  The file
is private (0600) and a second server run never overwrites it.
"""

import hashlib
import os
import re
import stat
import subprocess
import sys

import pytest

from conftest import wait_until

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EOF_LINE = b"'EOF'];\n"


def run_reader(*args: str) -> subprocess.CompletedProcess:
    """``python3 -m wsproxy.record ARGS`` in a child process, from the repository root."""
    return subprocess.run([sys.executable, "-m", "wsproxy.record"] + list(args), cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)


def wait_recording_closed(path: str) -> bytes:
    """Wait until the recorder wrote its closing line; return the whole file."""
    def finished():
        if not os.path.exists(path):
            return None
        with open(path, "rb") as stream:
            data = stream.read()
        return data if data.endswith(EOF_LINE) else None
    return wait_until(finished, 10, "%s to end with 'EOF'];" % path)


def echo_session(running, payloads):
    """Send each payload as one binary message, read its echo; return (sent, received)."""
    sent, received = bytearray(), bytearray()
    with running.session(protocols=["binary"]) as ws:
        for payload in payloads:
            ws.send_binary(payload)
            sent += payload
            received += ws.recv_stream(len(payload))
        ws.send_close(1000)
        assert ws.recv_close()[0] == 1000
        ws.expect_closed()
    return bytes(sent), bytes(received)


def random_payloads():
    # Every byte value, quotes, backslashes and line breaks, in sizes that
    # cross the relay's buffer sizes.
    special = bytes(range(256)) + b"'\\\n\r\x00\"'</script>"
    sizes = (1, 7, 125, 126, 4096, 65535, 65536, 200000)
    return [special] + [os.urandom(size) for size in sizes]


def test_recorded_session_extracts_byte_for_byte(proxy, tmp_path):
    base = str(tmp_path / "rec")
    running = proxy(record=base)
    sent, received = echo_session(running, random_payloads())
    assert sent == received  # the echo target worked
    path = base + ".1"
    content = wait_recording_closed(path)
    assert content.startswith(b"var VNC_frame_encoding = 'binary';\nvar VNC_frame_data = [\n")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    for direction, expected in (("client", sent), ("server", received)):
        out = tmp_path / ("extract-" + direction)
        result = run_reader(path, "--extract", direction, str(out))
        assert result.returncode == 0, result.stderr.decode()
        extracted = out.read_bytes()
        assert len(extracted) == len(expected), (direction, len(extracted), len(expected))
        assert hashlib.sha256(extracted).digest() == hashlib.sha256(expected).digest(), direction

    summary = run_reader(path)
    assert summary.returncode == 0, summary.stderr.decode()
    text = summary.stdout.decode()
    assert "%d bytes" % len(sent) in text, text
    assert "complete" in text, text


def test_recording_lines_are_javascript_strings(proxy, tmp_path):
    # Each frame is one line '{MS{DATA', or '}MS}DATA', in pure ASCII, so a
    # <script> tag in noVNC's player can load it.
    base = str(tmp_path / "rec")
    running = proxy(record=base)
    echo_session(running, [b"hello", bytes(range(256))])
    content = wait_recording_closed(base + ".1")
    content.decode("ascii")
    lines = content.split(b"\n")
    frames = lines[2:-2]
    assert frames, content
    for line in frames:
        assert re.fullmatch(rb"'([{}])\d+\1(?:[^'\\\n\r]|\\.)*',", line), line
    assert any(line.startswith(b"'}") for line in frames)
    assert any(line.startswith(b"'{") for line in frames)


def test_second_run_never_overwrites(proxy, tmp_path):
    base = str(tmp_path / "rec")
    first = proxy(record=base)
    echo_session(first, [b"first run"])
    original = wait_recording_closed(base + ".1")
    first.stop()

    # A fresh server numbers its sessions from 1 again.
    second = proxy(record=base)
    sent, _ = echo_session(second, [b"second run"])
    with open(base + ".1", "rb") as stream:
        assert stream.read() == original, "the first recording was changed"
    others = sorted(name for name in os.listdir(str(tmp_path))
                    if name.startswith("rec.") and name != "rec.1")
    assert len(others) == 1, others
    path = str(tmp_path / others[0])
    wait_recording_closed(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    out = tmp_path / "second-client"
    result = run_reader(path, "--extract", "client", str(out))
    assert result.returncode == 0, result.stderr.decode()
    assert out.read_bytes() == sent


def test_unwritable_record_path_does_not_break_the_session(proxy, tmp_path, wsproxy_log):
    base = str(tmp_path / "no-such-dir" / "rec")
    running = proxy(record=base)
    sent, received = echo_session(running, [b"still relayed"])
    assert received == sent
    wsproxy_log.wait_for(lambda text: "record" in text and "no-such-dir" in text,
                         what="a log line about the recording failure")


@pytest.mark.parametrize("garbage", [b"", b"hello\n", b"var VNC_frame_data = [\n'x',\n"])
def test_reader_refuses_a_file_that_is_not_a_recording(tmp_path, garbage):
    path = tmp_path / "bad.1"
    path.write_bytes(garbage)
    result = run_reader(str(path), "--extract", "client", str(tmp_path / "out"))
    assert result.returncode != 0
    assert b"Traceback" not in result.stderr, result.stderr.decode()
    assert result.stderr.strip(), "no message saying what is wrong"
