#!/usr/bin/env python3
"""Run the Autobahn|Testsuite fuzzingclient against wsproxy in front of a TCP echo target.

Usage (from the checkout)::

    python3 bench/conformance.py [--out DIR] [--keep] [CASES ...]

One command: starts the TCP echo target and ``python3 -m wsproxy`` from this
checkout on free 127.0.0.1 ports, runs the suite's runner script against
``ws://127.0.0.1:PORT`` with ``CASES`` (default ``@core @9fast``: sections
1-7 and 10, then the 9.* limit cases that finish in seconds), stops both and
prints the runner's summary.  Its exit status is the runner's: 0 when no
real protocol failure was found, 1 when one was, 2-3 for usage or setup
errors.

The runner's classifier does not recognise the wording of two 9.* results
that are plainly a text message echoed as binary ("Expected text message
with payload, but got binary" and "Echo'ed message type or length differs
... (got binary = True, payload length = N)" with N the size sent) and counts
them as protocol failures.  After the runner's summary this script lists
those cases, checked against each case report (clean close with 1000 and,
for the second wording, the length sent), and bases its exit status on the
failures that remain.

The report goes to ``DIR`` (default ``$AUTOBAHN_OUT``, else a new temporary
directory) so it never lands in the checkout.  wsproxy's own log is kept
there as ``wsproxy.log``; a traceback in it is reported after the summary.
"""

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.environ.get("AUTOBAHN_TOOLS", os.path.normpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "tools", "autobahn")))
RUNNER = os.path.join(TOOLS, "run.sh")
ECHO_TARGET = os.path.join(TOOLS, "echo_tcp.py")
DEFAULT_CASES = ["@core", "@9fast"]
AGENT = "wsproxy"
#: Seconds a child process may take to start listening.
START_DEADLINE = 15.0
#: Seconds a child process may take to exit after SIGTERM (then SIGKILL).
STOP_DEADLINE = 10.0

_ECHO_LISTENING = re.compile(rb"listening on [^\s:]+:(\d+)")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def accepts(port: int) -> bool:
    """True once something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def start_echo_target(log_path: str) -> "tuple[subprocess.Popen, int]":
    """Start ``echo_tcp.py`` on a port the kernel picks; return (process, port)."""
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, ECHO_TARGET, "0"], stdout=log, stderr=log)
    log.close()
    deadline = time.monotonic() + START_DEADLINE
    while time.monotonic() < deadline:
        with open(log_path, "rb") as f:
            match = _ECHO_LISTENING.search(f.read())
        if match:
            return proc, int(match.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop(proc)
    raise RuntimeError("echo target did not start; see %s" % log_path)


def start_wsproxy(echo_port: int, log_path: str, extra: List[str]) -> "tuple[subprocess.Popen, int]":
    """Start ``python3 -m wsproxy -f PORT 127.0.0.1:ECHO`` on a free port; return (process, port).

    The port is free when chosen but could be taken before wsproxy binds it:
    then wsproxy exits at once and another port is tried.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for _ in range(3):
        port = free_port()
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "wsproxy", "-f"] + extra
                + ["127.0.0.1:%d" % port, "127.0.0.1:%d" % echo_port],
                cwd=ROOT, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline and proc.poll() is None:
            if accepts(port):
                return proc, port
            time.sleep(0.05)
        stop(proc)
    raise RuntimeError("wsproxy did not start; see %s" % log_path)


def stop(proc: Optional[subprocess.Popen]) -> None:
    """Stop one child we started: SIGTERM, then SIGKILL after ``STOP_DEADLINE``."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tracebacks(log_path: str) -> int:
    """How many tracebacks wsproxy logged (a bug, whatever the suite says)."""
    try:
        with open(log_path, "rb") as f:
            return f.read().count(b"Traceback (most recent call last)")
    except OSError:
        return 0


_BINARY_INSTEAD_OF_TEXT = "Expected text message with payload, but got binary."
_TYPE_OR_LENGTH = re.compile(r"Echo'ed message type or length differs from what I sent "
                             r"\(got binary = True, payload length = (\d+)\)")
_SIZE_SENT = re.compile(r"payload size (\d+)")


def text_as_binary_9x(report: dict) -> bool:
    """True when a 9.* case failed only because its text echo came back binary.

    The echo must have arrived and the session closed cleanly with 1000
    (so nothing but the opcode differed that the case could see).
    """
    if report.get("remoteCloseCode") != 1000 or not report.get("wasClean"):
        return False
    result = (report.get("result") or "").strip()
    if result == _BINARY_INSTEAD_OF_TEXT:
        return True
    match = _TYPE_OR_LENGTH.fullmatch(result.rstrip("."))
    sent = _SIZE_SENT.search(report.get("description") or "")
    return bool(match and sent and match.group(1) == sent.group(1))


_TYPE_DIFFERS_12 = re.compile(r"Echo'ed message type differs from what I sent "
                              r"\(got binary True, expected binary False\)")
_LENGTH_DIFFERS_12 = re.compile(r"Echo'ed message length differs from what I sent "
                                r"\(got length (\d+), expected length (\d+)\)")


def unavoidable_12_13(report: dict) -> bool:
    """True when a 12.*/13.* (compression) case failed only as a byte proxy must.

    Text echoed as binary, or a large binary message echoed as several
    (shorter first message), and the session closed cleanly with 1000.
    """
    if report.get("remoteCloseCode") != 1000 or not report.get("wasClean"):
        return False
    result = (report.get("result") or "").strip().rstrip(".")
    if _TYPE_DIFFERS_12.fullmatch(result):
        return True
    match = _LENGTH_DIFFERS_12.fullmatch(result)
    return bool(match and int(match.group(1)) < int(match.group(2)))


def reclassify(report_dir: str) -> "tuple[List[str], List[str], List[str]]":
    """Sort the runner's failures: (9.* text-as-binary, real protocol failures, closed 1009).

    The first two split its PROTOCOL category; the third lists the
    perf-timeout cases that are a text message over ``--max-message-size``
    refused with 1009, as it should be.
    """
    with open(os.path.join(report_dir, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(report_dir, "index.json")) as f:
        cases = json.load(f)[summary["agent"]]

    def report_of(case_id: str) -> dict:
        name = cases.get(case_id, {}).get("reportfile")
        if not name:
            return {}
        with open(os.path.join(report_dir, name)) as f:
            return json.load(f)

    inherent, real, too_big = [], [], []
    for failure in summary.get("failures", []):
        case_id = failure["id"]
        if failure["category"] == "perf-timeout":
            if report_of(case_id).get("remoteCloseCode") == 1009:
                too_big.append(case_id)
        elif failure["category"] == "protocol":
            if case_id.startswith("9."):
                report = report_of(case_id)
                unavoidable = bool(report) and text_as_binary_9x(report)
            elif case_id.startswith(("12.", "13.")):
                report = report_of(case_id)
                unavoidable = bool(report) and unavoidable_12_13(report)
            else:
                unavoidable = False
            (inherent if unavoidable else real).append(case_id)
    return inherent, real, too_big


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", default=None,
                        help="case ids, globs or presets for run.sh (default: @core @9fast)")
    parser.add_argument("--out", help="report directory (default: $AUTOBAHN_OUT or a temporary one)")
    parser.add_argument("--wsproxy-arg", action="append", default=[], metavar="ARG",
                        help="extra wsproxy option (repeatable), e.g. --wsproxy-arg=--max-message-size=65536")
    parser.add_argument("-q", "--quiet", action="store_true", help="pass -q to run.sh")
    args = parser.parse_args(argv)
    cases = args.cases or DEFAULT_CASES
    out_root = args.out or os.environ.get("AUTOBAHN_OUT") or tempfile.mkdtemp(prefix="autobahn-")
    os.makedirs(out_root, exist_ok=True)
    echo_log = os.path.join(out_root, "echo_tcp.log")
    proxy_log = os.path.join(out_root, "wsproxy.log")
    if os.path.exists(proxy_log):
        os.unlink(proxy_log)

    echo = proxy = None
    try:
        echo, echo_port = start_echo_target(echo_log)
        proxy, proxy_port = start_wsproxy(echo_port, proxy_log, args.wsproxy_arg)
        print("echo target 127.0.0.1:%d, wsproxy ws://127.0.0.1:%d, report in %s"
              % (echo_port, proxy_port, out_root), flush=True)
        env = dict(os.environ, AUTOBAHN_OUT=out_root)
        subprocess.call(["bash", RUNNER, "--setup-only"], env=env)
        command = ["bash", RUNNER, "--agent", AGENT] + (["-q"] if args.quiet else []) \
            + ["ws://127.0.0.1:%d" % proxy_port] + cases
        status = subprocess.call(command, env=env)
    except RuntimeError as exc:
        print("conformance: %s" % exc, file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
    finally:
        stop(proxy)
        stop(echo)
    report_dir = os.path.join(out_root, AGENT)
    if status in (0, 1) and os.path.exists(os.path.join(report_dir, "summary.json")):
        inherent, real, too_big = reclassify(report_dir)
        if too_big:
            print("\ntext messages over --max-message-size closed with 1009 (counted as perf-timeout) "
                  "(%d): %s" % (len(too_big), " ".join(too_big)))
        if inherent:
            print("\nunavoidable (text echoed as binary, or one message echoed as several; 9.*, 12.*, 13.*), counted as PROTOCOL by the runner (%d): %s"
                  % (len(inherent), " ".join(inherent)))
            print("real protocol failures: %d%s" % (len(real), (": " + " ".join(real)) if real else ""))
            status = 1 if real else 0
    found = tracebacks(proxy_log)
    if found:
        print("\n!!! wsproxy logged %d traceback(s): see %s" % (found, proxy_log))
        status = status or 1
    print("wsproxy log: %s" % proxy_log)
    return status


if __name__ == "__main__":
    sys.exit(main())
