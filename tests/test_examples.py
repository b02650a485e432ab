"""The scripts in ``examples/``, run as real child processes and talked to.

Each example prints the port it listens on (``--port 0`` picks a free one);
the test reads that line, drives real WebSocket sessions through it to real
targets, stops it with SIGINT (Ctrl-C) and checks what it printed.
"""

import ast
import http.client
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from typing import List

import pytest

import wsproxy

from conftest import EXIT_DEADLINE, ROOT, child_env, wait_until
from wsclient import WSClient, open_session

EXAMPLES = os.path.join(ROOT, "examples")
NAMES = ["embedded_thread.py", "per_user_targets.py", "metering.py"]
#: "each under ~60 lines"
MAX_LINES = 65
#: Standard-library modules the examples may import (``sys.stdlib_module_names`` from 3.10).
STDLIB = getattr(sys, "stdlib_module_names", {
    "argparse", "http", "json", "logging", "os", "signal", "socket", "sys", "threading", "typing"})


class Example:
    """One example script running as a child process; its stdout read line by line."""

    def __init__(self, name: str, args: List[str], directory) -> None:
        self.name = name
        self.err_path = directory / (name + ".stderr")
        with open(str(self.err_path), "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, os.path.join(EXAMPLES, name)] + list(args), cwd=ROOT,
                env=child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        self._pending = b""
        self.lines = []  # type: List[str]
        self._next = 0   # index of the first line no read_line() has matched yet
        self._eof = False

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def _read_more(self, timeout: float) -> None:
        readable, _, _ = select.select([self.process.stdout], [], [], max(0.0, timeout))
        if not readable:
            return
        chunk = os.read(self.process.stdout.fileno(), 65536)
        if not chunk:
            self._eof = True
        self._pending += chunk
        *complete, self._pending = self._pending.split(b"\n")
        self.lines.extend(line.decode("utf-8", "replace") for line in complete)

    def read_line(self, pattern: str, timeout: float = EXIT_DEADLINE) -> "re.Match":
        """The next unmatched stdout line matching ``pattern``, waiting up to ``timeout``."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for index in range(self._next, len(self.lines)):
                match = compiled.search(self.lines[index])
                if match:
                    self._next = index + 1
                    return match
            left = deadline - time.monotonic()
            if self._eof or left <= 0:
                pytest.fail("%s printed no line matching %r; stdout: %s; stderr: %s"
                            % (self.name, pattern, self.lines, self.stderr()))
            self._read_more(left)

    def port(self, pattern: str = r"listening on 127\.0\.0\.1:(\d+)") -> int:
        return int(self.read_line(pattern).group(1))

    def interrupt(self) -> None:
        """Ctrl-C: SIGINT to the child."""
        self.process.send_signal(signal.SIGINT)

    def wait(self) -> int:
        """Wait for the child to exit; return its exit status."""
        try:
            return self.process.wait(EXIT_DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail("%s did not exit within %.0fs" % (self.name, EXIT_DEADLINE))

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(EXIT_DEADLINE)
        self.process.stdout.close()


@pytest.fixture
def run_example(tmp_path):
    """Factory: ``run_example(name, *args)`` starts ``examples/NAME``; killed after the test."""
    started = []  # type: List[Example]

    def start(name: str, *args: str) -> Example:
        example = Example(name, list(args), tmp_path)
        started.append(example)
        return example

    yield start
    for example in started:
        example.kill()
        assert "Traceback" not in example.stderr(), example.stderr()


def close_cleanly(ws: WSClient) -> None:
    ws.send_close(1000)
    assert ws.recv_close()[0] == 1000
    ws.expect_closed()


def answer_shutdown(ws: WSClient) -> None:
    """The example is stopping: it sends 1001 (going away); answer and see the TCP close."""
    assert ws.recv_close()[0] == 1001
    ws.send_close(1001)
    ws.expect_closed()


def stop_cleanly(example: Example) -> None:
    example.interrupt()
    assert example.wait() == 0, example.stderr()
    assert "Traceback" not in example.stderr(), example.stderr()


def dashboard(port: int) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=EXIT_DEADLINE)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type") == "application/json"
        return json.loads(response.read())
    finally:
        connection.close()


# -- the scripts as files -----------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_example_is_short_documented_and_uses_only_public_names(name):
    path = os.path.join(EXAMPLES, name)
    with open(path, encoding="utf-8") as source:
        text = source.read()
    assert len(text.splitlines()) <= MAX_LINES, "%s is longer than ~60 lines" % name
    tree = ast.parse(text)
    docstring = ast.get_docstring(tree) or ""
    assert "python3 examples/%s" % name in docstring, "the docstring must say how to run it"
    assert "pip install ." in docstring and "PYTHONPATH=." in docstring
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name.split(".")[0] in STDLIB, "%s imports %s" % (name, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.module == "wsproxy":
                for alias in node.names:
                    assert alias.name in wsproxy.__all__, "%s imports private %s" % (name, alias.name)
            else:
                assert node.level == 0 and node.module.split(".")[0] in STDLIB, \
                    "%s imports from %s" % (name, node.module)


@pytest.mark.parametrize("name, args", [
    ("embedded_thread.py", ["--target", "no-port-here"]),
    ("per_user_targets.py", ["--user", "alice"]),
    ("metering.py", ["--target", "127.0.0.1:http"]),
])
def test_example_bad_argument_is_a_usage_error(name, args):
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, name), "--port", "0"] + args,
                            cwd=ROOT, env=child_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, timeout=EXIT_DEADLINE)
    assert result.returncode == 2
    assert "usage:" in result.stderr and "Traceback" not in result.stderr


# -- running them ---------------------------------------------------------------------------


def test_embedded_thread_serves_a_dashboard_and_the_proxy(run_example, echo_target):
    example = run_example("embedded_thread.py", "--port", "0", "--dashboard-port", "0",
                          "--target", echo_target.address)
    proxy_port = example.port(r"proxy listening on 127\.0\.0\.1:(\d+)")
    dashboard_port = example.port(r"dashboard listening on 127\.0\.0\.1:(\d+)")
    assert proxy_port != dashboard_port
    assert dashboard(dashboard_port) == {"open_sessions": 0}

    ws = open_session(proxy_port, protocols=["binary"])
    with ws:
        ws.send_binary(b"through the embedded proxy")
        assert ws.recv_stream(26) == b"through the embedded proxy"
        wait_until(lambda: dashboard(dashboard_port)["open_sessions"] == 1,
                   message="the dashboard to count the open session")
        # Ctrl-C with the session still open: it is closed with 1001.
        example.interrupt()
        answer_shutdown(ws)
    assert example.wait() == 0, example.stderr()
    example.read_line(r"^stopped$")
    # The program configured logging, so wsproxy's session lines reach its stderr.
    assert re.search(r"wsproxy.*session 1 ", example.stderr()), example.stderr()
    echo_target.wait_connection().wait_eof()


def test_per_user_targets_route_by_path_and_refuse_unknown_users(run_example, make_target):
    alice = make_target(send_on_connect=b"alice:")
    bob = make_target(send_on_connect=b"bob:")
    example = run_example("per_user_targets.py", "--port", "0",
                          "--user", "alice=" + alice.address, "--user", "bob=" + bob.address)
    port = example.port()
    for name in ("alice", "bob", "alice"):
        greeting = (name + ":").encode()
        with open_session(port, protocols=["binary"], path="/user/" + name) as ws:
            ws.send_binary(b"hello")
            assert ws.recv_stream(len(greeting) + 5) == greeting + b"hello"
            close_cleanly(ws)
    for path in ("/user/carol", "/user/", "/", "/user/alice/more", "/admin/alice",
                 "/user/Alice"):
        with WSClient(port) as ws:
            response = ws.handshake(expect_status=404, path=path)
            assert b"no such user" in response.body
    # Query strings are not part of the name.
    with open_session(port, protocols=["binary"], path="/user/bob?tab=2") as ws:
        assert ws.recv_stream(4) == b"bob:"
        close_cleanly(ws)
    assert (len(alice.connections), len(bob.connections)) == (2, 2)
    stop_cleanly(example)


def test_metering_prints_each_sessions_byte_counts(run_example, make_target):
    greeting = b"W" * 1000
    target = make_target(send_on_connect=greeting)  # greets, then echoes
    example = run_example("metering.py", "--port", "0", "--target", target.address)
    port = example.port()
    line = (r"^session (\d+) 127\.0\.0\.1:(\d+) -> (\S+): "
            r"(\d+) bytes up, (\d+) bytes down, close (\d+)$")

    chunks = [b"abc", os.urandom(5000), b"z" * 70000]
    sent = sum(len(chunk) for chunk in chunks)
    with open_session(port, protocols=["binary"]) as ws:
        client_port = ws.local_port
        for chunk in chunks:
            ws.send_binary(chunk)
        assert len(ws.recv_stream(len(greeting) + sent)) == len(greeting) + sent
        close_cleanly(ws)
    match = example.read_line(line)
    number, seen_port, seen_target, up, down, code = match.groups()
    assert (int(seen_port), seen_target, int(code)) == (client_port, target.address, 1000)
    assert (int(up), int(down)) == (sent, len(greeting) + sent)

    # A session still open at Ctrl-C is closed with 1001 and metered too.
    with open_session(port, protocols=["binary"]) as ws:
        ws.send_binary(b"0123456789")
        assert ws.recv_stream(len(greeting) + 10)[-10:] == b"0123456789"
        example.interrupt()
        answer_shutdown(ws)
    assert example.wait() == 0, example.stderr()
    match = example.read_line(line)
    assert int(match.group(1)) != int(number)
    assert (int(match.group(4)), int(match.group(5)), int(match.group(6))) == (
        10, len(greeting) + 10, 1001)
