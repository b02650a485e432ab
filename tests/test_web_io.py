"""The static web root (``--web``) and plain HTTP through real sockets.

Requests go through the standard library's own HTTP client (an independent
implementation) or, for request targets it would refuse to send, as raw
bytes.  The web root and a WebSocket upgrade share one port.
"""

import email.utils
import http.client
import os
import socket
import struct

import pytest

from conftest import echo_round_trip
from wsclient import WSClient

INDEX = b"<!DOCTYPE html><html><body>wsproxy web root</body></html>\n"
SCRIPT = b"console.log('served');\n"
SECRET = b"outside the web root\n"


@pytest.fixture
def site(tmp_path):
    """A web root with index.html, app.js, a subdirectory without index, and a secret beside it."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_bytes(INDEX)
    (root / "app.js").write_bytes(SCRIPT)
    (root / "sub").mkdir()
    (root / "sub" / "listed-name.txt").write_text("x")
    (root / ".hidden").write_text("hidden")
    (tmp_path / "secret.txt").write_bytes(SECRET)
    os.symlink(str(tmp_path / "secret.txt"), str(root / "link-out"))
    return root


def fetch(port, method, path, headers=None):
    """One request with ``http.client``; returns ``(status, headers, body)``."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        body = response.read()
        return response.status, response.headers, body
    finally:
        connection.close()


def fetch_raw(port, request_line):
    """Send a raw request line (plus Host); return ``(status, body)``."""
    with WSClient(port) as ws:
        ws.send_raw(("%s\r\nHost: 127.0.0.1\r\n\r\n" % request_line).encode("latin-1"))
        response = ws.read_response()
        return response.status, response.body


def test_index_html_is_served(proxy, site):
    running = proxy(web=str(site))
    status, headers, body = fetch(running.port, "GET", "/")
    assert status == 200
    assert body == INDEX
    assert headers["Content-Type"].startswith("text/html")
    assert int(headers["Content-Length"]) == len(INDEX)
    assert fetch(running.port, "GET", "/index.html")[2] == INDEX


def test_javascript_has_the_right_type(proxy, site):
    running = proxy(web=str(site))
    status, headers, body = fetch(running.port, "GET", "/app.js")
    assert status == 200
    assert body == SCRIPT
    assert headers["Content-Type"].split(";")[0].strip() in ("application/javascript",
                                                             "text/javascript")


def test_if_modified_since_gives_304(proxy, site):
    running = proxy(web=str(site))
    status, headers, _ = fetch(running.port, "GET", "/app.js")
    last_modified = headers["Last-Modified"]
    assert status == 200 and last_modified
    status, _, body = fetch(running.port, "GET", "/app.js", {"If-Modified-Since": last_modified})
    assert status == 304
    assert body == b""
    # Bad path: a date before the file's time gets the file again.
    earlier = email.utils.formatdate(os.stat(str(site / "app.js")).st_mtime - 3600, usegmt=True)
    status, _, body = fetch(running.port, "GET", "/app.js", {"If-Modified-Since": earlier})
    assert status == 200 and body == SCRIPT


def test_head_gives_headers_without_body(proxy, site):
    running = proxy(web=str(site))
    status, headers, body = fetch(running.port, "HEAD", "/app.js")
    assert status == 200
    assert body == b""
    assert int(headers["Content-Length"]) == len(SCRIPT)
    # http.client reads no body after HEAD; make sure none was sent on the wire.
    with WSClient(running.port) as ws:
        ws.send_raw(b"HEAD /app.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        raw = ws.expect_closed()
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert rest == b"", "HEAD answer carried a body: %r" % rest


@pytest.mark.parametrize("path", [
    "/../secret.txt",
    "/%2e%2e/secret.txt",
    "/%2E%2E/secret.txt",
    "/sub/../../secret.txt",
    "/%2e%2e%2fsecret.txt",
    "/..%2fsecret.txt",
    "/link-out",
    "/.hidden",
    "/app.js%00.html",
    "//etc/passwd",
    "/../../../../../../etc/passwd",
])
def test_nothing_outside_the_root_is_served(proxy, site, path):
    running = proxy(web=str(site))
    status, body = fetch_raw(running.port, "GET %s HTTP/1.1" % path)
    assert status in (400, 404), "%s gave %d" % (path, status)
    assert SECRET not in body and b"root:" not in body and b"hidden" not in body


def test_absolute_path_outside_is_refused(proxy, site):
    running = proxy(web=str(site))
    status, body = fetch_raw(running.port, "GET http://127.0.0.1/../../etc/passwd HTTP/1.1")
    assert status in (400, 404)
    assert b"root:" not in body


def test_no_listing_unless_asked(proxy, site):
    running = proxy(web=str(site))
    status, _, body = fetch(running.port, "GET", "/sub/")
    assert status in (403, 404)
    assert b"listed-name.txt" not in body


def test_listing_when_asked(proxy, site):
    running = proxy(web=str(site), web_listing=True)
    status, headers, body = fetch(running.port, "GET", "/sub/")
    assert status == 200
    assert b"listed-name.txt" in body


def test_missing_file_is_404(proxy, site):
    running = proxy(web=str(site))
    assert fetch(running.port, "GET", "/nope.js")[0] == 404


def test_other_methods_are_refused(proxy, site):
    running = proxy(web=str(site))
    status, headers, _ = fetch(running.port, "POST", "/app.js")
    assert status == 405
    assert "GET" in (headers["Allow"] or "")


def test_without_web_a_plain_get_is_405_naming_the_proxy(proxy):
    running = proxy()
    status, headers, body = fetch(running.port, "GET", "/")
    assert status == 405
    assert b"wsproxy" in body.lower() or b"websocket" in body.lower()
    assert headers["Content-Type"].startswith("text/plain")
    assert fetch(running.port, "GET", "/index.html")[0] == 405


def test_websocket_upgrade_still_works_with_web(proxy, site, echo_target):
    running = proxy(web=str(site))
    echo_round_trip(running.port)
    assert fetch(running.port, "GET", "/")[2] == INDEX
    echo_round_trip(running.port)
    assert len(echo_target.connections) == 2


def test_web_requests_are_logged(proxy, site, wsproxy_log):
    running = proxy(web=str(site))
    fetch(running.port, "GET", "/app.js")
    fetch(running.port, "GET", "/nope")
    wsproxy_log.wait_for(lambda text: "/app.js" in text and "200" in text,
                         what="a log line for GET /app.js")
    wsproxy_log.wait_for(lambda text: "/nope" in text and "404" in text,
                         what="a log line for GET /nope")


def test_large_file_arrives_whole(proxy, site):
    data = os.urandom(300 * 1024)
    (site / "big.bin").write_bytes(data)
    running = proxy(web=str(site))
    status, headers, body = fetch(running.port, "GET", "/big.bin")
    assert status == 200
    assert int(headers["Content-Length"]) == len(data)
    assert body == data


def test_client_vanishing_mid_download_does_not_hurt(proxy, site, wsproxy_log):
    (site / "big.bin").write_bytes(os.urandom(4 * 1024 * 1024))
    running = proxy(web=str(site))
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
        # Linger 0: close() resets the connection while the server is sending.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert fetch(running.port, "GET", "/app.js")[2] == SCRIPT
    wsproxy_log.assert_no_traceback()


# -- --web-auth -------------------------------------------------------------------------------

from test_access import PASSWORD, auth_file, basic  # noqa: E402,F401  (fixture)


def test_without_web_auth_files_need_no_credentials(proxy, site, auth_file):
    running = proxy(web=str(site), auth_file=auth_file)
    assert fetch(running.port, "GET", "/")[2] == INDEX


@pytest.mark.parametrize("path", ["/", "/app.js", "/sub/", "/nope.js", "/status"])
def test_web_auth_guards_every_plain_http_request(proxy, site, auth_file, wsproxy_log, path):
    running = proxy(web=str(site), web_listing=True, auth_file=auth_file, web_auth=True,
                    status="/status")
    for headers in ({}, {"Authorization": basic("alice", "wrong")}):
        status, answer_headers, body = fetch(running.port, "GET", path, headers)
        assert status == 401, (path, status)
        assert answer_headers["WWW-Authenticate"].lower().startswith("basic")
        assert INDEX not in body and SCRIPT not in body and b"listed-name" not in body
    status, _, body = fetch(running.port, "GET", path, {"Authorization": basic("alice", PASSWORD)})
    assert status == (404 if path == "/nope.js" else 200), (path, status)
    assert wsproxy_log.find("refused: 401")
    assert not wsproxy_log.find(PASSWORD)


def test_web_auth_keeps_the_upgrade_guarded_too(proxy, site, auth_file):
    running = proxy(web=str(site), auth_file=auth_file, web_auth=True)
    with running.client() as ws:
        ws.handshake(expect_status=401)
    with running.session(protocols=["binary"],
                         headers={"Authorization": basic("alice", PASSWORD)}) as ws:
        ws.send_binary(b"ping")
        assert ws.recv_stream(4) == b"ping"


def test_web_auth_without_auth_file_is_a_config_error():
    from wsproxy import ConfigError, ProxyServer, Settings
    with pytest.raises(ConfigError, match="web-auth"):
        ProxyServer(("127.0.0.1", 0), Settings(target_host="127.0.0.1", target_port=1,
                                              web_auth=True))


def test_web_auth_on_the_command_line_needs_auth_file(site):
    from test_config import run_wsproxy
    result = run_wsproxy("-f", "--web", str(site), "--web-auth", "127.0.0.1:0", "127.0.0.1:1")
    assert result.returncode == 2 and "web-auth" in result.stderr, result.stderr
