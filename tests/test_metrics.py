"""``--metrics PATH``: Prometheus text exposition format 0.0.4 on the proxy's own port.

The text is parsed here by a reader written from the format's description
(``# HELP``/``# TYPE`` before a family's samples, ``name{label="v"} value``),
and the numbers are checked against sessions the test drives itself: in one
process, across ``--workers 2`` (a scrape answered by either worker shows
both), across SIGHUP (counters never go down), and behind ``--metrics-allow``.
"""

import http.client
import re
import signal
from typing import Dict, FrozenSet, Tuple

import pytest

from conftest import echo_round_trip, free_port, run_wsproxy, wait_until
from test_workers import SESSION_OPEN, started_workers
from wsclient import WSClient, open_session

from wsproxy.observe.metrics import DURATION_BUCKETS, MetricsStore, render

Samples = Dict[Tuple[str, FrozenSet[Tuple[str, str]]], float]

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')
FAMILIES = {
    "wsproxy_sessions_opened_total": "counter",
    "wsproxy_sessions_closed_total": "counter",
    "wsproxy_open_sessions": "gauge",
    "wsproxy_pending_handshakes": "gauge",
    "wsproxy_handshake_failures_total": "counter",
    "wsproxy_payload_bytes_total": "counter",
    "wsproxy_session_duration_seconds": "histogram",
}


def parse_exposition(text: str) -> Samples:
    """Samples of a text exposition; fails on a sample whose family has no HELP and TYPE."""
    assert text.endswith("\n")
    helps, types, samples = set(), {}, {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helps.add(line.split()[2])
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert name not in types, "two TYPE lines for %s" % name
            types[name] = kind
            continue
        match = _SAMPLE.match(line)
        assert match, "not a sample line: %r" % line
        name, labels, value = match.groups()
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types and family in helps, "no HELP/TYPE before %r" % line
        pairs = frozenset(_LABEL.findall(labels or ""))
        samples[(name, pairs)] = float(value)
    assert types == FAMILIES
    return samples


def value(samples: Samples, name: str, **labels) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(number for (sample, pairs), number in samples.items()
               if sample == name and wanted <= set(pairs))


def fetch(port, path="/metrics", method="GET", headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def scrape(port) -> Samples:
    status, headers, body = fetch(port)
    assert status == 200, (status, body)
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse_exposition(body.decode("utf-8"))


# -- the text, from the store alone -------------------------------------------------------


def test_exposition_of_a_fresh_store():
    samples = parse_exposition(MetricsStore().exposition().decode())
    assert value(samples, "wsproxy_sessions_opened_total") == 0
    assert value(samples, "wsproxy_open_sessions") == 0
    assert value(samples, "wsproxy_session_duration_seconds_count") == 0
    assert not [key for key in samples if "worker" in dict(key[1])]


def test_exposition_counts_and_histogram():
    store = MetricsStore()
    store.record_opened()
    store.record_opened()
    store.record_closed(1000, 0.05, 10, 20)
    store.record_closed(4999, 7.5, 1, 2)
    store.record_opened()
    store.record_closed(None, 1e9, 0, 0)     # no close code, longer than every bucket
    store.record_refused(404)
    store.record_refused(404)
    store.record_refused(999)                # not an HTTP status: "other"
    store.set_pending(3)
    samples = parse_exposition(store.exposition().decode())
    assert value(samples, "wsproxy_sessions_opened_total") == 3
    assert value(samples, "wsproxy_open_sessions") == 0
    assert value(samples, "wsproxy_pending_handshakes") == 3
    assert value(samples, "wsproxy_sessions_closed_total", code="1000") == 1
    assert value(samples, "wsproxy_sessions_closed_total", code="4999") == 1
    assert value(samples, "wsproxy_sessions_closed_total", code="other") == 1
    assert value(samples, "wsproxy_handshake_failures_total", status="404") == 2
    assert value(samples, "wsproxy_handshake_failures_total", status="other") == 1
    assert value(samples, "wsproxy_payload_bytes_total", direction="from_client") == 11
    assert value(samples, "wsproxy_payload_bytes_total", direction="to_client") == 22
    buckets = [value(samples, "wsproxy_session_duration_seconds_bucket", le=label)
               for label in ("0.1", "1.0", "10.0") + ("86400.0", "+Inf")]
    assert buckets == [1, 1, 2, 2, 3]
    assert len(DURATION_BUCKETS) + 1 == len(
        [key for key in samples if key[0] == "wsproxy_session_duration_seconds_bucket"])
    assert value(samples, "wsproxy_session_duration_seconds_sum") == pytest.approx(1e9 + 7.55)
    assert value(samples, "wsproxy_session_duration_seconds_count") == 3


def test_workers_are_labelled_and_a_restarted_worker_keeps_its_counters():
    store = MetricsStore(2)
    store.use_slot(1)
    store.record_opened()
    store.set_pending(2)
    store.use_slot(0)
    store.record_refused(503)
    store.use_slot(1)                      # worker 1 restarted: gauges reset, counters kept
    samples = parse_exposition(store.exposition().decode())
    assert value(samples, "wsproxy_sessions_opened_total", worker="1") == 1
    assert value(samples, "wsproxy_sessions_opened_total", worker="0") == 0
    assert value(samples, "wsproxy_open_sessions", worker="1") == 0
    assert value(samples, "wsproxy_pending_handshakes", worker="1") == 0
    assert value(samples, "wsproxy_handshake_failures_total", worker="0", status="503") == 1
    assert all("worker" in dict(pairs) for _name, pairs in samples)


def test_render_takes_blocks_of_counters():
    text = render([MetricsStore().snapshot(0)], labelled=False)
    assert text.startswith("# HELP wsproxy_sessions_opened_total ")


# -- through the proxy ----------------------------------------------------------------------


def test_metrics_page_counts_sessions_and_refusals(proxy):
    running = proxy(metrics="/metrics", status="/status")
    assert value(scrape(running.port), "wsproxy_sessions_opened_total") == 0
    echo_round_trip(running.port, size=1000)
    echo_round_trip(running.port, size=500, close_code=4000)
    with WSClient(running.port) as ws:
        ws.handshake(expect_status=426, headers={"Sec-WebSocket-Version": "8"})
    with open_session(running.port) as held:
        # The scrape itself is a connection in its handshake phase: pending is 1
        # once every earlier connection has finished.
        samples = wait_until(lambda: (lambda s: s if value(
            s, "wsproxy_sessions_closed_total") == 2 and value(
            s, "wsproxy_pending_handshakes") == 1 else None)(scrape(running.port)),
            message="both sessions counted as closed")
        assert value(samples, "wsproxy_sessions_opened_total") == 3
        assert value(samples, "wsproxy_open_sessions") == 1
        assert value(samples, "wsproxy_sessions_closed_total", code="1000") == 1
        assert value(samples, "wsproxy_sessions_closed_total", code="4000") == 1
        assert value(samples, "wsproxy_handshake_failures_total", status="426") == 1
        assert value(samples, "wsproxy_payload_bytes_total", direction="from_client") == 1500
        assert value(samples, "wsproxy_payload_bytes_total", direction="to_client") == 1500
        assert value(samples, "wsproxy_session_duration_seconds_count") == 2
        held.send_close(1000)
        held.recv_close()


def test_metrics_is_read_only_and_off_by_default(proxy):
    running = proxy(metrics="/metrics")
    assert fetch(running.port, method="POST")[0] == 405
    status, headers, body = fetch(running.port, method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    plain = proxy()
    status, _, body = fetch(plain.port)
    assert status == 405 and b"wsproxy_" not in body


def test_metrics_and_status_need_two_paths(echo_target):
    result = run_wsproxy("-f", "--status", "/s", "--metrics", "/s",
                         "127.0.0.1:%d" % free_port(), echo_target.address)
    assert result.returncode == 2
    assert "wsproxy: metrics: /s is already the --status page" in result.stderr
    result = run_wsproxy("-f", "--metrics-allow", "10.0.0.300", "--metrics", "/m",
                         "127.0.0.1:%d" % free_port(), echo_target.address)
    assert result.returncode == 2 and "--metrics-allow" in result.stderr
    assert "Traceback" not in result.stderr


def test_metrics_allow(proxy):
    closed = proxy(metrics="/metrics", metrics_allow=["10.0.0.0/8", "::1"])
    status, _, body = fetch(closed.port)
    assert status == 403 and b"wsproxy_" not in body
    opened = proxy(metrics="/metrics", metrics_allow=["10.0.0.0/8", "127.0.0.0/8"])
    assert value(scrape(opened.port), "wsproxy_sessions_opened_total") == 0
    # The refusal is itself counted, where the address is allowed to look.
    assert fetch(opened.port, "/metrics", "DELETE")[0] == 405
    assert value(scrape(opened.port), "wsproxy_handshake_failures_total", status="405") == 1


def test_metrics_allow_believes_a_trusted_proxy(proxy):
    running = proxy(metrics="/metrics", metrics_allow=["192.0.2.0/24"],
                    trusted_proxy=["127.0.0.1"])
    assert fetch(running.port)[0] == 403
    status, _, _ = fetch(running.port, headers={"X-Forwarded-For": "192.0.2.10"})
    assert status == 200
    assert fetch(running.port, headers={"X-Forwarded-For": "198.51.100.1"})[0] == 403


# -- --workers 2 and SIGHUP, through the command line ------------------------------------------


def test_every_worker_in_every_scrape_and_counters_survive_sighup(wsproxy_process, echo_target):
    port = free_port()
    child = wsproxy_process("-f", "--workers", "2", "--metrics", "/metrics",
                            "127.0.0.1:%d" % port, echo_target.address)
    child.wait_listening(port)
    child.wait_for(lambda: len(started_workers(child.output())) == 2, "two workers")
    worker_pids = {pid for _index, pid in started_workers(child.output())}
    sessions = 0
    for _round in range(40):  # the kernel picks the worker: go on until both served one
        for _ in range(3):
            echo_round_trip(port, size=100)
            sessions += 1
        served = {int(pid) for pid, _number in SESSION_OPEN.findall(child.output())}
        if served >= worker_pids:
            break
    assert served == worker_pids

    def complete(samples):
        return value(samples, "wsproxy_sessions_closed_total", code="1000") == sessions

    samples = wait_until(lambda: (lambda s: s if complete(s) else None)(scrape(port)),
                         message="every session counted")
    # Several scrapes, answered by whichever worker the kernel picks: each shows both.
    for _ in range(6):
        samples = scrape(port)
        for worker in ("0", "1"):
            assert value(samples, "wsproxy_sessions_opened_total", worker=worker) > 0
        assert value(samples, "wsproxy_sessions_opened_total") == sessions
        assert value(samples, "wsproxy_payload_bytes_total", direction="to_client") == 100 * sessions
    before = samples
    reloads = child.output().count("SIGHUP: log reopened")
    child.send_signal(signal.SIGHUP)
    child.wait_for(lambda: child.output().count("SIGHUP: log reopened") >= reloads + 2,
                   "both workers to reload")
    for _ in range(4):
        after = scrape(port)
        for key, number in before.items():
            if key[0].endswith(("_total", "_bucket", "_count", "_sum")):
                assert after.get(key, 0) >= number, "%s went down across SIGHUP" % (key,)
    child.send_signal(signal.SIGTERM)
    assert child.wait_exit() == 0
