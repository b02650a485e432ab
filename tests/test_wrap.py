"""Wrap mode (``LISTEN -- COMMAND``) without LD_PRELOAD, with real child processes.

The wrapped program is ``tests/wrapped_echo.py``: a TCP echo server on the
port wsproxy hands it (``{port}`` or ``$WSPROXY_WRAP_PORT``), logging its
starts and SIGTERM stops to a file the test reads.
"""

import os
import sys
from pathlib import Path

import pytest

from conftest import ROOT, echo_round_trip, free_port, wait_until
from wsclient import WSClient

ECHO = os.path.join(ROOT, "tests", "wrapped_echo.py")


@pytest.fixture
def wrapper(wsproxy_process, tmp_path):
    """Factory: ``wrapper(*args, module="wsproxy")``: ``python3 -m MODULE ARGS`` in tmp_path."""
    def start(*args, module: str = "wsproxy"):
        return wsproxy_process(*args, cwd=str(tmp_path), module=module)
    return start


def program_log(tmp_path: Path, kind: str = "start"):
    """The program's log path, and a function listing its ``kind`` lines (start/listen/stop)."""
    path = tmp_path / "program.log"

    def lines():
        text = path.read_text() if path.exists() else ""
        return [line for line in text.splitlines() if line.startswith(kind + " ")]
    return path, lines


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose; it is reaped by its parent.
    try:
        with open("/proc/%d/stat" % pid) as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_program_gets_the_port_and_is_stopped_with_wsproxy(wrapper, tmp_path):
    port = free_port()
    path, lines = program_log(tmp_path)
    child = wrapper("-f", "127.0.0.1:%d" % port, "--", sys.executable, ECHO, "{port}",
                    "--log", str(path))
    child.wait_log("listening on")
    echo_round_trip(port)
    started = lines()[0].split()
    program_pid, program_port = int(started[1]), int(started[2])
    assert program_port != port
    child.stop()
    assert child.process.returncode == 0
    assert "stop %d" % program_pid in path.read_text(), path.read_text()
    wait_until(lambda: not pid_alive(program_pid), message="the wrapped program to be gone")


def test_port_in_the_environment_without_placeholder(wrapper, tmp_path):
    port = free_port()
    child = wrapper("-f", "--wrap-mode", "ignore", "127.0.0.1:%d" % port, "--",
                    sys.executable, ECHO)
    child.wait_log("listening on")
    echo_round_trip(port)


def test_exit_mode_exits_with_the_programs_status(wrapper, tmp_path):
    port = free_port()
    child = wrapper("-f", "127.0.0.1:%d" % port, "--", sys.executable, ECHO, "{port}",
                    "--exit-after", "1", "--status", "3")
    child.wait_log("listening on")
    echo_round_trip(port)
    assert child.wait_exit() == 3, child.output()


def test_ignore_mode_keeps_serving_and_closes_1011_websockify_style(wrapper, tmp_path):
    port = free_port()
    path, lines = program_log(tmp_path)
    child = wrapper("--wrap-mode=ignore", "127.0.0.1:%d" % port, "--", sys.executable, ECHO,
                    "{port}", "--exit-after", "1", "--log", str(path), module="wsproxy.websockify")
    child.wait_log("proxying from")
    echo_round_trip(port)
    child.wait_log("exited with status 0")
    assert child.process.poll() is None
    with WSClient(port) as client:
        client.handshake()
        assert client.recv_close()[0] == 1011
    assert len(lines()) == 1  # not started again


def test_respawn_mode_starts_the_program_again(wrapper, tmp_path):
    port = free_port()
    path, lines = program_log(tmp_path)
    child = wrapper("-f", "--wrap-mode", "respawn", "127.0.0.1:%d" % port, "--", sys.executable,
                    ECHO, "{port}", "--exit-after", "1", "--log", str(path))
    child.wait_log("listening on")
    echo_round_trip(port)
    wait_until(lambda: len(lines()) == 2, message=lambda: "a second start: %s" % lines())
    listening = program_log(tmp_path, "listen")[1]
    wait_until(lambda: len(listening()) == 2, message="the respawned program to listen")
    echo_round_trip(port)


def test_respawn_is_throttled_like_websockify(wrapper, tmp_path):
    port = free_port()
    path, lines = program_log(tmp_path)
    child = wrapper("-f", "--wrap-mode", "respawn", "127.0.0.1:%d" % port, "--", sys.executable,
                    ECHO, "--never-listen", "--log", str(path))
    child.wait_log("waiting before starting it again")
    assert len(lines()) == 3, lines()
    assert child.process.poll() is None


def test_program_that_cannot_run_fails_the_start(wrapper, tmp_path):
    child = wrapper("-f", "127.0.0.1:%d" % free_port(), "--", str(tmp_path / "no-such-program"))
    assert child.wait_exit() == 1
    assert "cannot run" in child.output() and "Traceback" not in child.output()


def test_target_and_command_together_are_refused(wrapper):
    child = wrapper("-f", "127.0.0.1:%d" % free_port(), "127.0.0.1:1", "--", "prog")
    assert child.wait_exit() == 2
    assert "target" in child.output()


def test_wrap_command_from_a_config_file(wrapper, tmp_path):
    port = free_port()
    conf = tmp_path / "wsproxy.conf"
    conf.write_text("[wsproxy]\nlisten = 127.0.0.1:%d\nwrap-command = '%s' '%s' '{port}'\n"
                    "wrap-mode = respawn\n" % (port, sys.executable, ECHO))
    child = wrapper("-f", "-c", str(conf))
    child.wait_log("listening on")
    echo_round_trip(port)
