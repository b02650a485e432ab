"""The opening handshake over real sockets: what the handler accepts and refuses.

Every refusal must carry its exact HTTP status and a short body, and nothing
may log a traceback (the ``proxy`` fixture checks the log and stderr).
"""

import base64
import os
import socket

import pytest

from conftest import free_port, wait_until
from wsclient import (ConnectionClosed, OP_BINARY, OP_TEXT, WSClient, accept_for,
                      build_request, encode_frame, open_session)


def refused(proxy_run, status, **request_options):
    """Send a handshake that must be refused with ``status`` and a body; return the response."""
    with proxy_run.client() as ws:
        response = ws.handshake(expect_status=status, **request_options)
    assert response.body.strip(), "HTTP %d carries no body saying why" % status
    return response


def echo_once(ws, payload=b"\x00\xffpayload"):
    """One binary round trip through an echo target; the session must work."""
    ws.send_binary(payload)
    assert ws.recv_stream(len(payload)) == payload


# -- a good handshake -----------------------------------------------------------------


def test_rfc_example_key_gets_rfc_example_accept(proxy):
    # RFC 6455 §1.3 gives this key and the accept value a server must answer.
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    assert accept_for(key) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    with proxy().client() as ws:
        response = ws.handshake(key=key)
        assert response.header("Sec-WebSocket-Accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        echo_once(ws)


def test_good_handshake_switches_protocols(proxy):
    with proxy().client() as ws:
        response = ws.handshake()
        assert response.version == "HTTP/1.1"
        assert response.status == 101
        assert "websocket" in response.header_tokens("Upgrade")
        assert "upgrade" in response.header_tokens("Connection")
        assert response.header("Sec-WebSocket-Protocol") is None
        echo_once(ws)


@pytest.mark.parametrize("connection", [
    "Upgrade", "upgrade", "UPGRADE", "keep-alive, Upgrade", "Upgrade, keep-alive",
    "keep-alive,upgrade",
])
def test_connection_header_token_list(proxy, connection):
    with proxy().client() as ws:
        ws.handshake(headers={"Connection": connection})
        echo_once(ws)


@pytest.mark.parametrize("upgrade", ["websocket", "WebSocket", "WEBSOCKET"])
def test_upgrade_value_is_case_insensitive(proxy, upgrade):
    with proxy().client() as ws:
        ws.handshake(headers={"Upgrade": upgrade})
        echo_once(ws)


def test_handshake_sent_one_byte_at_a_time(proxy):
    with proxy().client() as ws:
        ws.handshake(piece_size=1)
        echo_once(ws)


def test_frame_in_same_packet_as_handshake_is_not_lost(proxy):
    with proxy().client() as ws:
        request, key = build_request(host="127.0.0.1:%d" % ws.port)
        early = os.urandom(300)
        ws.handshake(raw=request + encode_frame(OP_BINARY, early), key=key)
        assert ws.recv_stream(len(early)) == early


def test_header_block_just_under_limit_is_accepted(proxy):
    with proxy().client() as ws:
        ws.handshake(extra_headers=[("X-Filler", "a" * (15 * 1024))])
        echo_once(ws)


# -- refusals -------------------------------------------------------------------------


@pytest.mark.parametrize("version", [None, "", "8", "12", "14", "abc"])
def test_bad_version_is_426_naming_13(proxy, version):
    response = refused(proxy(), 426, headers={"Sec-WebSocket-Version": version})
    assert response.header("Sec-WebSocket-Version") is not None, "426 must name the version"
    assert "13" in response.header_tokens("Sec-WebSocket-Version")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_non_get_is_405(proxy, method):
    refused(proxy(), 405, method=method)


def test_http_1_0_is_400(proxy):
    refused(proxy(), 400, http_version="HTTP/1.0")


@pytest.mark.parametrize("upgrade", [None, "", "h2c", "websocketx"])
def test_missing_or_wrong_upgrade_is_400(proxy, upgrade):
    refused(proxy(), 400, headers={"Upgrade": upgrade})


@pytest.mark.parametrize("connection", [None, "keep-alive", "close", "upgraded", "notupgrade"])
def test_connection_without_upgrade_token_is_400(proxy, connection):
    refused(proxy(), 400, headers={"Connection": connection})


@pytest.mark.parametrize("key", [
    None,                                            # missing
    "",                                              # empty
    "not base64 at all!",                            # not base64
    base64.b64encode(b"x" * 15).decode(),            # 15 bytes
    base64.b64encode(b"x" * 17).decode(),            # 17 bytes
    base64.b64encode(b"x" * 32).decode(),            # 32 bytes
])
def test_key_not_16_bytes_is_400(proxy, key):
    refused(proxy(), 400, headers={"Sec-WebSocket-Key": key})


def test_one_huge_header_is_431(proxy):
    refused(proxy(), 431, extra_headers=[("X-Filler", "a" * (17 * 1024))])


def test_many_headers_over_limit_is_431(proxy):
    filler = [("X-Filler-%d" % index, "b" * 40) for index in range(400)]
    refused(proxy(), 431, extra_headers=filler)


def test_configured_header_limit_is_431(proxy):
    refused(proxy(max_header_size=4096), 431, extra_headers=[("X-Filler", "c" * 5000)])


def test_unterminated_huge_header_is_431(proxy):
    # The head never ends: the limit must stop the read, not the peer.
    with proxy().client() as ws:
        ws.send_raw(b"GET / HTTP/1.1\r\nX-Filler: " + b"d" * (20 * 1024), tolerate_close=True)
        response = ws.read_response()
    assert response.status == 431
    assert response.body.strip()


@pytest.mark.parametrize("raw", [
    b"hello there\r\n\r\n",
    b"GET\r\n\r\n",
    b"\r\n\r\n",
    b"GET / HTTP/1.1\r\nthis line has no colon\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n\xff\xfe\xfd: \x00\x01\r\n\r\n",
    b"\x01\x02\x03\x04garbage garbage\r\n\r\n",
])
def test_garbage_is_400_or_close(proxy, raw):
    with proxy().client() as ws:
        ws.send_raw(raw)
        try:
            response = ws.read_response()
        except ConnectionClosed as closed:
            assert closed.partial == b"", "closed after a partial response %r" % closed.partial
            return
        assert response.status == 400, "garbage %r got %d" % (raw, response.status)
        assert response.body.strip()


def test_client_closing_mid_handshake_leaves_no_trace(proxy, echo_target):
    with proxy().client() as ws:
        ws.send_raw(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpg")
    # The fixtures check: no traceback logged or printed, no thread left behind.


# -- subprotocols -------------------------------------------------------------------------


@pytest.mark.parametrize("offer, chosen", [
    (["binary"], "binary"),
    (["base64"], "base64"),
    (["base64", "binary"], "binary"),
    (["binary", "base64"], "binary"),
    (["chat", "base64"], "base64"),
    (["chat", "binary", "superchat"], "binary"),
])
def test_subprotocol_choice(proxy, offer, chosen):
    with proxy().session(protocols=offer) as ws:
        assert ws.protocol == chosen
        assert ws.response.header_tokens("Sec-WebSocket-Protocol") == [chosen]
        payload = os.urandom(100)
        if chosen == "base64":
            ws.send_text(base64.b64encode(payload))
            assert ws.recv_stream(len(payload), decode_base64=True) == payload
        else:
            ws.send_binary(payload)
            message = ws.recv_data_message()
            assert message.opcode == OP_BINARY
            assert message.payload == payload


@pytest.mark.parametrize("offer", [None, ["chat"], ["chat", "superchat"]])
def test_no_known_subprotocol_means_binary_and_no_header(proxy, offer):
    with proxy().session(protocols=offer) as ws:
        assert ws.response.header("Sec-WebSocket-Protocol") is None
        payload = os.urandom(100)
        ws.send_binary(payload)
        message = ws.recv_data_message()
        assert message.opcode == OP_BINARY
        assert message.payload == payload


def test_subprotocol_offered_in_two_header_lines(proxy):
    # RFC 6455 §11.3.4: the header MAY appear several times, meaning one list.
    with proxy().client() as ws:
        ws.handshake(extra_headers=[("Sec-WebSocket-Protocol", "base64"),
                                    ("Sec-WebSocket-Protocol", "binary")])
        assert ws.protocol == "binary"


def test_base64_replies_are_text_frames(proxy):
    with proxy().session(protocols=["base64"]) as ws:
        ws.send_text(base64.b64encode(b"\x00\x01\x02\xff"))
        message = ws.recv_data_message()
        assert message.opcode == OP_TEXT
        assert base64.b64decode(message.payload, validate=True) == b"\x00\x01\x02\xff"


# -- the target ---------------------------------------------------------------------------


def test_unreachable_target_is_502_and_logged(proxy, wsproxy_log):
    dead_port = free_port()
    proxy_run = proxy(target_port=dead_port)
    with proxy_run.client() as ws:
        response = ws.handshake(expect_status=502)
        assert response.body.strip()
        ws.expect_closed()
    wsproxy_log.wait_for(lambda text: "127.0.0.1" in text and str(dead_port) in text,
                         what="a log line naming the target 127.0.0.1:%d" % dead_port)


def test_one_target_connection_per_session(proxy, echo_target):
    proxy_run = proxy()
    with proxy_run.session() as first, proxy_run.session() as second:
        echo_once(first, b"first")
        echo_once(second, b"second")
        wait_until(lambda: len(echo_target.connections) == 2, message="two target connections")
        received = sorted(conn.received_bytes() for conn in echo_target.connections[:2])
        assert received == [b"first", b"second"]


def test_accept_key_is_per_request(proxy):
    proxy_run = proxy()
    with proxy_run.client() as first, proxy_run.client() as second:
        first.handshake()
        second.handshake()
        assert first.key != second.key
        assert (first.response.header("Sec-WebSocket-Accept")
                != second.response.header("Sec-WebSocket-Accept"))


def test_wsclient_does_not_import_wsproxy():
    # The test client must stay independent of the code it tests.
    import wsclient
    with open(wsclient.__file__, encoding="utf-8") as source:
        text = source.read()
    assert "import wsproxy" not in text and "from wsproxy" not in text
    assert WSClient.__module__ == "wsclient"


def _session_sockets_have_nodelay(running, host: str = "127.0.0.1") -> None:
    with open_session(running.port, protocols=["binary"], host=host) as ws:
        ws.send_binary(b"x")
        assert ws.recv_stream(1) == b"x"
        wait_until(lambda: running.server.open_sessions == 1, 5, "the session")
        (handler,) = list(running.server._sessions)
        assert handler.request.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert handler.target_stream.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_client_and_target_sockets_have_nodelay(proxy):
    """Small frames leave at once: Nagle's delay is off both ways (on Linux the
    client's socket takes it from the listener, set once)."""
    _session_sockets_have_nodelay(proxy())


def test_client_sockets_have_nodelay_on_an_ipv6_listener(echo_target):
    from conftest import RunningProxy, ipv6_available
    from wsproxy import ProxyServer, Settings
    if not ipv6_available():
        pytest.skip("no IPv6 loopback here")
    settings = Settings(target_host="127.0.0.1", target_port=echo_target.port)
    running = RunningProxy(ProxyServer(("::1", 0), settings), settings)
    try:
        _session_sockets_have_nodelay(running, host="::1")
    finally:
        running.stop()
