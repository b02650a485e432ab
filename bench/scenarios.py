"""What the benchmark measures: each scenario, and how one run of it goes.

A run drives ``loadclient.py`` processes (one per stream, or a few for many
sessions) against one proxy, or against the target server directly
(``direct``: no handshake, the client's own frames straight to the target,
which shows how fast the client and targets are without a proxy between).
Every run returns a dict with ``value`` (the scenario's headline figure) or
``error``.
"""

import json
import os
import subprocess
import sys
import threading
from typing import Callable, Dict, List, Optional, Tuple

from proxies import CpuSampler, MemorySampler, RunningProxy, process_cpu

BENCH = os.path.dirname(os.path.abspath(__file__))
CLIENT = os.path.join(BENCH, "loadclient.py")
DIRECT = "direct"
KIB = 1024
#: Proxies compared in every binary scenario, in interleaving order.
COMPARED = ["wsproxy", "websocat", "websockify-js", "websockify", "websockify-numpy"]
#: The plain TCP relay: how fast a user-space byte relay goes here (no WebSocket at all).
RELAY = "socat"
#: The least a thread-per-connection Python proxy does (bench/floor.py): where wsproxy's
#: shape itself stands, in the sessions cases.
FLOOR = "floor"
#: Ratios are taken against websocat, the fastest WebSocket proxy compared.
REFERENCE = "websocat"
#: The wss:// cases: the proxies started with a certificate on the same port.
TLS_COMPARED = ["wsproxy", "websockify", "websockify-numpy"]


class Scenario:
    """One row group of the table.

    ``kind``: ``throughput`` (one stream; ``direction`` up or down, ``frame``
    bytes per frame or per source write, ``subprotocol``, ``tls``), ``echo``,
    ``sessions`` (``count`` concurrent sessions) or ``workers`` (``streams``
    concurrent upstream streams).  ``proxies`` lists the proxy keys (and
    ``direct``) it runs against; ``reference`` is the key (or
    ``scenario:key``) its ratios are taken against.
    """

    def __init__(self, name: str, title: str, kind: str, proxies: List[str],
                 reference: str = REFERENCE, full_only: bool = False, **params) -> None:
        self.name = name
        self.title = title
        self.kind = kind
        self.proxies = proxies
        self.reference = reference
        self.full_only = full_only
        self.params = params

    @property
    def higher_is_better(self) -> bool:
        return self.kind in ("throughput", "workers")

    @property
    def unit(self) -> str:
        return {"throughput": "MB/s", "workers": "MB/s", "echo": "µs p50",
                "sessions": "s"}[self.kind]


def _throughput(name: str, title: str, direction: str, frame: int, subprotocol: str = "binary",
                tls: bool = False, proxies: Optional[List[str]] = None, reference: str = REFERENCE):
    return Scenario(name, title, "throughput", proxies or [DIRECT] + COMPARED + [RELAY], reference,
                    direction=direction, frame=frame, subprotocol=subprotocol, tls=tls)


SCENARIOS: List[Scenario] = [
    _throughput("up-64k", "upstream, 64 KiB frames", "up", 64 * KIB),
    _throughput("up-1k", "upstream, 1 KiB frames", "up", KIB),
    _throughput("down-64k", "downstream, 64 KiB target writes", "down", 64 * KIB),
    _throughput("down-1k", "downstream, 1 KiB target writes", "down", KIB),
    _throughput("b64-up-64k", "base64 upstream, 64 KiB frames", "up", 64 * KIB, "base64",
                proxies=["wsproxy"], reference="up-64k:wsproxy"),
    _throughput("b64-up-1k", "base64 upstream, 1 KiB frames", "up", KIB, "base64",
                proxies=["wsproxy"], reference="up-1k:wsproxy"),
    _throughput("b64-down-64k", "base64 downstream, 64 KiB target writes", "down", 64 * KIB,
                "base64", proxies=["wsproxy"], reference="down-64k:wsproxy"),
    _throughput("b64-down-1k", "base64 downstream, 1 KiB target writes", "down", KIB, "base64",
                proxies=["wsproxy"], reference="down-1k:wsproxy"),
    _throughput("tls-up", "wss:// upstream, 64 KiB frames", "up", 64 * KIB, tls=True,
                proxies=[DIRECT] + TLS_COMPARED, reference="websockify-numpy"),
    _throughput("tls-down", "wss:// downstream, 64 KiB target writes", "down", 64 * KIB, tls=True,
                proxies=[DIRECT] + TLS_COMPARED, reference="websockify-numpy"),
    Scenario("echo", "echo round trip, 32-byte messages", "echo", [DIRECT] + COMPARED + [RELAY],
             size=32),
    Scenario("sessions-1000", "1,000 sessions opened at once, 5 echo round trips each", "sessions",
             COMPARED + [FLOOR], count=1000, processes=2),
    Scenario("sessions-9000", "9,000 sessions opened at once, 5 echo round trips each", "sessions",
             ["wsproxy", "websocat", "websockify-js", FLOOR], full_only=True, count=9000,
             processes=6),
    Scenario("workers", "4 concurrent upstream streams, 64 KiB frames", "workers",
             ["wsproxy", "wsproxy-w2"], reference="wsproxy", streams=4, frame=64 * KIB),
]
BY_NAME: Dict[str, Scenario] = {scenario.name: scenario for scenario in SCENARIOS}


# -- driving client processes ---------------------------------------------------------------


def run_clients(jobs: List[dict], log_path: str, timeout: float,
                before_go: Optional[Callable[[List[dict]], None]] = None) -> Tuple[List[dict], List[dict]]:
    """Start one loadclient per job, wait until all are READY, say GO, collect results."""
    with open(log_path, "ab") as log:
        procs = [subprocess.Popen([sys.executable, CLIENT], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=log, universal_newlines=True)
                 for _ in jobs]
    watchdog = threading.Timer(timeout, lambda: [p.kill() for p in procs if p.poll() is None])
    watchdog.daemon = True
    watchdog.start()
    try:
        for proc, job in zip(procs, jobs):
            _write(proc, json.dumps(job))
        readies = [_read(proc, "READY") for proc in procs]
        if before_go is not None:
            before_go(readies)
        for proc in procs:
            _write(proc, "GO")
        results = [_read(proc, "RESULT") for proc in procs]
    finally:
        watchdog.cancel()
        for proc in procs:
            try:
                proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    for ready, result in zip(readies, results):
        if "error" in ready and "error" not in result:
            result["error"] = ready["error"]
    return readies, results


def _write(proc: subprocess.Popen, line: str) -> None:
    try:
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
    except OSError:
        pass


def _read(proc: subprocess.Popen, tag: str) -> dict:
    line = proc.stdout.readline()
    if not line.startswith(tag + " "):
        return {"error": "client ended without %s (timed out or crashed)" % tag}
    return json.loads(line[len(tag) + 1:])


# -- one run of each kind ---------------------------------------------------------------------


class Bench:
    """What a run needs: the targets, the running proxies, sizes and logs."""

    def __init__(self, targets, proxies: Dict[str, RunningProxy], start_proxy, log_dir: str,
                 quick: bool) -> None:
        self.targets = targets
        self.proxies = proxies
        self.start_proxy = start_proxy  # key -> a fresh RunningProxy (sessions runs)
        self.log_dir = log_dir
        self.quick = quick
        self.client_log = os.path.join(log_dir, "clients.log")

    def endpoint(self, key: str, tls: bool) -> dict:
        if key == DIRECT or self.proxies[key].kind.raw:
            # Direct, or through a plain TCP relay: the client's raw frames, no handshake.
            port = self.targets.port if key == DIRECT else self.proxies[key].port
            return {"host": "127.0.0.1", "port": self.targets.tls_port if tls else port,
                    "raw": True, "tls": tls}
        return {"host": "127.0.0.1", "port": self.proxies[key].port, "raw": False, "tls": tls}

    def run(self, scenario: Scenario, key: str, size: Optional[int], seed: int) -> dict:
        """One run of ``scenario`` against ``key``; ``size`` is bytes (per stream) to move."""
        method = getattr(self, "_run_" + scenario.kind)
        try:
            return method(scenario, key, size, seed)
        except Exception as exc:  # one failed run is reported, the benchmark goes on
            return {"error": "%s: %s" % (exc.__class__.__name__, exc)}

    def _run_throughput(self, scenario: Scenario, key: str, size: int, seed: int) -> dict:
        params = scenario.params
        job = dict(self.endpoint(key, params["tls"]), seed=seed, nbytes=size,
                   mode="upstream" if params["direction"] == "up" else "downstream",
                   frame=params["frame"], chunk=params["frame"], subprotocol=params["subprotocol"])
        _, (result,) = self._sampled_clients(key, [job], 120)
        return _checked(result, "mbps")

    def _sampled_clients(self, key: str, jobs: List[dict], timeout: float,
                         totals: Optional[dict] = None):
        """run_clients, noting how many cores the proxy and the targets used while timed.

        ``totals``, when given, receives the CPU seconds each used from GO to the end.
        """
        readers = {"targets": lambda: process_cpu(self.targets.process.pid)}
        if key != DIRECT:
            readers["proxy"] = self.proxies[key].total_cpu
        sampler: List[CpuSampler] = []
        try:
            readies, results = run_clients(jobs, self.client_log, timeout,
                                           before_go=lambda _: sampler.append(CpuSampler(readers)))
        finally:
            if sampler:
                sampler[0].stop()
        good = [r for r in results if "first" in r]
        if sampler and totals is not None:
            (_, begin), (_, end) = sampler[0].samples[0], sampler[0].samples[-1]
            totals.update({name: end[name] - begin[name] for name in readers})
        if sampler and good:
            start, end = min(r["first"] for r in good), max(r["last"] for r in good)
            cores = {name: sampler[0].cores(name, start, end) for name in readers}
            for result in results:
                result["cores"] = cores
        return readies, results

    def _run_echo(self, scenario: Scenario, key: str, size: Optional[int], seed: int) -> dict:
        job = dict(self.endpoint(key, False), mode="echo", seed=seed, size=scenario.params["size"],
                   messages=2000 if self.quick else 5000, warmup=200)
        cpu = {}
        _, (result,) = self._sampled_clients(key, [job], 120, totals=cpu)
        if cpu.get("proxy") and "messages" in result:
            # The proxy does nothing else meanwhile: all its CPU went to these round trips.
            result["proxy_cpu_us"] = cpu["proxy"] / (result["messages"] + job["warmup"]) * 1e6
        return _checked(result, "p50_us")

    def _run_workers(self, scenario: Scenario, key: str, size: int, seed: int) -> dict:
        jobs = [dict(self.endpoint(key, False), mode="upstream", seed=seed + stream, nbytes=size,
                     frame=scenario.params["frame"], subprotocol="binary")
                for stream in range(scenario.params["streams"])]
        proxy = self.proxies[key]
        workers = proxy.children() or [proxy.pid]
        before = {pid: process_cpu(pid) for pid in workers}
        _, results = self._sampled_clients(key, jobs, 180)
        used = [process_cpu(pid) - cpu for pid, cpu in before.items()]
        failed = [r for r in results if "error" in r or not r.get("sha_ok")]
        if failed:
            return {"error": failed[0].get("error", "SHA-256 mismatch at the sink")}
        span = max(r["last"] for r in results) - min(r["first"] for r in results)
        total = sum(r["bytes"] for r in results)
        return {"value": total / span / 1e6, "bytes": total, "seconds": span,
                "cores": results[0].get("cores", {}),
                "client_cores": sum(r.get("client_cores") or 0 for r in results),
                "worker_share": [u / sum(used) for u in used] if len(used) > 1 and sum(used) > 0 else None}

    def _run_sessions(self, scenario: Scenario, key: str, size: Optional[int], seed: int) -> dict:
        """Every session opened at once (no cap per client), then 5 echo round trips on each.

        The sessions are spread over several client processes (asyncio, file
        limit raised to the hard limit) so that the client is not what limits
        the open rate: each reports the CPU it used, shown in the notes.
        """
        count = scenario.params["count"]
        processes = scenario.params.get("processes", 2)
        per_process = [count // processes + (1 if i < count % processes else 0)
                       for i in range(processes)]
        proxy = self.start_proxy(key)
        try:
            sampler = MemorySampler(proxy)
            jobs = [dict(host="127.0.0.1", port=proxy.port, raw=False, tls=False, mode="sessions",
                         seed=seed * 10 + i, sessions=n, round_trips=5, size=32, open_concurrency=n)
                    for i, n in enumerate(per_process)]
            readies, results = run_clients(jobs, self.client_log, timeout=300 if count <= 2000 else 600)
            peak_pss = sampler.stop()
            peak_rss = proxy.peak_rss_kib()
            worker_rss = [proxy.peak_rss_kib(pid) for pid in proxy.children()]
            proxy_cpu = proxy.total_cpu()
        finally:
            proxy.stop()
        broken = [r for r in results if "errors" not in r]
        if broken:
            return {"error": broken[0].get("error", "no result")}
        errors = sum(r["errors"] for r in results)
        samples = [r.get("first_errors") for r in results if r.get("first_errors")]
        opens = [r["open_p50_ms"] for r in results if r.get("open_p50_ms") is not None]
        return {"value": max(r["open_seconds"] for r in results) + max(r["echo_seconds"] for r in results),
                "errors": errors, "sessions": count,
                "open_seconds": max(r["open_seconds"] for r in results),
                "echo_seconds": max(r["echo_seconds"] for r in results),
                "open_p50_ms": max(opens) if opens else None,
                "proxy_cpu_s": proxy_cpu,
                "client_open_cores": max((r.get("open_cores") or 0) for r in results),
                "p50_us": max([r["p50_us"] for r in results if r["p50_us"] == r["p50_us"]], default=None),
                "peak_pss_mib": peak_pss / 1024.0, "peak_rss_mib": peak_rss / 1024.0,
                "worker_peak_rss_mib": [w / 1024.0 for w in worker_rss],
                "first_errors": samples[0][:2] if samples else []}


def _checked(result: dict, field: str) -> dict:
    if "error" in result:
        return result
    if not result.get("sha_ok"):
        return dict(result, error="SHA-256 or content mismatch at the far end")
    return dict(result, value=result[field])
