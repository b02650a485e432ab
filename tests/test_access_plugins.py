"""Tests for wsproxy/access/plugins.py: websockify's auth plugins, through real sessions.

Every test drives the proxy with the raw WebSocket client; TLS client
certificates come from ``tests/certs.py``; a custom plugin module is written
by the test and loaded by its dotted path.
"""

import base64
import ssl
import sys
import textwrap

import pytest

import certs
from conftest import wait_until
from wsclient import OP_BINARY, WSClient

from wsproxy import ConfigError, ProxyServer, Settings


def basic(credentials: bytes) -> str:
    return "Basic " + base64.b64encode(credentials).decode("ascii")


def status_of(running, headers=None, path="/"):
    with running.client() as ws:
        return ws.handshake(expect_status=None, protocols=["binary"], headers=headers or {},
                            path=path)


def opens(running, headers=None, path="/"):
    response = status_of(running, headers, path)
    return response.status == 101


# -- BasicHTTPAuth ---------------------------------------------------------------------------


def test_basic_http_auth(proxy, echo_target, wsproxy_log):
    running = proxy(auth_plugin="BasicHTTPAuth", auth_source="alice:pa:ss w\u00f6rd")
    challenge = status_of(running)
    assert challenge.status == 401
    assert challenge.header("WWW-Authenticate").startswith("Basic realm=")
    assert status_of(running, {"Authorization": basic(b"alice:wrong")}).status == 401
    assert status_of(running, {"Authorization": "Bearer abc"}).status == 403
    assert status_of(running, {"Authorization": "Basic !!!notbase64"}).status == 403
    assert status_of(running, {"Authorization": basic(b"no colon")}).status == 403
    # websockify decodes the credentials as ISO-8859-1.
    good = basic("alice:pa:ss w\u00f6rd".encode("latin-1"))
    assert opens(running, {"Authorization": good})
    # The target accepts in order: had a refused request reached it, the count would pass 1.
    wait_until(lambda: len(echo_target.connections) == 1, message="the one session's connection")
    wsproxy_log.wait_for(lambda text: "refused: 401" in text, what="a log line for the 401")
    for record in wsproxy_log.snapshot():
        assert "pa:ss" not in record.getMessage()


def test_basic_http_auth_needs_user_and_password():
    with pytest.raises(ConfigError, match="auth-source: BasicHTTPAuth"):
        ProxyServer(("127.0.0.1", 0), Settings(target_host="h", target_port=1,
                                               auth_plugin="BasicHTTPAuth"),
                    bind_and_activate=False)


def test_auth_source_without_plugin_is_a_config_error():
    with pytest.raises(ConfigError, match="auth-source: needs --auth-plugin"):
        ProxyServer(("127.0.0.1", 0), Settings(target_host="h", target_port=1,
                                               auth_source="x"), bind_and_activate=False)


# -- ExpectOrigin ----------------------------------------------------------------------------


def test_expect_origin(proxy, echo_target):
    running = proxy(auth_plugin="ExpectOrigin",
                    auth_source="https://a.example https://b.example")
    assert opens(running, {"Origin": "https://a.example"})
    assert opens(running, {"Origin": "https://b.example"})
    refused = status_of(running, {"Origin": "https://evil.example"})
    assert refused.status == 403
    assert status_of(running).status == 403  # no Origin at all
    assert opens(running, {"Origin": "https://a.example"})  # a barrier: targets accept in order
    wait_until(lambda: len(echo_target.connections) == 3, message="three sessions' connections")
    assert len(echo_target.connections) == 3


# -- ClientCertCNAuth ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return certs.pki(tmp_path_factory)


def tls_status(port, pki, with_cert=True, headers=None):
    context = ssl.create_default_context(cafile=pki.ca)
    if with_cert:
        context.load_cert_chain(pki.cert, pki.key)  # its subject's CN is "localhost"
    ws = WSClient(port)
    try:
        ws.sock = context.wrap_socket(ws.sock, server_hostname="localhost")
        response = ws.handshake(expect_status=None, protocols=["binary"], headers=headers or {})
        return response.status
    finally:
        ws.close()


@pytest.mark.parametrize("names, expected", [("localhost", 101), ("someone else", 403),
                                             ("admin localhost", 101)])
def test_client_cert_cn_auth(proxy, pki, names, expected):
    running = proxy(cert=pki.cert, key=pki.key, verify_client=True, cafile=pki.ca,
                    auth_plugin="ClientCertCNAuth", auth_source=names)
    assert tls_status(running.port, pki) == expected


def test_client_cert_cn_cannot_be_claimed_with_a_header(proxy, pki):
    running = proxy(auth_plugin="ClientCertCNAuth", auth_source="localhost")
    assert status_of(running, {"SSL_CLIENT_S_DN_CN": "localhost"}).status == 403
    assert status_of(running, {"ssl_client_s_dn_cn": "localhost"}).status == 403


# -- a custom auth plugin by dotted path ----------------------------------------------------

CUSTOM_MODULE = '''
import threading


class AuthenticationError(Exception):
    """As websockify's: only the attribute names matter."""

    def __init__(self, log_msg=None, response_code=403, response_headers={}, response_msg=None):
        self.code = response_code
        self.headers = response_headers
        self.msg = response_msg
        super().__init__("%s %s" % (response_code, log_msg))


class TicketAuth:
    seen = []
    release = threading.Event()

    def __init__(self, src):
        self.tickets = src.split(",")

    def authenticate(self, headers, target_host, target_port):
        self.seen.append((target_host, target_port))
        ticket = headers.get("x-ticket")
        if ticket == "crash":
            raise RuntimeError("ticket store down")
        if ticket == "hang":
            self.release.wait(10)
        if ticket not in self.tickets:
            raise AuthenticationError(log_msg="bad ticket %r" % ticket, response_code=401,
                                      response_headers={"WWW-Authenticate": "Ticket",
                                                        "X-Bad": "line\\r\\nbreak"},
                                      response_msg="ticket needed")
'''


@pytest.fixture
def custom_auth(tmp_path, monkeypatch):
    (tmp_path / "h13_custom_auth.py").write_text(textwrap.dedent(CUSTOM_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "h13_custom_auth.TicketAuth"
    module = sys.modules.pop("h13_custom_auth", None)
    if module is not None:
        module.TicketAuth.release.set()


def test_custom_auth_plugin_end_to_end(proxy, make_target, tmp_path, custom_auth, wsproxy_log):
    target = make_target(send_on_connect=b"T")
    tokens = tmp_path / "tokens"
    tokens.write_text("desk: 127.0.0.1:%d\n" % target.port)
    running = proxy(target_port=1, token_plugin="TokenFile", token_source=str(tokens),
                    auth_plugin=custom_auth, auth_source="t1,t2")
    with running.client() as ws:
        ws.handshake(protocols=["binary"], path="/?token=desk", headers={"X-Ticket": "t2"})
        assert ws.recv_stream(1, opcode=OP_BINARY) == b"T"
        ws.send_close(1000)
        ws.recv_close()
    plugin_class = sys.modules["h13_custom_auth"].TicketAuth
    # As in websockify, the plugin is told the target the token chose.
    assert plugin_class.seen == [("127.0.0.1", target.port)]
    refused = status_of(running, {"X-Ticket": "nope"}, path="/?token=desk")
    assert refused.status == 401
    assert refused.header("WWW-Authenticate") == "Ticket"
    assert refused.header("X-Bad") is None  # a header that cannot go on the wire is dropped
    wsproxy_log.wait_for(lambda text: "refused: 401" in text and "bad ticket 'nope'" in text,
                         what="the plugin's log message in one line")
    assert status_of(running, {"X-Ticket": "crash"}, path="/?token=desk").status == 500
    wsproxy_log.wait_for(lambda text: "ticket store down" in text, what="the failure logged")
    wsproxy_log.assert_no_traceback()
    assert len(target.connections) == 1


def test_custom_auth_plugin_that_hangs_gets_503(proxy, echo_target, custom_auth):
    running = proxy(auth_plugin=custom_auth, auth_source="t1")
    running.server.auth_plugin.timeout = 0.2
    assert status_of(running, {"X-Ticket": "hang"}).status == 503
    assert opens(running, {"X-Ticket": "t1"})
    sys.modules["h13_custom_auth"].TicketAuth.release.set()


# -- --web-auth: the auth plugin guards plain HTTP too -------------------------------------


def test_web_auth_guards_files_with_the_auth_plugin(proxy, tmp_path):
    (tmp_path / "index.html").write_text("<p>noVNC</p>")
    open_site = proxy(web=str(tmp_path), auth_plugin="BasicHTTPAuth", auth_source="u:p")
    with open_site.client() as client:  # without --web-auth the files are open
        client.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.read_response().status == 200
    # --web-auth with an auth plugin and no --auth-file is a valid configuration.
    running = proxy(web=str(tmp_path), auth_plugin="BasicHTTPAuth", auth_source="u:p",
                    web_auth=True)
    for credentials, status in ((None, 401), (b"u:wrong", 401), (b"u:p", 200)):
        head = b"GET / HTTP/1.1\r\nHost: x\r\n"
        if credentials:
            head += b"Authorization: " + basic(credentials).encode() + b"\r\n"
        with running.client() as client:
            client.send_raw(head + b"\r\n")
            response = client.read_response()
            assert response.status == status
            if status == 401:
                assert response.header("WWW-Authenticate")
