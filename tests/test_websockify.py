"""``wsproxy-websockify``: websockify 0.13 command lines, run as real child processes.

One table: each row is a websockify command line and what websockify does
with it (listens, stays in the foreground or detaches, TLS on or off,
directory listings, token routing, ...).  Every row starts
``python3 -m wsproxy.websockify`` in a fresh directory (so the default
``self.pem`` is looked for there), checks the behaviour over real sockets,
and stops the child.  Listening addresses are loopback only.
"""

import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from certs import pki
from conftest import (EXIT_DEADLINE, ROOT, WsproxyProcess, child_env, echo_round_trip, free_port,
                      ipv6_available, port_listens, wait_until)
from wsclient import OP_BINARY, OP_PING, WSClient, build_request

from wsproxy import websockify


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    return pki(tmp_path_factory)


@pytest.fixture
def children():
    started = []
    yield started
    for child in started:
        if child.alive() and child.stop() is None:
            pytest.fail("wsproxy-websockify did not end on SIGTERM")


@pytest.fixture
def socat_servers():
    """Factory: ``socat_servers(*address_args)`` runs socat as an echo server; stopped after."""
    started = []
    socat = shutil.which("socat")

    def start(listen_address: str) -> subprocess.Popen:
        if socat is None:
            pytest.skip("socat is not installed (apt-get install socat)")
        process = subprocess.Popen([socat, listen_address, "PIPE"], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(process)
        return process

    yield start
    for process in started:
        process.terminate()
        process.wait(EXIT_DEADLINE)


class Run:
    """What a row's check needs: the child, its ports and files."""

    def __init__(self, child, port, directory, tls_files, target):
        self.child = child
        self.port = port
        self.dir = directory
        self.tls = tls_files
        self.target = target


# -- checks -----------------------------------------------------------------------------


def tls_context(run, client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=run.tls.ca)
    if client_cert:
        context.load_cert_chain(run.tls.combined)
    return context


def tls_client(run, client_cert: bool = False) -> WSClient:
    client = WSClient(run.port)
    client.sock = tls_context(run, client_cert).wrap_socket(client.sock,
                                                             server_hostname="localhost")
    return client


def round_trip(client: WSClient, path: str = "/", **request) -> None:
    with client:
        client.handshake(protocols=["binary"], path=path, **request)
        payload = os.urandom(3000)
        client.send_binary(payload)
        assert client.recv_stream(len(payload), opcode=OP_BINARY) == payload
        client.send_close(1000)
        assert client.recv_close()[0] == 1000


def check_ws(run):
    echo_round_trip(run.port)


def check_wss(run):
    round_trip(tls_client(run))


def check_wss_client_cert(run):
    round_trip(tls_client(run, client_cert=True))
    with pytest.raises(Exception):
        round_trip(tls_client(run))


def check_password_not_logged(run):
    run.child.wait_log("options in effect")
    assert "s3cret" not in run.child.output()


def check_plain_refused(run):
    with pytest.raises(Exception):
        echo_round_trip(run.port)


def check_tls_off(run):
    with socket.create_connection(("127.0.0.1", run.port), timeout=5) as sock:
        with pytest.raises((ssl.SSLError, OSError)):
            tls_context(run).wrap_socket(sock, server_hostname="localhost")
    echo_round_trip(run.port)


def http_get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(("GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % path).encode())
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk


def check_listing(run):
    answer = http_get(run.port, "/")
    assert answer.startswith(b"HTTP/1.1 200") and b"page.html" in answer, answer[:300]
    assert http_get(run.port, "/page.html").startswith(b"HTTP/1.1 200")


def check_no_listing(run):
    answer = http_get(run.port, "/")
    assert not answer.startswith(b"HTTP/1.1 200") and b"page.html" not in answer, answer[:300]
    assert http_get(run.port, "/page.html").startswith(b"HTTP/1.1 200")


def check_token(run):
    round_trip(WSClient(run.port), path="/?token=echo")
    with WSClient(run.port) as client:
        response = client.handshake(path="/?token=nobody", expect_status=None)
        assert response.status != 101 or client.recv_close()[0] != 1000


def check_host_token(run):
    round_trip(WSClient(run.port), host="echo")


def check_basic_auth(run):
    import base64
    credentials = base64.b64encode(b"user:secret").decode()
    round_trip(WSClient(run.port), headers={"Authorization": "Basic " + credentials})
    with WSClient(run.port) as client:
        assert client.handshake(expect_status=None).status == 401


def check_unix_listen(run):
    path = str(run.dir / "ws.sock")
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o600)
    request, _ = build_request()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(request)
        assert sock.recv(4096).startswith(b"HTTP/1.1 101")


def check_ipv6(run):
    echo_round_trip(run.port, host="::1")


def localhost_preferring_ipv6() -> str:
    """What ``-6 localhost:PORT`` binds: localhost's IPv6 address if it has one."""
    try:
        return socket.getaddrinfo("localhost", 0, socket.AF_INET6)[0][4][0]
    except OSError:
        return "127.0.0.1"


def check_prefer_ipv6(run):
    echo_round_trip(run.port, host=localhost_preferring_ipv6())


def check_unreachable_1011(run):
    with WSClient(run.port) as client:
        client.handshake()
        code, reason = client.recv_close()
        assert code == 1011 and reason, (code, reason)


def check_heartbeat_ping(run):
    with WSClient(run.port) as client:
        client.handshake()
        assert client.recv_message(timeout=5).opcode == OP_PING


def check_run_once_exits(run):
    echo_round_trip(run.port)
    assert run.child.wait_exit() == 0
    assert not port_listens(run.port)


def check_exits_by_itself(run):
    assert run.child.wait_exit() == 0, run.child.output()


def check_record(run):
    echo_round_trip(run.port)
    wait_until(lambda: list(run.dir.glob("rec.*")), message="a recording rec.N")


def check_log_file(run):
    log = run.dir / "ws.log"
    wait_until(lambda: log.exists() and "proxying from" in log.read_text(),
               message="'proxying from' in --log-file")
    echo_round_trip(run.port)


def check_syslog(run):
    receiver = run.syslog
    data = receiver.recv(4096)
    assert b"wsproxy" in data
    echo_round_trip(run.port)


def check_traffic(run):
    echo_round_trip(run.port)
    run.child.wait_log("bytes")


def check_verbose(run):
    echo_round_trip(run.port)
    run.child.wait_log("DEBUG")


def check_libserver(run):
    run.child.wait_log("--libserver")
    echo_round_trip(run.port)


def check_daemon(run):
    # The launcher returned 0 once the daemon listened; --run-once ends the daemon.
    assert run.child.process.returncode == 0, run.child.output()
    echo_round_trip(run.port)
    wait_until(lambda: not port_listens(run.port), message="the daemon to exit after --run-once")


# -- the table ------------------------------------------------------------------------
#
# (id, command line, checks).  In the command line: {listen} 127.0.0.1:PORT,
# {port}, {target} the echo target, {dir} the run's directory, {ca} {cert}
# {key} {combined} {enc_key} TLS files, {python} this interpreter, {closed} a
# port nothing listens on, {tls_target} a TLS echo target, {unix_target} a
# Unix socket echo target.

CASES = [
    ("listen-target", "{listen} {target}", [check_ws, check_tls_off]),
    ("option-between", "{listen} --heartbeat=30 {target}", [check_ws]),
    ("options-first-and-last", "-v {listen} {target} --traffic", [check_ws, check_traffic]),
    ("verbose", "--verbose {listen} {target}", [check_verbose]),
    ("bracketed-ipv6", "[::1]:{port} {target}", [check_ipv6]),
    ("unbracketed-ipv6", "::1:{port} {target}", [check_ipv6]),
    ("prefer-ipv6", "-6 localhost:{port} {target}", [check_prefer_ipv6]),
    ("prefer-ipv6-long", "--prefer-ipv6 localhost:{port} {target}", [check_prefer_ipv6]),
    ("daemon", "-D --run-once --idle-timeout 20 {listen} {target}", [check_daemon]),
    ("daemon-long", "--daemon --run-once --idle-timeout 20 {listen} {target}", [check_daemon]),
    ("run-once", "--run-once {listen} {target}", [check_run_once_exits]),
    ("timeout", "--timeout 1 {listen} {target}", [check_exits_by_itself]),
    ("idle-timeout", "--idle-timeout=1 {listen} {target}", [check_exits_by_itself]),
    ("heartbeat", "--heartbeat 1 {listen} {target}", [check_heartbeat_ping]),
    ("self-pem-default", "SELFPEM {listen} {target}", [check_wss, check_ws]),
    ("cert-missing-no-tls", "--cert {dir}/none.pem {listen} {target}", [check_tls_off]),
    ("cert-and-key", "--cert {cert} --key {key} {listen} {target}", [check_wss]),
    ("key-password", "-v --cert {cert} --key {enc_key} --key-password s3cret {listen} {target}",
     [check_wss, check_password_not_logged]),
    ("ssl-only", "--ssl-only --cert {combined} {listen} {target}",
     [check_wss, check_plain_refused]),
    ("ssl-version-default", "--ssl-version default --cert {combined} {listen} {target}",
     [check_wss]),
    ("ssl-version-tlsv1_2", "--ssl-version=tlsv1_2 --cert {combined} {listen} {target}",
     [check_wss]),
    ("ssl-version-tlsv1_3", "--ssl-version tlsv1_3 --cert {combined} {listen} {target}",
     [check_wss]),
    ("ssl-ciphers", "--ssl-ciphers HIGH:!aNULL --cert {combined} {listen} {target}", [check_wss]),
    ("verify-client", "--cert {combined} --verify-client --cafile {ca} {listen} {target}",
     [check_wss_client_cert]),
    ("ssl-target", "--ssl-target {listen} localhost:{tls_target}", [check_ws]),
    ("unix-target", "--unix-target {unix_target} {listen}", [check_ws]),
    ("unix-listen", "--unix-listen {dir}/ws.sock --unix-listen-mode 600 {target}",
     [check_unix_listen]),
    ("web-listing", "--web {dir}/www {listen} {target}", [check_listing, check_ws]),
    ("file-only", "--web {dir}/www --file-only {listen} {target}", [check_no_listing]),
    ("web-auth", "--web {dir}/www --web-auth --auth-plugin BasicHTTPAuth "
                 "--auth-source user:secret {listen} {target}", [check_basic_auth]),
    ("auth-plugin", "--auth-plugin BasicHTTPAuth --auth-source user:secret {listen} {target}",
     [check_basic_auth]),
    ("token-plugin", "--token-plugin TokenFile --token-source {dir}/tokens {listen}",
     [check_token]),
    ("token-plugin-readonly", "{listen} --token-plugin ReadOnlyTokenFile "
                              "--token-source={dir}/tokens", [check_token]),
    ("target-config-file", "--target-config {dir}/tokens {listen}", [check_token]),
    ("target-config-dir", "--target-config={dir}/tokendir {listen}", [check_token]),
    ("host-token", "--token-plugin TokenFile --token-source {dir}/tokens --host-token {listen}",
     [check_host_token]),
    ("record", "--record {dir}/rec {listen} {target}", [check_record]),
    ("log-file", "--log-file {dir}/ws.log {listen} {target}", [check_log_file]),
    ("syslog", "--syslog {dir}/syslog.sock {listen} {target}", [check_syslog]),
    ("legacy-syslog", "--syslog {dir}/syslog.sock --legacy-syslog {listen} {target}",
     [check_syslog]),
    ("libserver", "--libserver {listen} {target}", [check_libserver]),
    ("inetd", "INETD --inetd {target}", [check_ws]),
    ("unreachable-target", "{listen} 127.0.0.1:{closed}", [check_unreachable_1011]),
    ("wrap-command", "{listen} -- {python} {root}/tests/wrapped_echo.py {{port}}", [check_ws]),
    ("wrap-mode-ignore", "--wrap-mode ignore {listen} -- {python} {root}/tests/wrapped_echo.py",
     [check_ws]),
]


#: Rows that need the generated TLS files.
TLS_WORDS = re.compile(r"SELFPEM|\{(ca|cert|key|combined|enc_key|tls_target)\}")
TLS_CHECKS = (check_wss, check_wss_client_cert, check_tls_off)


def _prepare(tmp_path: Path, echo_target):
    directory = tmp_path
    (directory / "www").mkdir()
    (directory / "www" / "page.html").write_text("<p>hello</p>")
    (directory / "tokens").write_text("echo: %s\n" % echo_target.address)
    (directory / "tokendir").mkdir()
    (directory / "tokendir" / "a.conf").write_text("echo: %s\n" % echo_target.address)
    return directory


def _encrypted_key(tls_files, directory: Path) -> str:
    path = str(directory / "enc.key")
    subprocess.run(["openssl", "pkey", "-in", tls_files.key, "-aes256", "-passout", "pass:s3cret",
                    "-out", path], check=True, stdout=subprocess.DEVNULL, timeout=30)
    return path


@pytest.mark.parametrize("name,line,checks", CASES, ids=[case[0] for case in CASES])
def test_websockify_command_line(name, line, checks, tmp_path, request, echo_target,
                                 socat_servers, children):
    host = "127.0.0.1"
    if name.startswith("prefer-ipv6"):
        host = localhost_preferring_ipv6()
    elif "::1" in line:
        host = "::1"
        if not ipv6_available():
            pytest.skip("this machine has no IPv6 loopback")
    directory = _prepare(tmp_path, echo_target)
    tls_files = None
    if TLS_WORDS.search(line) or any(check in TLS_CHECKS for check in checks):
        tls_files = request.getfixturevalue("tls_files")  # skips without openssl
    port = free_port()
    fields = {"listen": "127.0.0.1:%d" % port, "port": port, "target": echo_target.address,
              "dir": directory, "python": sys.executable, "root": ROOT,
              "closed": free_port(), "tls_target": "", "unix_target": ""}
    if tls_files is not None:
        fields.update(ca=tls_files.ca, cert=tls_files.cert, key=tls_files.key,
                      combined=tls_files.combined)
    env = child_env()
    syslog = None
    inetd_socket = None
    if line.startswith("INETD "):
        # inetd hands over its listening socket as standard input.
        inetd_socket = socket.socket()
        inetd_socket.bind(("127.0.0.1", port))
        inetd_socket.listen(8)
        line = line[len("INETD "):]
    if line.startswith("SELFPEM "):
        shutil.copy(tls_files.combined, str(directory / "self.pem"))
        line = line[len("SELFPEM "):]
    if "{enc_key}" in line:
        fields["enc_key"] = _encrypted_key(tls_files, directory)
    if "{tls_target}" in line:
        tls_port = free_port()
        socat_servers("OPENSSL-LISTEN:%d,bind=127.0.0.1,reuseaddr,fork,cert=%s,verify=0"
                      % (tls_port, tls_files.combined))
        wait_until(lambda: port_listens(tls_port), message="socat's TLS echo target")
        fields["tls_target"] = tls_port
        env["SSL_CERT_FILE"] = tls_files.ca  # the target's CA, as the system store
    if "{unix_target}" in line:
        path = str(directory / "target.sock")
        socat_servers("UNIX-LISTEN:%s,fork" % path)
        wait_until(lambda: os.path.exists(path), message="socat's Unix echo target")
        fields["unix_target"] = path
    if "syslog.sock" in line:
        syslog = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        syslog.bind(str(directory / "syslog.sock"))
        syslog.settimeout(10)
    try:
        args = [word.format(**fields) for word in line.split()]
        child = WsproxyProcess(args, directory, cwd=str(directory), module="wsproxy.websockify",
                               env=env, stdin=inetd_socket.fileno() if inetd_socket
                               else subprocess.DEVNULL)
        if inetd_socket is not None:
            inetd_socket.close()  # the child has its copy
        children.append(child)
        if "-D" in args or "--daemon" in args:
            assert child.wait_exit() == 0, child.output()
        if "--unix-listen" in args:
            wait_until(lambda: os.path.exists(str(directory / "ws.sock")), EXIT_DEADLINE,
                       lambda: "the Unix socket; output:\n" + child.output())
        else:
            wait_until(lambda: port_listens(port, host) or child.process.poll() not in (None, 0),
                       EXIT_DEADLINE, lambda: "the child to listen; output:\n" + child.output())
            assert child.process.poll() in (None, 0), child.output()
        if "-D" not in args and "--daemon" not in args:
            if "--log-file" not in args and "--syslog" not in args:
                child.wait_log("proxying from")
            if check_exits_by_itself not in checks:
                assert child.process.poll() is None, "stays in the foreground without -D"
        run = Run(child, port, directory, tls_files, echo_target)
        run.syslog = syslog
        for check in checks:
            check(run)
        assert "Traceback" not in child.output(), child.output()
    finally:
        if syslog is not None:
            syslog.close()


# -- refused command lines: exit 2 with one line naming the option ----------------------

REFUSED = [
    (["--ssl-only", "6080", "h:1"], "--ssl-only"),
    (["--ssl-only", "--cert", "missing.pem", "6080", "h:1"], "--ssl-only"),
    (["--token-source", "x", "6080", "h:1"], "--token-plugin"),
    (["--host-token", "6080", "h:1"], "--token-plugin"),
    (["--auth-source", "x", "6080", "h:1"], "--auth-plugin"),
    (["--web-auth", "--auth-plugin", "BasicHTTPAuth", "6080", "h:1"], "--web"),
    (["--legacy-syslog", "6080", "h:1"], "--syslog"),
    (["6080"], "TARGET"),
    (["6080", "nohostport"], "target"),
    (["6080", "h:1", "extra"], "too many"),
    (["x6080", "h:1"], "source"),
    (["--ssl-version", "sslv3", "6080", "h:1"], "--ssl-version"),
    (["--wrap-mode", "sometimes", "6080", "--", "prog"], "--wrap-mode"),
    (["--timeout", "soon", "6080", "h:1"], "--timeout"),
]


@pytest.mark.parametrize("args,named", REFUSED, ids=[" ".join(case[0]) for case in REFUSED])
def test_refused_command_lines_exit_2_naming_the_option(args, named, tmp_path):
    result = subprocess.run([sys.executable, "-m", "wsproxy.websockify"] + args,
                            cwd=str(tmp_path), env=child_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, timeout=EXIT_DEADLINE)
    assert result.returncode == 2, result
    assert named in result.stderr and "Traceback" not in result.stderr, result.stderr


# -- the reading itself, in-process ------------------------------------------------------


def settings_of(*args):
    return websockify.parse_command_line(list(args))[0]


def test_defaults_are_websockifys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = settings_of("6080", "localhost:5900")
    assert (settings.listen_host, settings.listen_port) == ("", 6080)
    assert (settings.target_host, settings.target_port) == ("localhost", 5900)
    assert settings.foreground and settings.close_unreachable and settings.web_listing
    assert settings.cert is None  # no self.pem here
    (tmp_path / "self.pem").write_text("")
    assert settings_of("6080", "h:1").cert == str(tmp_path / "self.pem")


def test_inetd_and_unix_listen_take_no_source():
    assert settings_of("--inetd", "h:5900").inetd
    settings = settings_of("--unix-listen", "/tmp/x.sock", "h:5900")
    assert settings.unix_listen == "/tmp/x.sock" and settings.target_port == 5900


def test_wrap_command_follows_the_source_wherever_the_double_dash_stands():
    for args in (["6080", "--", "prog", "-x"], ["--", "6080", "prog", "-x"]):
        settings = settings_of(*args)
        assert settings.listen_port == 6080 and settings.wrap_command == ["prog", "-x"]


def test_plugins_and_sources_map_to_settings():
    settings = settings_of("--token-plugin", "TokenRedis", "--token-source", "localhost:6379",
                           "--auth-plugin", "mod.Auth", "--auth-source", "a:b", "6080")
    assert (settings.token_plugin, settings.token_source) == ("TokenRedis", "localhost:6379")
    assert (settings.auth_plugin, settings.auth_source) == ("mod.Auth", "a:b")


def test_negative_numbers_are_values_not_options():
    with pytest.raises(Exception) as refused:
        settings_of("--heartbeat", "-5", "6080", "h:1")
    assert "--heartbeat" in str(refused.value)


def test_verify_client_without_cafile_uses_the_system_cas(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "self.pem").write_text("")
    try:
        settings = settings_of("--verify-client", "6080", "h:1")
    except Exception as exc:
        assert "--cafile" in str(exc)  # a machine without a CA bundle
        return
    assert settings.verify_client and os.path.isfile(settings.cafile)


# -- the unreachable target, in-process -------------------------------------------------


def test_unreachable_target_is_101_then_1011_with_close_unreachable(proxy, wsproxy_log):
    running = proxy(target_port=free_port(), close_unreachable=True)
    with WSClient(running.port) as client:
        client.handshake()
        code, reason = client.recv_close()
        assert code == 1011 and "target" in reason
        client.send_close(1011)
    wsproxy_log.wait_for(lambda text: "cannot reach target" in text)


def test_unreachable_target_is_502_by_default(proxy):
    running = proxy(target_port=free_port())
    with WSClient(running.port) as client:
        assert client.handshake(expect_status=None).status == 502


@pytest.mark.parametrize("text,expected", [
    ("6080", ("", 6080)), ("0.0.0.0:6080", ("0.0.0.0", 6080)), ("::1:6080", ("::1", 6080)),
    ("[::1]:6080", ("::1", 6080)), ("fe80::1:2:6080", ("fe80::1:2", 6080)),
    ("localhost:0", ("localhost", 0)),
])
def test_addresses_read_as_websockify_reads_them(text, expected):
    assert websockify.split_address(text, "source") == expected


@pytest.mark.parametrize("text,expected", [
    ("::1:5900", ("::1", 5900)), ("[::1]:5900", ("::1", 5900)), ("vnc.example:5901", ("vnc.example", 5901)),
])
def test_targets_read_as_websockify_reads_them(text, expected):
    settings = settings_of("6080", text)
    assert (settings.target_host, settings.target_port) == expected


def test_prefer_ipv6_binds_ipv6_where_there_is_a_choice():
    from wsproxy import cli
    from wsproxy.settings import Settings
    assert cli.listen_host(Settings(prefer_ipv6=True)) == "::"
    assert cli.listen_host(Settings(prefer_ipv6=True, listen_host="127.0.0.1")) == "127.0.0.1"
    assert cli.listen_host(Settings(prefer_ipv6=True, listen_host="::1")) == "::1"
    assert cli.listen_host(Settings(listen_host="")) == ""
