#!/usr/bin/env python3
"""Zero-copy downstream on and off: a quick check run by hand.

Usage (from the checkout)::

    python3 bench/splice.py [--rounds N] [--mib N] [--chunk BYTES]

Starts the benchmark's target server and two wsproxy processes, one as
shipped (``--splice``, the default) and one with ``--no-splice``, and runs
the ``down-64k`` transfer (the source writes 64 KiB at a time, the client
checks the SHA-256) against each in interleaved rounds, rotating who goes
first.  Prints each run (MB/s, and the proxy's CPU time per GB, which
holds better than MB/s on a busy machine), the medians and the ratios
splice / copy.  Needs
no virtual environment: only wsproxy and the benchmark's own processes.
"""

import argparse
import os
import statistics
import sys
import tempfile

import envs
from proxies import RunningProxy, ProxyKind, TargetServer, _wsproxy
from scenarios import run_clients

KINDS = [ProxyKind("splice", "wsproxy (splice)", _wsproxy()),
         ProxyKind("copy", "wsproxy --no-splice", _wsproxy("--no-splice"))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mib", type=int, default=512, help="MiB per transfer (default 512)")
    parser.add_argument("--chunk", type=int, default=64 * 1024, help="the source's write size")
    args = parser.parse_args()
    os.makedirs(envs.VENV, exist_ok=True)  # the certificate lives there (not used here)
    envs.ensure_cert(lambda message: print(message, file=sys.stderr))
    log_dir = tempfile.mkdtemp(prefix="wsproxy-splice-bench-")
    targets = TargetServer(log_dir)
    proxies = {}
    try:
        for kind in KINDS:
            proxies[kind.key] = RunningProxy(kind, targets.port, log_dir)
        figures = {kind.key: [] for kind in KINDS}
        # CPU per byte holds better than MB/s on a busy shared machine.
        cpu = {kind.key: [] for kind in KINDS}
        for round_number in range(args.rounds):
            order = KINDS[round_number % len(KINDS):] + KINDS[:round_number % len(KINDS)]
            for kind in order:
                job = {"mode": "downstream", "host": "127.0.0.1", "port": proxies[kind.key].port,
                       "raw": False, "tls": False, "subprotocol": "binary", "seed": round_number,
                       "nbytes": args.mib * 1024 * 1024, "chunk": args.chunk, "frame": args.chunk}
                before = proxies[kind.key].total_cpu()
                _, (result,) = run_clients([job], os.path.join(log_dir, "clients.log"), 300)
                used = proxies[kind.key].total_cpu() - before
                if "error" in result:
                    print("%-22s round %d: %s" % (kind.label, round_number + 1, result["error"]))
                    return 1
                figures[kind.key].append(result["mbps"])
                cpu[kind.key].append(used * 1000 / (job["nbytes"] / 1e9))
                print("%-22s round %d: %8.0f MB/s %8.0f ms CPU per GB"
                      % (kind.label, round_number + 1, result["mbps"], cpu[kind.key][-1]), flush=True)
        medians = {key: statistics.median(values) for key, values in figures.items()}
        cpu_medians = {key: statistics.median(values) for key, values in cpu.items()}
        for kind in KINDS:
            print("%-22s median   %8.0f MB/s %8.0f ms CPU per GB"
                  % (kind.label, medians[kind.key], cpu_medians[kind.key]))
        print("splice / copy: %.2fx the throughput, %.2fx the CPU per byte"
              % (medians["splice"] / medians["copy"], cpu_medians["splice"] / cpu_medians["copy"]))
    finally:
        for proxy in proxies.values():
            proxy.stop()
        targets.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
