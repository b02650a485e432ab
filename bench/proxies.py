"""Starting, measuring and stopping the processes under test.

Every process is started in a session of its own, so a proxy's forked
children (websockify forks one per connection, wsproxy ``--workers`` one per
worker) can be found, measured and stopped together.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, List, Optional

from envs import CERT, ROOT, WEBSOCAT, WEBSOCKIFY_JS, websockify_command

START_DEADLINE = 20.0
STOP_DEADLINE = 10.0
_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ProxyKind:
    """One proxy configuration: a display name and how to start it."""

    def __init__(self, key: str, label: str, argv_for, raw: bool = False) -> None:
        self.key = key
        self.label = label
        self._argv_for = argv_for
        #: A plain TCP relay (socat): clients talk to the target through it without WebSocket.
        self.raw = raw

    def argv(self, listen_port: int, target_port: int) -> List[str]:
        return self._argv_for("127.0.0.1:%d" % listen_port, "127.0.0.1:%d" % target_port)


def _wsproxy(*extra: str):
    return lambda listen, target: ([sys.executable, "-m", "wsproxy", "-f", "--cert", CERT]
                                   + list(extra) + [listen, target])


def _websockify(with_numpy: bool):
    return lambda listen, target: websockify_command(with_numpy) + ["--cert", CERT, listen, target]


def _websocat(listen, target):
    return [WEBSOCAT, "--binary", "-E", "ws-l:" + listen, "tcp:" + target]


def _websockify_js(listen, target):
    return ["node", WEBSOCKIFY_JS, listen, target]


def _floor(listen, target):
    """bench/floor.py: the least a thread-per-connection Python proxy does (a yardstick)."""
    return [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "floor.py"),
            listen, target]


def _socat(listen, target):
    """socat as a plain TCP relay; ``-b``: 256 KiB per read/write (its default is 8 KiB)."""
    host, port = listen.rsplit(":", 1)
    return ["socat", "-b", str(256 * 1024), "TCP-LISTEN:%s,bind=%s,reuseaddr,fork,backlog=1024" % (port, host),
            "TCP:%s,nodelay" % target]


KINDS: Dict[str, ProxyKind] = {kind.key: kind for kind in [
    ProxyKind("wsproxy", "wsproxy", _wsproxy()),
    ProxyKind("wsproxy-w2", "wsproxy --workers 2", _wsproxy("--workers", "2")),
    ProxyKind("websockify", "websockify", _websockify(False)),
    ProxyKind("websockify-numpy", "websockify+numpy", _websockify(True)),
    ProxyKind("websocat", "websocat", _websocat),
    ProxyKind("websockify-js", "websockify-js", _websockify_js),
    ProxyKind("socat", "socat (TCP relay, limit)", _socat, raw=True),
    ProxyKind("floor", "thread-per-connection floor (bench/floor.py)", _floor),
]}


#: ``bench/run.py --compare PATH``: the wsproxy of another checkout, run beside this one.
COMPARE = "wsproxy-compare"


def compare_kind(root: str) -> ProxyKind:
    """wsproxy imported from ``root`` (``-m`` would import this checkout's, the working directory)."""
    code = ("import runpy, sys; sys.path.insert(0, %r); "
            "runpy.run_module('wsproxy', run_name='__main__', alter_sys=True)" % root)
    return ProxyKind(COMPARE, "wsproxy (%s)" % root,
                     lambda listen, target: [sys.executable, "-c", code, "-f", "--cert", CERT,
                                             listen, target])


class RunningProxy:
    """A started proxy: its port, its process tree, its memory and CPU."""

    def __init__(self, kind: ProxyKind, target_port: int, log_dir: str) -> None:
        self.kind = kind
        self.port = free_port()
        self.log_path = os.path.join(log_dir, "%s-%d.log" % (kind.key, self.port))
        env = dict(os.environ, PYTHONPATH=ROOT)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(kind.argv(self.port, target_port), cwd=ROOT, env=env,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            start_new_session=True)
        self._wait_listening()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("%s did not start listening; see %s" % (self.kind.label, self.log_path))

    def tree(self) -> List[int]:
        """Process ids of the proxy and everything it forked (its session)."""
        pids = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % name) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == self.pid and fields[0] != "Z":  # field 6: session id
                pids.append(int(name))
        return pids

    def children(self) -> List[int]:
        """Direct children of the proxy's main process."""
        found = []
        for pid in self.tree():
            try:
                with open("/proc/%d/stat" % pid) as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == self.pid:
                        found.append(pid)
            except OSError:
                pass
        return found

    def peak_rss_kib(self, pid: Optional[int] = None) -> int:
        """VmHWM (peak resident set) of one process, in KiB."""
        return _status_field(pid or self.pid, "VmHWM")

    def tree_pss_kib(self) -> int:
        """Proportional set size of the whole tree now (shared pages split fairly), KiB."""
        total = 0
        for pid in self.tree():
            try:
                with open("/proc/%d/smaps_rollup" % pid) as f:
                    for line in f:
                        if line.startswith("Pss:"):
                            total += int(line.split()[1])
                            break
            except OSError:
                pass
        return total

    def cpu_seconds(self, pids: Optional[List[int]] = None) -> Dict[int, float]:
        """User+system CPU seconds used so far, per process of the tree."""
        used = {}
        for pid in pids or self.tree():
            try:
                with open("/proc/%d/stat" % pid) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                used[pid] = (int(fields[11]) + int(fields[12])) / _TICKS
            except OSError:
                pass
        return used

    def total_cpu(self) -> float:
        """CPU seconds used so far by the proxy, its live descendants and its reaped children."""
        return process_cpu(self.pid, with_children=True)

    def stop(self) -> None:
        """SIGTERM to the proxy's process group, SIGKILL after a deadline."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(STOP_DEADLINE)
                if not self.tree():
                    return
            except subprocess.TimeoutExpired:
                pass


class MemorySampler:
    """Samples a proxy tree's total PSS in a thread; ``peak_kib`` is the highest seen."""

    def __init__(self, proxy: RunningProxy, interval: float = 0.5) -> None:
        self.proxy = proxy
        self.interval = interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def sample(self) -> None:
        self.peak_kib = max(self.peak_kib, self.proxy.tree_pss_kib())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.sample()
        return self.peak_kib


def process_cpu(pid: int, with_children: bool = False) -> float:
    """User+system CPU seconds of ``pid`` (and, optionally, of its whole subtree)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if not with_children:
        return ticks / _TICKS
    ticks += int(fields[13]) + int(fields[14])  # children already reaped
    used = ticks / _TICKS
    for child in _children_of(pid):
        used += process_cpu(child, with_children=True)
    return used


def _children_of(pid: int) -> List[int]:
    found = []
    try:
        for task in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, task)) as f:
                found += [int(child) for child in f.read().split()]
    except OSError:
        pass
    return found


class CpuSampler:
    """Samples the CPU seconds of named processes in a thread.

    :meth:`cores` gives how many cores a process used on average between two
    ``time.monotonic()`` instants (interpolated between samples), so the
    window can be the transfer the target server timed.
    """

    def __init__(self, readers: Dict[str, Callable[[], float]], interval: float = 0.05) -> None:
        self.readers = readers
        self.interval = interval
        self.samples: List[tuple] = []
        self._stop = threading.Event()
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        self.samples.append((time.monotonic(), {name: read() for name, read in self.readers.items()}))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _at(self, name: str, when: float) -> float:
        before = [s for s in self.samples if s[0] <= when] or self.samples[:1]
        after = [s for s in self.samples if s[0] >= when] or self.samples[-1:]
        (t0, v0), (t1, v1) = before[-1], after[0]
        if t1 <= t0:
            return v0[name]
        return v0[name] + (v1[name] - v0[name]) * (when - t0) / (t1 - t0)

    def cores(self, name: str, start: float, end: float) -> Optional[float]:
        if end - start < 4 * self.interval:
            return None  # too short a window for 10 ms clock ticks
        return (self._at(name, end) - self._at(name, start)) / (end - start)


def _status_field(pid: int, field: str) -> int:
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class TargetServer:
    """bench/targetserver.py in its own process: the sink, source and echo."""

    def __init__(self, log_dir: str) -> None:
        here = os.path.dirname(os.path.abspath(__file__))
        self.log_path = os.path.join(log_dir, "targetserver.log")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, os.path.join(here, "targetserver.py"), "--cert", CERT],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
        line = self.process.stdout.readline().decode("ascii", "replace").split()
        if len(line) != 3 or line[0] != "ports":
            self.stop()
            raise RuntimeError("the target server did not start; see %s" % self.log_path)
        self.port, self.tls_port = int(line[1]), int(line[2])

    def stop(self) -> None:
        try:
            self.process.stdin.close()  # it exits when its input closes
            self.process.wait(STOP_DEADLINE)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
