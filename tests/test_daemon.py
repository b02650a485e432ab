"""Daemon mode, with real processes: the launcher returns once the port listens.

Without ``-f`` the launcher forks a detached daemon (double fork, setsid,
chdir /, standard streams away from the launcher's) and exits 0 only once
the daemon's socket listens, non-zero with the reason if it cannot bind.
SIGTERM ends the daemon, which removes its pid file.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import EXIT_DEADLINE, ROOT, child_env, echo_round_trip, free_port, wait_until

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="daemon mode needs fork")


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open("/proc/%d/stat" % pid) as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return True


def pids_started_with(marker: str):
    """Pids of our processes whose command line contains ``marker`` (a unique temp path)."""
    found = []
    if not os.path.isdir("/proc"):
        return found
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as cmdline:
                if marker.encode() in cmdline.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


class Launch:
    """One run of the launcher: ``python -m wsproxy ARGS`` with output in files."""

    def __init__(self, args, directory: Path, cwd: str = ROOT) -> None:
        self.args = list(args)
        self.out_path = directory / "launcher-stdout.txt"
        self.err_path = directory / "launcher-stderr.txt"
        with open(str(self.out_path), "wb") as out, open(str(self.err_path), "wb") as err:
            self.process = subprocess.Popen([sys.executable, "-m", "wsproxy"] + self.args,
                                            cwd=str(cwd), env=child_env(),
                                            stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        try:
            self.returncode = self.process.wait(EXIT_DEADLINE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail("the launcher did not return within %.0fs" % EXIT_DEADLINE)

    def output(self) -> str:
        return self.out_path.read_text(errors="replace") + self.err_path.read_text(errors="replace")


@pytest.fixture
def launch(tmp_path):
    """Factory: ``launch(*args, cwd=ROOT)`` runs the launcher; any daemon left is killed.

    Daemons are found by a unique temporary path on their command line.
    """
    markers = []
    launches = []

    def run(*args, cwd: str = ROOT) -> Launch:
        directory = tmp_path / ("launch%d" % len(launches))
        directory.mkdir()
        markers.extend(arg for arg in args if str(tmp_path) in arg)
        launches.append(Launch(args, directory, cwd))
        return launches[-1]

    yield run
    for marker in markers:
        for pid in pids_started_with(marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def read_pid(pid_file: Path) -> int:
    wait_until(pid_file.exists, EXIT_DEADLINE, "the pid file %s" % pid_file)
    text = pid_file.read_text().strip()
    assert text.isdigit(), "pid file holds %r" % text
    return int(text)


def terminate(pid: int, pid_file: Path) -> None:
    """SIGTERM the daemon; it must exit and remove its pid file."""
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not pid_alive(pid), EXIT_DEADLINE, "daemon %d to exit on SIGTERM" % pid)
    wait_until(lambda: not pid_file.exists(), EXIT_DEADLINE,
               "the daemon to remove its pid file %s" % pid_file)


@pytest.mark.parametrize("flags", [[], ["-D"], ["--daemon"]])
def test_daemon_detaches_listens_proxies_and_ends_on_sigterm(launch, tmp_path, echo_target, flags):
    port = free_port()
    pid_file = tmp_path / "wsproxy.pid"
    launcher = launch(*(flags + ["--pid-file", str(pid_file), "127.0.0.1:%d" % port,
                                 echo_target.address]))
    assert launcher.returncode == 0, launcher.output()
    # The launcher returns only once the daemon listens: no retry here.
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
    pid = read_pid(pid_file)
    assert pid != launcher.process.pid, "the pid file holds the launcher's pid"
    assert pid_alive(pid)
    echo_round_trip(port)
    assert pid_alive(pid), "the daemon died after one session"
    terminate(pid, pid_file)
    assert not _listens(port)


def _listens(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_daemon_is_detached_from_the_launcher(launch, tmp_path, echo_target):
    port = free_port()
    pid_file = tmp_path / "wsproxy.pid"
    launcher = launch("--pid-file", str(pid_file), "127.0.0.1:%d" % port, echo_target.address)
    assert launcher.returncode == 0, launcher.output()
    pid = read_pid(pid_file)
    try:
        assert os.getsid(pid) != os.getsid(0), "the daemon did not call setsid()"
        assert os.readlink("/proc/%d/cwd" % pid) == "/", "the daemon did not chdir to /"
        for fd in (0, 1, 2):
            where = os.readlink("/proc/%d/fd/%d" % (pid, fd))
            assert where not in (str(launcher.out_path), str(launcher.err_path)), \
                "the daemon's fd %d still writes to the launcher's %s" % (fd, where)
    finally:
        terminate(pid, pid_file)


def test_relative_pid_file_is_relative_to_the_launch_directory(launch, tmp_path, echo_target):
    # The daemon changes to /; a relative --pid-file still means the launch directory.
    port = free_port()
    name = "relative-%d-%d.pid" % (os.getpid(), port)
    launcher = launch("--pid-file", name, "127.0.0.1:%d" % port, echo_target.address,
                      cwd=str(tmp_path))
    assert launcher.returncode == 0, launcher.output()
    pid_file = tmp_path / name
    try:
        pid = read_pid(pid_file)
    except BaseException:
        # Not there: end the daemon found by its unique listen address, and
        # remove a pid file it may have written relative to /.
        for pid in pids_started_with("127.0.0.1:%d" % port):
            os.kill(pid, signal.SIGKILL)
        stray = Path("/") / name
        if stray.exists():
            stray.unlink()
        raise
    terminate(pid, pid_file)


def test_port_in_use_fails_the_launcher_naming_the_address(launch, tmp_path, echo_target):
    pid_file = tmp_path / "wsproxy.pid"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        launcher = launch("--pid-file", str(pid_file), "127.0.0.1:%d" % port,
                          echo_target.address)
        output = launcher.output()
        assert launcher.returncode != 0, "the launcher exited 0 though it could not bind"
        assert "127.0.0.1" in output and str(port) in output, \
            "the message does not name 127.0.0.1:%d: %r" % (port, output)
        assert "Traceback" not in output, output
        # No daemon may be left behind.
        deadline = time.monotonic() + 5
        while pids_started_with(str(pid_file)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not pids_started_with(str(pid_file)), "a daemon outlived the failed launch"
        assert not pid_file.exists(), "a failed launch left the pid file behind"
