"""``--metrics`` scraped by a real Prometheus server (Debian's ``prometheus`` package).

The fixture starts ``prometheus`` on a free port of 127.0.0.1 with a
throw-away configuration (scrape every second) and data directory, and
stops it after the test; the test runs sessions through the proxy while it
scrapes, then reads the values back through Prometheus' HTTP query API
(``/api/v1/query``) and compares them with what it sent.  Skipped, saying
why, where the binary is missing.  One test, about 6 s: Prometheus's first
scrape comes 5 s after its start whatever the interval.
"""

import json
import os
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request

import pytest

from conftest import echo_round_trip, free_port, stop_process, wait_until
from wsclient import WSClient, open_session

#: How long Prometheus may take to start and to scrape what the test expects.
PROMETHEUS_DEADLINE = 20.0

CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: wsproxy
    metrics_path: {path}
    static_configs:
      - targets: ['127.0.0.1:{target_port}']
"""


def find_prometheus():
    return shutil.which("prometheus") or (
        "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None)


class Prometheus:
    """A running ``prometheus`` scraping one wsproxy; :meth:`query` asks its HTTP API."""

    def __init__(self, binary: str, directory, target_port: int, path: str) -> None:
        self.port = free_port()
        config = directory / "prometheus.yml"
        config.write_text(CONFIG.format(path=path, target_port=target_port))
        self.log_path = directory / "prometheus.log"
        with open(str(self.log_path), "wb") as log:
            self.process = subprocess.Popen(
                [binary, "--config.file=%s" % config,
                 "--storage.tsdb.path=%s" % (directory / "data"),
                 "--web.listen-address=127.0.0.1:%d" % self.port,
                 "--log.level=warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _get(self, path: str):
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (self.port, path), timeout=5) as answer:
            return answer.status, answer.read()

    def ready(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail("prometheus exited with %s: %s" % (self.process.returncode, self.log()))
        try:
            return self._get("/-/ready")[0] == 200
        except OSError:
            return False

    def query(self, expression: str):
        """The instant vector of ``expression``: ``[(labels, float value), ...]``."""
        status, body = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": expression}))
        answer = json.loads(body.decode("utf-8"))
        assert status == 200 and answer["status"] == "success", answer
        return [(item["metric"], float(item["value"][1])) for item in answer["data"]["result"]]

    def value(self, expression: str):
        """The single value of ``expression``, or None while it has none."""
        result = self.query(expression)
        return result[0][1] if len(result) == 1 else None

    def stop(self) -> None:
        stop_process(self.process)


@pytest.fixture
def prometheus(tmp_path):
    """Factory: ``prometheus(port, path)`` starts a Prometheus scraping wsproxy there."""
    binary = find_prometheus()
    if binary is None:
        pytest.skip("the prometheus binary is not installed (Debian package prometheus)")
    started = []

    def start(target_port: int, path: str = "/metrics") -> Prometheus:
        directory = tmp_path / ("prometheus%d" % len(started))
        directory.mkdir()
        server = Prometheus(binary, directory, target_port, path)
        started.append(server)
        wait_until(server.ready, PROMETHEUS_DEADLINE, "prometheus to be ready")
        return server

    yield start
    for server in started:
        server.stop()


def test_prometheus_scrapes_every_worker_while_sessions_run(prometheus, wsproxy_process,
                                                           echo_target):
    # Prometheus first: it hands targets to its scrapers only every 5 s (its
    # discovery throttle), so the child starts while that first wait runs.
    port = free_port()
    server = prometheus(port)
    child = wsproxy_process("-f", "--workers", "2", "--metrics", "/metrics",
                            "127.0.0.1:%d" % port, echo_target.address)
    child.wait_listening(port)
    sizes = [1000, 2500, 70000, 10, 10, 10]
    with open_session(port, protocols=["binary"]) as held:
        for size in sizes[:3]:
            echo_round_trip(port, size=size)
        for size in sizes[3:]:
            echo_round_trip(port, size=size, close_code=4000)
        with WSClient(port) as refused:
            refused.handshake(expect_status=426, headers={"Sec-WebSocket-Version": "7"})
        wait_until(lambda: server.value("sum(wsproxy_sessions_closed_total)") == 6,
                   PROMETHEUS_DEADLINE, lambda: "prometheus to see six closed sessions; it has %s"
                   % server.query("wsproxy_sessions_closed_total"))
        # SIGHUP in every worker, then one more session: no counter may go down.
        reloads = child.output().count("SIGHUP: log reopened")
        child.send_signal(signal.SIGHUP)
        child.wait_for(lambda: child.output().count("SIGHUP: log reopened") >= reloads + 2,
                       "both workers to reload")
        echo_round_trip(port, size=5)
        wait_until(lambda: server.value("sum(wsproxy_sessions_closed_total)") == 7,
                   PROMETHEUS_DEADLINE, "prometheus to see the seventh closed session")
        # Read back while the held session still runs.
        sent = sum(sizes) + 5
        assert server.value('up{job="wsproxy"}') == 1.0
        workers = {labels["worker"] for labels, _ in server.query("wsproxy_sessions_opened_total")}
        assert workers == {"0", "1"}
        assert server.value("sum(wsproxy_sessions_opened_total)") == 8
        assert server.value("sum(wsproxy_open_sessions)") == 1
        assert server.value('sum(wsproxy_sessions_closed_total{code="1000"})') == 4
        assert server.value('sum(wsproxy_sessions_closed_total{code="4000"})') == 3
        assert server.value('sum(wsproxy_handshake_failures_total{status="426"})') == 1
        assert server.value('sum(wsproxy_payload_bytes_total{direction="from_client"})') == sent
        assert server.value('sum(wsproxy_payload_bytes_total{direction="to_client"})') == sent
        assert server.value("sum(wsproxy_session_duration_seconds_count)") == 7
        assert server.value('sum(wsproxy_session_duration_seconds_bucket{le="+Inf"})') == 7
        # resets() counts every decrease Prometheus saw in a counter: none, across the reload.
        for name in ("wsproxy_sessions_opened_total", "wsproxy_payload_bytes_total",
                     "wsproxy_sessions_closed_total"):
            assert server.value("sum(resets(%s[5m]))" % name) == 0
        # The metadata Prometheus took from the # TYPE lines.
        with urllib.request.urlopen("http://127.0.0.1:%d/api/v1/metadata" % server.port,
                                    timeout=5) as answer:
            metadata = json.loads(answer.read().decode("utf-8"))["data"]
        assert metadata["wsproxy_sessions_opened_total"][0]["type"] == "counter"
        assert metadata["wsproxy_open_sessions"][0]["type"] == "gauge"
        assert metadata["wsproxy_session_duration_seconds"][0]["type"] == "histogram"
        held.send_close(1000)
        assert held.recv_close()[0] == 1000
