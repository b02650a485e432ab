"""Token routing (``--token-source``, ``--host-token``) through real sockets.

Every target greets each connection with its own tag byte and then echoes,
so the first byte a client gets back names the target its token reached.
A refused token must be answered with 404 *before* any target is contacted:
after each refusal a good session is opened as a barrier (targets accept in
order), and then every target's accept count is checked.
"""

import os
import shutil
import socket
import tempfile
import threading
import time
from typing import List

import pytest

from conftest import THREAD_DEADLINE, wait_until
from wsclient import OP_BINARY, open_session

PAYLOAD = b"\x00token routed\xff"


@pytest.fixture
def tagged(make_target):
    """Two tagged echo targets ``A`` and ``B`` and a fallback ``F`` that must never be used."""
    return {tag: make_target(send_on_connect=tag.encode("ascii")) for tag in "ABF"}


@pytest.fixture
def token_file(tmp_path, tagged):
    """A token file mapping ``a`` to target A and ``b`` to target B."""
    path = tmp_path / "tokens"
    path.write_text("# routing for the tests\n"
                    "a: 127.0.0.1:%d\n"
                    "b: 127.0.0.1:%d\n" % (tagged["A"].port, tagged["B"].port))
    return path


def start(proxy, tagged, source, **fields):
    """A proxy routing by ``source``; its configured (fallback) target is F."""
    return proxy(target=tagged["F"], token_source=str(source), **fields)


def tag_of_session(proxy_run, path="/", protocols=("binary",), **request_options) -> bytes:
    """Open a session, echo ``PAYLOAD``, close; return the target's tag byte."""
    with open_session(proxy_run.port, protocols=list(protocols), path=path,
                      **request_options) as ws:
        tag = ws.recv_stream(1, opcode=OP_BINARY)
        ws.send_binary(PAYLOAD)
        assert ws.recv_stream(len(PAYLOAD), opcode=OP_BINARY) == PAYLOAD
        ws.send_close(1000)
        assert ws.recv_close()[0] == 1000
    return tag


def refused_with(proxy_run, status, path="/", **request_options):
    """Send a handshake that must get ``status``; return the response."""
    with proxy_run.client() as ws:
        return ws.handshake(expect_status=status, path=path, **request_options)


def accept_counts(tagged) -> dict:
    return {tag: len(server.connections) for tag, server in tagged.items()}


# -- choosing the target --------------------------------------------------------------


def test_query_token_reaches_its_target(proxy, tagged, token_file):
    running = start(proxy, tagged, token_file)
    assert tag_of_session(running, path="/?token=a") == b"A"
    assert tag_of_session(running, path="/websockify?token=b") == b"B"
    assert tag_of_session(running, path="/x?other=1&token=a") == b"A"
    assert accept_counts(tagged) == {"A": 2, "B": 1, "F": 0}


def test_cookie_token_reaches_its_target(proxy, tagged, token_file):
    running = start(proxy, tagged, token_file)
    assert tag_of_session(running, headers={"Cookie": "token=b"}) == b"B"
    assert tag_of_session(running, headers={"Cookie": "theme=dark; token=a; lang=en"}) == b"A"
    assert accept_counts(tagged) == {"A": 1, "B": 1, "F": 0}


def test_host_token_reaches_its_target(proxy, tagged, tmp_path):
    source = tmp_path / "hosts"
    source.write_text("alpha.example: 127.0.0.1:%d\nbeta.example: 127.0.0.1:%d\n"
                      % (tagged["A"].port, tagged["B"].port))
    running = start(proxy, tagged, source, host_token=True)
    assert tag_of_session(running, headers={"Host": "alpha.example:%d" % running.port}) == b"A"
    assert tag_of_session(running, headers={"Host": "beta.example"}) == b"B"
    # With --host-token only the Host header counts: a query token is ignored.
    refused_with(running, 404, path="/?token=alpha.example",
                 headers={"Host": "127.0.0.1:%d" % running.port})
    assert tag_of_session(running, headers={"Host": "alpha.example"}) == b"A"  # barrier
    assert accept_counts(tagged) == {"A": 2, "B": 1, "F": 0}


@pytest.mark.parametrize("path, headers", [
    ("/?token=nosuch", {}),
    ("/", {}),
    ("/?token=", {}),
    ("/", {"Cookie": "token=nosuch"}),
    ("/?tokens=a", {}),
], ids=["unknown-query", "missing", "empty", "unknown-cookie", "other-parameter"])
def test_unknown_or_missing_token_is_404_without_contacting_a_target(
        proxy, tagged, token_file, wsproxy_log, path, headers):
    running = start(proxy, tagged, token_file)
    response = refused_with(running, 404, path=path, headers=headers)
    assert response.header("Upgrade") is None
    wsproxy_log.wait_for(lambda text: "refused" in text and "404" in text,
                         what="a log line for the 404")
    # Barrier: a good session afterwards; had the refused one connected
    # anywhere, that accept would have come first.
    assert tag_of_session(running, path="/?token=a") == b"A"
    assert accept_counts(tagged) == {"A": 1, "B": 0, "F": 0}


# -- the token file changes -----------------------------------------------------------


def test_edited_token_file_is_used_without_restart(proxy, tagged, token_file):
    running = start(proxy, tagged, token_file)
    assert tag_of_session(running, path="/?token=a") == b"A"
    before = os.stat(str(token_file)).st_mtime
    token_file.write_text("a: 127.0.0.1:%d\nc: 127.0.0.1:%d\n"
                          % (tagged["B"].port, tagged["A"].port))
    # Make sure the mtime moves even on a file system with coarse timestamps.
    os.utime(str(token_file), (before + 5, before + 5))

    seen = []

    def routed_to_b():
        seen.append(tag_of_session(running, path="/?token=a"))
        return seen[-1] == b"B"

    wait_until(routed_to_b, timeout=6.0, message="token a to move to target B (saw %r)" % seen)
    assert tag_of_session(running, path="/?token=c") == b"A"
    refused_with(running, 404, path="/?token=b")  # b was removed from the file
    assert tag_of_session(running, path="/?token=c") == b"A"  # barrier
    assert accept_counts(tagged)["F"] == 0


def test_malformed_line_is_logged_with_file_and_line_and_the_rest_works(
        proxy, tagged, tmp_path, wsproxy_log):
    source = tmp_path / "tokens"
    source.write_text("a: 127.0.0.1:%d\n"
                      "this line has no target\n"
                      "broken: 127.0.0.1:notaport\n"
                      "b: 127.0.0.1:%d\n" % (tagged["A"].port, tagged["B"].port))
    running = start(proxy, tagged, source)
    for line in (2, 3):
        wsproxy_log.wait_for(lambda text, line=line: str(source) in text
                             and ("line %d" % line in text or "%s:%d" % (source, line) in text),
                             what="a warning naming %s and line %d" % (source, line))
    assert tag_of_session(running, path="/?token=a") == b"A"
    assert tag_of_session(running, path="/?token=b") == b"B"
    refused_with(running, 404, path="/?token=broken")
    wsproxy_log.assert_no_traceback()


def test_directory_source_reads_every_file(proxy, tagged, tmp_path):
    directory = tmp_path / "tokens.d"
    directory.mkdir()
    (directory / "one").write_text("a: 127.0.0.1:%d\n" % tagged["A"].port)
    (directory / "two").write_text("b: 127.0.0.1:%d\n" % tagged["B"].port)
    running = start(proxy, tagged, directory)
    assert tag_of_session(running, path="/?token=a") == b"A"
    assert tag_of_session(running, path="/?token=b") == b"B"


# -- a Unix-socket target -------------------------------------------------------------


class UnixEchoTarget:
    """A tagged echo server on a Unix socket; ``accepted`` counts its connections."""

    def __init__(self, path: str, tag: bytes) -> None:
        self.path = path
        self.tag = tag
        self.accepted = 0
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(16)
        self._connections = []  # type: List[socket.socket]
        self._threads = []  # type: List[threading.Thread]
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True,
                                               name="unix-echo-accept")
        self._accept_thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            self._connections.append(sock)
            thread = threading.Thread(target=self._echo, args=(sock,), daemon=True,
                                      name="unix-echo-conn")
            self._threads.append(thread)
            thread.start()

    def _echo(self, sock: socket.socket) -> None:
        try:
            sock.sendall(self.tag)
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                sock.sendall(data)
        except OSError:
            pass
        finally:
            sock.close()

    def stop(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
        except OSError:
            pass
        self.listener.close()
        self._accept_thread.join(THREAD_DEADLINE)
        for sock in self._connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(THREAD_DEADLINE)


@pytest.fixture
def unix_dir():
    """A short directory for Unix socket paths (they are limited to ~100 bytes)."""
    path = tempfile.mkdtemp(prefix="wsp-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_unix_token_reaches_a_unix_socket_target(proxy, tagged, tmp_path, unix_dir):
    if not hasattr(socket, "AF_UNIX"):
        pytest.skip("no Unix sockets on this platform")
    unix_target = UnixEchoTarget(os.path.join(unix_dir, "echo.sock"), b"U")
    try:
        source = tmp_path / "tokens"
        source.write_text("u: unix:%s\na: 127.0.0.1:%d\n" % (unix_target.path, tagged["A"].port))
        running = start(proxy, tagged, source)
        assert tag_of_session(running, path="/?token=u") == b"U"
        assert tag_of_session(running, path="/?token=a") == b"A"
        assert unix_target.accepted == 1
        # A token naming a Unix socket nobody listens on: 502, not a hang.
        source.write_text("gone: unix:%s\n" % os.path.join(unix_dir, "nobody.sock"))
        later = time.time() + 5
        os.utime(str(source), (later, later))
        wait_until(lambda: refused_status(running, "/?token=gone") == 502, timeout=6.0,
                   message="token 'gone' to be loaded and answered with 502")
    finally:
        unix_target.stop()


def refused_status(proxy_run, path) -> int:
    with proxy_run.client() as ws:
        return ws.handshake(expect_status=None, path=path).status

