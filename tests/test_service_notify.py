"""Readiness and watchdog notification (``NOTIFY_SOCKET``), as systemd receives it.

The test binds its own ``AF_UNIX`` datagram socket, gives its path (or an
abstract ``@name``) to a real ``python -m wsproxy`` child, and reads what
arrives: READY=1 once listening, WATCHDOG=1 pings at half ``WATCHDOG_USEC``,
STATUS= with the open-session count, RELOADING=1 + MONOTONIC_USEC then
READY=1 around SIGHUP, STOPPING=1 on SIGTERM, in that order.
"""

import os
import signal
import socket
import threading
import time
from typing import Dict, List

import pytest

from conftest import EXIT_DEADLINE, free_port, wait_until
from wsclient import open_session

from wsproxy import ProxyServer, Settings
from wsproxy.service import Lifecycle, Notifier


def parse(datagram: bytes) -> Dict[str, str]:
    fields = {}
    for line in datagram.decode("utf-8").split("\n"):
        key, _, value = line.partition("=")
        fields[key] = value
    return fields


class NotifyListener:
    """The service manager's end: a datagram socket read by a thread, as systemd reads it."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address if not address.startswith("@") else "\0" + address[1:])
        self.sock.settimeout(0.05)
        self.name = address
        self.messages: List[Dict[str, str]] = []
        self._seen = 0
        self._closing = threading.Event()
        self._reader = threading.Thread(target=self._read, name="test-notify-listener")
        self._reader.start()

    def _read(self) -> None:
        while not self._closing.is_set():
            try:
                self.messages.append(parse(self.sock.recv(4096)))
            except socket.timeout:
                continue

    def wait_for(self, predicate, what: str, child=None):
        """The first message (not yet returned by an earlier wait) for which ``predicate`` holds."""
        def found():
            if child is not None and not child.alive():
                pytest.fail("wsproxy exited while waiting for %s: %s" % (what, child.output()))
            for index in range(self._seen, len(self.messages)):
                if predicate(self.messages[index]):
                    self._seen = index + 1
                    return self.messages[index]
            return None
        return wait_until(found, EXIT_DEADLINE, lambda: "%s among %r" % (what, self.messages))

    def wait_quiet(self, predicate, seconds: float, start: int) -> List[Dict[str, str]]:
        """Messages from index ``start`` matching ``predicate`` within ``seconds`` (a negative check)."""
        self._closing.wait(seconds)
        return [m for m in self.messages[start:] if predicate(m)]

    def close(self) -> None:
        self._closing.set()
        self._reader.join(5)
        self.sock.close()


@pytest.fixture
def notify_listener(tmp_path):
    listener = NotifyListener(str(tmp_path / "notify.sock"))
    yield listener
    listener.close()


def start_notified(wsproxy_process, monkeypatch, listener, target, *args, watchdog_usec=100000):
    monkeypatch.setenv("NOTIFY_SOCKET", listener.name)
    monkeypatch.setenv("WATCHDOG_USEC", str(watchdog_usec))
    port = free_port()
    child = wsproxy_process("-f", "127.0.0.1:%d" % port, target.address, *args)
    return child, port


@pytest.mark.parametrize("extra", [(), ("--workers", "2")], ids=["one-process", "workers"])
def test_ready_watchdog_reload_stopping_in_order(wsproxy_process, monkeypatch, notify_listener,
                                                 echo_target, extra):
    child, port = start_notified(wsproxy_process, monkeypatch, notify_listener, echo_target,
                                 *extra)
    ready = notify_listener.wait_for(lambda m: "READY" in m, "READY=1", child)
    assert ready["READY"] == "1" and ready["MAINPID"] == str(child.pid)
    # READY=1 only once the port takes connections.
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    for _ in range(2):
        notify_listener.wait_for(lambda m: m.get("WATCHDOG") == "1", "WATCHDOG=1", child)
    if not extra:
        with open_session(port, protocols=["binary"]) as ws:
            notify_listener.wait_for(lambda m: m.get("STATUS") == "1 open session",
                                     "STATUS= with the open session", child)
            ws.send_close(1000)
            ws.recv_close()
        notify_listener.wait_for(lambda m: m.get("STATUS") == "0 open sessions",
                                 "STATUS= after the session", child)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    child.send_signal(signal.SIGHUP)
    reloading = notify_listener.wait_for(lambda m: "RELOADING" in m, "RELOADING=1", child)
    assert before <= int(reloading["MONOTONIC_USEC"]) <= \
        time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notify_listener.wait_for(lambda m: m.get("READY") == "1", "READY=1 after the reload", child)
    child.send_signal(signal.SIGTERM)
    assert child.wait_exit() == 0
    kinds = [next(iter(m)) for m in notify_listener.messages]
    stopping = kinds.index("STOPPING")
    assert "WATCHDOG" not in kinds[stopping:], kinds
    assert kinds.index("READY") < kinds.index("WATCHDOG") < kinds.index("RELOADING") < stopping


def test_abstract_notify_socket(wsproxy_process, monkeypatch, echo_target):
    listener = NotifyListener("@wsproxy-test-%d-%d" % (os.getpid(), free_port()))
    try:
        child, _port = start_notified(wsproxy_process, monkeypatch, listener, echo_target,
                                      watchdog_usec=0)
        listener.wait_for(lambda m: m.get("READY") == "1", "READY=1", child)
        child.send_signal(signal.SIGTERM)
        assert child.wait_exit() == 0
        listener.wait_for(lambda m: m.get("STOPPING") == "1", "STOPPING=1")
        assert not any("WATCHDOG" in m for m in listener.messages), "WATCHDOG_USEC=0: no pings"
    finally:
        listener.close()


def test_timeout_sends_stopping_when_it_stops_accepting(wsproxy_process, monkeypatch,
                                                        notify_listener, echo_target):
    child, port = start_notified(wsproxy_process, monkeypatch, notify_listener, echo_target,
                                 "--timeout", "0.5")
    notify_listener.wait_for(lambda m: m.get("READY") == "1", "READY=1", child)
    with open_session(port, protocols=["binary"]) as ws:
        stopping = notify_listener.wait_for(lambda m: m.get("STOPPING") == "1", "STOPPING=1",
                                            child)
        assert "no longer accepting" in stopping["STATUS"]
        ws.send_close(1000)
        ws.recv_close()
    assert child.wait_exit() == 0


class WedgingServer(ProxyServer):
    """verify_request runs in the accept loop: holding it there wedges the loop."""

    def __init__(self, *args, **kwargs) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        super().__init__(*args, **kwargs)

    def verify_request(self, request, client_address) -> bool:
        self.entered.set()
        self.release.wait(10)
        return True


def test_watchdog_stops_when_the_accept_loop_stops_turning(notify_listener, echo_target,
                                                           wsproxy_log):
    server = WedgingServer(("127.0.0.1", 0), Settings(target_host="127.0.0.1",
                                                       target_port=echo_target.port))
    notifier = Notifier({"NOTIFY_SOCKET": notify_listener.name, "WATCHDOG_USEC": "40000"})
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    serving.start()
    lifecycle = Lifecycle(server, notifier, stale_after=0.3)
    client = None
    try:
        lifecycle.started(serving)
        notify_listener.wait_for(lambda m: m.get("READY") == "1", "READY=1")
        for _ in range(3):
            notify_listener.wait_for(lambda m: m.get("WATCHDOG") == "1", "WATCHDOG=1")
        client = socket.create_connection(("127.0.0.1", server.server_address[1]))
        assert server.entered.wait(5)
        wait_until(lambda: wsproxy_log.find("accept loop stopped turning"),
                   message="the watchdog to give up")
        seen = len(notify_listener.messages)
        # Ten watchdog periods: the thread may send STATUS=, never another WATCHDOG=1.
        assert not notify_listener.wait_quiet(lambda m: "WATCHDOG" in m, 0.2, seen)
    finally:
        server.release.set()
        lifecycle.stopping()
        if client is not None:
            client.close()
        server.shutdown()
        server.server_close()
        serving.join(5)
        notifier.close()
    notify_listener.wait_for(lambda m: m.get("STOPPING") == "1", "STOPPING=1")


def test_notifier_without_socket_does_nothing():
    notifier = Notifier({})
    assert not notifier.enabled and not notifier.ready() and not notifier.watchdog()
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "2000000",
                     "WATCHDOG_PID": "1"}, pid=2).watchdog_interval is None
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "2000000"}).watchdog_interval == 1.0
