"""Signals and server lifetime, on real ``python -m wsproxy`` child processes.

SIGTERM/SIGINT close open sessions with 1001 and exit 0; SIGHUP re-reads
the token source and keeps sessions; ``--timeout`` and ``--idle-timeout``
end the process by themselves; ``--unix-listen`` serves an AF_UNIX socket
with the requested mode.
"""

import os
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from conftest import EXIT_DEADLINE, free_port, wait_until
from test_config import port_listens, run_wsproxy, wsproxy_process  # noqa: F401  (fixture)
from wsclient import accept_for, build_request, close_payload, encode_frame, open_session

OP_BINARY, OP_CLOSE = 0x2, 0x8


def echo(ws, payload: bytes) -> None:
    ws.send_binary(payload)
    assert ws.recv_stream(len(payload)) == payload


def close_normally(ws) -> None:
    ws.send_close(1000)
    assert ws.recv_close()[0] == 1000
    ws.expect_closed()


# -- SIGTERM / SIGINT ---------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_closes_sessions_with_1001_and_exits_0(wsproxy_process, echo_target, signum):
    port = free_port()
    child = wsproxy_process("-f", "127.0.0.1:%d" % port, echo_target.address)
    child.wait_listening(port)
    with open_session(port, protocols=["binary"]) as first, \
            open_session(port, protocols=["binary"]) as second:
        echo(first, os.urandom(1000))
        echo(second, os.urandom(1000))
        child.send_signal(signum)
        for ws in (first, second):
            code, reason = ws.recv_close()
            assert code == 1001, (code, reason)
            ws.send_close(1001)
            ws.expect_closed()
    assert child.wait_exit() == 0
    assert not port_listens(port)
    output = child.output()
    assert "%s: shutting down" % signal.Signals(signum).name in output, output
    assert "Traceback" not in output


def test_stop_signal_without_sessions_exits_0_promptly(wsproxy_process, echo_target):
    port = free_port()
    child = wsproxy_process("-f", "127.0.0.1:%d" % port, echo_target.address)
    child.wait_listening(port)
    child.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert child.wait_exit() == 0
    assert time.monotonic() - started < 3.0, "an idle server must stop at once"


def test_stop_signal_when_client_never_answers_the_close(wsproxy_process, echo_target):
    port = free_port()
    child = wsproxy_process("-f", "127.0.0.1:%d" % port, echo_target.address)
    child.wait_listening(port)
    with open_session(port, protocols=["binary"]) as ws:
        echo(ws, b"still here")
        child.send_signal(signal.SIGTERM)
        assert ws.recv_close()[0] == 1001
        # No close in reply: the server still exits 0 within its grace period.
        assert child.wait_exit() == 0


# -- SIGHUP -------------------------------------------------------------------------------


def rewrite_keeping_signature(path: Path, text: str) -> None:
    """Change ``path``'s content in place keeping its size, inode and mtime.

    Then only a forced reload (SIGHUP) can notice the change: the token
    table's own change detection looks at exactly these.
    """
    before = os.stat(str(path))
    data = text.encode()
    assert len(data) == before.st_size
    with open(str(path), "r+b") as stream:
        stream.write(data)
    os.utime(str(path), ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(str(path))
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == \
        (before.st_ino, before.st_size, before.st_mtime_ns)


def token_file_text(port: int) -> str:
    line = "vnc: 127.0.0.1:%d\n" % port
    return line + "#" * (40 - len(line)) + "\n"


def test_sighup_reloads_tokens_and_keeps_open_sessions(tmp_path, wsproxy_process, make_target):
    first_target, second_target = make_target(), make_target()
    tokens = tmp_path / "tokens"
    tokens.write_text(token_file_text(first_target.port))
    port = free_port()
    child = wsproxy_process("-f", "--token-source", str(tokens), "127.0.0.1:%d" % port)
    child.wait_listening(port)
    with open_session(port, protocols=["binary"], path="/?token=vnc") as old_session:
        echo(old_session, b"before the reload")
        assert len(first_target.connections) == 1
        rewrite_keeping_signature(tokens, token_file_text(second_target.port))
        loaded = child.output().count("token(s) loaded")
        child.send_signal(signal.SIGHUP)
        child.wait_for(lambda: child.output().count("token(s) loaded") > loaded,
                       "the token source to be re-read after SIGHUP")
        with open_session(port, protocols=["binary"], path="/?token=vnc") as new_session:
            echo(new_session, b"after the reload")
            close_normally(new_session)
        assert len(second_target.connections) == 1, "SIGHUP did not re-read the token source"
        echo(old_session, b"the old session goes on")
        close_normally(old_session)
    assert len(first_target.connections) == 1
    assert child.alive()


def test_sighup_is_not_fatal_even_right_after_start(wsproxy_process, echo_target):
    port = free_port()
    child = wsproxy_process("-f", "127.0.0.1:%d" % port, echo_target.address)
    child.wait_listening(port)
    for _ in range(3):
        child.send_signal(signal.SIGHUP)
    child.wait_for(lambda: child.output().count("SIGHUP") >= 1, "a log line about SIGHUP")
    with open_session(port, protocols=["binary"]) as ws:
        echo(ws, b"alive")
        close_normally(ws)
    assert child.alive()


# -- --timeout and --idle-timeout ---------------------------------------------------------


def test_timeout_exits_by_itself(wsproxy_process, echo_target):
    port = free_port()
    started = time.monotonic()
    child = wsproxy_process("-f", "--timeout", "1", "127.0.0.1:%d" % port, echo_target.address)
    child.wait_listening(port)
    assert child.wait_exit() == 0
    assert time.monotonic() - started >= 1.0
    assert not port_listens(port)
    assert "--timeout 1" in child.output()


def test_timeout_stops_accepting_but_lets_open_sessions_finish(wsproxy_process, echo_target):
    port = free_port()
    child = wsproxy_process("-f", "--timeout", "1.5", "127.0.0.1:%d" % port, echo_target.address)
    child.wait_listening(port)
    with open_session(port, protocols=["binary"]) as ws:
        echo(ws, b"before the timeout")
        child.wait_for(lambda: "no longer accepting" in child.output(),
                       "the --timeout log line")
        wait_until(lambda: not port_listens(port), EXIT_DEADLINE, "the port to close")
        assert child.alive(), "the open session must keep the process running"
        echo(ws, b"after the timeout")
        close_normally(ws)
    assert child.wait_exit() == 0


def test_idle_timeout_exits_after_the_last_session_ends(wsproxy_process, echo_target):
    port = free_port()
    child = wsproxy_process("-f", "--idle-timeout", "1", "127.0.0.1:%d" % port,
                            echo_target.address)
    child.wait_listening(port)
    with open_session(port, protocols=["binary"]) as ws:
        held_since = time.monotonic()
        # Hold the session well past the idle timeout: the process must stay.
        while time.monotonic() - held_since < 1.5:
            with pytest.raises(subprocess.TimeoutExpired):
                child.process.wait(0.25)
            echo(ws, b"keep talking")
        close_normally(ws)
    ended = time.monotonic()
    assert child.wait_exit() == 0
    assert time.monotonic() - ended >= 0.8, "exited before --idle-timeout passed"
    assert "--idle-timeout 1" in child.output()


def test_idle_timeout_counts_from_start(wsproxy_process, echo_target):
    port = free_port()
    child = wsproxy_process("-f", "--idle-timeout", "0.5", "127.0.0.1:%d" % port,
                            echo_target.address)
    child.wait_listening(port)
    assert child.wait_exit() == 0


# -- --unix-listen ----------------------------------------------------------------------


def unix_session_echo(path: str, payload: bytes) -> int:
    """A whole binary session over AF_UNIX; returns the close code the server echoed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(EXIT_DEADLINE)
        sock.connect(path)
        request, key = build_request(host="localhost", protocols=["binary"])
        sock.sendall(request)
        reader = sock.makefile("rb")
        status = reader.readline()
        assert status.startswith(b"HTTP/1.1 101"), status
        headers = {}
        for line in iter(reader.readline, b"\r\n"):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        assert headers["sec-websocket-accept"] == accept_for(key)
        sock.sendall(encode_frame(OP_BINARY, payload))
        echoed = b""
        while len(echoed) < len(payload):  # the echo may come back in several frames
            opcode, data = read_frame(reader)
            assert opcode == OP_BINARY
            echoed += data
        assert echoed == payload
        sock.sendall(encode_frame(OP_CLOSE, close_payload(1000)))
        opcode, body = read_frame(reader)
        assert opcode == OP_CLOSE
        assert reader.read() == b"", "the server must close after the close handshake"
        return int.from_bytes(body[:2], "big")


def read_frame(reader):
    """One unmasked server frame with a payload under 64 KiB: ``(opcode, payload)``."""
    first, second = reader.read(2)
    assert not second & 0x80, "server frames are not masked"
    length = second & 0x7F
    assert length != 127, "no 64 KiB frames expected here"
    if length == 126:
        length = int.from_bytes(reader.read(2), "big")
    return first & 0x0F, reader.read(length)


def unix_connectable(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(str(path))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("mode_arg,mode", [(None, 0o600), ("0660", 0o660), ("604", 0o604)])
def test_unix_listen_has_the_mode_and_relays(tmp_path, wsproxy_process, echo_target,
                                             mode_arg, mode):
    path = tmp_path / "ws.sock"
    args = ["-f", "--unix-listen", str(path)]
    if mode_arg is not None:
        args += ["--unix-listen-mode", mode_arg]
    child = wsproxy_process(*(args + [echo_target.address]))
    child.wait_for(lambda: unix_connectable(path), "the Unix socket to accept connections")
    assert stat.S_ISSOCK(os.stat(str(path)).st_mode)
    assert stat.S_IMODE(os.stat(str(path)).st_mode) == mode
    payload = os.urandom(3000)
    assert unix_session_echo(str(path), payload) == 1000
    assert echo_target.wait_connection().received_bytes() == payload
    child.send_signal(signal.SIGTERM)
    assert child.wait_exit() == 0
    assert not path.exists(), "the socket file must be removed on exit"


def test_unix_listen_from_a_config_file_relative_to_it(tmp_path, wsproxy_process, echo_target):
    conf = tmp_path / "wsproxy.conf"
    conf.write_text("[wsproxy]\nunix-listen = ws.sock\nunix-listen-mode = 0640\n"
                    "target = %s\nforeground = yes\n" % echo_target.address)
    child = wsproxy_process("-c", str(conf), cwd="/")
    path = tmp_path / "ws.sock"
    child.wait_for(lambda: unix_connectable(path), "the Unix socket to accept connections")
    assert stat.S_IMODE(os.stat(str(path)).st_mode) == 0o640
    assert unix_session_echo(str(path), b"over a unix socket") == 1000


def test_unix_listen_in_a_missing_directory_exits_1(tmp_path, echo_target):
    path = tmp_path / "no" / "such" / "ws.sock"
    result = run_wsproxy("-f", "--unix-listen", str(path), echo_target.address)
    assert result.returncode == 1
    assert str(path) in result.stderr and "Traceback" not in result.stderr
