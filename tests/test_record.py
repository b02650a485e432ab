"""Tests for wsproxy/record.py: the session recorder and its reader.

Real files, real threads and real child processes.  Where ``node`` is
installed, a recording is also decoded by JavaScript itself, the way noVNC's
player does it, so the format is checked by an independent reader.
"""

import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from wsproxy.record import (FROM_CLIENT, TO_CLIENT, Recorder, RecordingError,
                            decode_js_string, escape_frame_data, read_recording)

ROOT = Path(__file__).resolve().parent.parent
ALL_BYTES = bytes(range(256))
FRAME_LINE = re.compile(rb"'([{}])\d+\1[^'\r\n]*(?:\\'[^'\r\n]*)*',")


def child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run_reader(*args, **kwargs):
    """Run ``python3 -m wsproxy.record`` as a child process."""
    return subprocess.run([sys.executable, "-m", "wsproxy.record", *map(str, args)],
                          cwd=str(ROOT), env=child_env(), capture_output=True,
                          timeout=60, **kwargs)


def run_python(code, *args):
    """Run ``code`` in a fresh interpreter that can import wsproxy."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          cwd=str(ROOT), env=child_env(), capture_output=True, timeout=60)


def random_chunks(seed, count, largest=4096):
    rng = random.Random(seed)
    chunks = [ALL_BYTES, ALL_BYTES[::-1]]
    chunks += [rng.randbytes(rng.randint(1, largest)) for _ in range(count)]
    return chunks


# runpy warns on stderr when the package's __init__ has already imported the
# module that ``-m`` runs; test_the_reader_runs_without_a_runpy_warning checks
# that on its own, so the other tests look at the reader's own output.
RUNPY_WARNING = re.compile(r"^<frozen runpy>:\d+: RuntimeWarning: .*$\n?", re.M)


def own_stderr_lines(result):
    return RUNPY_WARNING.sub("", result.stderr.decode()).strip().splitlines()


def record_both_ways_at_once(recorder, to_client, from_client):
    """Feed both directions from two threads released together."""
    start = threading.Barrier(2)
    errors = []

    def pump(record, chunks, kinds):
        try:
            start.wait(timeout=10)
            for i, chunk in enumerate(chunks):
                record(kinds[i % len(kinds)](chunk))
        except BaseException as exc:       # reported by the main thread
            errors.append(exc)

    kinds = (bytes, bytearray, memoryview)
    threads = [threading.Thread(target=pump, args=(recorder.record_to_client, to_client, kinds)),
               threading.Thread(target=pump, args=(recorder.record_from_client, from_client,
                                                   kinds[::-1]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()
    assert errors == []


# -- escaping -------------------------------------------------------------------

def test_every_byte_value_escapes_to_ascii_and_back():
    for value in range(256):
        body = escape_frame_data(bytes([value]))
        assert body.isascii()
        assert b"\n" not in body and b"\r" not in body
        assert decode_js_string(body.decode("ascii")) == bytes([value])
    body = escape_frame_data(ALL_BYTES)
    # No quote may end the string early: every ' is preceded by an escaping \.
    assert re.search(rb"(?<!\\)(?:\\\\)*'", body.replace(b"\\'", b"")) is None
    assert decode_js_string(body.decode("ascii")) == ALL_BYTES


@pytest.mark.parametrize("body, expected", [
    (r"\u00e9\u{ff}\x41", b"\xe9\xffA"),
    (r"\101\0\08\7", b"A\x00\x008\x07"),
    (r"\b\f\v\a\"\'\\", b"\b\f\va\"'\\"),
    ("plain {text} \u00e9", b"plain {text} \xe9"),
])
def test_reader_decodes_javascript_escapes_as_javascript_does(body, expected):
    assert decode_js_string(body) == expected


@pytest.mark.parametrize("body", [r"\u0100", "\u0100", "bare ' quote", "trailing \\", r"\x4", r"\u12"])
def test_reader_refuses_what_is_not_a_binary_string(body):
    with pytest.raises(RecordingError):
        decode_js_string(body)


# -- writing --------------------------------------------------------------------

def test_two_threads_record_whole_lines_and_each_stream_round_trips(tmp_path):
    to_client = random_chunks(1, 300)
    from_client = random_chunks(2, 300)
    recorder = Recorder.create(str(tmp_path / "rec"), 7)
    record_both_ways_at_once(recorder, to_client, from_client)
    recorder.close()

    lines = (tmp_path / "rec.7").read_bytes().split(b"\n")
    assert lines[:2] == [b"var VNC_frame_encoding = 'binary';", b"var VNC_frame_data = ["]
    assert lines[-2:] == [b"'EOF'];", b""]
    frame_lines = lines[2:-2]
    assert len(frame_lines) == len(to_client) + len(from_client)
    for line in frame_lines:
        assert FRAME_LINE.fullmatch(line), line[:80]

    recording = read_recording(str(tmp_path / "rec.7"))
    assert recording.complete
    assert recording.stream(TO_CLIENT) == b"".join(to_client)
    assert recording.stream(FROM_CLIENT) == b"".join(from_client)
    assert [f.data for f in recording.frames if f.direction == TO_CLIENT] == to_client
    assert recording.frame_count(FROM_CLIENT) == len(from_client)
    times = [f.ms for f in recording.frames]
    assert times == sorted(times)


NODE_DECODER = r"""
const fs = require('fs'), vm = require('vm');
const ctx = {};
vm.runInNewContext(fs.readFileSync(process.argv[2], 'utf8'), ctx);
if (ctx.VNC_frame_encoding !== 'binary') throw new Error('encoding ' + ctx.VNC_frame_encoding);
const out = [];
for (const frame of ctx.VNC_frame_data) {
    if (frame === 'EOF') break;
    // As noVNC's player: the first character gives the direction, the time
    // sits between it and its repeat, and each later character is a byte.
    const mark = frame[0];
    const dataIdx = frame.indexOf(mark, 1) + 1;
    const bytes = [];
    for (let i = dataIdx; i < frame.length; i++) {
        const code = frame.charCodeAt(i);
        if (code > 255) throw new Error('not a byte: ' + code);
        bytes.push(code);
    }
    out.push([mark === '{' ? 'server' : 'client', parseInt(frame.slice(1, dataIdx - 1)),
              Buffer.from(bytes).toString('hex')]);
}
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_javascript_reads_the_same_frames_as_the_reader(tmp_path):
    recorder = Recorder.create(str(tmp_path / "rec"), 1)
    sent = random_chunks(3, 40)
    for i, chunk in enumerate(sent):
        (recorder.record_to_client if i % 2 else recorder.record_from_client)(chunk)
    recorder.close()
    script = tmp_path / "decode.js"
    script.write_text(NODE_DECODER)
    result = subprocess.run(["node", str(script), str(tmp_path / "rec.1")],
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    from_js = [(d, ms, bytes.fromhex(h)) for d, ms, h in json.loads(result.stdout)]
    from_python = [tuple(f) for f in read_recording(str(tmp_path / "rec.1")).frames]
    assert from_js == from_python
    assert [data for _, _, data in from_js] == sent


def test_file_is_created_with_mode_0600(tmp_path):
    recorder = Recorder.create(str(tmp_path / "rec"), 3)
    recorder.close()
    assert (tmp_path / "rec.3").stat().st_mode & 0o777 == 0o600


def test_an_existing_file_or_symlink_is_never_overwritten(tmp_path):
    (tmp_path / "rec.1").write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        Recorder.create(str(tmp_path / "rec"), 1)
    assert (tmp_path / "rec.1").read_bytes() == b"precious"

    (tmp_path / "target").write_bytes(b"also precious")
    (tmp_path / "rec.2").symlink_to(tmp_path / "target")
    with pytest.raises(FileExistsError):
        Recorder.create(str(tmp_path / "rec"), 2)
    assert (tmp_path / "target").read_bytes() == b"also precious"

    Recorder.create(str(tmp_path / "rec"), 3).close()     # the caller's next number works


def test_create_in_a_missing_directory_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        Recorder.create(str(tmp_path / "no" / "such" / "dir" / "rec"), 1)


def test_empty_data_writes_no_frame_and_calls_after_close_do_nothing(tmp_path):
    recorder = Recorder.create(str(tmp_path / "rec"), 1)
    recorder.record_to_client(b"")
    recorder.record_from_client(memoryview(b"x"))
    recorder.close()
    recorder.record_to_client(b"late")
    recorder.close()
    recording = read_recording(str(tmp_path / "rec.1"))
    assert recording.complete
    assert [(f.direction, f.data) for f in recording.frames] == [(FROM_CLIENT, b"x")]


def test_close_from_both_threads_at_once_writes_one_end(tmp_path):
    recorder = Recorder.create(str(tmp_path / "rec"), 1)
    recorder.record_to_client(b"data")
    start = threading.Barrier(2)

    def closer():
        start.wait(timeout=10)
        recorder.close()

    threads = [threading.Thread(target=closer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert (tmp_path / "rec.1").read_bytes().count(b"'EOF'];") == 1
    assert not recorder.active


def fd_of(path):
    """Find this process's file descriptor open on ``path`` (Linux /proc)."""
    wanted = os.path.realpath(path)
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink("/proc/self/fd/" + name) == wanted:
                return int(name)
        except OSError:
            continue
    raise AssertionError("no descriptor open on %s" % path)


@pytest.mark.skipif(not (os.path.exists("/dev/full") and os.path.isdir("/proc/self/fd")),
                    reason="needs Linux /dev/full and /proc/self/fd")
def test_a_failing_file_logs_once_and_recording_stops(tmp_path, caplog):
    recorder = Recorder.create(str(tmp_path / "rec"), 5)
    recorder.record_to_client(b"before the disk filled")
    # Put a full device under the recorder's descriptor: every write now
    # fails with ENOSPC, as on a full disk.
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.dup2(full, fd_of(tmp_path / "rec.5"))
    finally:
        os.close(full)
    with caplog.at_level(logging.WARNING, logger="wsproxy"):
        for _ in range(5):
            recorder.record_to_client(b"lost")          # must not raise
            recorder.record_from_client(b"lost")
        recorder.close()
        recorder.close()
    records = [r for r in caplog.records if r.name == "wsproxy"]
    assert len(records) == 1
    assert "rec.5" in records[0].getMessage() and "session 5" in records[0].getMessage()
    assert not recorder.active
    recording = read_recording(str(tmp_path / "rec.5"))
    assert not recording.complete
    assert recording.stream(TO_CLIENT) == b"before the disk filled"


@pytest.mark.skipif(not (sys.platform.startswith("linux") and hasattr(signal, "SIGXFSZ")),
                    reason="needs RLIMIT_FSIZE and SIGXFSZ (Linux)")
def test_hitting_the_file_size_limit_mid_session_logs_once_and_the_session_goes_on(tmp_path):
    # A child process whose files may not grow past 20000 bytes: a write that
    # crosses the limit is cut short, the next fails (EFBIG).
    result = run_python("""
        import logging, resource, signal, sys
        from wsproxy.record import Recorder
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
        logging.basicConfig(stream=sys.stderr, format="%(name)s: %(message)s")
        recorder = Recorder.create(sys.argv[1], 9)
        for i in range(100):
            recorder.record_to_client(bytes([65 + i % 26]) * 1000)
            recorder.record_from_client(bytes([i]))
        recorder.close()
        print("session went on")
        """, tmp_path / "rec")
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert result.stdout == b"session went on\n"
    log_lines = result.stderr.decode().splitlines()
    assert len(log_lines) == 1 and log_lines[0].startswith("wsproxy: session 9: recording")
    recording = read_recording(str(tmp_path / "rec.9"))
    assert not recording.complete
    to_client = recording.stream(TO_CLIENT)
    # Printable bytes are written as themselves: about 20000 bytes fit.
    assert 15000 < len(to_client) < 20000
    assert to_client == b"".join(bytes([65 + i % 26]) * 1000
                                 for i in range(len(to_client) // 1000))


# -- reading --------------------------------------------------------------------

def test_a_crashed_session_without_eof_is_still_readable(tmp_path):
    # The writer dies without close(): no 'EOF' line.
    result = run_python("""
        import os, sys
        from wsproxy.record import Recorder
        recorder = Recorder.create(sys.argv[1], 4)
        recorder.record_to_client(bytes(range(256)))
        recorder.record_from_client(b"typed")
        os._exit(0)
        """, tmp_path / "rec")
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    path = tmp_path / "rec.4"
    assert b"EOF" not in path.read_bytes()
    recording = read_recording(str(path))
    assert not recording.complete
    assert recording.stream(TO_CLIENT) == ALL_BYTES
    assert recording.stream(FROM_CLIENT) == b"typed"

    # A torn last line (the write itself was cut) is dropped; the rest stays.
    with open(path, "ab") as f:
        f.write(b"'{12{half a fr")
    recording = read_recording(str(path))
    assert not recording.complete
    assert recording.stream(TO_CLIENT) == ALL_BYTES

    summary = run_reader(path)
    assert summary.returncode == 0
    assert b"truncated" in summary.stdout


def test_a_websockify_style_recording_without_encoding_line_reads(tmp_path):
    path = tmp_path / "old.1"
    path.write_bytes(b"var VNC_frame_data = [\n"
                     b"'{0{RFB 003.008\\n',\n"
                     b"'}5}RFB 003.008\\n',\n"
                     b"'{9{\\x00\\x01\\'',\n"
                     b"'EOF'];\n")
    recording = read_recording(str(path))
    assert recording.complete
    assert recording.frames == [(TO_CLIENT, 0, b"RFB 003.008\n"),
                                (FROM_CLIENT, 5, b"RFB 003.008\n"),
                                (TO_CLIENT, 9, b"\x00\x01'")]
    assert recording.duration_ms == 9


@pytest.mark.parametrize("content", [
    b"",
    b"hello\n",
    b"var VNC_frame_encoding = 'base64';\nvar VNC_frame_data = [\n'EOF'];\n",
    b"var VNC_frame_data = [\n'{1{ok',\n'{x{bad time',\n'EOF'];\n",
    b"var VNC_frame_data = [\n'{1{bare ' quote',\n'EOF'];\n",
    b"var VNC_frame_data = [\n'[1[wrong mark',\n'EOF'];\n",
    b"var VNC_frame_data = [\n'{1{no comma'\n'EOF'];\n",
    b"var VNC_frame_data = [\n'EOF'];\nmore\n",
    b"var VNC_frame_data = [\n'{1{\xff\xfe',\n'EOF'];\n",
])
def test_not_a_recording_raises_recording_error(tmp_path, content):
    path = tmp_path / "bad.1"
    path.write_bytes(content)
    with pytest.raises(RecordingError):
        read_recording(str(path))


# -- the command line -------------------------------------------------------------

def test_cli_summary_and_extract_each_direction(tmp_path):
    to_client = random_chunks(4, 50)
    from_client = random_chunks(5, 30)
    recorder = Recorder.create(str(tmp_path / "rec"), 2)
    record_both_ways_at_once(recorder, to_client, from_client)
    recorder.close()
    path = tmp_path / "rec.2"

    summary = run_reader(path)
    assert summary.returncode == 0, summary.stderr
    text = summary.stdout.decode()
    assert "complete" in text and "duration:" in text
    assert "to client (server):   %d frames, %d bytes" % (
        len(to_client), sum(map(len, to_client))) in text
    assert "from client (client): %d frames, %d bytes" % (
        len(from_client), sum(map(len, from_client))) in text

    for direction, chunks in (("client", from_client), ("server", to_client)):
        out = tmp_path / ("out." + direction)
        result = run_reader(path, "--extract", direction, out)
        assert result.returncode == 0, result.stderr
        assert out.read_bytes() == b"".join(chunks)

    to_stdout = run_reader(path, "--extract", "client", "-")
    assert to_stdout.returncode == 0
    assert to_stdout.stdout == b"".join(from_client)


@pytest.mark.parametrize("content", [None, b"", b"not a recording\n",
                                     b"var VNC_frame_data = [\n'{1{ok',\ngarbage\n'EOF'];\n"])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, content):
    path = tmp_path / "input.1"
    if content is not None:
        path.write_bytes(content)
    out = tmp_path / "out"
    for args in ((path,), (path, "--extract", "server", out)):
        result = run_reader(*args)
        assert result.returncode == 2
        assert result.stdout == b""
        assert b"Traceback" not in result.stderr
        assert len(own_stderr_lines(result)) == 1
        assert str(path) in own_stderr_lines(result)[0]
    assert not out.exists()                 # no half-written output is left


def test_cli_unwritable_output_is_one_line_and_exit_1(tmp_path):
    recorder = Recorder.create(str(tmp_path / "rec"), 1)
    recorder.record_to_client(b"data")
    recorder.close()
    result = run_reader(tmp_path / "rec.1", "--extract", "server", tmp_path / "missing" / "out")
    assert result.returncode == 1
    assert b"Traceback" not in result.stderr
    assert len(own_stderr_lines(result)) == 1


def test_the_reader_runs_without_a_runpy_warning(tmp_path):
    # Fails while ``import wsproxy`` itself imports wsproxy.record (runpy then
    # warns that the module is already loaded): the package must import it
    # lazily so ``python3 -m wsproxy.record`` prints only its own line.
    path = tmp_path / "input.1"
    path.write_bytes(b"not a recording\n")
    result = run_reader(path)
    assert result.returncode == 2
    assert result.stderr.decode().strip().splitlines() == own_stderr_lines(result)
