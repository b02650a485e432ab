"""``--target-proxy-protocol``: the target learns who the client is.

First against a plain TCP target of the tests' own that keeps every byte
(the header must come first, whole, and the payload after it untouched),
then against the real readers of the header: Debian's nginx with a
``stream`` server ``listen ... proxy_protocol`` that logs
``$proxy_protocol_addr`` and relays to an echo target (v1 and v2, IPv4
and IPv6, the client being the socket peer, a trusted ``X-Forwarded-For``
or a balancer's own PROXY header; and with ``--ssl-target``, the header in
clear before nginx's TLS), and HAProxy with ``accept-proxy`` logging the
version 2 TLVs.  nginx and HAProxy are started by the tests on free ports
and stopped after; the tests skip, saying so, where they are missing.
"""

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
from typing import List, Optional

import pytest

from certs import pki
from conftest import (EXIT_DEADLINE, ROOT, THREAD_DEADLINE, RunningProxy, child_env, free_port,
                      ipv6_available, port_listens, wait_until)
from wsclient import OP_BINARY, WSClient, build_request

from wsproxy import ConfigError, ProxyRequestHandler, ProxyServer, Settings
from wsproxy.protocol.proxy_protocol import Command, TLVType, parse_header, parse_tlvs

PAYLOAD = os.urandom(3000)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return pki(tmp_path_factory)


def start_proxy(address, **fields) -> RunningProxy:
    server = ProxyServer(address, Settings(**fields))
    return RunningProxy(server, server.settings)


def echo_session(client: WSClient) -> None:
    """One binary message there and back through the proxy and the target."""
    client.send_binary(PAYLOAD)
    assert client.recv_stream(len(PAYLOAD), opcode=OP_BINARY) == PAYLOAD
    client.send_close(1000)
    assert client.recv_close()[0] == 1000


def send_session(client: WSClient) -> None:
    """One binary message to a target that only listens, then the closing handshake."""
    client.send_binary(PAYLOAD)
    client.send_close(1000)
    assert client.recv_close()[0] == 1000


@pytest.fixture
def sink(make_target):
    """A target that keeps what it receives and answers nothing (the header must not come back)."""
    return make_target(echo=False)


def received_header(target, index: int = 0):
    """The PROXY header at the start of the ``index``-th target connection, once whole."""
    connection = target.wait_connection(index)
    return wait_until(lambda: parse_header(connection.received_bytes()),
                      message=lambda: "a whole PROXY header at the target, got %r"
                      % connection.received_bytes()[:120])


def session_number(wsproxy_log, client_port: int) -> str:
    line = wsproxy_log.wait_for(lambda text: ":%d: open to" % client_port in text,
                                what="the session's open line")
    return re.match(r"session (\d+) ", line).group(1)


# -- a target of our own: what arrives, byte for byte --------------------------------


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_header_comes_first_then_the_payload_untouched(proxy, sink, wsproxy_log, version):
    target = sink
    running = proxy(target=target, target_proxy_protocol=version)
    with running.session(protocols=["binary"]) as client:
        client_port = client.local_port
        send_session(client)
    header = received_header(target)
    assert header.version == int(version[1])
    assert header.source == ("127.0.0.1", client_port)
    assert header.destination == ("127.0.0.1", running.port)
    target.connections[0].wait_received(header.length + len(PAYLOAD))
    received = target.connections[0].received_bytes()
    assert received[header.length:] == PAYLOAD, "the payload must follow the header unchanged"
    if version == "v2":
        assert header.tlv(TLVType.AUTHORITY) == b"127.0.0.1"
        assert header.tlv(TLVType.UNIQUE_ID) == session_number(wsproxy_log, client_port).encode()
        assert header.tlv(TLVType.SSL) is None, "a plain ws:// client has no TLS to describe"


def test_without_the_option_the_target_gets_only_the_payload(proxy, sink):
    target = sink
    running = proxy(target=target)
    with running.session(protocols=["binary"]) as client:
        send_session(client)
    target.wait_connection().wait_received(len(PAYLOAD))
    assert target.connections[0].received_bytes() == PAYLOAD


def test_forwarded_address_from_a_trusted_proxy_is_named(proxy, sink):
    target = sink
    running = proxy(target=target, target_proxy_protocol="v1", trusted_proxy=["127.0.0.1"])
    with running.session(protocols=["binary"], headers={
            "X-Forwarded-For": "198.51.100.1, 203.0.113.77"}) as client:
        send_session(client)
    assert received_header(target).source == ("203.0.113.77", 0)


def test_forwarded_address_from_an_untrusted_peer_is_not_believed(proxy, sink):
    target = sink
    running = proxy(target=target, target_proxy_protocol="v2")
    with running.session(protocols=["binary"],
                         headers={"X-Forwarded-For": "203.0.113.77"}) as client:
        client_port = client.local_port
        send_session(client)
    assert received_header(target).source == ("127.0.0.1", client_port)


def wss_upgrade(port: int, context: ssl.SSLContext, target):
    """A wss:// handshake; returns the TLS version used and the header the target got."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(build_request(host="localhost:%d" % port, protocols=["binary"])[0])
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                assert chunk, "closed before the 101: %r" % head
                head += chunk
            assert head.startswith(b"HTTP/1.1 101 ")
            return sock.version(), received_header(target)


@pytest.mark.parametrize("client_certificate", [False, True])
def test_wss_client_is_described_in_the_ssl_tlv(proxy, sink, files, client_certificate):
    target = sink
    fields = dict(verify_client=True, cafile=files.ca) if client_certificate else {}
    running = proxy(target=target, target_proxy_protocol="v2", cert=files.cert, key=files.key,
                    **fields)
    context = ssl.create_default_context(cafile=files.ca)
    if client_certificate:
        context.load_cert_chain(files.cert, files.key)  # CN=localhost, clientAuth allowed
    tls_version, header = wss_upgrade(running.port, context, target)
    assert header.tlv(TLVType.AUTHORITY) == b"localhost"
    ssl_value = header.tlv(TLVType.SSL)
    subs = parse_tlvs(ssl_value[5:])
    assert (0x21, tls_version.encode()) in subs
    assert any(kind == 0x23 and value for kind, value in subs), "the cipher's name"
    if client_certificate:
        # §2.2.6: PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN, verify 0, the CN.
        assert ssl_value[:5] == b"\x03\0\0\0\0"
        assert (0x22, b"localhost") in subs
    else:
        assert ssl_value[0] == 0x01 and ssl_value[1:5] != b"\0\0\0\0", \
            "TLS without a client certificate: not verified (§2.2.6)"
        assert not any(kind == 0x22 for kind, _ in subs)


def test_unix_socket_client_is_unknown_to_v1_and_local_to_v2(sink, wsproxy_log, tmp_path):
    from wsproxy.server import UnixProxyServer

    target = sink
    for index, version in enumerate(["v1", "v2"]):
        path = str(tmp_path / ("wsproxy-%s.sock" % version))
        server = UnixProxyServer(path, Settings(target_host="127.0.0.1", target_port=target.port,
                                                target_proxy_protocol=version))
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  daemon=True, name="proxy-serve-unix")
        thread.start()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(path)
                sock.sendall(build_request(host="localhost")[0])
                assert sock.recv(12) == b"HTTP/1.1 101"
                header = received_header(target, index)
        finally:
            server.shutdown()
            server.server_close()
            thread.join(THREAD_DEADLINE)
        assert header.client_address is None
        if version == "v1":
            assert target.connections[index].received_bytes() == b"PROXY UNKNOWN\r\n"
        else:
            assert header.command is Command.LOCAL
            assert header.tlv(TLVType.AUTHORITY) == b"localhost"


def test_an_embedders_socket_gets_the_header_too(sink, wsproxy_log):
    target = sink

    class Handler(ProxyRequestHandler):
        def select_target(self, request):
            return socket.create_connection(("127.0.0.1", target.port), timeout=5)

    server = ProxyServer(("127.0.0.1", 0), Settings(target_proxy_protocol="v1"), Handler)
    running = RunningProxy(server, server.settings)
    try:
        with running.session(protocols=["binary"]) as client:
            client_port = client.local_port
            send_session(client)
    finally:
        running.stop()
    assert received_header(target).source == ("127.0.0.1", client_port)


@pytest.mark.parametrize("value", ["v3", "yes", "0"])
def test_bad_value_exits_2_naming_the_option(value):
    result = subprocess.run(
        [sys.executable, "-m", "wsproxy", "-f", "--target-proxy-protocol", value,
         "127.0.0.1:0", "127.0.0.1:1"],
        capture_output=True, text=True, cwd=ROOT, env=child_env(), timeout=EXIT_DEADLINE)
    assert result.returncode == 2
    assert "target-proxy-protocol" in result.stderr and "v1 or v2" in result.stderr
    assert "Traceback" not in result.stderr


def test_embedder_with_a_bad_value_gets_a_config_error():
    with pytest.raises(ConfigError, match="target-proxy-protocol"):
        ProxyServer(("127.0.0.1", 0), Settings(target_host="127.0.0.1", target_port=1,
                                              target_proxy_protocol="v3"))


def test_config_file_and_print_config_round_trip(tmp_path):
    from wsproxy.config import format_config, read_config_file

    path = tmp_path / "wsproxy.conf"
    path.write_text("[wsproxy]\ntarget = 127.0.0.1:5900\ntarget-proxy-protocol = 2\n")
    values = read_config_file(str(path))
    assert values["target_proxy_protocol"] == "v2"
    assert "target-proxy-protocol = v2" in format_config(Settings(target_proxy_protocol="v2"))


@pytest.mark.parametrize("host, expected", [
    ("example.org", b"example.org"), ("example.org:8443", b"example.org"),
    ("[::1]:8080", b"::1"), ("[2001:db8::1]", b"2001:db8::1"), ("", None), (None, None),
    ("x" * 256, None), ("b\u00fccher.example", "b\u00fccher.example".encode("utf-8")),
])
def test_authority_is_the_host_headers_host_name(host, expected):
    from wsproxy.target_proxy import host_name
    assert host_name(host) == expected


# -- nginx: a real reader of the header ------------------------------------------------

NGINX = shutil.which("nginx") or next(
    (path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(path)), None)
STREAM_MODULE = next((path for path in ("/usr/lib/nginx/modules/ngx_stream_module.so",
                                        "/usr/lib64/nginx/modules/ngx_stream_module.so")
                      if os.path.exists(path)), None)

NGINX_CONFIG = """\
{load}
worker_processes 1;
events {{ worker_connections 64; }}
stream {{
    log_format pp '$proxy_protocol_addr $proxy_protocol_port '
                  '$proxy_protocol_server_addr $proxy_protocol_server_port';
    access_log {log} pp;
    server {{
        listen 127.0.0.1:{port} proxy_protocol;
        {listen6}
        proxy_pass 127.0.0.1:{echo};
    }}
    server {{
        listen 127.0.0.1:{tls_port} ssl proxy_protocol;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        proxy_pass 127.0.0.1:{echo};
    }}
}}
"""


class Nginx:
    """nginx in the foreground with a ``stream`` config of ours; ``lines()`` reads its log."""

    def __init__(self, directory, echo_port: int, files) -> None:
        self.port = free_port()
        self.tls_port = free_port()
        self.log_path = os.path.join(directory, "access.log")
        self.pid_path = os.path.join(directory, "nginx.pid")
        config = os.path.join(directory, "nginx.conf")
        with open(config, "w") as stream:
            stream.write(NGINX_CONFIG.format(
                load="load_module %s;" % STREAM_MODULE if STREAM_MODULE else "",
                log=self.log_path, port=self.port, tls_port=self.tls_port, echo=echo_port,
                listen6="listen [::1]:%d proxy_protocol;" % self.port if ipv6_available() else "",
                cert=files.cert, key=files.key))
        self._errors = open(os.path.join(directory, "nginx.err"), "w+")
        self.process = subprocess.Popen(
            [NGINX, "-p", directory, "-e", "stderr", "-c", config,
             "-g", "daemon off; pid %s;" % self.pid_path],
            stdin=subprocess.DEVNULL, stdout=self._errors, stderr=subprocess.STDOUT)
        # nginx writes its pid file once its sockets listen.
        wait_until(lambda: os.path.exists(self.pid_path) or self.process.poll() is not None,
                   EXIT_DEADLINE, "nginx to start")
        if self.process.poll() is not None:
            self._errors.seek(0)
            pytest.fail("nginx did not start: %s" % self._errors.read())

    def lines(self) -> List[str]:
        try:
            with open(self.log_path) as stream:
                return stream.read().splitlines()
        except FileNotFoundError:
            return []

    def wait_line(self, expected: str) -> None:
        wait_until(lambda: expected in self.lines(), message=lambda: "nginx to log %r; "
                   "its log holds %r" % (expected, self.lines()))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: finish, then exit
            try:
                self.process.wait(EXIT_DEADLINE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(EXIT_DEADLINE)
        self._errors.close()


@pytest.fixture
def nginx(make_target, files, tmp_path):
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx libnginx-mod-stream; "
                    ".ci/run does)")
    if STREAM_MODULE is None and "--with-stream " not in subprocess.run(
            [NGINX, "-V"], capture_output=True, text=True).stderr + " ":
        pytest.skip("nginx has no stream module (apt-get install libnginx-mod-stream)")
    echo = make_target()
    server = Nginx(str(tmp_path), echo.port, files)
    yield server
    server.stop()


BALANCER_HEADER = b"PROXY TCP6 2001:db8::17 2001:db8::1 40123 443\r\n"


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("case", ["ipv4-peer", "ipv4-forwarded", "ipv6-peer", "ipv6-balancer"])
def test_nginx_logs_the_client_wsproxy_believes(nginx, wsproxy_log, version, case):
    ipv6 = case.startswith("ipv6")
    if ipv6 and not ipv6_available():
        pytest.skip("IPv6 loopback (::1) not available")
    host = "::1" if ipv6 else "127.0.0.1"
    fields = dict(target_host=host, target_port=nginx.port, target_proxy_protocol=version)
    if case == "ipv4-forwarded":
        fields["trusted_proxy"] = ["127.0.0.1"]
    if case == "ipv6-balancer":
        fields.update(proxy_protocol=True, trusted_proxy=["::1"])
    running = start_proxy((host, 0), **fields)
    try:
        with WSClient(running.port, host=host) as client:
            if case == "ipv6-balancer":
                client.send_raw(BALANCER_HEADER)
            headers = {"Host": "[::1]" if ipv6 else "127.0.0.1"}
            if case == "ipv4-forwarded":
                headers["X-Forwarded-For"] = "198.51.100.23"
            client.handshake(protocols=["binary"], headers=headers)
            expected = {
                "ipv4-peer": "127.0.0.1 %d 127.0.0.1 %d" % (client.local_port, running.port),
                # A forwarded address has no port: wsproxy sends 0, which
                # nginx's $proxy_protocol_port shows as empty.
                "ipv4-forwarded": "198.51.100.23  127.0.0.1 %d" % running.port,
                "ipv6-peer": "::1 %d ::1 %d" % (client.local_port, running.port),
                "ipv6-balancer": "2001:db8::17 40123 2001:db8::1 443",
            }[case]
            echo_session(client)
    finally:
        running.stop()
    # nginx logs a stream session when it ends.
    nginx.wait_line(expected)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_nginx_reads_the_header_before_its_tls(nginx, files, wsproxy_log, version):
    """--ssl-target: the header in clear first, then the TLS handshake (as HAProxy sends it)."""
    running = start_proxy(("127.0.0.1", 0), target_host="127.0.0.1", target_port=nginx.tls_port,
                          ssl_target=True, target_cafile=files.ca, target_proxy_protocol=version,
                          trusted_proxy=["127.0.0.1"])
    try:
        with WSClient(running.port) as client:
            client.handshake(protocols=["binary"], headers={"X-Forwarded-For": "203.0.113.50"})
            echo_session(client)
    finally:
        running.stop()
    nginx.wait_line("203.0.113.50  127.0.0.1 %d" % running.port)


# -- HAProxy: a real reader of the version 2 TLVs ------------------------------------------

HAPROXY = shutil.which("haproxy") or next(
    (path for path in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.path.exists(path)),
    None)

HAPROXY_CONFIG = """\
global
    log stdout format raw local0

defaults
    mode tcp
    log global
    timeout connect 2s
    timeout client 30s
    timeout server 30s

frontend from_wsproxy
    bind 127.0.0.1:{port} accept-proxy
    log-format "client=%ci:%cp authority=%[fc_pp_authority] unique_id=%[fc_pp_unique_id]"
    default_backend echo

backend echo
    server echo 127.0.0.1:{echo}
"""


def test_haproxy_reads_the_authority_and_unique_id_tlvs(make_target, wsproxy_log, tmp_path):
    if HAPROXY is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy; .ci/run does)")
    echo = make_target()
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(HAPROXY_CONFIG.format(port=port, echo=echo.port))
    log_path = tmp_path / "haproxy.log"
    with open(log_path, "w") as log:
        haproxy = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT)
    running = None  # type: Optional[RunningProxy]
    try:
        def listening() -> bool:
            assert haproxy.poll() is None, "haproxy exited: %s" % log_path.read_text()
            return port_listens(port)
        wait_until(listening, EXIT_DEADLINE, "haproxy to listen")
        running = start_proxy(("127.0.0.1", 0), target_host="127.0.0.1", target_port=port,
                              target_proxy_protocol="v2")
        with WSClient(running.port) as client:
            client.handshake(protocols=["binary"], headers={"Host": "desk.example.org:8443"})
            client_port = client.local_port
            echo_session(client)
        number = session_number(wsproxy_log, client_port)
        expected = "client=127.0.0.1:%d authority=desk.example.org unique_id=%s" % (
            client_port, number)
        wait_until(lambda: expected in log_path.read_text(),
                   message=lambda: "haproxy to log %r; it logged %r" % (
                       expected, log_path.read_text()))
    finally:
        if running is not None:
            running.stop()
        haproxy.terminate()
        haproxy.wait(EXIT_DEADLINE)
