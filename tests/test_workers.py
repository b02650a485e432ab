"""``--workers N``: forked workers share one socket, are restarted, and stop together.

Real child processes, real signals, real sessions; the log lines carry each
process's pid (``wsproxy[PID]``), which tells which worker served a session.
"""

import os
import re
import signal

import pytest

from conftest import echo_round_trip, free_port, wait_until
from test_config import port_listens, wsproxy_process  # noqa: F401 (fixture)
from wsclient import WSClient
from wsproxy.workers import SharedCounter, WorkerPool

WORKER_STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")
SESSION_OPEN = re.compile(r"wsproxy\[(\d+)\] INFO session (\d+) .*: open to")


def started_workers(output: str):
    """``[(index, pid), ...]`` in the order the parent logged them."""
    return [(int(index), int(pid)) for index, pid in WORKER_STARTED.findall(output)]


def run_sessions(port: int, count: int) -> None:
    for _ in range(count):
        with WSClient(port) as client:
            client.handshake()
            client.send_binary(b"ping")
            assert client.recv_stream(4) == b"ping"
            client.send_close(1000)
            client.recv_close()


def test_sessions_spread_over_workers_with_unique_numbers(wsproxy_process, echo_target):
    port = free_port()
    proxy = wsproxy_process("-f", "--workers", "2", "127.0.0.1:%d" % port,
                            "127.0.0.1:%d" % echo_target.port)
    proxy.wait_listening(port)
    proxy.wait_for(lambda: len(started_workers(proxy.output())) == 2, "two workers")
    worker_pids = {pid for _index, pid in started_workers(proxy.output())}
    # The kernel picks the worker; keep opening sessions until both served one.
    served = set()
    for _round in range(40):
        run_sessions(port, 5)
        served = {int(pid) for pid, _number in SESSION_OPEN.findall(proxy.output())}
        if served >= worker_pids:
            break
    assert served == worker_pids
    numbers = [int(number) for _pid, number in SESSION_OPEN.findall(proxy.output())]
    assert len(numbers) == len(set(numbers)), "session numbers repeat across workers"
    proxy.send_signal(signal.SIGTERM)
    assert proxy.wait_exit() == 0
    for pid in worker_pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_killed_worker_is_replaced(wsproxy_process, echo_target):
    port = free_port()
    proxy = wsproxy_process("-f", "--workers", "2", "127.0.0.1:%d" % port,
                            "127.0.0.1:%d" % echo_target.port)
    proxy.wait_listening(port)
    proxy.wait_for(lambda: len(started_workers(proxy.output())) == 2, "two workers")
    victim_index, victim_pid = started_workers(proxy.output())[0]
    os.kill(victim_pid, signal.SIGKILL)
    proxy.wait_for(lambda: len(started_workers(proxy.output())) == 3, "a replacement worker")
    index, pid = started_workers(proxy.output())[2]
    assert index == victim_index and pid != victim_pid
    assert "exited with status signal 9; restarting it" in proxy.output()
    run_sessions(port, 4)
    assert echo_round_trip  # the shared helper stays importable for other tests
    proxy.send_signal(signal.SIGTERM)
    assert proxy.wait_exit() == 0
    assert not port_listens(port)


def test_sighup_reaches_every_worker(wsproxy_process, echo_target):
    port = free_port()
    proxy = wsproxy_process("-f", "--workers", "2", "127.0.0.1:%d" % port,
                            "127.0.0.1:%d" % echo_target.port)
    proxy.wait_listening(port)
    proxy.wait_for(lambda: len(started_workers(proxy.output())) == 2, "two workers")
    proxy.send_signal(signal.SIGHUP)
    pids = {str(pid) for _index, pid in started_workers(proxy.output())}

    def reloaded():
        return {pid for pid in pids if re.search(r"wsproxy\[%s\] INFO SIGHUP" % pid, proxy.output())}
    proxy.wait_for(lambda: reloaded() == pids, "SIGHUP handled by both workers")
    run_sessions(port, 2)


def test_shared_counter_numbers_are_unique_per_slot():
    counter = SharedCounter(3)
    numbers = [counter.next(slot) for slot in (0, 1, 2, 0, 1, 2, 0)]
    assert numbers == [1, 2, 3, 4, 5, 6, 7]


def test_shared_counter_survives_fork():
    counter = SharedCounter(2)
    counter.next(0)
    pid = os.fork()
    if pid == 0:
        os._exit(0 if counter.next(0) == 3 else 1)
    _pid, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    # The child's number is gone for good: the slot continues after it.
    assert counter.next(0) == 5


def test_a_worker_that_exits_cleanly_is_not_restarted():
    pool = WorkerPool(2, lambda index: 0)
    assert pool.run() == 0
    assert pool.children == {}


def test_every_worker_stops_promptly_after_connections_woke_them_all(wsproxy_process, echo_target):
    # Each connection wakes every worker polling the shared socket; the ones
    # that lose the accept() race must not stay blocked in it, deaf to SIGTERM.
    port = free_port()
    proxy = wsproxy_process("-f", "--workers", "2", "127.0.0.1:%d" % port,
                            "127.0.0.1:%d" % echo_target.port)
    proxy.wait_listening(port)
    proxy.wait_for(lambda: len(started_workers(proxy.output())) == 2, "two workers")
    run_sessions(port, 10)
    proxy.send_signal(signal.SIGTERM)
    assert proxy.wait_exit(timeout=5) == 0


def test_workers_stop_when_the_supervisor_is_killed(wsproxy_process, echo_target):
    port = free_port()
    proxy = wsproxy_process("-f", "--workers", "2", "127.0.0.1:%d" % port,
                            "127.0.0.1:%d" % echo_target.port)
    proxy.wait_listening(port)
    proxy.wait_for(lambda: len(started_workers(proxy.output())) == 2, "two workers")
    worker_pids = [pid for _index, pid in started_workers(proxy.output())]
    os.kill(proxy.pid, signal.SIGKILL)
    proxy.wait_exit()

    def all_gone():
        for pid in worker_pids:
            try:
                os.kill(pid, 0)
                return False
            except ProcessLookupError:
                pass
        return True
    wait_until(all_gone, 10, "orphaned workers to stop")
    assert not port_listens(port)


def test_a_draining_host_refuses_new_connections_at_once(wsproxy_process, echo_target):
    # A session whose client never answers the close keeps its worker busy
    # for the close grace time; meanwhile nobody may still accept on the
    # port (the parent's copy of the socket included), so a balancer's new
    # connections are refused instead of queueing unserved.
    port = free_port()
    proxy = wsproxy_process("-f", "--workers", "2", "127.0.0.1:%d" % port,
                            "127.0.0.1:%d" % echo_target.port)
    proxy.wait_listening(port)
    proxy.wait_for(lambda: len(started_workers(proxy.output())) == 2, "two workers")
    with WSClient(port) as client:
        client.handshake()
        client.send_binary(b"hold")
        assert client.recv_stream(4) == b"hold"
        proxy.send_signal(signal.SIGTERM)
        wait_until(lambda: not port_listens(port), 3, "the port to refuse connections")
        assert proxy.alive(), "the session should still be draining"
    assert proxy.wait_exit() == 0
