"""Tests for wsproxy/routing/: websockify's token plugins by name, and custom plugin classes.

Each built-in reads real inputs (files and directories written here, an HTTP
service started here, Unix sockets bound here); the proxy tests route real
WebSocket sessions through them.  JWT and Redis have their own files.
"""

import http.server
import json
import os
import socket
import sys
import textwrap
import threading

import pytest

from conftest import free_port, wait_until
from wsclient import OP_BINARY, open_session

from wsproxy import ConfigError, Target
import wsproxy.plugins
from wsproxy.plugins import (AuthenticationError, BasePlugin, PluginBusy, PluginRunner,
                             PluginTimeout, load_plugin, parse_source_args)
from wsproxy.routing import TOKEN_PLUGINS, PluginTokens, TokenLookupError
from wsproxy.routing.base import answer_to_target


def tokens_of(name, source):
    return PluginTokens(name, str(source))


# -- the source splitter and the loader ---------------------------------------------------


@pytest.mark.parametrize("source, fields", [
    ("a", ["a"]),
    ("h:6380:1:pw:ns", ["h", "6380", "1", "pw", "ns"]),
    ("h:::secret", ["h", "", "", "secret"]),
    ('h::::"first:second"', ["h", "", "", "", "first:second"]),
    ('"::1":6379', ["::1", "6379"]),
    ("a:", ["a", ""]),
    ('x"y":z', ['x"y"', "z"]),
])
def test_parse_source_args_splits_like_websockify(source, fields):
    assert parse_source_args(source) == fields


def test_every_builtin_name_loads():
    for name in TOKEN_PLUGINS:
        assert load_plugin(name, TOKEN_PLUGINS, "token-plugin").__name__ == name
    # websockify's own module path to a built-in means the built-in.
    assert load_plugin("websockify.token_plugins.TokenFile", TOKEN_PLUGINS,
                       "token-plugin").__module__ == "wsproxy.routing.files"


@pytest.mark.parametrize("name, message", [
    ("NoSuchPlugin", "no built-in plugin"),
    ("no_such_module_anywhere.Plugin", "cannot import"),
    ("wsproxy.routing.files.NoSuchClass", "has no class"),
])
def test_unknown_plugins_are_config_errors_naming_the_option(name, message):
    with pytest.raises(ConfigError) as caught:
        PluginTokens(name, "x")
    assert "token-plugin" in str(caught.value) and message in str(caught.value)


@pytest.mark.parametrize("answer, target", [
    (("10.0.0.1", "5900"), Target(host="10.0.0.1", port=5900)),
    (["h", b"5901"], Target(host="h", port=5901)),
    (("h", 22), Target(host="h", port=22)),
    (("[::1]", "5900"), Target(host="::1", port=5900)),
    (("unix_socket", "/run/vnc.sock"), Target(unix="/run/vnc.sock")),
    (None, None),
])
def test_plugin_answers_become_targets(answer, target):
    assert answer_to_target(answer) == target


@pytest.mark.parametrize("answer", [("h", "0"), ("h", "x"), ("h",), "h:1", ("", "1"),
                                    ("h", 70000), ("a b", "1"), ("unix_socket", "")])
def test_malformed_plugin_answers_are_refused(answer):
    with pytest.raises(ValueError):
        answer_to_target(answer)


# -- TokenFile and ReadOnlyTokenFile ------------------------------------------------------


def test_token_file_lines_as_websockify_reads_them(tmp_path, wsproxy_log):
    path = tmp_path / "tokens"
    path.write_text("# a comment\n"
                    "plain: 10.0.0.1:5900\n"
                    "my desk: host.example:5901\n"
                    "a:b: 10.0.0.2:5902\n"
                    "sock: unix_socket:/run/vnc.sock\n"
                    "six: [::1]:5903\n"
                    "\n"
                    "broken line without target\n"
                    "two: targets: 1.2.3.4:5\n")
    tokens = tokens_of("TokenFile", path)
    assert tokens.lookup("plain") == Target(host="10.0.0.1", port=5900)
    assert tokens.lookup("my desk") == Target(host="host.example", port=5901)
    assert tokens.lookup("a:b") == Target(host="10.0.0.2", port=5902)
    assert tokens.lookup("sock") == Target(unix="/run/vnc.sock")
    assert tokens.lookup("six") == Target(host="::1", port=5903)
    assert tokens.lookup("two") is None and tokens.lookup("nosuch") is None
    assert wsproxy_log.find("line 8")
    assert wsproxy_log.find("line 9")


def test_token_file_sees_a_change_at_the_next_lookup_read_only_does_not(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("one: h:1\n")
    live, frozen = tokens_of("TokenFile", path), tokens_of("ReadOnlyTokenFile", path)
    path.write_text("one: h:2\nnew: h:3\n")
    assert live.lookup("one") == Target(host="h", port=2)
    assert live.lookup("new") == Target(host="h", port=3)
    assert frozen.lookup("one") == Target(host="h", port=1)
    assert frozen.lookup("new") is None
    frozen.reload()  # SIGHUP
    assert frozen.lookup("new") == Target(host="h", port=3)


def test_token_file_directory_reads_every_file(tmp_path):
    (tmp_path / "a.conf").write_text("a: h:1\n")
    (tmp_path / ".hidden").write_text("hidden: h:2\n")
    (tmp_path / "sub").mkdir()
    tokens = tokens_of("TokenFile", tmp_path)
    assert tokens.lookup("a") == Target(host="h", port=1)
    assert tokens.lookup("hidden") == Target(host="h", port=2)  # websockify reads these too


def test_token_file_that_vanishes_gives_503_not_a_crash(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("a: h:1\n")
    tokens = tokens_of("TokenFile", path)
    path.unlink()
    with pytest.raises(TokenLookupError):
        tokens.lookup("a")


def test_missing_token_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="token-source"):
        tokens_of("TokenFile", tmp_path / "missing")


# -- TokenFileName and UnixDomainSocketDirectory -------------------------------------------


def test_token_file_name(tmp_path):
    (tmp_path / "desk1").write_text("10.0.0.1:5900\n")
    (tmp_path / "sock").write_text("unix_socket:/run/a.sock")
    (tmp_path / "bad").write_text("no port here")
    tokens = tokens_of("TokenFileName", tmp_path)
    assert tokens.lookup("desk1") == Target(host="10.0.0.1", port=5900)
    assert tokens.lookup("../%s/desk1" % tmp_path.name) == Target(host="10.0.0.1", port=5900)
    assert tokens.lookup("sock") == Target(unix="/run/a.sock")
    for unknown in ("nosuch", "..", ".", "/etc/passwd"):
        assert tokens.lookup(unknown) is None
    with pytest.raises(TokenLookupError, match="bad"):
        tokens.lookup("bad")
    with pytest.raises(ConfigError, match="token-source"):
        tokens_of("TokenFileName", tmp_path / "desk1")


@pytest.fixture
def socket_dir():
    import tempfile
    directory = tempfile.mkdtemp(dir="/tmp", prefix="h13uds")  # short: AF_UNIX paths are short
    listeners = []
    yield directory, listeners
    for listener in listeners:
        listener.close()
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))
    os.rmdir(directory)


def test_unix_domain_socket_directory(socket_dir):
    directory, listeners = socket_dir
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(os.path.join(directory, "vm1"))
    listeners.append(listener)
    with open(os.path.join(directory, "plain-file"), "w") as stream:
        stream.write("not a socket")
    tokens = tokens_of("UnixDomainSocketDirectory", directory)
    assert tokens.lookup("vm1") == Target(unix=os.path.join(directory, "vm1"))
    for unknown in ("plain-file", "nosuch", "../" + os.path.basename(directory) + "x/vm1", "..",
                    "/etc"):
        assert tokens.lookup(unknown) is None


# -- BaseTokenAPI and JSONTokenApi against a real HTTP service ------------------------------


class TokenAPI(http.server.ThreadingHTTPServer):
    """An HTTP token service: ``/plain/TOKEN`` answers text, ``/json/TOKEN`` JSON."""

    daemon_threads = True

    def __init__(self, answers):
        self.answers = answers  # path -> (status, body)
        self.paths = []
        super().__init__(("127.0.0.1", 0), _APIHandler)
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.start()

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.server_address[1], path)

    def stop(self):
        self.shutdown()
        self.server_close()
        self.thread.join(5)


class _APIHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.paths.append(self.path)
        status, body = self.server.answers.get(self.path, (404, b"unknown"))
        if status in (301, 302):
            self.send_response(status)
            self.send_header("Location", body.decode())
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def token_api():
    servers = []

    def start(answers):
        server = TokenAPI(answers)
        servers.append(server)
        return server
    yield start
    for server in servers:
        server.stop()


def test_base_token_api(token_api):
    api = token_api({"/plain/desk": (200, b"10.0.0.1:5900\n"),
                     "/plain/moved": (302, b"/plain/desk"),
                     "/plain/broken": (500, b"oops"),
                     "/plain/garbage": (200, b"no colon")})
    tokens = tokens_of("BaseTokenAPI", api.url("/plain/%s"))
    assert tokens.lookup("desk") == Target(host="10.0.0.1", port=5900)
    assert tokens.lookup("moved") == Target(host="10.0.0.1", port=5900)
    assert tokens.lookup("nosuch") is None  # 404
    with pytest.raises(TokenLookupError, match="HTTP 500"):
        tokens.lookup("broken")
    with pytest.raises(TokenLookupError, match="not what it expects"):
        tokens.lookup("garbage")
    # The token is percent-encoded: it cannot add a query or a path.
    assert tokens.lookup("a?b=c/d") is None
    assert "/plain/a%3Fb%3Dc%2Fd" in api.paths


def test_json_token_api(token_api):
    api = token_api({"/t?token=desk": (200, json.dumps({"host": "h.example", "port": 5901})
                                       .encode()),
                     "/t?token=text-port": (200, b'{"host": "h", "port": "5902"}'),
                     "/t?token=nohost": (200, b'{"port": 1}')})
    tokens = tokens_of("JSONTokenApi", api.url("/t?token=%s"))
    assert tokens.lookup("desk") == Target(host="h.example", port=5901)
    assert tokens.lookup("text-port") == Target(host="h", port=5902)
    with pytest.raises(TokenLookupError):
        tokens.lookup("nohost")


def test_token_api_that_is_down_or_silent_gives_an_error_in_time():
    # Unreachable: nothing listens on the port.
    port = free_port()
    tokens = tokens_of("JSONTokenApi", "http://127.0.0.1:%d/%%s" % port)
    with pytest.raises(TokenLookupError, match="failed"):
        tokens.lookup("x")
    # Silent: accepts and never answers; the lookup deadline ends it.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        tokens = PluginTokens("JSONTokenApi", "http://127.0.0.1:%d/%%s" % silent.getsockname()[1])
        tokens.plugin.timeout = 0.3
        with pytest.raises(TokenLookupError, match="too slow"):
            tokens.lookup("x")


@pytest.mark.parametrize("source", ["http://h/no-placeholder", "ftp://h/%s", "", "/path/%s",
                                    "http://h/%s/%s"])
def test_token_api_needs_a_url_with_one_placeholder(source):
    with pytest.raises(ConfigError, match="token-source"):
        PluginTokens("BaseTokenAPI", source)


# -- custom plugin classes by dotted path ----------------------------------------------------

CUSTOM_MODULE = '''
import time, threading

class Plugin:
    """Written for websockify: no wsproxy import."""
    release = threading.Event()

    def __init__(self, src):
        self.source = src
        self.targets = dict(item.split("=", 1) for item in src.split(","))

    def lookup(self, token):
        if token == "boom":
            raise RuntimeError("plugin bug")
        if token == "slow":
            self.release.wait(10)
            return None
        if token == "garbage":
            return "not a pair"
        value = self.targets.get(token)
        if value is None:
            return None
        if value.startswith("/"):
            return ["unix_socket", value]
        host, port = value.rsplit(":", 1)
        return [host, port]


class Refuses:
    def __init__(self, src):
        raise ValueError("bad source " + repr(src))
'''


@pytest.fixture
def custom_module(tmp_path, monkeypatch):
    """A module written by the test, importable as ``h13_custom_plugins``."""
    (tmp_path / "h13_custom_plugins.py").write_text(textwrap.dedent(CUSTOM_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "h13_custom_plugins"
    module = sys.modules.pop("h13_custom_plugins", None)
    if module is not None:
        module.Plugin.release.set()


def test_custom_plugin_loads_by_dotted_path(custom_module):
    tokens = PluginTokens(custom_module + ".Plugin", "a=10.0.0.1:5900,s=/run/s.sock")
    assert tokens.lookup("a") == Target(host="10.0.0.1", port=5900)
    assert tokens.lookup("s") == Target(unix="/run/s.sock")
    assert tokens.lookup("b") is None
    with pytest.raises(TokenLookupError, match="RuntimeError: plugin bug"):
        tokens.lookup("boom")
    with pytest.raises(TokenLookupError, match="answered no target"):
        tokens.lookup("garbage")


def test_custom_plugin_that_hangs_is_given_up_on_at_the_deadline(custom_module):
    tokens = PluginTokens(custom_module + ".Plugin", "a=h:1", timeout=0.2)
    with pytest.raises(TokenLookupError, match="no answer in 0.2 s"):
        tokens.lookup("slow")
    assert tokens.lookup("a") == Target(host="h", port=1)  # others still answered
    sys.modules[custom_module].Plugin.release.set()
    wait_until(lambda: tokens.runner.running == 0, message="the stuck call to end")


def test_runner_bounds_the_calls_stuck_past_their_deadline(monkeypatch):
    monkeypatch.setattr(wsproxy.plugins, "MAX_STUCK", 2)
    release = threading.Event()
    runner = PluginRunner(BasePlugin(), "test-plugin-call", timeout=0.05)
    for _ in range(2):
        with pytest.raises(PluginTimeout):
            runner.run(release.wait)
    with pytest.raises(PluginBusy) as busy:
        runner.run(lambda: "never called")
    assert busy.value.running == 2
    release.set()
    wait_until(lambda: runner.running == 0, message="the stuck calls to end")
    assert runner.run(lambda: "answer") == "answer"
    with pytest.raises(ZeroDivisionError):  # raised on the helper thread, handed over
        runner.run(lambda: 1 // 0)


def test_custom_plugin_refusing_its_source_is_a_config_error(custom_module):
    with pytest.raises(ConfigError, match="token-plugin: .*ValueError: bad source"):
        PluginTokens(custom_module + ".Refuses", "x")


def test_wsproxy_base_plugin_and_error_keep_websockify_names():
    plugin = BasePlugin("src")
    assert plugin.source == "src" and plugin.lookup("t") is None
    assert plugin.authenticate({}, None, None) is None
    error = AuthenticationError(response_code=401, response_headers={"A": "b"},
                                response_msg="nope")
    assert (error.code, error.headers, error.msg, str(error)) == (401, {"A": "b"}, "nope",
                                                                  "401 nope")
    import wsproxy
    assert wsproxy.BasePlugin is BasePlugin and wsproxy.AuthenticationError is AuthenticationError


# -- through the proxy ---------------------------------------------------------------------


def tag_of(port, path):
    with open_session(port, protocols=["binary"], path=path) as ws:
        tag = ws.recv_stream(1, opcode=OP_BINARY)
        ws.send_binary(b"ping")
        assert ws.recv_stream(4, opcode=OP_BINARY) == b"ping"
        ws.send_close(1000)
        ws.recv_close()
    return tag


@pytest.fixture
def tagged(make_target):
    return {tag: make_target(send_on_connect=tag.encode("ascii")) for tag in "AB"}


def test_proxy_routes_by_token_file_plugin(proxy, tagged, tmp_path, wsproxy_log):
    path = tmp_path / "tokens"
    path.write_text("desk one: 127.0.0.1:%d\n" % tagged["A"].port)
    running = proxy(target_port=1, token_plugin="TokenFile", token_source=str(path))
    assert tag_of(running.port, "/websockify?token=desk%20one") == b"A"
    path.write_text("desk one: 127.0.0.1:%d\n" % tagged["B"].port)
    assert tag_of(running.port, "/websockify?token=desk%20one") == b"B"
    with running.client() as ws:
        ws.handshake(expect_status=404, path="/?token=nosuch")
    wsproxy_log.wait_for(lambda text: "refused: 404" in text, what="the 404 log line")


def test_proxy_routes_through_a_custom_plugin_end_to_end(proxy, tagged, custom_module,
                                                         wsproxy_log, socket_dir):
    directory, listeners = socket_dir
    running = proxy(target_port=1, token_plugin=custom_module + ".Plugin",
                    token_source="a=127.0.0.1:%d,b=127.0.0.1:%d" % (tagged["A"].port,
                                                                    tagged["B"].port))
    assert tag_of(running.port, "/?token=a") == b"A"
    assert tag_of(running.port, "/?token=b") == b"B"
    for token, status in (("nosuch", 404), ("boom", 503), ("garbage", 503)):
        with running.client() as ws:
            ws.handshake(expect_status=status, path="/?token=" + token)
    wsproxy_log.wait_for(lambda text: "plugin bug" in text, what="the plugin's failure logged")
    wsproxy_log.assert_no_traceback()
    assert len(tagged["A"].connections) == 1 and len(tagged["B"].connections) == 1


def test_proxy_routes_to_a_unix_socket_plugin_target(proxy, socket_dir):
    directory, listeners = socket_dir
    path = os.path.join(directory, "vm")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    listeners.append(listener)
    running = proxy(target_port=1, token_plugin="UnixDomainSocketDirectory",
                    token_source=directory)
    with open_session(running.port, protocols=["binary"], path="/?token=vm") as ws:
        listener.settimeout(5)
        connection, _ = listener.accept()
        with connection:
            connection.sendall(b"hello")
            assert ws.recv_stream(5, opcode=OP_BINARY) == b"hello"
            ws.send_close(1000)
            ws.recv_close()
