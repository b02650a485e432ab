"""A real browser talks to wsproxy: headless Chromium loads a page from ``--web``.

The page (``tests/browser/``) opens two WebSockets to the proxy that served
it, one per subprotocol (``binary`` and ``base64``), builds the URL from
``location.host``, sends every byte value through the proxy to a TCP echo
target and writes what came back into the DOM.  The test reads the DOM back
and compares.

Chromium is driven with the standard library only.  First with
``--dump-dom --virtual-time-budget``; that flag does not reliably wait for
real socket I/O, so when the dumped page still shows a session pending the
test starts Chromium again with ``--remote-debugging-port`` and polls the DOM
over the DevTools protocol (its HTTP ``/json/list`` endpoint and a WebSocket,
spoken by the test's own client in ``wsclient.py``).

Skipped, saying why, when no Chromium binary is installed (``.ci/run``
installs Debian's ``chromium``).
"""

import html
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from typing import Dict, List, Optional

import pytest

from wsclient import OP_TEXT, WSClient

PAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "browser")
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome")
#: What the page sends (and expects back): byte values 0-255, twice.
EXPECTED = bytes(index % 256 for index in range(512))
SUBPROTOCOLS = ("binary", "base64")
#: Real seconds Chromium may take to load the page and finish both sessions.
BROWSER_DEADLINE = 45.0

COMMON_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-extensions", "--disable-dev-shm-usage"]


def find_browser() -> Optional[str]:
    for name in BROWSER_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture
def browser():
    path = find_browser()
    if path is None:
        pytest.skip("no Chromium binary (%s) on PATH; install Debian's chromium to run the "
                    "real-browser test" % ", ".join(BROWSER_NAMES))
    return path


# -- reading the page's results --------------------------------------------------------


def results_from_dom(dom: str) -> Dict[str, str]:
    """The text of each result element (``binary``, ``base64``, ``done``) in a DOM dump."""
    results = {}
    for name in SUBPROTOCOLS + ("done",):
        match = re.search(r'<pre id="%s"[^>]*>(.*?)</pre>' % name, dom, re.S)
        results[name] = html.unescape(match.group(1)).strip() if match else "missing"
    return results


def finished(results: Dict[str, str]) -> bool:
    """True once every session's element holds a final result (ok or error)."""
    for name in SUBPROTOCOLS:
        text = results.get(name, "missing")
        if text == "missing" or text.endswith("pending"):
            return False
    return True


def check_results(results: Dict[str, str]) -> None:
    for name in SUBPROTOCOLS:
        text = results[name]
        prefix = "%s: ok " % name
        assert text.startswith(prefix), "the page reports for %s: %r" % (name, text[:300])
        assert bytes.fromhex(text[len(prefix):]) == EXPECTED, \
            "the %s echo came back changed: %r" % (name, text[:300])
    assert results["done"] == "done"


# -- running Chromium -----------------------------------------------------------------


class Browser:
    """One Chromium child process in its own process group, always ended by ``stop``."""

    def __init__(self, binary: str, profile: str, args: List[str], capture_stdout: bool) -> None:
        self.log_path = os.path.join(profile, "chromium-stderr.log")
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [binary] + COMMON_FLAGS + ["--user-data-dir=" + profile] + args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture_stdout else subprocess.DEVNULL,
            stderr=self._log, start_new_session=True)

    def communicate(self, timeout: float) -> bytes:
        try:
            out, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail("Chromium did not finish within %.0fs; its log:\n%s"
                        % (timeout, self.log_tail()))
        return out or b""

    def log_tail(self) -> str:
        with open(self.log_path, "rb") as stream:
            return stream.read()[-3000:].decode("utf-8", "replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                # Only the group this test started: Chromium and its helpers.
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()


def dump_dom(binary: str, profile: str, url: str) -> str:
    browser = Browser(binary, profile, ["--virtual-time-budget=10000", "--dump-dom", url],
                      capture_stdout=True)
    try:
        out = browser.communicate(BROWSER_DEADLINE)
    finally:
        browser.stop()
    return out.decode("utf-8", "replace")


class DevTools:
    """A minimal DevTools protocol client over the test's own WebSocket client."""

    def __init__(self, port: int, path: str) -> None:
        self.ws = WSClient(port)
        self.ws.handshake(path=path, headers={"Host": "127.0.0.1:%d" % port})
        self._next_id = 0

    def call(self, method: str, **params) -> dict:
        self._next_id += 1
        message_id = self._next_id
        self.ws.send_text(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = self.ws.recv_data_message(timeout=10.0)
            assert message.opcode == OP_TEXT
            answer = json.loads(message.text)
            if answer.get("id") == message_id:
                assert "error" not in answer, answer
                return answer["result"]

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def close(self) -> None:
        self.ws.close()


def read_active_port(profile: str, deadline: float, browser: Browser) -> int:
    """The DevTools port Chromium chose, from ``<profile>/DevToolsActivePort``."""
    path = os.path.join(profile, "DevToolsActivePort")
    while time.monotonic() < deadline:
        if browser.process.poll() is not None:
            pytest.fail("Chromium exited (%s) before opening DevTools; its log:\n%s"
                        % (browser.process.returncode, browser.log_tail()))
        try:
            with open(path) as stream:
                first = stream.readline().strip()
            if first.isdigit():
                return int(first)
        except OSError:
            pass
        time.sleep(0.05)
    pytest.fail("Chromium wrote no DevToolsActivePort; its log:\n%s" % browser.log_tail())


def page_websocket_path(port: int, url: str, deadline: float) -> str:
    """The DevTools WebSocket path of the page showing ``url``."""
    while time.monotonic() < deadline:
        with urllib.request.urlopen("http://127.0.0.1:%d/json/list" % port, timeout=10) as answer:
            targets = json.loads(answer.read().decode("utf-8"))
        for target in targets:
            if target.get("type") == "page" and target.get("url", "").startswith(url):
                debugger = target["webSocketDebuggerUrl"]
                return "/" + debugger.split("/", 3)[3]
        time.sleep(0.05)
    pytest.fail("no DevTools page target for %s" % url)


def results_over_devtools(binary: str, profile: str, url: str) -> Dict[str, str]:
    deadline = time.monotonic() + BROWSER_DEADLINE
    browser = Browser(binary, profile, ["--remote-debugging-port=0", url], capture_stdout=False)
    try:
        port = read_active_port(profile, deadline, browser)
        devtools = DevTools(port, page_websocket_path(port, url, deadline))
        try:
            expression = "JSON.stringify({%s})" % ", ".join(
                "%s: (document.getElementById('%s') || {}).textContent" % (name, name)
                for name in SUBPROTOCOLS + ("done",))
            while True:
                value = devtools.evaluate(expression)
                results = json.loads(value) if value else {}
                results = {name: (results.get(name) or "missing").strip()
                           for name in SUBPROTOCOLS + ("done",)}
                if finished(results) or time.monotonic() >= deadline:
                    return results
                time.sleep(0.05)
        finally:
            devtools.close()
    finally:
        browser.stop()


# -- the test -------------------------------------------------------------------------


def test_chromium_echoes_binary_and_base64_through_the_proxy(browser, proxy, echo_target,
                                                             wsproxy_log, tmp_path):
    running = proxy(web=PAGE_DIR)
    url = "http://127.0.0.1:%d/" % running.port
    profile = tmp_path / "profile-dump"
    profile.mkdir()
    results = results_from_dom(dump_dom(browser, str(profile), url))
    if not finished(results):
        # --dump-dom returned before the sockets finished: read the live DOM instead.
        fresh = tmp_path / "profile-devtools"
        fresh.mkdir()
        results = results_over_devtools(browser, str(fresh), url)
    check_results(results)

    # The bytes really crossed the proxy to the target, once per subprotocol.
    opened = [text for text in wsproxy_log.messages() if "open to" in text]
    for name in SUBPROTOCOLS:
        assert any(name in text for text in opened), \
            "no %s session in the proxy's log: %s" % (name, opened)
    received = [connection.received_bytes() for connection in echo_target.connections]
    assert received.count(EXPECTED) >= 2, "the target saw %r" % [len(data) for data in received]


def test_page_assets_are_served_with_the_right_types(proxy):
    # Without a browser, at least the page the browser test relies on is served.
    running = proxy(web=PAGE_DIR)
    for path, kind in (("/", "text/html"), ("/echo.js", "javascript")):
        with WSClient(running.port) as ws:
            ws.send_raw(("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path).encode("ascii"))
            response = ws.read_response()
        assert response.status == 200
        assert kind in (response.header("Content-Type") or "")
