"""Tests for wsproxy/passwd.py, run as a real child process (pipe and terminal)."""

import base64
import os
import pty
import select
import subprocess
import sys
import time

import pytest

from wsproxy.auth import AuthTable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND = [sys.executable, "-m", "wsproxy.passwd"]
FAST = ["--iterations", "1000"]


def child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run(args, stdin: bytes):
    return subprocess.run(COMMAND + args, input=stdin, capture_output=True,
                          cwd=ROOT, env=child_env(), timeout=60)


def verifies(tmp_path, line: str, user: bytes, password: bytes) -> bool:
    path = tmp_path / "users"
    path.write_text(line + "\n", encoding="utf-8")
    header = "Basic " + base64.b64encode(user + b":" + password).decode()
    return AuthTable(str(path)).check(header) == user.decode("utf-8")


# -- standard input is a pipe ----------------------------------------------------

def test_piped_password_gives_a_working_line(tmp_path):
    result = run(["alice"] + FAST, b"s3cret pass:word\n")
    assert result.returncode == 0, result.stderr
    line = result.stdout.decode().strip()
    assert line.startswith("alice:pbkdf2_sha256$1000$")
    assert result.stdout.count(b"\n") == 1
    assert b"s3cret" not in result.stdout + result.stderr
    assert verifies(tmp_path, line, b"alice", b"s3cret pass:word")
    assert not verifies(tmp_path, line, b"alice", b"s3cret pass:word\n")


def test_only_the_first_line_is_read_and_crlf_is_dropped(tmp_path):
    result = run(["bob"] + FAST, b"first\r\nsecond\n")
    assert result.returncode == 0, result.stderr
    assert verifies(tmp_path, result.stdout.decode().strip(), b"bob", b"first")


def test_password_without_final_newline(tmp_path):
    result = run(["bob"] + FAST, "grüße".encode("utf-8"))
    assert result.returncode == 0, result.stderr
    assert verifies(tmp_path, result.stdout.decode().strip(), b"bob", "grüße".encode("utf-8"))


def test_default_iterations_are_600000():
    result = run(["carol"], b"pw\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"carol:pbkdf2_sha256$600000$")


@pytest.mark.parametrize("user", ["al:ice", "al ice", "al\tice", " alice", "", "al\x07ice"])
def test_bad_user_names_exit_2_with_a_message(user):
    result = run([user] + FAST, b"pw\n")
    assert result.returncode == 2
    assert result.stdout == b""
    assert b"user name" in result.stderr
    assert b"Traceback" not in result.stderr


@pytest.mark.parametrize("args", [[], ["alice", "--iterations", "0"],
                                  ["alice", "--iterations", "lots"], ["alice", "bob"]])
def test_bad_usage_exits_2(args):
    result = run(args, b"pw\n")
    assert result.returncode == 2
    assert result.stdout == b"" and b"Traceback" not in result.stderr


@pytest.mark.parametrize("stdin, why", [(b"", b"no password"), (b"\n", b"empty"),
                                        (b"\xffpw\n", b"UTF-8")])
def test_unusable_piped_password_exits_1(stdin, why):
    result = run(["alice"] + FAST, stdin)
    assert result.returncode == 1
    assert result.stdout == b"" and why in result.stderr
    assert b"Traceback" not in result.stderr


# -- standard input is a terminal ------------------------------------------------

class Terminal:
    """The tool running on a real pseudo-terminal (its controlling terminal)."""

    def __init__(self, args):
        pid, fd = pty.fork()
        if pid == 0:  # the child: become the tool, nothing else
            try:
                os.chdir(ROOT)
                os.execve(sys.executable, COMMAND + args, child_env())
            finally:
                os._exit(127)
        self.pid, self.fd, self.output = pid, fd, b""

    def read_until(self, wanted: bytes, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while wanted not in self.output:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "no %r in %r" % (wanted, self.output)
            if select.select([self.fd], [], [], remaining)[0]:
                chunk = self._read()
                assert chunk, "terminal closed before %r; got %r" % (wanted, self.output)

    def _read(self) -> bytes:
        try:
            chunk = os.read(self.fd, 4096)
        except OSError:  # EIO: the child closed its end
            chunk = b""
        self.output += chunk
        return chunk

    def type(self, text: bytes) -> None:
        os.write(self.fd, text)

    def finish(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([self.fd], [], [], 0.5)[0] and not self._read():
                break
        os.close(self.fd)
        _pid, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") \
            else status >> 8


def test_terminal_password_is_asked_twice_without_echo(tmp_path):
    terminal = Terminal(["dave"] + FAST)
    terminal.read_until(b"Password for dave: ")
    terminal.type(b"tty-secret\n")
    terminal.read_until(b"Repeat password: ")
    terminal.type(b"tty-secret\n")
    terminal.read_until(b"dave:pbkdf2_sha256$1000$")
    status = terminal.finish()
    assert status == 0, terminal.output
    assert b"tty-secret" not in terminal.output  # never echoed
    line = terminal.output.split(b"dave:pbkdf2")[1].split(b"\r\n")[0]
    assert verifies(tmp_path, "dave:pbkdf2" + line.decode(), b"dave", b"tty-secret")


def test_terminal_passwords_that_differ_exit_1(tmp_path):
    terminal = Terminal(["dave"] + FAST)
    terminal.read_until(b"Password for dave: ")
    terminal.type(b"one\n")
    terminal.read_until(b"Repeat password: ")
    terminal.type(b"two\n")
    terminal.read_until(b"do not match")
    assert terminal.finish() == 1
    assert b"pbkdf2" not in terminal.output and b"Traceback" not in terminal.output
