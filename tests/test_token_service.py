"""``--token-source http(s)://...``: the token service client, its cache and its failures.

The service is a real ``http.server`` on 127.0.0.1, started by each test;
the proxy asks it over real sockets.  Timings are measured, never slept.
"""

import base64
import http.server
import json
import os
import socket
import ssl
import threading
import time
import urllib.parse
from typing import Dict, List, Optional, Tuple

import pytest

from certs import pki
from conftest import THREAD_DEADLINE, free_port, wait_until

from wsproxy import ConfigError, Target
from wsproxy.tokens import (TokenService, TokenServiceError, TokenTable, open_token_source)


class TokenServiceStub:
    """A token service over HTTP: ``answers`` maps a token to ``(status, body)``.

    Unlisted tokens get 404.  Tokens in ``slow`` are answered only once
    ``release`` is set (or after 10 s).  ``requests`` records each request's
    path, query and headers.  ``cert``/``key`` make it HTTPS.
    """

    def __init__(self, cert: Optional[str] = None, key: Optional[str] = None) -> None:
        self.answers: Dict[str, Tuple[int, bytes]] = {}
        self.slow = set()
        self.release = threading.Event()
        self.requests: List[Tuple[str, Dict[str, List[str]], Dict[str, str]]] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                parts = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(parts.query)
                with stub._lock:
                    stub.requests.append((parts.path, query, dict(self.headers)))
                token = query.get("token", [""])[-1]
                if token in stub.slow:
                    stub.release.wait(10)
                status, body = stub.answers.get(token, (404, b"unknown token\n"))
                try:
                    self.send_response(status)
                    if status in (301, 302):
                        self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up waiting

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = False  # server_close() joins every request thread

            def handle_error(self, request, client_address):
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.scheme = "http"
        if cert:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True,
                                       name="token-service-%d" % self.port)
        self.thread.start()

    def url(self, path: str = "/tokens", host: str = "127.0.0.1") -> str:
        return "%s://%s:%d%s" % (self.scheme, host, self.port, path)

    def route(self, token: str, answer) -> None:
        """Answer ``token`` with 200 and ``answer`` as JSON."""
        self.answers[token] = (200, json.dumps(answer).encode("utf-8"))

    def count(self, token: str) -> int:
        with self._lock:
            return sum(1 for _path, query, _headers in self.requests
                       if query.get("token", [""])[-1] == token)

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(THREAD_DEADLINE)


@pytest.fixture
def service():
    stub = TokenServiceStub()
    yield stub
    stub.stop()


def token_proxy(proxy, url: str, **fields):
    return proxy(target_port=None, target_host=None, token_source=url, **fields)


def echo_through(running, token: str) -> None:
    with running.session(path="/?token=" + token) as ws:
        payload = os.urandom(2000)
        ws.send_binary(payload)
        assert ws.recv_stream(len(payload)) == payload
        ws.send_close(1000)
        assert ws.recv_close()[0] == 1000
        ws.expect_closed()


def refused(running, token: str, status: int) -> float:
    """Open a handshake that must get ``status``; return how long the answer took."""
    started = time.monotonic()
    with running.client() as ws:
        ws.handshake(path="/?token=" + token, expect_status=status)
    return time.monotonic() - started


# -- through the proxy ------------------------------------------------------------------


def test_known_tokens_reach_their_targets(proxy, service, make_target, wsproxy_log):
    first, second = make_target(), make_target()
    service.route("alpha", {"host": "127.0.0.1", "port": first.port})
    service.route("beta", {"host": "127.0.0.1", "port": second.port})
    running = token_proxy(proxy, service.url())
    echo_through(running, "alpha")
    echo_through(running, "beta")
    assert len(first.connections) == 1 and len(second.connections) == 1
    wsproxy_log.wait_for(lambda text: "open to 127.0.0.1:%d" % second.port in text,
                         what="the second session's line")


def test_unknown_token_is_404(proxy, service, wsproxy_log):
    running = token_proxy(proxy, service.url())
    refused(running, "nobody", 404)
    assert service.count("nobody") == 1


def test_service_down_is_503_at_once(proxy, wsproxy_log):
    running = token_proxy(proxy, "http://127.0.0.1:%d/tokens" % free_port())
    assert refused(running, "alpha", 503) < 1.5
    line = wsproxy_log.wait_for(lambda text: "token service" in text and "unreachable" in text,
                                what="the log line naming the failure")
    assert "alpha" not in line, "the token stays out of the log"


def test_slow_service_is_503_within_the_timeout(proxy, service, wsproxy_log):
    service.slow.add("sloth")
    service.route("sloth", {"host": "127.0.0.1", "port": 1})
    running = token_proxy(proxy, service.url())
    took = refused(running, "sloth", 503)
    assert 1.5 < took < 4.0, "the default timeout is 2 s, took %.2f s" % took
    wsproxy_log.wait_for(lambda text: "token service" in text and "timed out" in text,
                         what="the timeout line")


@pytest.mark.parametrize("status, body", [
    (200, b"not json"),
    (200, b'["127.0.0.1", 5900]'),
    (200, b'{"host": "127.0.0.1"}'),
    (500, b'{"error": "database down"}'),
], ids=["not-json", "list", "no-port", "500"])
def test_bad_answer_is_503(proxy, service, wsproxy_log, status, body):
    service.answers["alpha"] = (status, body)
    running = token_proxy(proxy, service.url())
    refused(running, "alpha", 503)
    wsproxy_log.wait_for(lambda text: "token service" in text and "refused: 503" not in text,
                         what="the line saying what the service did wrong")
    wsproxy_log.wait_for(lambda text: "refused: 503 token service unavailable" in text,
                         what="the refusal line")


def test_reload_forgets_the_cache(proxy, service, make_target):
    first, second = make_target(), make_target()
    service.route("alpha", {"host": "127.0.0.1", "port": first.port})
    running = token_proxy(proxy, service.url())
    echo_through(running, "alpha")
    service.route("alpha", {"host": "127.0.0.1", "port": second.port})
    echo_through(running, "alpha")
    assert len(second.connections) == 0, "within the TTL the cached answer is used"
    running.server.reload()  # what SIGHUP does
    echo_through(running, "alpha")
    assert len(second.connections) == 1
    assert service.count("alpha") == 2


# -- the client: answers ------------------------------------------------------------------


@pytest.mark.parametrize("answer, target", [
    ({"host": "127.0.0.1", "port": 5901}, Target(host="127.0.0.1", port=5901)),
    ({"host": "vnc-7.example.org", "port": 5900, "note": "ignored"},
     Target(host="vnc-7.example.org", port=5900)),
    ({"host": "[2001:db8::7]", "port": 5900}, Target(host="2001:db8::7", port=5900)),
    ({"host": "2001:db8::7", "port": 5900}, Target(host="2001:db8::7", port=5900)),
    ({"unix": "/run/vnc/7.sock"}, Target(unix="/run/vnc/7.sock")),
], ids=["ipv4", "name", "ipv6-brackets", "ipv6", "unix"])
def test_answers_become_targets(service, answer, target):
    service.route("t", answer)
    assert TokenService(service.url()).lookup("t") == target


@pytest.mark.parametrize("body", [
    b"", b"null", b"42", b'"127.0.0.1:5900"', b"\xff\xfe", b"[" * 100000,
    b'{"host": "", "port": 5900}', b'{"host": "a b", "port": 5900}',
    b'{"host": "127.0.0.1", "port": "5900"}', b'{"host": "127.0.0.1", "port": 0}',
    b'{"host": "127.0.0.1", "port": 65536}', b'{"host": "127.0.0.1", "port": true}',
    b'{"host": "127.0.0.1", "port": 5900.5}', b'{"host": 7, "port": 5900}',
    b'{"unix": ""}', b'{"unix": 5, "host": "127.0.0.1", "port": 5900}',
    b'{"unix": "/a\\u0000b"}', b'{"unix": "/a\\nsession 9 forged"}',
], ids=lambda body: repr(body[:40]))
def test_answers_breaking_the_contract_raise_the_documented_error(service, body):
    service.answers["t"] = (200, body)
    with pytest.raises(TokenServiceError):
        TokenService(service.url()).lookup("t")


def test_answer_too_long_is_an_error(service):
    padding = b"x" * 70000
    service.answers["t"] = (200, b'{"host": "127.0.0.1", "port": 5900, "pad": "%s"}' % padding)
    with pytest.raises(TokenServiceError, match="longer than"):
        TokenService(service.url()).lookup("t")


@pytest.mark.parametrize("status", [204, 302, 400, 403, 500, 503])
def test_statuses_other_than_200_and_404_are_errors(service, status):
    service.answers["t"] = (status, b"{}")
    with pytest.raises(TokenServiceError, match=str(status)):
        TokenService(service.url()).lookup("t")


def test_slow_service_raises_within_the_timeout(service):
    service.slow.add("t")
    client = TokenService(service.url(), timeout=0.3)
    started = time.monotonic()
    with pytest.raises(TokenServiceError):
        client.lookup("t")
    assert time.monotonic() - started < 1.5


def test_token_is_query_encoded_and_appended_to_an_existing_query(service):
    service.route("a b&c=d/é", {"unix": "/x"})
    client = TokenService(service.url("/api/v1/tokens?key=s3cret&region=eu"))
    assert client.lookup("a b&c=d/é") == Target(unix="/x")
    path, query, headers = service.requests[-1]
    assert path == "/api/v1/tokens"
    assert query == {"key": ["s3cret"], "region": ["eu"], "token": ["a b&c=d/é"]}
    assert headers.get("Accept") == "application/json"


def test_password_in_the_url_is_basic_auth_and_stays_out_of_messages():
    stub = TokenServiceStub()
    try:
        client = TokenService(stub.url().replace("://", "://ops:pa%3Ass@"))
        assert client.lookup("t") is None
        headers = stub.requests[-1][2]
        assert headers["Authorization"] == "Basic " + base64.b64encode(b"ops:pa:ss").decode()
        assert "pa%3Ass" not in client.where and "ops" not in client.where
    finally:
        stub.stop()


def test_overlong_token_is_unknown_without_asking(service):
    assert TokenService(service.url()).lookup("x" * 513) is None
    assert service.requests == []


# -- the client: cache --------------------------------------------------------------------


def test_answers_are_kept_for_the_ttl(service):
    service.route("t", {"host": "127.0.0.1", "port": 5900})
    client = TokenService(service.url(), ttl=0.3)
    started = time.monotonic()
    for _ in range(5):
        assert client.lookup("t") == Target(host="127.0.0.1", port=5900)
    assert service.count("t") == 1
    wait_until(lambda: client.lookup("t") and service.count("t") == 2, timeout=3,
               message="the answer to expire")
    assert time.monotonic() - started >= 0.3


def test_unknown_tokens_are_kept_briefly(service):
    client = TokenService(service.url(), ttl=60, unknown_ttl=0.2)
    assert client.lookup("ghost") is None and client.lookup("ghost") is None
    assert service.count("ghost") == 1
    service.route("ghost", {"unix": "/now/known"})
    wait_until(lambda: client.lookup("ghost") == Target(unix="/now/known"), timeout=3,
               message="the unknown answer to expire")


def test_failures_are_not_kept(service):
    service.answers["t"] = (500, b"")
    client = TokenService(service.url())
    with pytest.raises(TokenServiceError):
        client.lookup("t")
    service.route("t", {"unix": "/fixed"})
    assert client.lookup("t") == Target(unix="/fixed")


def test_cache_is_bounded_least_recently_used_first(service):
    for name in "abcde":
        service.route(name, {"unix": "/" + name})
    client = TokenService(service.url(), max_entries=3)
    for name in "abc":
        client.lookup(name)
    client.lookup("a")  # a is now the most recently used
    client.lookup("d")  # evicts b
    assert len(client) == 3
    before = len(service.requests)
    for name in "acd":
        client.lookup(name)
    assert len(service.requests) == before, "a, c and d are kept"
    client.lookup("b")
    assert service.count("b") == 2, "b was dropped and is asked again"
    assert len(client) == 3


def test_concurrent_lookups_are_safe(service):
    for index in range(50):
        service.route("t%d" % index, {"host": "127.0.0.1", "port": 1000 + index})
    client = TokenService(service.url(), max_entries=20)
    errors = []

    def work(offset: int) -> None:
        try:
            for step in range(50):
                index = (offset + step) % 50
                assert client.lookup("t%d" % index) == Target(host="127.0.0.1", port=1000 + index)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n * 7,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_DEADLINE * 2)
    assert not errors
    assert len(client) <= 20


# -- https and the factory ------------------------------------------------------------------


def test_https_is_verified(tmp_path_factory):
    files = pki(tmp_path_factory)
    stub = TokenServiceStub(cert=files.cert, key=files.key)
    try:
        stub.route("t", {"unix": "/tls"})
        with pytest.raises(TokenServiceError, match="CERTIFICATE_VERIFY_FAILED|certificate"):
            TokenService(stub.url()).lookup("t")  # the system store does not know our CA
        trusting = ssl.create_default_context(cafile=files.ca)
        assert TokenService(stub.url(), ssl_context=trusting).lookup("t") == Target(unix="/tls")
    finally:
        stub.stop()


def test_factory_picks_the_service_or_the_file_table(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("alpha: 127.0.0.1:5900\n")
    assert isinstance(open_token_source(str(path)), TokenTable)
    assert isinstance(open_token_source("http://127.0.0.1:9/t"), TokenService)
    assert isinstance(open_token_source("HTTPS://tokens.example.org/t"), TokenService)


@pytest.mark.parametrize("url", ["http://", "https:///path", "http://host:99999/t",
                                 "http://host:port/t"])
def test_bad_service_url_is_a_config_error_naming_the_option(url):
    with pytest.raises(ConfigError, match="token-source"):
        TokenService(url)


# -- one deadline for the whole exchange ------------------------------------------------------


class TricklingService:
    """A raw TCP "token service": reads a request, then sends ``answer`` a byte per ``pause`` s.

    It stops trickling as soon as the client goes away or :meth:`stop` is called.
    """

    def __init__(self, answer: bytes, pause: float) -> None:
        self.answer = answer
        self.pause = pause
        self.stopping = threading.Event()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.threads: List[threading.Thread] = []
        self.thread = threading.Thread(target=self._accept, daemon=True, name="trickle-accept")
        self.thread.start()

    def url(self) -> str:
        return "http://127.0.0.1:%d/tokens" % self.port

    def _accept(self) -> None:
        while True:
            try:
                sock, _address = self.listener.accept()
            except OSError:
                return
            if self.stopping.is_set():
                sock.close()
                return
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True,
                                      name="trickle-conn")
            self.threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        with sock:
            try:
                head = b""
                while b"\r\n\r\n" not in head:
                    data = sock.recv(4096)
                    if not data:
                        return
                    head += data
                for index in range(len(self.answer)):
                    # The pause is the service's behaviour under test, not a wait for a condition.
                    if self.stopping.wait(self.pause):
                        return
                    sock.sendall(self.answer[index:index + 1])
            except OSError:
                return  # the client gave up

    def stop(self) -> None:
        self.stopping.set()
        try:  # wake the blocking accept()
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            pass
        self.thread.join(THREAD_DEADLINE)
        self.listener.close()
        for thread in self.threads:
            thread.join(THREAD_DEADLINE)


def trickled_answer(body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (len(body), body))


@pytest.fixture
def trickle():
    services = []

    def start(answer: bytes, pause: float) -> TricklingService:
        service = TricklingService(answer, pause)
        services.append(service)
        return service

    yield start
    for service in services:
        service.stop()


def test_trickled_answer_is_bounded_by_one_deadline(trickle):
    # ~110 bytes at 0.05 s each: 5.5 s in all, but every single read is quick.
    service = trickle(trickled_answer(b'{"host": "127.0.0.1", "port": 5900}'), 0.05)
    client = TokenService(service.url(), timeout=0.5)
    started = time.monotonic()
    with pytest.raises(TokenServiceError, match="timed out"):
        client.lookup("t")
    took = time.monotonic() - started
    assert took < 1.2, "a 0.5 s deadline held the lookup %.2f s" % took


def test_a_quick_trickle_within_the_deadline_is_read_whole(trickle):
    service = trickle(trickled_answer(b'{"host": "127.0.0.1", "port": 5900}'), 0.0)
    assert TokenService(service.url(), timeout=5.0).lookup("t") == Target(host="127.0.0.1",
                                                                          port=5900)


def test_trickling_service_is_503_within_the_default_timeout(proxy, trickle, wsproxy_log):
    # The review's case: a 35-byte answer body, and its head, at a byte per 0.2 s.
    service = trickle(trickled_answer(b'{"host": "127.0.0.1", "port": 5900}'), 0.2)
    running = token_proxy(proxy, service.url())
    took = refused(running, "alpha", 503)
    assert took < 3.0, "the default 2 s deadline held the handshake %.2f s" % took
    wsproxy_log.wait_for(lambda text: "token service" in text and "timed out" in text,
                         what="the timeout line")
