"""The ``--status PATH`` JSON page through real sockets.

The counters are checked against sessions this test drives itself: known
payload sizes each way, one target per proxy (two for the by-target test).
"""

import http.client
import json
import os

from conftest import wait_until
from wsclient import OP_BINARY, WSClient, open_session


def fetch(port, path="/status", method="GET"):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def status_of(port, path="/status") -> dict:
    status, headers, body = fetch(port, path)
    assert status == 200, (status, body)
    assert headers["Content-Type"].startswith("application/json")
    return json.loads(body.decode("utf-8"))


def echo_session(port, sent: int, path="/"):
    """A session that sends ``sent`` bytes, reads their echo and closes cleanly."""
    payload = os.urandom(sent)
    with open_session(port, protocols=["binary"], path=path) as ws:
        ws.send_binary(payload)
        assert ws.recv_stream(sent, opcode=OP_BINARY) == payload
        ws.send_close(1000)
        assert ws.recv_close()[0] == 1000
        ws.expect_closed()


def target_entry(document, target) -> dict:
    entry = document["targets"].get(target.address)
    assert entry is not None, "no entry for %s in %s" % (target.address, document["targets"])
    return entry


def test_status_document_has_the_counters(proxy):
    running = proxy(status="/status")
    document = status_of(running.port)
    for key in ("uptime", "open_sessions", "total_sessions", "bytes_from_client",
                "bytes_to_client", "targets"):
        assert key in document, "missing %r in %s" % (key, document)
    assert document["open_sessions"] == 0
    assert document["total_sessions"] == 0
    assert document["bytes_from_client"] == document["bytes_to_client"] == 0
    assert isinstance(document["uptime"], (int, float)) and document["uptime"] >= 0


def test_numbers_change_after_an_echo_session(proxy, echo_target):
    running = proxy(status="/status")
    before = status_of(running.port)
    echo_session(running.port, 1000)
    wait_until(lambda: status_of(running.port)["open_sessions"] == 0,
               message="the session to be counted as closed")
    after = status_of(running.port)
    assert after["total_sessions"] == before["total_sessions"] + 1
    assert after["bytes_from_client"] == 1000
    assert after["bytes_to_client"] == 1000
    assert after["uptime"] >= before["uptime"]
    entry = target_entry(after, echo_target)
    assert entry["sessions"] == 1
    assert entry["bytes_from_client"] == entry["bytes_to_client"] == 1000


def test_open_session_is_counted_live(proxy, echo_target):
    running = proxy(status="/status")
    with open_session(running.port, protocols=["binary"]) as ws:
        ws.send_binary(b"x" * 300)
        assert ws.recv_stream(300) == b"x" * 300
        document = wait_until(lambda: (lambda d: d if d["bytes_to_client"] == 300 else None)(
            status_of(running.port)), message="live byte counts")
        assert document["open_sessions"] == 1
        assert document["total_sessions"] == 1
        assert document["bytes_from_client"] == 300
        ws.send_close(1000)
        ws.recv_close()
    wait_until(lambda: status_of(running.port)["open_sessions"] == 0,
               message="the session to be counted as closed")
    assert status_of(running.port)["bytes_from_client"] == 300


def test_counts_by_target(proxy, make_target, tmp_path):
    first, second = make_target(), make_target()
    tokens = tmp_path / "tokens"
    tokens.write_text("one: %s\ntwo: %s\n" % (first.address, second.address))
    running = proxy(target=first, token_source=str(tokens), status="/status")
    echo_session(running.port, 10, path="/?token=one")
    echo_session(running.port, 20, path="/?token=two")
    echo_session(running.port, 30, path="/?token=two")
    wait_until(lambda: status_of(running.port)["open_sessions"] == 0,
               message="the sessions to be counted as closed")
    document = status_of(running.port)
    assert document["total_sessions"] == 3
    assert document["bytes_from_client"] == document["bytes_to_client"] == 60
    one, two = target_entry(document, first), target_entry(document, second)
    assert (one["sessions"], one["bytes_from_client"], one["bytes_to_client"]) == (1, 10, 10)
    assert (two["sessions"], two["bytes_from_client"], two["bytes_to_client"]) == (2, 50, 50)


def test_refused_handshakes_are_not_sessions(proxy, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("")
    running = proxy(token_source=str(tokens), status="/status")
    with WSClient(running.port) as ws:
        ws.handshake(expect_status=404, path="/?token=nosuch")
    assert status_of(running.port)["total_sessions"] == 0


def test_status_is_off_by_default(proxy):
    running = proxy()
    status, _, body = fetch(running.port)
    assert status == 405
    assert b"uptime" not in body


def test_status_path_is_exact_and_other_paths_are_not_status(proxy, tmp_path):
    (tmp_path / "index.html").write_text("page")
    running = proxy(status="/status", web=str(tmp_path))
    assert status_of(running.port, "/status?refresh=1")["total_sessions"] == 0
    status, _, body = fetch(running.port, "/status/other")
    assert status == 404 and b"uptime" not in body
    assert fetch(running.port, "/")[2] == b"page"


def test_status_is_read_only(proxy):
    running = proxy(status="/status")
    status, headers, body = fetch(running.port, method="POST")
    assert status == 405
    assert b"uptime" not in body
    status, headers, body = fetch(running.port, method="HEAD")
    assert status == 200 and body == b""
