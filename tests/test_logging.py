"""Logging from the command line: levels, ``--log-file`` and its reopening, ``--syslog``.

Every test runs ``python -m wsproxy`` as a real child process and reads
what it wrote: its standard error, a real log file, or real syslog
datagrams received on a socket the test binds.
"""

import os
import re
import signal
import socket
import ssl
import sys
from pathlib import Path

import pytest

from conftest import EXIT_DEADLINE, free_port, port_listens, run_wsproxy, wait_until
from wsclient import open_session

#: Every line the file handler writes starts like this.
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} wsproxy\[\d+\] "
                      r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) ")

#: syslog priority of an INFO line with the daemon facility: 3 * 8 + 6.
DAEMON_INFO = "<30>"


def echo(ws, payload: bytes) -> None:
    ws.send_binary(payload)
    assert ws.recv_stream(len(payload)) == payload


def close_normally(ws, reason: str = "") -> None:
    ws.send_close(1000, reason)
    assert ws.recv_close()[0] == 1000
    ws.expect_closed()


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


def send_tls_hello(port: int) -> None:
    """Start a TLS handshake with a server that has no certificate (it warns and closes)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=EXIT_DEADLINE) as raw:
        with pytest.raises((ssl.SSLError, OSError)):
            context.wrap_socket(raw).close()


# -- levels ---------------------------------------------------------------------------------


def test_default_level_logs_start_and_sessions_to_stderr(wsproxy_process, echo_target):
    port = free_port()
    child = wsproxy_process("-f", "127.0.0.1:%d" % port, echo_target.address)
    child.wait_listening(port)
    with open_session(port, protocols=["binary"]) as ws:
        echo(ws, b"hello")
        close_normally(ws)
    child.wait_for(lambda: "closed: target %s" % echo_target.address in child.output(),
                   "the session's closing line")
    output = child.output()
    assert "INFO listening on 127.0.0.1:%d, relaying to %s" % (port, echo_target.address) in output
    assert "open to %s" % echo_target.address in output
    assert "DEBUG" not in output


def test_quiet_logs_warnings_only(wsproxy_process, echo_target):
    port = free_port()
    child = wsproxy_process("-f", "-q", "127.0.0.1:%d" % port, echo_target.address)
    child.wait_listening(port)
    with open_session(port, protocols=["binary"]) as ws:
        echo(ws, b"hello")
        close_normally(ws)
    send_tls_hello(port)
    child.wait_for(lambda: "WARNING" in child.output(), "the no-certificate warning")
    output = child.output()
    assert "no certificate" in output
    assert "INFO" not in output, output


def test_verbose_logs_debug_lines(wsproxy_process, echo_target):
    port = free_port()
    child = wsproxy_process("-f", "-v", "--max-connections", "9", "127.0.0.1:%d" % port,
                            echo_target.address)
    child.wait_listening(port)
    child.wait_for(lambda: "DEBUG options in effect" in child.output(), "a debug line")
    assert "max-connections=9" in child.output()


# -- --log-file -------------------------------------------------------------------------------


def test_log_file_gets_the_lines_and_stderr_stays_empty(tmp_path, wsproxy_process, echo_target):
    log = tmp_path / "wsproxy.log"
    port = free_port()
    child = wsproxy_process("-f", "--log-file", str(log), "127.0.0.1:%d" % port,
                            echo_target.address)
    child.wait_listening(port)
    with open_session(port, protocols=["binary"]) as ws:
        echo(ws, b"logged")
        close_normally(ws)
    child.wait_for(lambda: "closed: target" in read_text(log), "the closing line in the log file")
    assert "listening on" in read_text(log)
    assert child.output() == ""


def test_sighup_reopens_the_log_file_and_keeps_the_session(tmp_path, wsproxy_process,
                                                           echo_target):
    log = tmp_path / "wsproxy.log"
    rotated = tmp_path / "wsproxy.log.1"
    port = free_port()
    child = wsproxy_process("-f", "--log-file", str(log), "127.0.0.1:%d" % port,
                            echo_target.address)
    child.wait_listening(port)
    with open_session(port, protocols=["binary"]) as ws:
        echo(ws, b"before rotation")
        child.wait_for(lambda: "open to" in read_text(log), "the session's opening line")
        os.rename(str(log), str(rotated))
        child.send_signal(signal.SIGHUP)
        child.wait_for(lambda: "SIGHUP" in read_text(log), "a new log file at the original path")
        echo(ws, b"after rotation")
        close_normally(ws)
    child.wait_for(lambda: "closed: target" in read_text(log), "the closing line in the new file")
    old, new = read_text(rotated), read_text(log)
    assert "listening on" in old and "open to" in old
    assert "closed: target" not in old, "lines after SIGHUP went to the rotated file"
    assert "listening on" not in new
    for line in (old + new).splitlines():
        assert LOG_LINE.match(line), "not a log line: %r" % line


def test_daemon_reopens_its_log_file_on_sighup(tmp_path, echo_target):
    log = tmp_path / "wsproxy.log"
    pid_file = tmp_path / "wsproxy.pid"
    port = free_port()
    result = run_wsproxy("--pid-file", str(pid_file), "--log-file", str(log),
                         "127.0.0.1:%d" % port, echo_target.address)
    assert result.returncode == 0, result.stderr
    pid = int(pid_file.read_text())
    try:
        os.rename(str(log), str(tmp_path / "wsproxy.log.1"))
        os.kill(pid, signal.SIGHUP)
        wait_until(lambda: "SIGHUP" in read_text(log), EXIT_DEADLINE,
                   "the daemon to write to a new log file")
        with open_session(port, protocols=["binary"]) as ws:
            echo(ws, b"daemon")
            close_normally(ws)
        wait_until(lambda: "closed: target" in read_text(log), EXIT_DEADLINE,
                   "the session line in the new log file")
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not pid_file.exists(), EXIT_DEADLINE, "the daemon to exit")
    assert "stopped" in read_text(log)
    assert "Traceback" not in read_text(log)


def test_unwritable_log_file_exits_2(tmp_path, echo_target):
    result = run_wsproxy("-f", "--log-file", str(tmp_path / "missing" / "wsproxy.log"),
                         "127.0.0.1:%d" % free_port(), echo_target.address)
    assert result.returncode == 2
    assert result.stderr.startswith("wsproxy: --log-file: cannot open")
    assert "Traceback" not in result.stderr


def test_log_file_is_not_opened_through_a_planted_symlink(tmp_path, echo_target):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "wsproxy.log"
    link.symlink_to(victim)
    result = run_wsproxy("-f", "--log-file", str(link), "127.0.0.1:%d" % free_port(),
                         echo_target.address)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("wsproxy: --log-file: cannot open") \
        and "symbolic link" in result.stderr, result.stderr
    assert victim.read_text() == "precious\n"


def test_reopen_refuses_a_symlink_planted_after_rotation(tmp_path, wsproxy_process, echo_target):
    log = tmp_path / "wsproxy.log"
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    port = free_port()
    child = wsproxy_process("-f", "--log-file", str(log), "127.0.0.1:%d" % port,
                            echo_target.address)
    child.wait_listening(port)
    assert os.stat(str(log)).st_mode & 0o777 == 0o640
    os.rename(str(log), str(tmp_path / "wsproxy.log.1"))
    log.symlink_to(victim)
    child.send_signal(signal.SIGHUP)
    child.wait_for(lambda: "symbolic link" in read_text(tmp_path / "wsproxy.log.1"),
                   "the refusal, written to the old file")
    assert victim.read_text() == "precious\n"


# -- escaping -------------------------------------------------------------------------------


def test_client_text_cannot_forge_log_lines(tmp_path, wsproxy_process, echo_target):
    log = tmp_path / "wsproxy.log"
    port = free_port()
    child = wsproxy_process("-f", "--log-file", str(log), "--trusted-proxy", "127.0.0.1",
                            "127.0.0.1:%d" % port, echo_target.address)
    child.wait_listening(port)
    forged = "2030-01-01 00:00:00,000 wsproxy[1] INFO forged"
    with open_session(port, protocols=["binary"],
                      headers={"X-Forwarded-For": "203.0.113.9\x85" + forged}) as ws:
        echo(ws, b"x")
        close_normally(ws, reason="bye\r\n" + forged)
    child.wait_for(lambda: "closed: target" in read_text(log), "the closing line")
    text = read_text(log)
    assert "forged" in text, "the client's text should be logged, escaped"
    for line in text.splitlines():
        assert LOG_LINE.match(line), "a client forged a log line: %r" % line
        assert "wsproxy[1]" not in line[:40]


# -- --syslog -------------------------------------------------------------------------------


def receive_until(sock: socket.socket, fragment: str) -> str:
    """Syslog datagrams received until one contains ``fragment``; returns that one."""
    sock.settimeout(EXIT_DEADLINE)
    seen = []
    while True:
        try:
            message = sock.recv(65536).decode("utf-8", "replace")
        except socket.timeout:
            pytest.fail("no syslog message containing %r; got %r" % (fragment, seen))
        seen.append(message)
        if fragment in message:
            return message


def test_syslog_over_udp(wsproxy_process, echo_target):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        port = free_port()
        child = wsproxy_process("-f", "127.0.0.1:%d" % port, echo_target.address,
                                "--syslog", "127.0.0.1:%d" % receiver.getsockname()[1])
        message = receive_until(receiver, "listening on")
        expected = DAEMON_INFO + "wsproxy[%d]: INFO listening on" % child.pid
        assert message.startswith(expected), message
        with open_session(port, protocols=["binary"]) as ws:
            echo(ws, b"hello")
            close_normally(ws)
        receive_until(receiver, "closed: target %s" % echo_target.address)
    assert child.output() == "", "with --syslog alone nothing goes to standard error"


def test_syslog_to_a_unix_socket_and_a_log_file_and_syslog_going_away(tmp_path, wsproxy_process,
                                                                     echo_target):
    path = tmp_path / "log.sock"
    log = tmp_path / "wsproxy.log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        port = free_port()
        child = wsproxy_process("-f", "--syslog=%s" % path, "--log-file", str(log),
                                "127.0.0.1:%d" % port, echo_target.address)
        message = receive_until(receiver, "listening on")
        assert message.startswith(DAEMON_INFO + "wsproxy[%d]:" % child.pid), message
        child.wait_for(lambda: "listening on" in read_text(log), "the same line in the log file")
    # The syslog socket is gone: one line on standard error, no traceback,
    # and the log file and the sessions go on.
    for _ in range(2):
        with open_session(port, protocols=["binary"]) as ws:
            echo(ws, b"syslog is down")
            close_normally(ws)
    child.wait_for(lambda: read_text(log).count("closed: target") == 2, "two closing lines")
    child.wait_for(lambda: "cannot write a log line" in child.output(), "the syslog failure")
    assert child.output().count("cannot write a log line") == 1, child.output()
    assert "Traceback" not in child.output()


def test_syslog_without_address_uses_the_local_syslog(wsproxy_process, echo_target):
    port = free_port()
    result = run_wsproxy("--print-config", "127.0.0.1:%d" % port, echo_target.address, "--syslog")
    assert result.returncode == 0, result.stderr
    assert "\nsyslog = yes\n" in result.stdout
    child = wsproxy_process("-f", "127.0.0.1:%d" % port, echo_target.address, "--syslog")
    child.wait_listening(port)
    with open_session(port, protocols=["binary"]) as ws:
        echo(ws, b"to the local syslog")
        close_normally(ws)
    assert child.alive()


# -- secrets --------------------------------------------------------------------------------

SERVICE_PASSWORD = "S3cret-Passw0rd"
SERVICE_KEY = "K3y-0f-The-API"
PAGE_PASSWORD = "VncPassw0rd"


def test_secrets_in_options_never_reach_the_log_at_any_verbosity(tmp_path, wsproxy_process,
                                                                 echo_target):
    from test_token_service import TokenServiceStub

    service = TokenServiceStub()
    try:
        service.route("alpha", {"host": "127.0.0.1", "port": echo_target.port})
        service.answers["broken"] = (500, b"{}")
        url = service.url("/tokens?apikey=%s" % SERVICE_KEY).replace(
            "://", "://ops:%s@" % SERVICE_PASSWORD)
        (tmp_path / "index.html").write_text("hi")
        port = free_port()
        child = wsproxy_process("-f", "-v", "--token-source", url, "--web", str(tmp_path),
                                "127.0.0.1:%d" % port)
        child.wait_listening(port)
        with open_session(port, protocols=["binary"], path="/?token=alpha") as ws:
            echo(ws, b"x")
            close_normally(ws)
        with socket.create_connection(("127.0.0.1", port), timeout=EXIT_DEADLINE) as raw:
            raw.sendall(b"GET /index.html?host=h&password=%s HTTP/1.1\r\nHost: x\r\n\r\n"
                        % PAGE_PASSWORD.encode())
            raw.recv(4096)
        with socket.create_connection(("127.0.0.1", port), timeout=EXIT_DEADLINE) as raw:
            raw.sendall(b"GET /?token=broken HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
            raw.recv(4096)
        child.wait_for(lambda: "refused: 503" in child.output(), "the token service failure")
        child.wait_for(lambda: "index.html" in child.output(), "the page request line")
        output = child.output()
        assert "DEBUG options in effect" in output and "token-source=" in output
        assert "ops:***@" in output, "the dump should still say a password is set"
        for secret in (SERVICE_PASSWORD, SERVICE_KEY, PAGE_PASSWORD):
            assert secret not in output, "%s leaked into the log:\n%s" % (secret, output)
    finally:
        service.stop()


def test_a_bad_secret_url_is_reported_without_its_password():
    result = run_wsproxy("--token-source", "http://ops:%s@host:99999/t" % SERVICE_PASSWORD,
                         "-f", "8080")
    assert result.returncode == 2
    assert "token-source" in result.stderr
    assert SERVICE_PASSWORD not in result.stderr, result.stderr


def test_secret_fields_are_masked_in_the_options_dump_without_being_named(monkeypatch):
    # Any option whose field name says "password" or "secret" (such as a key
    # password) is hidden whole, with no list of such options to keep up to date.
    import dataclasses
    from wsproxy import cli, config
    from wsproxy.settings import Settings

    Extended = dataclasses.make_dataclass(
        "Extended", [("vault_secret", str, ""), ("db_password", str, "")], bases=(Settings,))
    options = dict(config.OPTION_FOR_FIELD)
    for field in ("vault_secret", "db_password"):
        options[field] = config.Option(("--" + field.replace("_", "-"),), field, "text", "X",
                                       "a secret", config.GROUPS[0])
    monkeypatch.setattr(config, "OPTION_FOR_FIELD", options)
    monkeypatch.setattr(cli, "_DEFAULTS", Extended())
    settings = Extended(vault_secret="Hunter2-vault", db_password="Hunter2-db",
                        token_source="https://u:Hunter2-url@h/t")
    dump = cli._changed_options(settings)
    assert "vault-secret=***" in dump and "db-password=***" in dump, dump
    assert "Hunter2" not in dump, dump
