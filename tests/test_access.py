"""Access control and the access log through real sockets.

``--origin`` (403), ``--auth-file`` (401 with a challenge), ``--verify-client``
(TLS client certificates), ``--max-connections`` (503), ``--trusted-proxy``
(the forwarded client address in the log) and log-line escaping.

A refused handshake must never reach the target: each refusal is followed by
a good session as a barrier (targets accept in order), then the target's
accept count is checked.
"""

import base64
import os
import select
import socket
import ssl
import threading
import unicodedata
from typing import List

import pytest

import certs
from conftest import THREAD_DEADLINE, wait_until
from wsclient import ClientError, OP_BINARY, WSClient

PAYLOAD = b"\x01access\xfe"


def echo_once(ws, payload=PAYLOAD):
    ws.send_binary(payload)
    assert ws.recv_stream(len(payload), opcode=OP_BINARY) == payload


def close_cleanly(ws):
    ws.send_close(1000)
    assert ws.recv_close()[0] == 1000
    ws.expect_closed()


def good_session(proxy_run, **request_options):
    """A whole session that must succeed: handshake, one echo, clean close."""
    with proxy_run.client() as ws:
        ws.handshake(protocols=["binary"], **request_options)
        echo_once(ws)
        close_cleanly(ws)


def refused(proxy_run, status, **request_options):
    """A handshake that must be refused with ``status``; returns the response."""
    with proxy_run.client() as ws:
        response = ws.handshake(expect_status=status, protocols=["binary"], **request_options)
    assert response.header("Sec-WebSocket-Accept") is None
    return response


# -- origin ---------------------------------------------------------------------------


@pytest.mark.parametrize("origin", ["http://evil", "http://good.evil", "https://good",
                                    "http://good:8080", "null", None])
def test_origin_not_listed_is_403(proxy, echo_target, wsproxy_log, origin):
    running = proxy(origin=["http://good"])
    refused(running, 403, headers={"Origin": origin})
    wsproxy_log.wait_for(lambda text: "refused" in text and "403" in text, what="the 403 log line")
    good_session(running, headers={"Origin": "http://good"})  # barrier
    assert len(echo_target.connections) == 1


def test_listed_origins_are_accepted(proxy, echo_target):
    running = proxy(origin=["http://good", "https://also.good:8443"])
    good_session(running, headers={"Origin": "http://good"})
    good_session(running, headers={"Origin": "https://also.good:8443"})
    assert len(echo_target.connections) == 2


def test_without_origin_option_any_origin_is_accepted(proxy):
    running = proxy()
    good_session(running, headers={"Origin": "http://anything"})
    good_session(running)


# -- HTTP Basic authentication ------------------------------------------------------------

# Distinctive strings, so finding them in a log cannot be a coincidence.
PASSWORD = "pw-Corr3ct-H0rse"
WRONG_PASSWORD = "pw-Wr0ng-Gue55"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode("utf-8")).decode("ascii")


@pytest.fixture
def auth_file(tmp_path):
    from wsproxy.auth import hash_password
    path = tmp_path / "users"
    path.write_text("# users\nalice:%s\nbob:%s\n" % (hash_password(PASSWORD, iterations=1000),
                                                     hash_password("pw", iterations=1000)))
    return str(path)


def test_auth_missing_header_is_401_with_challenge(proxy, echo_target, auth_file):
    running = proxy(auth_file=auth_file)
    response = refused(running, 401)
    challenge = response.header("WWW-Authenticate")
    assert challenge is not None and challenge.lower().startswith("basic")
    assert "realm=" in challenge
    good_session(running, headers={"Authorization": basic("alice", PASSWORD)})  # barrier
    assert len(echo_target.connections) == 1


@pytest.mark.parametrize("header", [
    basic("alice", WRONG_PASSWORD),
    basic("alice", ""),
    basic("mallory", PASSWORD),
    basic("bob", PASSWORD),
    "Basic " + base64.b64encode(b"alice" + PASSWORD.encode()).decode(),  # no colon
    "Bearer " + base64.b64encode(("alice:" + PASSWORD).encode()).decode(),
    "Basic !!!notbase64",
], ids=["wrong-password", "empty-password", "unknown-user", "other-users-password",
        "no-colon", "other-scheme", "bad-base64"])
def test_auth_wrong_credentials_are_401(proxy, echo_target, auth_file, header):
    running = proxy(auth_file=auth_file)
    response = refused(running, 401, headers={"Authorization": header})
    assert response.header("WWW-Authenticate") is not None
    good_session(running, headers={"Authorization": basic("bob", "pw")})  # barrier
    assert len(echo_target.connections) == 1


def test_auth_right_password_opens_the_session(proxy, echo_target, auth_file):
    running = proxy(auth_file=auth_file)
    good_session(running, headers={"Authorization": basic("alice", PASSWORD)})
    good_session(running, headers={"Authorization": basic("bob", "pw")})
    assert len(echo_target.connections) == 2


def test_passwords_never_reach_the_log(proxy, auth_file, wsproxy_log):
    running = proxy(auth_file=auth_file)
    refused(running, 401, headers={"Authorization": basic("alice", WRONG_PASSWORD)})
    good_session(running, headers={"Authorization": basic("alice", PASSWORD)})
    good_session(running, headers={"Authorization": basic("alice", PASSWORD)})  # cached path
    running.stop()
    secrets = [PASSWORD, WRONG_PASSWORD,
               base64.b64encode(("alice:" + PASSWORD).encode()).decode(),
               base64.b64encode(("alice:" + WRONG_PASSWORD).encode()).decode()]
    records = wsproxy_log.snapshot()
    assert len(records) >= 3, "expected session log lines, got %s" % wsproxy_log.messages()
    for record in records:
        everything = "%s %r %r" % (record.getMessage(), record.__dict__, record.exc_text)
        for secret in secrets:
            assert secret not in everything, "a secret reached the log: %r" % everything


# -- TLS client certificates -----------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return certs.pki(tmp_path_factory)


@pytest.fixture
def tls_proxy(proxy, pki):
    """A proxy with a server certificate that requires client certificates from ``pki.ca``."""
    return proxy(cert=pki.cert, key=pki.key, verify_client=True, cafile=pki.ca)


def client_context(pki, cert=None, key=None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.ca)
    if cert:
        context.load_cert_chain(cert, key)
    return context


def tls_session_outcome(port, context) -> str:
    """Try a TLS WebSocket session; return "ok" (101 and an echo) or why it failed."""
    ws = WSClient(port)
    try:
        try:
            # The test client reads through select() + recv(); that is safe
            # over TLS for the small messages used here.
            ws.sock = context.wrap_socket(ws.sock, server_hostname="localhost")
            response = ws.handshake(expect_status=None, protocols=["binary"])
        except (ssl.SSLError, ConnectionError, ClientError) as exc:
            return "refused: %s" % exc
        if response.status != 101:
            return "refused: HTTP %d" % response.status
        echo_once(ws)
        close_cleanly(ws)
        return "ok"
    finally:
        ws.close()


def test_verify_client_accepts_a_certificate_signed_by_the_ca(tls_proxy, pki, echo_target):
    outcome = tls_session_outcome(tls_proxy.port, client_context(pki, pki.cert, pki.key))
    assert outcome == "ok"
    assert len(echo_target.connections) == 1


def test_verify_client_refuses_a_client_without_certificate(tls_proxy, pki, echo_target,
                                                           wsproxy_log):
    outcome = tls_session_outcome(tls_proxy.port, client_context(pki))
    assert outcome.startswith("refused"), outcome
    wsproxy_log.wait_for(lambda text: "TLS" in text,
                         what="a log line about the failed TLS handshake")
    assert tls_session_outcome(tls_proxy.port, client_context(pki, pki.cert, pki.key)) == "ok"
    assert len(echo_target.connections) == 1


def test_verify_client_refuses_a_certificate_from_another_ca(tls_proxy, pki, echo_target):
    directory = os.path.dirname(pki.other_ca)
    stranger = client_context(pki, pki.other_ca, os.path.join(directory, "other-ca.key"))
    outcome = tls_session_outcome(tls_proxy.port, stranger)
    assert outcome.startswith("refused"), outcome
    assert tls_session_outcome(tls_proxy.port, client_context(pki, pki.cert, pki.key)) == "ok"
    assert len(echo_target.connections) == 1


def test_verify_client_cannot_be_bypassed_with_plain_http(tls_proxy, pki, echo_target):
    # "Require a TLS client certificate": a client that skips TLS altogether
    # must not get a session either.
    with WSClient(tls_proxy.port) as ws:
        try:
            response = ws.handshake(expect_status=None, protocols=["binary"])
            status = response.status
        except (ConnectionError, ClientError):
            status = None
    assert status != 101, "a plain ws:// session opened although --verify-client is set"
    assert tls_session_outcome(tls_proxy.port, client_context(pki, pki.cert, pki.key)) == "ok"
    assert len(echo_target.connections) == 1


# -- max_connections ----------------------------------------------------------------------


def test_max_connections_refuses_with_503_until_one_closes(proxy, echo_target, wsproxy_log):
    running = proxy(max_connections=2)
    first = running.session(protocols=["binary"])
    second = running.session(protocols=["binary"])
    echo_once(first)
    echo_once(second)
    wait_until(lambda: running.server.open_sessions == 2, message="two open sessions")
    refused(running, 503)
    wsproxy_log.wait_for(lambda text: "503" in text, what="a log line for the 503")
    close_cleanly(first)
    wait_until(lambda: running.server.open_sessions == 1, message="the first session to end")
    third = running.session(protocols=["binary"])
    echo_once(third)
    echo_once(second)
    refused(running, 503)
    close_cleanly(second)
    close_cleanly(third)
    # Three sessions reached the target; the two refused handshakes did not.
    assert len(echo_target.connections) == 3


class GatedTLSTarget:
    """A TLS echo target that accepts at once but starts TLS only when ``gate`` is set.

    Holding the gate keeps the proxy's handshakes in flight between the
    capacity check and the start of the session, so concurrent handshakes
    really overlap there.
    """

    def __init__(self, pki) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(pki.cert, pki.key)
        self.gate = threading.Event()
        self.accepted = 0
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self._socks = []  # type: List[socket.socket]
        self._threads = []  # type: List[threading.Thread]
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True,
                                               name="gated-tls-accept")
        self._accept_thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            self._socks.append(sock)
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True,
                                      name="gated-tls-conn")
            self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            if not self.gate.wait(THREAD_DEADLINE * 2):
                return
            sock.settimeout(THREAD_DEADLINE)
            with self.context.wrap_socket(sock, server_side=True) as tls:
                tls.settimeout(None)
                while True:
                    data = tls.recv(65536)
                    if not data:
                        return
                    tls.sendall(data)
        except OSError:
            pass
        finally:
            sock.close()

    def stop(self) -> None:
        self.gate.set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        self._accept_thread.join(THREAD_DEADLINE)
        for sock in self._socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(THREAD_DEADLINE)


def test_max_connections_holds_for_concurrent_handshakes(proxy, pki):
    target = GatedTLSTarget(pki)
    clients = []
    try:
        running = proxy(target_port=target.port, ssl_target=True, target_cafile=pki.ca,
                        max_connections=2)
        for _ in range(4):
            client = running.client()
            client.send_request(protocols=["binary"])
            clients.append(client)
        # A correct limit lets two handshakes through and answers the others
        # 503 at once; wait until that happened, or until more than two
        # reached the target (the limit was not enforced).
        wait_until(lambda: target.accepted >= 2, message="two sessions to reach the target")
        answered = []

        def settled():
            for client in clients:
                if client not in answered and client.sock in select.select(
                        [c.sock for c in clients], [], [], 0)[0]:
                    answered.append(client)
            return len(answered) >= 2 or target.accepted > 2

        wait_until(settled, message="two handshakes refused or more than two let through")
        target.gate.set()
        statuses = sorted(client.read_response().status for client in clients)
        opened = [client for client in clients if client.response.status == 101]
        for client in opened:
            echo_once(client)
            close_cleanly(client)
        assert statuses == [101, 101, 503, 503], (
            "max_connections=2 with 4 concurrent handshakes gave %s; %d reached the target"
            % (statuses, target.accepted))
    finally:
        for client in clients:
            client.close()
        target.stop()


# -- trusted proxies ----------------------------------------------------------------------


@pytest.mark.parametrize("headers, shown", [
    ({"X-Forwarded-For": "203.0.113.9"}, "203.0.113.9"),
    ({"X-Forwarded-For": "198.51.100.1, 203.0.113.9, 127.0.0.1"}, "203.0.113.9"),
    ({"X-Forwarded-For": "2001:db8::7"}, "2001:db8::7"),
    ({"X-Forwarded-For": "::ffff:203.0.113.9"}, "203.0.113.9"),
], ids=["xff", "xff-chain", "xff-ipv6", "xff-mapped"])
def test_trusted_proxy_forwarded_address_is_logged(proxy, wsproxy_log, headers, shown):
    running = proxy(trusted_proxy=["127.0.0.1"])
    good_session(running, headers=headers)
    line = wsproxy_log.wait_for(lambda text: "open" in text and shown in text,
                                what="the session line showing %s" % shown)
    assert "127.0.0.1" in line, "the line should still say which proxy it came through"


@pytest.mark.parametrize("trusted", [[], ["192.0.2.1"]], ids=["no-trusted-proxy", "other-peer"])
def test_forwarded_headers_are_ignored_from_untrusted_peers(proxy, wsproxy_log, trusted):
    running = proxy(trusted_proxy=trusted)
    with running.client() as ws:
        ws.handshake(protocols=["binary"], headers={"X-Forwarded-For": "203.0.113.9",
                                                    "Forwarded": "for=198.51.100.3"})
        client_port = ws.local_port
        echo_once(ws)
        close_cleanly(ws)
    wsproxy_log.wait_for(lambda text: "closed" in text and "127.0.0.1:%d" % client_port in text,
                         what="the session's close line with the real peer")
    for text in wsproxy_log.messages():
        assert "203.0.113.9" not in text and "198.51.100.3" not in text, text


def test_a_client_supplied_forwarded_header_is_ignored(proxy, wsproxy_log):
    # The trusted proxy appends X-Forwarded-For; the client adds its own Forwarded.
    running = proxy(trusted_proxy=["127.0.0.1"])
    good_session(running, headers={"Forwarded": "for=198.51.100.66",
                                   "X-Forwarded-For": "203.0.113.9"})
    wsproxy_log.wait_for(lambda text: "open to" in text and "203.0.113.9 (via" in text,
                         what="the session line with the address the proxy wrote")
    assert not wsproxy_log.find("198.51.100.66"), wsproxy_log.messages()


def test_forwarded_alone_is_not_believed(proxy, wsproxy_log):
    running = proxy(trusted_proxy=["127.0.0.1"])
    good_session(running, headers={"Forwarded": "for=198.51.100.66"})
    line = wsproxy_log.wait_for(lambda text: "open to" in text, what="the session line")
    assert "(via" not in line and "198.51.100.66" not in line, line


def test_entries_left_of_the_client_are_never_believed(proxy, wsproxy_log):
    # The client wrote "198.51.100.66, 10.1.2.3"; our proxies (127.0.0.1 and
    # 10.0.0.0/8) appended 203.0.113.9 and 10.9.9.9.
    running = proxy(trusted_proxy=["127.0.0.1", "10.0.0.0/8"])
    good_session(running, headers={"X-Forwarded-For": "198.51.100.66, 10.1.2.3, 203.0.113.9, "
                                                      "10.9.9.9"})
    wsproxy_log.wait_for(lambda text: "open to" in text and "203.0.113.9 (via" in text,
                         what="the session line naming the first untrusted hop")
    assert not wsproxy_log.find("198.51.100.66")


@pytest.mark.parametrize("value", [
    "fe80::1%eth0", "fe80::1%anything", "203.0.113.9:4711", "[2001:db8::1]", "010.0.0.1",
    "203.0.113.9 evil", "0x7f.1", "2001:db8::1/64", "unknown",
], ids=["scope-id", "scope-text", "port", "brackets", "leading-zero", "junk", "hex",
        "prefix", "word"])
def test_only_plain_addresses_are_taken(proxy, wsproxy_log, value):
    running = proxy(trusted_proxy=["127.0.0.1"])
    good_session(running, headers={"X-Forwarded-For": value})
    wsproxy_log.wait_for(lambda text: "not an IP address" in text, what="the ignore line")
    line = wsproxy_log.wait_for(lambda text: ": open to" in text, what="the session line")
    assert "(via" not in line and "%" not in line, line


# -- log lines cannot be forged -----------------------------------------------------------

FORGED = "session 999 10.6.6.6:1: open to evil"


def assert_single_clean_lines(messages):
    """Every message is one line with no terminal control characters."""
    for text in messages:
        assert len(text.splitlines()) <= 1, "a log message spans several lines: %r" % text
        bad = [ch for ch in text if unicodedata.category(ch) in ("Cc", "Zl", "Zp")]
        assert not bad, "control characters %r in log message %r" % (bad, text)


def test_close_reason_cannot_forge_log_lines(proxy, wsproxy_log):
    running = proxy()
    reason = "bye\r\n%s\x1b[2J\u2028\x85\x00" % FORGED
    with running.client() as ws:
        ws.handshake(protocols=["binary"])
        echo_once(ws)
        ws.send_close(1000, reason)
        ws.recv_close()
    wsproxy_log.wait_for(lambda text: "closed" in text and "bye" in text,
                         what="the close line with the client's reason")
    assert_single_clean_lines(wsproxy_log.messages())


@pytest.mark.parametrize("value", [
    "203.0.113.9\x85%s" % FORGED,
    "203.0.113.9\x9b31m",
    "203.0.113.9\t%s" % FORGED,
], ids=["nel", "c1-csi", "tab"])
def test_forwarded_address_cannot_forge_log_lines(proxy, wsproxy_log, value):
    running = proxy(trusted_proxy=["127.0.0.1"])
    raw_request = ("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: binary\r\n"
                   "X-Forwarded-For: %s\r\n\r\n" % value).encode("latin-1")
    with running.client() as ws:
        response = ws.handshake(raw=raw_request, key="dGhlIHNhbXBsZSBub25jZQ==",
                                expect_status=None)
        if response.status == 101:
            echo_once(ws)
            close_cleanly(ws)
    wsproxy_log.wait_for(lambda text: "203.0.113.9" in text, what="a line with the address")
    assert_single_clean_lines(wsproxy_log.messages())


@pytest.mark.parametrize("target", [
    "/%0d%0asession%20999%20forged",
    "/\x1b[31mred",
    "/a\rb",
], ids=["encoded-crlf", "escape", "bare-cr"])
def test_request_target_cannot_forge_log_lines(proxy, tmp_path, wsproxy_log, target):
    (tmp_path / "index.html").write_text("hi")
    running = proxy(web=str(tmp_path))
    with running.client() as ws:
        ws.send_raw(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target).encode("latin-1"))
        ws.read_response()
    wait_until(lambda: wsproxy_log.messages(), message="a log line for the request")
    assert_single_clean_lines(wsproxy_log.messages())


def test_trusted_proxy_may_be_a_network(proxy, wsproxy_log):
    running = proxy(trusted_proxy=["127.0.0.0/8"])
    good_session(running, headers={"X-Forwarded-For": "203.0.113.77"})
    wsproxy_log.wait_for(lambda text: "open" in text and "203.0.113.77" in text,
                         what="the session line showing the forwarded address")


def test_a_forwarded_value_that_is_no_ip_address_is_not_taken(proxy, wsproxy_log):
    running = proxy(trusted_proxy=["127.0.0.1"])
    good_session(running, headers={"X-Forwarded-For": "203.0.113.9 evil"})
    wsproxy_log.wait_for(lambda text: "not an IP address" in text, what="the ignore line")
    for text in wsproxy_log.messages():
        if ": open to" in text:
            assert "(via" not in text, text
