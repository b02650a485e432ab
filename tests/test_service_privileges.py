"""``--user`` / ``--group``: bind as root, then serve as someone else.

As root: a listener on a port below 1024 with ``--user nobody``;
``/proc/PID/status`` shows the new ids and no supplementary group, and a
session reaches a target named by host name (``localhost``), which loads
the IDNA codec the first time: the trap when Python lives where ``nobody``
cannot read.  The log file, pid file and recordings keep working.
"""

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

from conftest import (EXIT_DEADLINE, ROOT, child_env, echo_round_trip, port_listens, run_wsproxy,
                      wait_until)

IS_ROOT = os.geteuid() == 0
SETPRIV = shutil.which("setpriv")


def free_low_port() -> int:
    """A free TCP port below 1024 on 127.0.0.1 (binding one needs root)."""
    for port in range(1023, 600, -1):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port below 1024")


def proc_status(pid: int) -> dict:
    fields = {}
    with open("/proc/%d/status" % pid) as stream:
        for line in stream:
            key, _, value = line.partition(":")
            fields[key] = value.split()
    return fields


@pytest.fixture
def shared_dir():
    """A directory anyone may write (tmp_path's parents are root's only)."""
    path = tempfile.mkdtemp(prefix="wsproxy-test-")
    os.chmod(path, 0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(not IS_ROOT, reason="switching users needs root")
def test_user_nobody_after_binding_a_low_port(wsproxy_process, echo_target, shared_dir, tmp_path):
    nobody = pwd.getpwnam("nobody")
    port = free_low_port()
    log_file = str(tmp_path / "wsproxy.log")  # root's directory: opened before the switch
    pid_file = str(tmp_path / "wsproxy.pid")
    record = os.path.join(shared_dir, "session")
    child = wsproxy_process("-f", "--user", "nobody", "--log-file", log_file, "--pid-file",
                            pid_file, "--record", record, "127.0.0.1:%d" % port,
                            "localhost:%d" % echo_target.port)
    child.wait_listening(port)
    # The port listens before the log file is opened: wait for the file too.
    wait_until(lambda: "running as user nobody" in _read(log_file), EXIT_DEADLINE,
               "the switch to be logged")
    status = proc_status(child.pid)
    assert status["Uid"] == [str(nobody.pw_uid)] * 4, status["Uid"]
    assert status["Gid"] == [str(nobody.pw_gid)] * 4, status["Gid"]
    assert status["Groups"] == [], status["Groups"]
    assert status["CapEff"] == ["0000000000000000"], status["CapEff"]
    # The target by host name: resolving it loads codecs nobody could not import.
    echo_round_trip(port)
    echo_round_trip(port)
    wait_until(lambda: open(log_file).read().count("closed: target localhost") == 2,
               EXIT_DEADLINE, "both sessions in the log file")
    recordings = [name for name in os.listdir(shared_dir) if name.startswith("session.")]
    assert len(recordings) == 2, recordings
    for name in recordings:
        assert os.stat(os.path.join(shared_dir, name)).st_uid == nobody.pw_uid
    assert open(pid_file).read().strip() == str(child.pid)
    child.send_signal(15)
    assert child.wait_exit() == 0
    log = open(log_file).read()
    assert "stopped" in log and "Traceback" not in log and "Error" not in log, log


@pytest.mark.skipif(not (IS_ROOT and SETPRIV), reason="needs root and setpriv (util-linux)")
def test_failed_switch_refuses_to_run_as_root(echo_target):
    # Root without CAP_SETUID/CAP_SETGID: the switch fails as it would for anyone.
    result = subprocess.run(
        [SETPRIV, "--bounding-set=-setuid,-setgid", sys.executable, "-m", "wsproxy", "-f",
         "--user", "nobody", "127.0.0.1:%d" % free_low_port(), echo_target.address],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=ROOT,
        env=child_env(), timeout=EXIT_DEADLINE, universal_newlines=True)
    assert result.returncode == 1, result
    assert "--user: cannot switch to nobody: Operation not permitted" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(IS_ROOT, reason="this checks what happens when not started as root")
def test_switch_as_non_root_refuses_to_run(echo_target):
    result = run_wsproxy("-f", "--user", "nobody", "127.0.0.1:0", echo_target.address)
    assert result.returncode == 1 and "--user: cannot switch to nobody" in result.stderr


@pytest.mark.parametrize("option", ["--user", "--group"])
def test_unknown_user_or_group_is_a_config_error(option):
    result = run_wsproxy("-f", option, "no-such-name-wsproxy", "127.0.0.1:0", "localhost:1")
    assert result.returncode == 2
    assert "%s: no such %s: no-such-name-wsproxy" % (option, option[2:]) in result.stderr
    assert not port_listens(0) and "Traceback" not in result.stderr


def child_pids(pid: int) -> list:
    with open("/proc/%d/task/%d/children" % (pid, pid)) as stream:
        return [int(text) for text in stream.read().split()]


@pytest.mark.skipif(not IS_ROOT, reason="switching users needs root")
def test_workers_are_forked_after_the_switch(wsproxy_process, echo_target):
    nobody = pwd.getpwnam("nobody")
    port = free_low_port()
    child = wsproxy_process("-f", "--workers", "2", "--user", "nobody", "--group", "nogroup",
                            "127.0.0.1:%d" % port, "localhost:%d" % echo_target.port)
    child.wait_listening(port)
    workers = child.wait_for(lambda: len(child_pids(child.pid)) == 2 and child_pids(child.pid),
                             "two workers")
    for pid in [child.pid] + workers:
        status = proc_status(pid)
        assert status["Uid"] == [str(nobody.pw_uid)] * 4 and status["Groups"] == [], (pid, status)
    for _ in range(4):
        echo_round_trip(port)
    child.send_signal(15)
    assert child.wait_exit() == 0


def _read(path: str) -> str:
    """The file's text, or "" while it does not exist yet."""
    try:
        with open(path) as file:
            return file.read()
    except FileNotFoundError:
        return ""
