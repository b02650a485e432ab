"""Listening sockets wsproxy did not bind: systemd socket activation and ``--inetd``.

``systemd-socket-activate`` (Debian's ``systemd`` package) binds, waits for
the first connection and execs wsproxy with the sockets as fds 3...; an
``--inetd`` child gets a listening socket the test made as its standard
input.  ``systemd-analyze verify`` checks the shipped unit files.
"""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import (EXIT_DEADLINE, ROOT, child_env, echo_round_trip, free_port, port_listens,
                      run_wsproxy, stop_process, wait_until)
from wsclient import accept_for, build_request

SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
UNITS = Path(ROOT) / "contrib" / "systemd"


class Child:
    """A child process with its output in a file; SIGTERM and a wait at the end."""

    def __init__(self, args, directory: Path, **popen) -> None:
        self.output_path = directory / "output.txt"
        with open(str(self.output_path), "wb") as output:
            self.process = subprocess.Popen(args, stdout=output, stderr=subprocess.STDOUT,
                                            **popen)

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def stop(self) -> int:
        status = stop_process(self.process)
        if status is None:
            pytest.fail("the child did not stop on SIGTERM: %s" % self.output())
        return status


@pytest.fixture
def children(tmp_path):
    started = []

    def start(args, **popen) -> Child:
        directory = tmp_path / ("child%d" % len(started))
        directory.mkdir()
        child = Child(args, directory, **popen)
        started.append(child)
        return child

    yield start
    for child in started:
        child.stop()
    for child in started:
        assert "Traceback" not in child.output(), child.output()


def unix_handshake(path: str) -> bytes:
    """An RFC 6455 handshake over a Unix socket; returns the response head."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(EXIT_DEADLINE)
        sock.connect(path)
        request, _key = build_request(key="dGhlIHNhbXBsZSBub25jZQ==")
        sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(4096)
            assert data, "closed before the response: %r" % head
            head += data
        return head


@pytest.mark.skipif(SOCKET_ACTIVATE is None,
                    reason="systemd-socket-activate is not installed (Debian package systemd)")
def test_systemd_socket_activate_tcp_and_unix(children, echo_target, tmp_path):
    port = free_port()
    unix_path = str(tmp_path / "activated.sock")
    child = children([SOCKET_ACTIVATE, "-l", "127.0.0.1:%d" % port, "-l", unix_path,
                      "-E", "PYTHONPATH=" + ROOT, sys.executable, "-m", "wsproxy", "-f",
                      echo_target.address], cwd=ROOT)
    # systemd-socket-activate listens at once and execs wsproxy on the first connection.
    wait_until(lambda: os.path.exists(unix_path) or child.process.poll() is not None,
               EXIT_DEADLINE, "systemd-socket-activate to listen")
    wait_until(lambda: port_listens(port), EXIT_DEADLINE, "the TCP socket")
    echo_round_trip(port)
    head = unix_handshake(unix_path)
    assert head.startswith(b"HTTP/1.1 101"), head
    assert accept_for("dGhlIHNhbXBsZSBub25jZQ==").encode() in head
    output = child.output()
    assert "inherited socket(s) 127.0.0.1:%d, unix:%s" % (port, unix_path) in output, output
    assert child.stop() == 0
    # The socket's path belongs to whoever bound it: wsproxy leaves it.
    assert os.path.exists(unix_path)


def test_inetd_serves_the_listening_socket_on_standard_input(children, echo_target):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        child = children([sys.executable, "-m", "wsproxy", "-f", "--inetd", "--log-file",
                          os.devnull, echo_target.address],
                         stdin=listener.fileno(), cwd=ROOT, env=child_env())
    finally:
        listener.close()  # the child holds its own copy
    echo_round_trip(port)
    echo_round_trip(port)
    assert child.stop() == 0
    assert not port_listens(port)


@pytest.mark.parametrize("stdin", ["devnull", "unbound"])
def test_inetd_without_a_listening_socket_is_a_config_error(stdin):
    sock = socket.socket() if stdin == "unbound" else None
    try:
        result = subprocess.run([sys.executable, "-m", "wsproxy", "-f", "--inetd", "localhost:1"],
                                stdin=sock.fileno() if sock else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                                env=child_env(), timeout=EXIT_DEADLINE, universal_newlines=True)
    finally:
        if sock is not None:
            sock.close()
    assert result.returncode == 2, result
    assert "--inetd: standard input is not a" in result.stderr
    assert "Traceback" not in result.stderr


def test_inetd_and_unix_listen_exclude_each_other():
    result = run_wsproxy("--inetd", "--unix-listen", "/tmp/x.sock", "localhost:1")
    assert result.returncode == 2
    assert "--inetd and --unix-listen" in result.stderr


def test_listen_fds_for_another_process_are_ignored(children, echo_target):
    port = free_port()
    env = dict(child_env(), LISTEN_FDS="1", LISTEN_PID="1")
    child = children([sys.executable, "-m", "wsproxy", "-f", "127.0.0.1:%d" % port,
                      echo_target.address], cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
    wait_until(lambda: port_listens(port) or child.process.poll() is not None, EXIT_DEADLINE,
               "wsproxy to bind its own port")
    echo_round_trip(port)


def _verify(paths):
    return subprocess.run([SYSTEMD_ANALYZE, "verify"] + [str(path) for path in paths],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=60, universal_newlines=True, cwd=str(paths[0].parent))


@pytest.mark.skipif(SYSTEMD_ANALYZE is None,
                    reason="systemd-analyze is not installed (Debian package systemd)")
def test_systemd_analyze_verify_accepts_the_units(tmp_path):
    # ExecStart names where pip puts the command; here it is this checkout's.
    service = (UNITS / "wsproxy.service").read_text().replace(
        "/usr/local/bin/wsproxy", "%s -m wsproxy" % sys.executable)
    (tmp_path / "wsproxy.service").write_text(service)
    shutil.copy(str(UNITS / "wsproxy.socket"), str(tmp_path / "wsproxy.socket"))
    units = [tmp_path / "wsproxy.service", tmp_path / "wsproxy.socket"]
    result = _verify(units)
    if result.returncode != 0 and "Failed to" in result.stdout and "wsproxy" not in result.stdout:
        pytest.skip("systemd-analyze cannot run here: %s" % result.stdout.strip())
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout
    for directive in ("Type=notify", "NoNewPrivileges=yes", "ProtectSystem=strict",
                      "AmbientCapabilities=CAP_NET_BIND_SERVICE", "DynamicUser=yes"):
        assert "\n" + directive + "\n" in service
    # The check can fail: a misspelt directive is reported.
    (tmp_path / "wsproxy.service").write_text(service.replace("NoNewPrivileges=", "NoNewPrivilege="))
    assert "NoNewPrivilege" in _verify(units).stdout


@pytest.mark.skipif(SOCKET_ACTIVATE is None,
                    reason="systemd-socket-activate is not installed (Debian package systemd)")
def test_activated_datagram_socket_is_a_config_error(children, echo_target):
    port = free_port()
    child = children([SOCKET_ACTIVATE, "--datagram", "-l", "127.0.0.1:%d" % port,
                      "-E", "PYTHONPATH=" + ROOT, sys.executable, "-m", "wsproxy", "-f",
                      echo_target.address], cwd=ROOT)
    wait_until(lambda: "Listening on" in child.output(), EXIT_DEADLINE,
               "systemd-socket-activate to listen")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"wake up", ("127.0.0.1", port))
    assert child.process.wait(EXIT_DEADLINE) == 2
    assert ("socket activation: descriptor 3 is not a listening stream socket"
            in child.output()), child.output()
