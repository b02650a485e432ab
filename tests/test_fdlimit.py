"""The open-file limit: raised at start; at the limit, accept backs off instead of spinning.

A real ``python -m wsproxy`` child starts with a low ``RLIMIT_NOFILE`` (set
between fork and exec), is flooded past it, and must log one line, use
almost no CPU while the flood waits in the backlog, and serve again once
descriptors are free.
"""

import os
import resource
import socket
import subprocess
import sys
import time

from conftest import ROOT, child_env, echo_round_trip, free_port, port_listens, wait_until

SOFT, HARD = 32, 40
FLOOD = 60
#: CPU seconds the child may use while the flood waits (spinning would use ~all of it).
WINDOW = 1.5
CPU_BUDGET = 0.3


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), from /proc."""
    with open("/proc/%d/stat" % pid) as stat:
        fields = stat.read().rpartition(")")[2].split()
    # Fields 14 and 15 of proc(5), counted from the state field (3) here.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def low_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, HARD))


def test_at_the_open_file_limit_accept_backs_off_logs_once_and_recovers(echo_target, tmp_path):
    port = free_port()
    output = tmp_path / "output"
    with open(str(output), "wb") as sink:
        child = subprocess.Popen(
            [sys.executable, "-m", "wsproxy", "-f", "-v", "127.0.0.1:%d" % port,
             echo_target.address], cwd=ROOT, env=child_env(), stdin=subprocess.DEVNULL,
            stdout=sink, stderr=subprocess.STDOUT, preexec_fn=low_limit)
    flood = []
    try:
        wait_until(lambda: port_listens(port), 15, "wsproxy to listen")
        raised = "open-file limit raised from %d to %d" % (SOFT, HARD)
        wait_until(lambda: raised in output.read_text(), 10,
                   lambda: "%r in the output: %s" % (raised, output.read_text()))
        for _ in range(FLOOD):
            flood.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        wait_until(lambda: "cannot accept connections" in output.read_text(), 10,
                   "the out-of-descriptors line")
        before = cpu_seconds(child.pid)
        started = time.monotonic()
        wait_until(lambda: time.monotonic() - started >= WINDOW, WINDOW + 1, "the window")
        used = cpu_seconds(child.pid) - before
        assert used < CPU_BUDGET, "the child used %.2f s of CPU in %.1f s" % (used, WINDOW)
        text = output.read_text()
        assert text.count("cannot accept connections") == 1, text
        assert "Too many open files" in text and "open-file limit %d" % HARD in text, text
        for sock in flood:
            sock.close()
        flood = []

        def serves() -> bool:
            try:
                echo_round_trip(port)
            except (AssertionError, OSError):
                return False
            return True
        wait_until(serves, 15, "wsproxy to serve again")
        assert "Traceback" not in output.read_text()
    finally:
        for sock in flood:
            sock.close()
        child.terminate()
        child.wait(15)
