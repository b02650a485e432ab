"""``--audit-log``: one JSON line per session start, end and refused handshake.

Every line a run writes is parsed with ``json`` and each field checked
against what the test itself did: a wss:// session with a client
certificate, a Basic user, a token and a forwarded address; a compressed
session closed with a reason; refusals with their HTTP status.  The file
is opened with O_APPEND and never through a symbolic link, reopened on
SIGHUP (a real child process), and never holds a secret.
"""

import base64
import datetime
import hashlib
import json
import os
import signal
import ssl

import pytest

import certs
from conftest import free_port, run_wsproxy, wait_until
from wsclient import OP_BINARY, WSClient, open_session

PASSWORD = "correct horse battery staple"
TOKEN = "tok-3f9a1c7e"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return certs.pki(tmp_path_factory)


@pytest.fixture
def auth_file(tmp_path):
    from wsproxy.auth import hash_password
    path = tmp_path / "users"
    path.write_text("alice:%s\n" % hash_password(PASSWORD, iterations=1000))
    return str(path)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()


def read_lines(path, count: int):
    """Wait until ``path`` holds ``count`` lines; return them parsed (each must be JSON)."""
    def complete():
        try:
            with open(str(path), "rb") as audit:
                text = audit.read().decode("ascii")
        except FileNotFoundError:
            return None
        return text if text.count("\n") >= count and text.endswith("\n") else None
    text = wait_until(complete, message="%d audit lines in %s" % (count, path))
    return [json.loads(line) for line in text.splitlines()]


def check_time(record) -> None:
    stamp = record["time"]
    assert stamp.endswith("Z"), stamp
    when = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ")
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    assert abs((now - when).total_seconds()) < 60


COMMON = {"time", "event", "session", "client", "client_port", "via", "forwarded_for",
          "tls_version", "client_cert", "user", "token", "target", "protocol", "subprotocol",
          "compression"}
END = COMMON | {"bytes_from_client", "bytes_to_client", "duration", "close_code", "close_reason"}
REFUSED = COMMON | {"status", "reason"}


def tls_client(port, pki, **handshake_options):
    context = ssl.create_default_context(cafile=pki.ca)
    context.load_cert_chain(pki.cert, pki.key)
    ws = WSClient(port)
    ws.sock = context.wrap_socket(ws.sock, server_hostname="localhost")
    ws.handshake(**handshake_options)
    return ws


def test_every_field_of_a_run(proxy, echo_target, pki, auth_file, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("%s: %s\n" % (TOKEN, echo_target.address))
    audit = tmp_path / "audit.jsonl"
    running = proxy(cert=pki.cert, key=pki.key, verify_client=True, cafile=pki.ca,
                    auth_file=auth_file, token_source=str(tokens), trusted_proxy=["127.0.0.1"],
                    compress=True, audit_log=str(audit))
    authorization = basic("alice", PASSWORD)
    # 1. wss:// with a client certificate, a user, a token and a forwarded client address.
    ws = tls_client(running.port, pki, protocols=["binary"], path="/?token=" + TOKEN,
                    headers={"Authorization": authorization,
                             "X-Forwarded-For": "198.51.100.9, 203.0.113.7"})
    payload = os.urandom(1234)
    ws.send_binary(payload)
    assert ws.recv_stream(len(payload), opcode=OP_BINARY) == payload
    ws.send_close(1000, "done")
    assert ws.recv_close()[0] == 1000
    ws.close()
    # 2. A refusal: a wrong password (401), then an unknown token (404).
    with tls_client(running.port, pki, expect_status=401, path="/?token=" + TOKEN,
                    headers={"Authorization": basic("alice", "not the password")}):
        pass
    with tls_client(running.port, pki, expect_status=404, path="/?token=nosuch",
                    headers={"Authorization": authorization}):
        pass
    # 3. Compression agreed, no subprotocol, closed by the client with a code of its own.
    with tls_client(running.port, pki, path="/?token=" + TOKEN,
                    headers={"Authorization": authorization},
                    extra_headers=[("Sec-WebSocket-Extensions", "permessage-deflate")]) as ws:
        ws.send_close(4001, "bye \u00e9")
        assert ws.recv_close()[0] == 4001

    records = read_lines(audit, 6)
    assert [r["event"] for r in records] == ["start", "end", "refused", "refused", "start", "end"]
    for record in records:
        check_time(record)
        assert set(record) == {"end": END, "refused": REFUSED}.get(record["event"], COMMON)
        assert record["via"] is None
        assert record["tls_version"] in ("TLSv1.2", "TLSv1.3")
        assert record["client_cert"].startswith("CN=")
        assert record["protocol"] == "rfc6455"
    start, end, wrong_password, unknown, start2, end2 = records
    for record in (start, end):  # the forwarded client, as the trusted proxy named it
        assert record["client"] == "203.0.113.7" and record["client_port"] is None
        assert record["forwarded_for"] == ["203.0.113.7"]
    for record in (wrong_password, unknown, start2, end2):  # the socket's peer
        assert record["client"] == "127.0.0.1" and record["client_port"] > 0
        assert record["forwarded_for"] == []
    assert start["session"] == end["session"] != start2["session"] == end2["session"]
    for record in (start, end, start2, end2):
        assert record["user"] == "alice"
        assert record["token"] == TOKEN
        assert record["target"] == echo_target.address
    assert start["subprotocol"] == end["subprotocol"] == "binary"
    assert start["compression"] is None
    assert (end["bytes_from_client"], end["bytes_to_client"]) == (1234, 1234)
    assert end["close_code"] == 1000 and end["close_reason"].endswith("done")
    assert 0 <= end["duration"] < 30
    assert wrong_password["status"] == 401 and wrong_password["user"] is None
    assert wrong_password["target"] is None and wrong_password["token"] is None
    assert unknown["status"] == 404 and unknown["token"] == "nosuch"
    assert unknown["user"] == "alice" and unknown["target"] is None
    assert start2["subprotocol"] is None
    assert start2["compression"] == end2["compression"] == "permessage-deflate"
    assert (end2["bytes_from_client"], end2["bytes_to_client"]) == (0, 0)
    assert end2["close_code"] == 4001 and end2["close_reason"].endswith("bye \u00e9")
    # Never a secret: no password, no Authorization header.
    text = audit.read_text()
    for secret in (PASSWORD, "not the password", authorization.split()[1], "Authorization"):
        assert secret not in text
    assert os.stat(str(audit)).st_mode & 0o777 == 0o600


def test_client_certificate_subject_is_recorded(proxy, pki, tmp_path):
    audit = tmp_path / "audit.jsonl"
    running = proxy(cert=pki.cert, key=pki.key, verify_client=True, cafile=pki.ca,
                    audit_log=str(audit))
    with tls_client(running.port, pki) as ws:
        ws.send_close(1000)
        ws.recv_close()
    start = read_lines(audit, 2)[0]
    decoded = ssl._ssl._test_decode_cert(pki.cert)  # the subject as the ssl module reads it
    expected = ",".join("%s=%s" % ({"commonName": "CN"}.get(key, key), value)
                        for rdn in decoded["subject"] for key, value in rdn)
    assert start["client_cert"] == expected and expected.startswith("CN=")


def test_hashed_tokens_and_plain_peer(proxy, echo_target, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("%s: %s\n" % (TOKEN, echo_target.address))
    audit = tmp_path / "audit.jsonl"
    running = proxy(token_source=str(tokens), audit_log=str(audit), audit_hash_tokens=True)
    with open_session(running.port, path="/?token=" + TOKEN) as ws:
        client_port = ws.local_port
        ws.send_close(1000)
        ws.recv_close()
    start, end = read_lines(audit, 2)
    hashed = "sha256:" + hashlib.sha256(TOKEN.encode()).hexdigest()
    assert start["token"] == end["token"] == hashed
    assert TOKEN not in audit.read_text()
    assert (start["client"], start["client_port"]) == ("127.0.0.1", client_port)
    assert start["tls_version"] is None and start["client_cert"] is None
    assert start["forwarded_for"] == [] and start["user"] is None


def test_lines_are_appended_to_an_existing_file(proxy, tmp_path):
    audit = tmp_path / "audit.jsonl"
    audit.write_text('{"earlier": true}\n')
    running = proxy(audit_log=str(audit))
    with WSClient(running.port) as ws:
        ws.handshake(expect_status=405, method="POST")
    records = read_lines(audit, 2)
    assert records[0] == {"earlier": True}
    assert records[1]["event"] == "refused" and records[1]["status"] == 405


def test_a_symbolic_link_is_refused_at_start(tmp_path, echo_target):
    real = tmp_path / "elsewhere"
    real.write_text("")
    link = tmp_path / "audit.jsonl"
    link.symlink_to(real)
    result = run_wsproxy("-f", "--audit-log", str(link), "127.0.0.1:%d" % free_port(),
                         echo_target.address)
    assert result.returncode == 2
    assert "audit-log" in result.stderr and "Traceback" not in result.stderr
    assert real.read_text() == ""


def test_sighup_reopens_the_audit_log(tmp_path, wsproxy_process, echo_target):
    audit = tmp_path / "audit.jsonl"
    port = free_port()
    child = wsproxy_process("-f", "--audit-log", str(audit), "127.0.0.1:%d" % port,
                            echo_target.address)
    child.wait_listening(port)

    def session():
        with open_session(port) as ws:
            ws.send_close(1000)
            ws.recv_close()

    session()
    first = read_lines(audit, 2)
    rotated = tmp_path / "audit.jsonl.1"
    os.rename(str(audit), str(rotated))
    reloads = child.output().count("SIGHUP")
    child.send_signal(signal.SIGHUP)
    child.wait_for(lambda: child.output().count("SIGHUP") > reloads, "the SIGHUP reload")
    session()
    second = read_lines(audit, 2)
    assert [r["event"] for r in second] == ["start", "end"]
    assert second[0]["session"] != first[0]["session"]
    assert len(read_lines(rotated, 2)) == 2  # the old file got nothing more


def test_standard_output(tmp_path, wsproxy_process, echo_target):
    port = free_port()
    child = wsproxy_process("-f", "--audit-log", "-", "127.0.0.1:%d" % port, echo_target.address)
    child.wait_listening(port)
    with WSClient(port) as ws:
        ws.handshake(expect_status=405, method="PUT")
    line = child.wait_for(lambda: [text for text in child.output().splitlines()
                                   if text.startswith("{")], "an audit line on standard output")[0]
    assert json.loads(line)["status"] == 405


def test_hixie_and_a_proxy_protocol_balancer(proxy, echo_target, tmp_path):
    """A hixie-76 session behind a PROXY protocol balancer: ``protocol`` and ``via`` recorded."""
    from test_hixie_io import frame, open76
    audit = tmp_path / "audit.jsonl"
    plain = proxy(audit_log=str(audit))
    with open76(plain.port) as client:
        client.sock.sendall(frame(b"hello"))
        assert client.read_stream(5) == b"hello"
    start, end = read_lines(audit, 2)
    assert start["protocol"] == end["protocol"] == "hixie-76"
    assert start["subprotocol"] == "base64"
    assert end["bytes_from_client"] == end["bytes_to_client"] == 5

    audit2 = tmp_path / "balanced.jsonl"
    balanced = proxy(audit_log=str(audit2), proxy_protocol=True, trusted_proxy=["127.0.0.1"])
    with WSClient(balanced.port) as ws:
        balancer_port = ws.local_port
        ws.send_raw(b"PROXY TCP6 2001:db8::7 ::1 40000 443\r\n")
        ws.handshake()
        ws.send_close(1000)
        ws.recv_close()
    start, end = read_lines(audit2, 2)
    assert (start["client"], start["client_port"]) == ("2001:db8::7", 40000)
    assert start["via"] == end["via"] == "127.0.0.1:%d" % balancer_port
