"""``--profile``: where wsproxy spends its time, sampled with py-spy.

A fresh wsproxy is started for each profiled scenario and sampled (all
threads, idle ones left out) while the scenario runs a few times.  The raw
stacks are folded into self time per function and per source line, and
inclusive time per function; the hottest are returned as Markdown.
"""

import collections
import os
import re
import signal
import subprocess
import time
from typing import Dict, List

import envs
from proxies import KINDS, RunningProxy
from scenarios import BY_NAME

RATE = 200
#: Leaf frames of threads that only wait (the accept loop's poll, the signal
#: loop, joins): py-spy cannot always tell them from running threads.
WAITING = {"_PollLikeSelector.select", "SignalInbox.wait", "Condition.wait", "Event.wait",
           "Thread.join", "Thread._wait_for_tstate_lock", "select"}
RUNS = 3
TOP = 12
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def fold(path: str) -> Dict[str, collections.Counter]:
    """Self and inclusive sample counts from py-spy's raw (collapsed) output."""
    self_func, self_line, inclusive = collections.Counter(), collections.Counter(), collections.Counter()
    total = waiting = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for row in f:
            stack, _, count = row.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            samples = int(count)
            leaf = stack.rsplit(";", 1)[-1].split(" (", 1)[0]
            if leaf in WAITING:
                waiting += samples
                continue
            total += samples
            frames = [_short(frame) for frame in stack.split(";")]
            self_func[frames[-1][0]] += samples
            self_line[frames[-1][1]] += samples
            for func in {frame[0] for frame in frames}:
                inclusive[func] += samples
    return {"self": self_func, "line": self_line, "inclusive": inclusive,
            "total": collections.Counter({"": total}), "waiting": collections.Counter({"": waiting})}


def _short(frame: str):
    match = _FRAME.match(frame)
    if not match:
        return frame, frame
    path = match.group("file")
    if "wsproxy/" in path:
        path = path[path.index("wsproxy/"):]
    else:
        path = os.path.basename(path)
    func = "%s (%s)" % (match.group("func"), path)
    return func, "%s:%s %s" % (path, match.group("line") or "?", match.group("func"))


def summarize(name: str, folded: Dict[str, collections.Counter]) -> List[str]:
    total = folded["total"][""] or 1
    lines = ["**%s** — %d samples at %d Hz of busy threads (%d more of threads waiting in "
             "select/poll/joins left out):" % (BY_NAME[name].title, total, RATE, folded["waiting"][""]), "",
             "| self % | function | | self % | source line |", "|---:|---|---|---:|---|"]
    funcs = folded["self"].most_common(TOP)
    code_lines = folded["line"].most_common(TOP)
    for i in range(max(len(funcs), len(code_lines))):
        left = funcs[i] if i < len(funcs) else ("", 0)
        right = code_lines[i] if i < len(code_lines) else ("", 0)
        lines.append("| %s | `%s` | | %s | `%s` |" % (
            "%.1f" % (100.0 * left[1] / total) if left[0] else "", left[0],
            "%.1f" % (100.0 * right[1] / total) if right[0] else "", right[0]))
    wsproxy_inclusive = [(f, c) for f, c in folded["inclusive"].most_common()
                         if "wsproxy/" in f][:TOP]
    lines += ["", "Inclusive, wsproxy functions: " + ", ".join(
        "`%s` %.0f%%" % (f, 100.0 * c / total) for f, c in wsproxy_inclusive), ""]
    return lines


def profile_scenarios(bench, runner, names: List[str], log_dir: str, log) -> List[str]:
    """Profile wsproxy during each scenario in ``names``; Markdown lines."""
    if not names:
        return []
    pyspy = envs.ensure_pyspy(log)
    out: List[str] = []
    for name in names:
        scenario = BY_NAME[name]
        if scenario.kind == "sessions":
            out += ["%s: not profiled (each run starts its own proxy)." % scenario.title, ""]
            continue
        key = "wsproxy-w2" if scenario.kind == "workers" else "wsproxy"
        if key not in bench.proxies:
            continue
        log("profiling wsproxy during %s" % name)
        previous = bench.proxies[key]
        proxy = bench.proxies[key] = RunningProxy(KINDS[key], bench.targets.port, log_dir)
        raw = os.path.join(log_dir, "profile-%s.txt" % name)
        spy_log = os.path.join(log_dir, "py-spy-%s.log" % name)
        try:
            with open(spy_log, "wb") as spy_out:
                argv = [pyspy, "record", "--pid", str(proxy.pid), "--rate", str(RATE),
                        "--format", "raw", "--output", raw]
                if scenario.kind == "workers":
                    argv.append("--subprocesses")
                spy = subprocess.Popen(argv, stdout=spy_out, stderr=spy_out)
            if not _wait_for(spy_log, b"Sampling", spy):
                out += ["%s: py-spy did not start; see %s" % (scenario.title, spy_log), ""]
                continue
            for attempt in range(RUNS):
                bench.run(scenario, key, runner.size_for(scenario, key), seed=99 + attempt)
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(60)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
            if os.path.exists(raw):
                summary = summarize(name, fold(raw))
                out += summary
                log("\n".join(summary))
            else:
                out += ["%s: py-spy wrote no profile; see %s" % (scenario.title, spy_log), ""]
        finally:
            proxy.stop()
            bench.proxies[key] = previous
    return out


def _wait_for(path: str, marker: bytes, proc: subprocess.Popen, deadline: float = 20.0) -> bool:
    end = time.monotonic() + deadline
    while time.monotonic() < end and proc.poll() is None:
        with open(path, "rb") as f:
            if marker in f.read():
                return True
        time.sleep(0.05)
    return False
