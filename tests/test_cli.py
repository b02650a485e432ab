"""The command line, run as real child processes: ``python -m wsproxy ...``.

Foreground runs (``-f``) are started with their output going to files and
stopped with SIGTERM after the test; argument errors must exit non-zero with
a message and no traceback.
"""

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import (EXIT_DEADLINE, ROOT, child_env, echo_round_trip, free_port, port_listens,
                      run_wsproxy, wait_until)


class Foreground:
    """A ``wsproxy -f`` child process with stdout/stderr in files."""

    def __init__(self, args, directory: Path) -> None:
        self.args = list(args)
        self.out_path = directory / "stdout.txt"
        self.err_path = directory / "stderr.txt"
        with open(str(self.out_path), "wb") as out, open(str(self.err_path), "wb") as err:
            self.process = subprocess.Popen([sys.executable, "-m", "wsproxy"] + self.args,
                                            cwd=ROOT, env=child_env(),
                                            stdin=subprocess.DEVNULL, stdout=out, stderr=err)

    def output(self) -> str:
        return (self.out_path.read_text(errors="replace") + self.err_path.read_text(errors="replace"))

    def wait_listening(self, port: int, host: str = "127.0.0.1") -> None:
        def ready():
            if self.process.poll() is not None:
                pytest.fail("wsproxy %s exited with %s: %s"
                            % (" ".join(self.args), self.process.returncode, self.output()))
            return port_listens(port, host)
        wait_until(ready, EXIT_DEADLINE, "wsproxy %s to listen" % " ".join(self.args))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(EXIT_DEADLINE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(EXIT_DEADLINE)
                pytest.fail("wsproxy -f did not end on SIGTERM")


@pytest.fixture
def foreground(tmp_path):
    """Factory: ``foreground(*args)`` starts ``python -m wsproxy ARGS``; stopped after the test."""
    started = []

    def start(*args) -> Foreground:
        directory = tmp_path / ("run%d" % len(started))
        directory.mkdir()
        child = Foreground(args, directory)
        started.append(child)
        return child

    yield start
    for child in started:
        child.stop()


@pytest.mark.parametrize("flags", [["-f"], ["--foreground"], ["-f", "-v"], ["--foreground", "--verbose"]])
def test_foreground_proxies(foreground, echo_target, flags):
    port = free_port()
    child = foreground(*(flags + ["127.0.0.1:%d" % port, echo_target.address]))
    child.wait_listening(port)
    echo_round_trip(port)
    assert child.process.poll() is None, "wsproxy -f must keep running after a session"


def test_foreground_logs_session_lines(foreground, echo_target):
    port = free_port()
    child = foreground("-f", "-v", "127.0.0.1:%d" % port, echo_target.address)
    child.wait_listening(port)
    echo_round_trip(port)
    wait_until(lambda: str(echo_target.port) in child.output(),
               message=lambda: "a log line naming the target %s in the output; got %r"
               % (echo_target.address, child.output()))


def test_listen_port_alone_listens(foreground, echo_target):
    port = free_port()
    child = foreground("-f", str(port), echo_target.address)
    child.wait_listening(port)
    echo_round_trip(port)


def test_ipv6_literal_listen_address(foreground, echo_target):
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
            port = probe.getsockname()[1]
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    child = foreground("-f", "[::1]:%d" % port, echo_target.address)
    child.wait_listening(port, host="::1")
    echo_round_trip(port, host="::1")


def test_help():
    result = run_wsproxy("--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout.lower()
    assert "usage" in text
    for option in ("--foreground", "--pid-file", "--verbose", "--daemon"):
        assert option in result.stdout, "--help does not mention %s" % option


BAD_ARGUMENTS = {
    "listen-not-a-port": ["-f", "notaport", "127.0.0.1:5900"],
    "listen-port-too-big": ["-f", "127.0.0.1:99999", "127.0.0.1:5900"],
    "listen-negative-port": ["-f", "127.0.0.1:-1", "127.0.0.1:5900"],
    "listen-unbracketed-ipv6": ["-f", "::1:8080", "127.0.0.1:5900"],
    "target-without-port": ["-f", "127.0.0.1:PORT", "localhost"],
    "target-bad-port": ["-f", "127.0.0.1:PORT", "localhost:vnc"],
    "target-port-zero": ["-f", "127.0.0.1:PORT", "localhost:0"],
    "target-missing": ["-f", "127.0.0.1:PORT"],
    "no-arguments": [],
    "unknown-option": ["-f", "--no-such-option", "127.0.0.1:PORT", "127.0.0.1:5900"],
    "daemon-mode-bad-target": ["127.0.0.1:PORT", "localhost:notaport"],
    "too-many-arguments": ["-f", "127.0.0.1:PORT", "127.0.0.1:5900", "extra"],
}


@pytest.mark.parametrize("case", sorted(BAD_ARGUMENTS))
def test_bad_arguments_exit_nonzero_with_message(case):
    port = str(free_port())
    args = [arg.replace("PORT", port) for arg in BAD_ARGUMENTS[case]]
    result = run_wsproxy(*args)
    assert result.returncode != 0, "wsproxy %s exited 0" % " ".join(args)
    assert result.stderr.strip(), "no message on stderr for wsproxy %s" % " ".join(args)
    assert "Traceback" not in result.stderr, result.stderr
    assert not port_listens(int(port)), "a refused command line left something listening"


def test_port_in_use_in_foreground_exits_nonzero_naming_it(echo_target):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        result = run_wsproxy("-f", "127.0.0.1:%d" % port, echo_target.address)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "127.0.0.1" in output and str(port) in output, \
        "the message does not name 127.0.0.1:%d: %r" % (port, output)
    assert "Traceback" not in output, output


def test_options_between_and_after_the_positionals(foreground, echo_target):
    # websockify's users write "6080 --heartbeat=30 host:5900"; argparse alone refused it.
    port = free_port()
    child = foreground("127.0.0.1:%d" % port, "--heartbeat=30", echo_target.address, "-f")
    child.wait_listening(port)
    echo_round_trip(port)
