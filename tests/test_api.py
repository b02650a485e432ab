"""The public embedding API, driven through ``from wsproxy import ...`` alone.

Every test here uses only the names ``wsproxy`` exports: servers started in
threads of this process, handler subclasses overriding the documented hooks,
and real clients and targets on 127.0.0.1.  Import side effects and
``pydoc`` are checked in fresh child processes.
"""

import ast
import base64
import dataclasses
import http
import http.server
import inspect
import json
import os
import re
import socket
import socketserver
import subprocess
import sys
import threading
import time
import typing

import pytest

import wsproxy
from wsproxy import (CloseCode, ConfigError, HandshakeError, ProtocolError, ProxyRequestHandler,
                     ProxyServer, Request, SessionInfo, Settings, Target)

from conftest import EXIT_DEADLINE, ROOT, THREAD_DEADLINE, child_env, echo_round_trip, wait_until
from wsclient import DEFAULT_TIMEOUT, OP_BINARY, WSClient, open_session

#: The names the embedding documentation promises, and nothing else.
DOCUMENTED = {
    "CloseCode", "ConfigError", "HandshakeError", "ProtocolError", "ProxyRequestHandler",
    "ProxyServer", "Request", "SessionInfo", "Settings", "Target",
    # the plugin API (README "websockify's token and auth plugins")
    "AuthenticationError", "BasePlugin",
}
#: The handler hooks an embedder overrides.
HOOKS = ("check_request", "check_http_request", "select_target", "session_started",
         "session_ended", "client_data", "target_data")


# -- helpers ---------------------------------------------------------------------------


class HookLog:
    """Thread-safe record of hook calls: ``(name, args, thread ident)``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events = []  # type: typing.List[tuple]

    def add(self, name: str, *args) -> None:
        with self._lock:
            self._events.append((name, args, threading.get_ident()))

    def events(self) -> typing.List[tuple]:
        with self._lock:
            return list(self._events)

    def names(self) -> typing.List[str]:
        return [name for name, _, _ in self.events()]

    def calls(self, name: str) -> typing.List[tuple]:
        return [args for event, args, _ in self.events() if event == name]

    def wait_for(self, name: str, count: int = 1) -> typing.List[tuple]:
        return wait_until(lambda: len(self.calls(name)) >= count and self.calls(name),
                          DEFAULT_TIMEOUT, "%d call(s) of %s; got %s" % (count, name, self.names()))


def recording_handler(log: HookLog, base: type = ProxyRequestHandler) -> type:
    """A handler subclass overriding every hook: each records its call, then does the default."""

    class Recording(base):
        def check_request(self, request):
            log.add("check_request", request)
            return super().check_request(request)

        def select_target(self, request):
            log.add("select_target", request)
            return super().select_target(request)

        def session_started(self, session):
            # A snapshot as well as the object: counts must still be zero here.
            log.add("session_started", dataclasses.replace(session), session)

        def session_ended(self, session):
            log.add("session_ended", dataclasses.replace(session), session)

        def client_data(self, data):
            log.add("client_data", type(data), bytes(data))
            return None

        def target_data(self, data):
            log.add("target_data", type(data), bytes(data))
            return None

    return Recording


class Served:
    """A socketserver server running ``serve_forever`` in a thread of this process."""

    def __init__(self, server) -> None:
        self.server = server
        self.port = server.server_address[1]
        # A short poll interval only makes shutdown() return sooner.
        self.thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True,
                                       name="api-serve-%d" % self.port)
        self.thread.start()
        self.stopped = False

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(THREAD_DEADLINE)
        assert not self.thread.is_alive(), "serve_forever did not return after shutdown()"


@pytest.fixture
def serve(wsproxy_log):
    """Factory: ``serve(server)`` runs it in a thread; every one is stopped after the test."""
    running = []  # type: typing.List[Served]

    def start(server) -> Served:
        served = Served(server)
        running.append(served)
        return served

    yield start
    for served in running:
        served.stop()


def proxy_to(target_port: int, handler_class: type = ProxyRequestHandler, **fields) -> ProxyServer:
    """A ProxyServer on a free port of 127.0.0.1 in front of ``127.0.0.1:target_port``."""
    settings = Settings(target_host="127.0.0.1", target_port=target_port, **fields)
    return ProxyServer(("127.0.0.1", 0), settings, handler_class)


def close_cleanly(ws: WSClient) -> None:
    ws.send_close(1000)
    assert ws.recv_close()[0] == 1000
    ws.expect_closed()


def run_child(*args: str, timeout: float = EXIT_DEADLINE) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable] + list(args), cwd=ROOT, env=child_env(),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout, universal_newlines=True)
    except subprocess.TimeoutExpired:
        pytest.fail("python3 %s did not exit within %.0fs" % (" ".join(args), timeout))


# -- the names ---------------------------------------------------------------------------


def test_all_lists_exactly_the_documented_names():
    assert set(wsproxy.__all__) - {"__version__"} == DOCUMENTED
    assert len(wsproxy.__all__) == len(set(wsproxy.__all__)), "duplicates in __all__"
    assert isinstance(wsproxy.__version__, str) and wsproxy.__version__
    namespace = {}  # type: dict
    exec("from wsproxy import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(wsproxy.__all__)


def _own_docstring(obj) -> str:
    """The docstring ``obj`` defines itself (not inherited, not a dataclass's generated one)."""
    text = vars(obj).get("__doc__") if inspect.isclass(obj) else obj.__doc__
    text = (text or "").strip()
    if inspect.isclass(obj) and text.startswith(obj.__name__ + "("):
        return ""  # dataclasses write "Name(field: type, ...)" when there is none
    return text


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_every_public_name_has_its_own_docstring(name):
    assert _own_docstring(getattr(wsproxy, name)), "%s has no docstring" % name


def test_package_hooks_and_shutdown_have_docstrings():
    assert _own_docstring(wsproxy)
    for hook in HOOKS:
        assert _own_docstring(getattr(ProxyRequestHandler, hook)), hook
    assert _own_docstring(ProxyServer.shutdown)


@pytest.mark.parametrize("hook", HOOKS)
def test_hooks_are_fully_type_hinted(hook):
    function = getattr(ProxyRequestHandler, hook)
    hints = typing.get_type_hints(function)
    parameters = [name for name in inspect.signature(function).parameters if name != "self"]
    assert set(parameters) <= set(hints), "%s: parameters without a type hint" % hook
    assert "return" in hints, "%s has no return annotation" % hook


def test_server_constructor_is_type_hinted():
    hints = typing.get_type_hints(ProxyServer.__init__)
    assert {"server_address", "settings", "handler_class"} <= set(hints)


def test_hook_argument_types_are_the_public_ones():
    hints = {hook: typing.get_type_hints(getattr(ProxyRequestHandler, hook)) for hook in HOOKS}
    assert hints["check_request"]["request"] is Request
    assert hints["select_target"]["request"] is Request
    assert hints["session_started"]["session"] is SessionInfo
    assert hints["session_ended"]["session"] is SessionInfo
    assert hints["client_data"]["data"] is memoryview
    assert hints["target_data"]["data"] is memoryview


def test_public_exceptions_carry_their_answer():
    refusal = HandshakeError(429, "slow down", {"Retry-After": "7"})
    assert (refusal.status, refusal.reason, refusal.headers) == (429, "slow down", {"Retry-After": "7"})
    failure = ProtocolError(CloseCode.PROTOCOL_ERROR, "bad frame")
    assert failure.code == 1002 and failure.reason == "bad frame"
    assert issubclass(ConfigError, ValueError)
    assert CloseCode.GOING_AWAY == 1001


_IMPORT_PROBE = r"""
import json, logging, os, signal, sys, threading

def state():
    signals = {}
    for number in sorted(signal.valid_signals()):
        try:
            handler = signal.getsignal(number)
        except (OSError, ValueError):
            continue
        signals[int(number)] = repr(handler)
    return {
        "signals": signals,
        "wakeup_fd": signal.set_wakeup_fd(-1),
        "root_handlers": [repr(h) for h in logging.getLogger().handlers],
        "root_level": logging.getLogger().level,
        "wsproxy_handlers": [repr(h) for h in logging.getLogger("wsproxy").handlers],
        "wsproxy_level": logging.getLogger("wsproxy").level,
        "wsproxy_propagate": logging.getLogger("wsproxy").propagate,
        "logging_disabled": logging.root.manager.disable,
        "cwd": os.getcwd(),
        "argv": list(sys.argv),
        "argv_id": id(sys.argv),
        "threads": threading.active_count(),
        "umask": os.umask(0o022),
        "stdout": id(sys.stdout), "stderr": id(sys.stderr),
    }

before = state()
os.umask(before["umask"])
import wsproxy
after = state()
print(json.dumps({"before": before, "after": after}))
"""


def test_importing_wsproxy_changes_no_process_state():
    result = run_child("-c", _IMPORT_PROBE, "--port", "1", "bogus-argument")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    report = json.loads(result.stdout)
    before, after = report["before"], report["after"]
    assert before["argv"] == ["-c", "--port", "1", "bogus-argument"]
    changed = {key: (before[key], after[key]) for key in before if before[key] != after[key]}
    assert not changed, "importing wsproxy changed: %s" % changed


def test_pydoc_shows_every_public_name_and_hook():
    result = run_child("-m", "pydoc", "wsproxy")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    text = result.stdout
    for name in DOCUMENTED:
        assert "class %s(" % name in text, "pydoc wsproxy does not show %s" % name
    for hook in HOOKS:
        assert "%s(self" % hook in text, "pydoc wsproxy does not show the %s hook" % hook


def test_embedding_doc_names_every_hook_and_public_name_and_its_code_compiles():
    path = os.path.join(ROOT, "README.md")
    with open(path, encoding="utf-8") as doc:
        readme = doc.read()
    # The README's "Use it from Python" section, up to the next top-level section.
    text = readme.split("\n## Use it from Python\n", 1)[1].split("\n## ", 1)[0]
    for name in sorted(DOCUMENTED):
        assert "`%s" % name in text, "the README's embedding section does not mention %s" % name
    table = [line for line in text.splitlines() if line.startswith("| `")]
    assert [line.split("`")[1].split("(")[0] for line in table] == [
        "check_request", "check_http_request", "select_target", "session_started", "client_data",
        "target_data", "session_ended"]
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 3
    for block in blocks:
        for node in ast.walk(ast.parse(block, path)):
            if isinstance(node, ast.ImportFrom) and node.module == "wsproxy":
                assert {alias.name for alias in node.names} <= DOCUMENTED, block


# -- starting and stopping -----------------------------------------------------------


def test_start_and_stop_in_a_thread(serve, echo_target):
    settings = Settings(target_host="127.0.0.1", target_port=echo_target.port)
    unchanged = dataclasses.replace(settings)
    served = serve(ProxyServer(("127.0.0.1", 0), settings))
    assert served.server.settings is settings
    echo_round_trip(served.port)
    served.stop()
    assert settings == unchanged, "the server changed the settings it was given"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", served.port), timeout=2).close()


def test_two_servers_in_one_process_keep_their_own_settings(serve, make_target):
    target_a = make_target(send_on_connect=b"A")
    target_b = make_target(send_on_connect=b"B")
    strict = serve(proxy_to(target_a.port, origin=["https://app.example"]))
    open_to_all = serve(proxy_to(target_b.port))

    with WSClient(strict.port) as refused:
        refused.handshake(expect_status=403)
    with open_session(strict.port, protocols=["binary"],
                      headers={"Origin": "https://app.example"}) as ws:
        assert ws.recv_stream(1) == b"A"
        close_cleanly(ws)
    with open_session(open_to_all.port, protocols=["binary"]) as ws:
        assert ws.recv_stream(1) == b"B"
        close_cleanly(ws)
    assert len(target_a.connections) == 1 and len(target_b.connections) == 1
    strict.stop()
    # The other server keeps serving after its neighbour stopped.
    with open_session(open_to_all.port, protocols=["binary"]) as ws:
        assert ws.recv_stream(1) == b"B"
        close_cleanly(ws)


# -- the hooks ---------------------------------------------------------------------------


def test_hooks_fire_once_each_in_order_with_the_right_arguments(serve, echo_target):
    log = HookLog()
    served = serve(proxy_to(echo_target.port, recording_handler(log)))
    chunks = [b"first", os.urandom(3000), b"\x00" * 70000]
    sent = b"".join(chunks)
    with open_session(served.port, protocols=["binary"], path="/console/7?view=full",
                      extra_headers=[("X-Embedder", "yes")]) as ws:
        client_address = ws.sock.getsockname()
        for chunk in chunks:
            ws.send_binary(chunk)
        assert ws.recv_stream(len(sent), opcode=OP_BINARY) == sent
        close_cleanly(ws)
    ended_snapshot, ended = log.wait_for("session_ended")[0]

    names = log.names()
    lifecycle = [name for name in names if name not in ("client_data", "target_data")]
    assert lifecycle == ["check_request", "select_target", "session_started", "session_ended"]
    first_data = min(names.index("client_data"), names.index("target_data"))
    assert names.index("session_started") < first_data
    assert max(i for i, name in enumerate(names) if name in ("client_data", "target_data")) \
        < names.index("session_ended")

    (request,) = log.calls("check_request")[0]
    assert isinstance(request, Request)
    assert request.method == "GET"
    assert request.target == "/console/7?view=full"
    assert request.path == "/console/7"
    assert request.headers["x-embedder"] == "yes"
    assert log.calls("select_target")[0][0] is request

    started_snapshot, started = log.calls("session_started")[0]
    assert started is ended, "session_started and session_ended got different SessionInfo objects"
    assert isinstance(started, SessionInfo)
    assert (started_snapshot.bytes_from_client, started_snapshot.bytes_to_client) == (0, 0)
    assert started_snapshot.close_code is None

    assert isinstance(ended.number, int) and ended.number >= 1
    assert tuple(ended.client_address)[:2] == client_address
    assert ended.target == Target(host="127.0.0.1", port=echo_target.port)
    assert ended.protocol == "rfc6455"
    assert ended.subprotocol == "binary"
    assert ended.path == "/console/7?view=full"
    assert ended_snapshot.bytes_from_client == len(sent)
    assert ended_snapshot.bytes_to_client == len(sent)
    assert ended_snapshot.close_code == CloseCode.NORMAL
    assert ended_snapshot.duration >= 0

    client_chunks = log.calls("client_data")
    target_chunks = log.calls("target_data")
    assert all(kind is memoryview for kind, _ in client_chunks + target_chunks)
    assert b"".join(data for _, data in client_chunks) == sent
    assert b"".join(data for _, data in target_chunks) == sent


def test_sessions_get_distinct_numbers(serve, echo_target):
    log = HookLog()
    served = serve(proxy_to(echo_target.port, recording_handler(log)))
    for _ in range(3):
        with open_session(served.port, protocols=["binary"]) as ws:
            close_cleanly(ws)
    numbers = [session.number for _, session in log.wait_for("session_ended", 3)]
    assert len(set(numbers)) == 3


def test_base64_subprotocol_is_reported_and_hooks_see_decoded_bytes(serve, echo_target):
    log = HookLog()
    served = serve(proxy_to(echo_target.port, recording_handler(log)))
    payload = os.urandom(300)
    with open_session(served.port, protocols=["base64"]) as ws:
        ws.send_text(base64.b64encode(payload).decode("ascii"))
        assert ws.recv_stream(len(payload), decode_base64=True) == payload
        close_cleanly(ws)
    _, session = log.wait_for("session_ended")[0]
    assert session.subprotocol == "base64"
    assert b"".join(data for _, data in log.calls("client_data")) == payload
    assert session.bytes_from_client == len(payload) == session.bytes_to_client


@pytest.mark.parametrize("status", [403, http.HTTPStatus.FORBIDDEN])
def test_check_request_status_refuses_before_any_target_connection(serve, echo_target, status):
    log = HookLog()

    class Refusing(recording_handler(log)):
        def check_request(self, request):
            super().check_request(request)
            return status

    served = serve(proxy_to(echo_target.port, Refusing))
    with WSClient(served.port) as ws:
        response = ws.handshake(expect_status=403)
        assert response.header("Sec-WebSocket-Accept") is None
        ws.expect_closed()
    assert log.names() == ["check_request"]
    assert echo_target.connections == []


def test_check_http_request_guards_every_plain_page_but_not_the_upgrade(serve, echo_target):
    class InternalOnly(ProxyRequestHandler):
        def check_http_request(self, request):
            if request.headers.get("x-internal") != "yes":
                raise HandshakeError(403, "internal pages only")

    served = serve(proxy_to(echo_target.port, InternalOnly, status="/status"))
    for path in ("/status", "/anything"):
        with WSClient(served.port) as ws:
            ws.send_raw(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path).encode())
            assert ws.read_response().status == 403
    with WSClient(served.port) as ws:
        ws.send_raw(b"GET /status HTTP/1.1\r\nHost: x\r\nX-Internal: yes\r\n\r\n")
        assert ws.read_response().status == 200
    echo_round_trip(served.port)


def test_handshake_error_from_check_request_sends_status_reason_and_headers(serve, echo_target):
    class Throttling(ProxyRequestHandler):
        def check_request(self, request):
            raise HandshakeError(429, "slow down", {"Retry-After": "7"})

    served = serve(proxy_to(echo_target.port, Throttling))
    with WSClient(served.port) as ws:
        response = ws.handshake(expect_status=429)
        assert response.header("Retry-After") == "7"
        assert b"slow down" in response.body
        ws.expect_closed()
    assert echo_target.connections == []


def test_handshake_error_from_select_target_refuses(serve, echo_target):
    log = HookLog()

    class Unknown(recording_handler(log)):
        def select_target(self, request):
            log.add("select_target", request)
            raise HandshakeError(404, "no such console")

    served = serve(proxy_to(echo_target.port, Unknown))
    with WSClient(served.port) as ws:
        response = ws.handshake(expect_status=404)
        assert b"no such console" in response.body
    assert log.names() == ["check_request", "select_target"]
    assert echo_target.connections == []


def test_select_target_may_return_a_socketpair_end(serve, echo_target):
    log = HookLog()
    our_ends = []  # the test's end of each pair

    class Paired(recording_handler(log)):
        def select_target(self, request):
            proxy_end, test_end = socket.socketpair()
            our_ends.append(test_end)
            log.add("given", proxy_end)
            return proxy_end

    served = serve(proxy_to(echo_target.port, Paired))
    with open_session(served.port, protocols=["binary"]) as ws:
        test_end = wait_until(lambda: our_ends and our_ends[0], message="the socket pair")
        test_end.settimeout(DEFAULT_TIMEOUT)
        try:
            ws.send_binary(b"to the pair")
            received = b""
            while len(received) < len(b"to the pair"):
                received += test_end.recv(100)
            assert received == b"to the pair"
            test_end.sendall(b"from the pair")
            assert ws.recv_stream(len(b"from the pair")) == b"from the pair"
            close_cleanly(ws)
            assert test_end.recv(100) == b"", "the proxy did not shut down its end"
        finally:
            test_end.close()
    _, session = log.wait_for("session_ended")[0]
    assert session.target is not None
    assert (session.bytes_from_client, session.bytes_to_client) == (11, 13)
    assert echo_target.connections == []
    (given,) = log.calls("given")[0]
    wait_until(lambda: given.fileno() == -1,
               message="the proxy to close the socket it was given")


def test_select_target_may_return_a_connected_tcp_socket(serve, make_target, echo_target):
    chosen = make_target(send_on_connect=b"chosen:")

    class Connected(ProxyRequestHandler):
        def select_target(self, request):
            return socket.create_connection(("127.0.0.1", chosen.port), timeout=5)

    served = serve(proxy_to(echo_target.port, Connected))
    with open_session(served.port, protocols=["binary"]) as ws:
        ws.send_binary(b"hello")
        assert ws.recv_stream(12) == b"chosen:hello"
        close_cleanly(ws)
    assert echo_target.connections == []
    chosen.wait_connection().wait_eof()


def test_a_given_socket_with_a_timeout_survives_an_idle_session(serve, echo_target):
    """The proxy owns the socket it is given: an idle session must not end on its old timeout."""

    class Connected(ProxyRequestHandler):
        def select_target(self, request):
            return socket.create_connection(("127.0.0.1", echo_target.port), timeout=0.2)

    served = serve(proxy_to(echo_target.port, Connected))
    with open_session(served.port, protocols=["binary"]) as ws:
        ws.send_binary(b"before")
        assert ws.recv_stream(6) == b"before"
        # The idle period under test (longer than the socket's own timeout), not a wait for an event.
        time.sleep(0.6)
        ws.send_binary(b"after")
        assert ws.recv_stream(5) == b"after"
        close_cleanly(ws)


def test_client_data_transforms_and_target_data_observes(serve, echo_target):
    observed = []

    class Shouting(ProxyRequestHandler):
        def client_data(self, data):
            return bytes(data).upper()

        def target_data(self, data):
            observed.append(bytes(data))
            return None

    served = serve(proxy_to(echo_target.port, Shouting))
    with open_session(served.port, protocols=["binary"]) as ws:
        ws.send_binary(b"hello, ")
        ws.send_binary(b"target")
        assert ws.recv_stream(13) == b"HELLO, TARGET"
        close_cleanly(ws)
    connection = echo_target.wait_connection()
    connection.wait_eof()
    assert connection.received_bytes() == b"HELLO, TARGET"
    assert b"".join(observed) == b"HELLO, TARGET"


def test_target_data_transforms_what_the_client_receives(serve, make_target):
    target = make_target(send_on_connect=b"abc" * 1000, close_after_send=True)

    class Filtering(ProxyRequestHandler):
        def target_data(self, data):
            return bytes(data).replace(b"b", b"")

    served = serve(proxy_to(target.port, Filtering))
    with open_session(served.port, protocols=["binary"]) as ws:
        assert ws.recv_stream(2000) == b"ac" * 1000
        assert ws.recv_close()[0] == 1000
        ws.send_close(1000)
        ws.expect_closed()


def test_byte_counts_are_what_each_peer_sent_when_hooks_change_lengths(serve, echo_target):
    """``bytes_from_client`` counts what the client sent, ``bytes_to_client`` what it received."""
    log = HookLog()

    class Doubling(recording_handler(log)):
        def client_data(self, data):
            return bytes(data) * 2          # the target gets 20 bytes for the client's 10

        def target_data(self, data):
            return bytes(data) * 2          # the client gets 40 bytes for the target's 20

    served = serve(proxy_to(echo_target.port, Doubling))
    with open_session(served.port, protocols=["binary"]) as ws:
        ws.send_binary(b"0123456789")
        assert len(ws.recv_stream(40)) == 40
        close_cleanly(ws)
    echo_target.wait_connection().wait_eof()
    assert echo_target.connections[0].received_count == 20
    _, session = log.wait_for("session_ended")[0]
    assert session.bytes_from_client == 10, "should count the client's bytes, before client_data"
    assert session.bytes_to_client == 40, "should count the bytes sent to the client, after target_data"


def test_data_hooks_are_not_called_unless_overridden(serve, echo_target, monkeypatch):
    calls = []

    def counting(self, data):
        calls.append(bytes(data))
        return None

    # The base class's own hooks: a handler that overrides nothing must never call them.
    monkeypatch.setattr(ProxyRequestHandler, "client_data", counting)
    monkeypatch.setattr(ProxyRequestHandler, "target_data", counting)

    class NoDataHooks(ProxyRequestHandler):
        pass

    served = serve(proxy_to(echo_target.port, NoDataHooks))
    echo_round_trip(served.port)
    assert calls == []


# -- shutdown with open sessions ---------------------------------------------------------


def test_shutdown_closes_every_open_session_with_1001(serve, echo_target):
    log = HookLog()
    threads_before = set(threading.enumerate())
    served = serve(proxy_to(echo_target.port, recording_handler(log)))
    clients = [open_session(served.port, protocols=["binary"]) for _ in range(3)]
    try:
        for ws in clients:
            ws.send_binary(b"hi")
            assert ws.recv_stream(2) == b"hi"
        wait_until(lambda: served.server.open_sessions == 3, message="three open sessions")
        session_threads = {ident for name, _, ident in log.events() if name == "session_started"}
        stopper = threading.Thread(target=served.stop, name="api-shutdown")
        stopper.start()
        for ws in clients:
            assert ws.recv_close()[0] == CloseCode.GOING_AWAY
            ws.send_close(1001)
            ws.expect_closed()
        stopper.join(THREAD_DEADLINE + 6)
        assert not stopper.is_alive(), "shutdown() did not return"
    finally:
        for ws in clients:
            ws.close()
    ended = log.wait_for("session_ended", 3)
    assert sorted(session.close_code for _, session in ended) == [1001] * 3
    assert served.server.open_sessions == 0
    wait_until(lambda: not session_threads & {thread.ident for thread in threading.enumerate()},
               THREAD_DEADLINE, "the session threads to end")
    # Every client answered the close at once: nothing the proxy started may outlive that.
    for connection in echo_target.connections:
        connection.finished.wait(THREAD_DEADLINE)
    wait_until(lambda: not set(threading.enumerate()) - threads_before, 2.0,
               "every thread started by the proxy to end after shutdown(); alive: %s"
               % [thread.name for thread in set(threading.enumerate()) - threads_before])


# -- mounted in the standard library's servers ------------------------------------------


@pytest.mark.parametrize("server_class", [socketserver.ThreadingTCPServer,
                                          http.server.ThreadingHTTPServer])
def test_handler_relays_in_a_plain_standard_library_server(serve, echo_target, server_class):
    log = HookLog()

    class Mounted(recording_handler(log)):
        settings = Settings(target_host="127.0.0.1", target_port=echo_target.port)

    served = serve(server_class(("127.0.0.1", 0), Mounted))
    payload = os.urandom(50000)
    with open_session(served.port, protocols=["binary"], path="/mounted") as ws:
        ws.send_binary(payload)
        assert ws.recv_stream(len(payload), opcode=OP_BINARY) == payload
        close_cleanly(ws)
    _, session = log.wait_for("session_ended")[0]
    assert session.path == "/mounted"
    assert session.target == Target(host="127.0.0.1", port=echo_target.port)
    assert (session.bytes_from_client, session.bytes_to_client) == (len(payload), len(payload))
    assert session.close_code == 1000

    # A refusal is answered by the handler alone, without the wsproxy server.
    class Refusing(Mounted):
        def check_request(self, request):
            return 403

    refusing = serve(server_class(("127.0.0.1", 0), Refusing))
    with WSClient(refusing.port) as ws:
        ws.handshake(expect_status=403)
