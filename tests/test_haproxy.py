"""Three wsproxy processes behind a real HAProxy, with a token service: issue 9's proof.

HAProxy (Debian's ``haproxy``; the test skips, saying so, without it) runs
in TCP mode with ``send-proxy-v2``, ``balance leastconn`` and ``option
httpchk GET /status`` health checks, in front of three ``python3 -m wsproxy
--proxy-protocol`` children that ask a token service (``http.server``, in
this process) where each token goes.  300 WebSocket sessions go through it:

1. 150 sessions, held open: each reaches its token's target, the three
   instances all get some, and each instance logs the client's own
   address and port (not HAProxy's).
2. One instance is killed (SIGKILL): the sessions it held end, the others
   go on; 120 new sessions all succeed, on the two survivors only.
3. A second instance is drained (SIGTERM): once its listener is closed,
   30 new sessions all succeed on the last instance even though the
   drained one still holds sessions (leastconn would pick it); its
   sessions then get close 1001 through HAProxy, the last instance's go on.
"""

import concurrent.futures
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from typing import Dict, List, Optional, Tuple

import pytest

from conftest import EXIT_DEADLINE, ROOT, THREAD_DEADLINE, child_env, free_port, wait_until
from wsclient import OP_BINARY, WSClient

HAPROXY = shutil.which("haproxy") or next(
    (path for path in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.path.exists(path)),
    None)

pytestmark = pytest.mark.skipif(
    HAPROXY is None, reason="haproxy is not installed (apt-get install haproxy; .ci/run does)")

INSTANCES = 3
FIRST_WAVE = 150
SECOND_WAVE = 120
THIRD_WAVE = 30
CLIENT_THREADS = 16

HAPROXY_CONFIG = """\
global
    maxconn 4000

defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    retries 3
    option redispatch 1

frontend websockets
    bind 127.0.0.1:{front}
    default_backend wsproxy

backend wsproxy
    balance leastconn
    option httpchk GET /status
    http-check expect status 200
    # A refused connection marks the server down at once (leastconn would
    # otherwise keep choosing the instance that holds the fewest sessions).
    default-server send-proxy-v2 check inter 300ms fall 2 rise 2
    default-server observe layer4 error-limit 1 on-error mark-down
{servers}
"""


# -- the pieces ----------------------------------------------------------------------


class TokenService:
    """``GET /tokens?token=NAME`` → ``{"host": ..., "port": ...}`` or 404."""

    def __init__(self, routes: Dict[str, int]) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                port = routes.get(query.get("token", [""])[0])
                body = json.dumps({"host": "127.0.0.1", "port": port}).encode() if port else b""
                self.send_response(200 if port else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = False
        self.url = "http://127.0.0.1:%d/tokens" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(THREAD_DEADLINE)


class Instance:
    """One ``python3 -m wsproxy`` child; its log (stderr) goes to a file."""

    def __init__(self, index: int, port: int, token_url: str, directory: str) -> None:
        self.index = index
        self.port = port
        self.log_path = os.path.join(directory, "wsproxy-%d.log" % index)
        self._log_file = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "wsproxy", "-f", "--proxy-protocol",
             "--trusted-proxy", "127.0.0.1", "--status", "/status",
             "--token-source", token_url, "127.0.0.1:%d" % port],
            stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
            cwd=ROOT, env=child_env())

    def log(self, start: int = 0) -> str:
        with open(self.log_path, "rb") as stream:
            stream.seek(start)
            return stream.read().decode("utf-8", "replace")

    def log_size(self) -> int:
        return os.path.getsize(self.log_path)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(EXIT_DEADLINE)
        self._log_file.close()


class HAProxy:
    """HAProxy in the foreground with a generated configuration."""

    def __init__(self, instances: List[Instance], directory: str) -> None:
        self.port = free_port()
        servers = "\n".join("    server ws%d 127.0.0.1:%d" % (item.index, item.port)
                            for item in instances)
        self.config_path = os.path.join(directory, "haproxy.cfg")
        with open(self.config_path, "w") as stream:
            stream.write(HAPROXY_CONFIG.format(front=self.port, servers=servers))
        self.log_path = os.path.join(directory, "haproxy.log")
        self._log_file = open(self.log_path, "wb")
        self.process = subprocess.Popen([HAPROXY, "-db", "-f", self.config_path],
                                        stdin=subprocess.DEVNULL, stdout=self._log_file,
                                        stderr=subprocess.STDOUT)

    def log(self) -> str:
        with open(self.log_path, "rb") as stream:
            return stream.read().decode("utf-8", "replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(EXIT_DEADLINE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(EXIT_DEADLINE)
        self._log_file.close()


# -- sessions --------------------------------------------------------------------------


class Session:
    """One client through HAProxy: its token, its socket, its own port."""

    def __init__(self, client: WSClient, token: str) -> None:
        self.client = client
        self.token = token
        self.port = client.local_port
        self.instance: Optional[int] = None


def open_session(front: int, token: str, expected_target: bytes) -> Session:
    """Handshake through HAProxy, read the target's greeting, echo once; keep it open."""
    client = WSClient(front, timeout=15)
    try:
        client.handshake(path="/?token=" + token, protocols=["binary"])
        greeting = client.recv_stream(len(expected_target), opcode=OP_BINARY)
        assert greeting == expected_target, "token %s reached %r" % (token, greeting)
        echo(client)
    except BaseException:
        client.close()
        raise
    return Session(client, token)


def echo(client: WSClient) -> None:
    payload = os.urandom(64)
    client.send_binary(payload)
    assert client.recv_stream(len(payload), opcode=OP_BINARY) == payload


def close_cleanly(session: Session) -> None:
    session.client.send_close(1000)
    assert session.client.recv_close()[0] == 1000
    session.client.close()


def open_many(front: int, count: int, offset: int, greetings: Dict[str, bytes]
              ) -> Tuple[List[Session], List[BaseException]]:
    """``count`` sessions, tokens in turn, opened by a pool of client threads."""
    tokens = sorted(greetings)
    sessions, errors = [], []
    with concurrent.futures.ThreadPoolExecutor(CLIENT_THREADS) as pool:
        futures = [pool.submit(open_session, front, tokens[(offset + n) % len(tokens)],
                               greetings[tokens[(offset + n) % len(tokens)]])
                   for n in range(count)]
        for future in futures:
            try:
                sessions.append(future.result())
            except BaseException as exc:  # counted and reported by the caller
                errors.append(exc)
    return sessions, errors


def place(sessions: List[Session], instances: List[Instance], starts: Dict[int, int]) -> None:
    """Find, in the instances' logs, which one holds each session (by the client's port).

    Each instance must name the client as ``127.0.0.1:PORT (via 127.0.0.1:...)``:
    the address HAProxy's PROXY header carried, not HAProxy's own.
    """
    wanted = {session.port: session for session in sessions}

    def all_placed() -> bool:
        for instance in instances:
            text = instance.log(starts.get(instance.index, 0))
            for match in re.finditer(r"session \d+ 127\.0\.0\.1:(\d+) \(via 127\.0\.0\.1:\d+\): "
                                     r"open to 127\.0\.0\.1:\d+", text):
                session = wanted.get(int(match.group(1)))
                if session is not None:
                    assert session.instance in (None, instance.index), \
                        "port %d logged by two instances" % session.port
                    session.instance = instance.index
        return all(session.instance is not None for session in sessions)

    wait_until(all_placed, timeout=10, message=lambda: "every session in some instance's log; "
               "missing ports %s" % [s.port for s in sessions if s.instance is None][:10])


def refused(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:``port`` any more."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        # Connected into the backlog just as the listener closed: ask again.
        return False
    return False


# -- the test ----------------------------------------------------------------------------


@pytest.fixture
def cluster(make_target, tmp_path):
    targets = {"token-%d" % n: make_target(send_on_connect=b"target-%d" % n) for n in range(3)}
    service = TokenService({token: target.port for token, target in targets.items()})
    instances = [Instance(n, free_port(), service.url, str(tmp_path)) for n in range(INSTANCES)]
    balancer = None
    try:
        for instance in instances:
            wait_until(lambda: "listening on" in instance.log()
                       or instance.process.poll() is not None, timeout=EXIT_DEADLINE,
                       message="wsproxy %d to listen" % instance.index)
            assert instance.process.poll() is None, instance.log()
        balancer = HAProxy(instances, str(tmp_path))
        # Ready once every instance has answered a health check (a LOCAL header).
        wait_until(lambda: all("status page" in instance.log() for instance in instances)
                   or balancer.process.poll() is not None, timeout=EXIT_DEADLINE,
                   message=lambda: "HAProxy's first health checks; its log:\n" + balancer.log())
        assert balancer.process.poll() is None, balancer.log()
        greetings = {token: b"target-%d" % n for n, token in enumerate(sorted(targets))}
        yield balancer, instances, greetings
    finally:
        if balancer is not None:
            balancer.stop()
        for instance in instances:
            instance.stop()
        service.stop()


def test_three_instances_behind_haproxy(cluster):
    balancer, instances, greetings = cluster
    started = time.monotonic()

    # 1. 150 sessions, held open, spread by leastconn over all three.
    first, errors = open_many(balancer.port, FIRST_WAVE, 0, greetings)
    assert not errors, "%d sessions failed, e.g. %r" % (len(errors), errors[:3])
    place(first, instances, {})
    per_instance = [sum(1 for s in first if s.instance == n) for n in range(INSTANCES)]
    assert all(count >= 10 for count in per_instance), per_instance
    for instance in instances:
        assert "--trusted-proxy" not in instance.log(), "HAProxy is a trusted proxy"

    # 2. Kill one instance: its sessions end, the rest go on, new ones avoid it.
    killed = instances[1]
    killed.process.send_signal(signal.SIGKILL)
    killed.process.wait(EXIT_DEADLINE)
    starts = {instance.index: instance.log_size() for instance in instances}
    lost = [s for s in first if s.instance == killed.index]
    for session in lost:
        session.client.expect_closed(timeout=10)
        session.client.close()
    survivors = [s for s in first if s.instance != killed.index]
    for session in survivors:
        echo(session.client)
    second, errors = open_many(balancer.port, SECOND_WAVE, 1, greetings)
    assert not errors, "%d new sessions failed after the kill, e.g. %r" % (len(errors), errors[:3])
    place(second, instances, starts)
    assert not any(s.instance == killed.index for s in second)
    assert {s.instance for s in second} == {0, 2}, "new sessions land on both survivors"

    # 3. Drain another instance with SIGTERM: new sessions go to the last one
    # at once; the drained one's sessions get 1001 through HAProxy.
    drained = instances[2]
    held = survivors + second
    drained.process.send_signal(signal.SIGTERM)
    wait_until(lambda: refused(drained.port), timeout=10,
               message="the drained instance to close its listener")
    starts = {instance.index: instance.log_size() for instance in instances}
    third, errors = open_many(balancer.port, THIRD_WAVE, 2, greetings)
    assert not errors, "%d new sessions failed during a drain, e.g. %r" % (len(errors), errors[:3])
    place(third, instances, starts)
    assert {s.instance for s in third} == {0}
    assert drained.process.poll() is None, \
        "the drained instance should still be closing its sessions (it gives them 5 s)"
    held += third
    for session in held:
        if session.instance == drained.index:
            code, _reason = session.client.recv_close(timeout=10)
            assert code == 1001
            session.client.close()
    assert drained.process.wait(EXIT_DEADLINE) == 0
    assert "SIGTERM: shutting down" in drained.log()
    remaining = [s for s in held if s.instance == 0]
    assert remaining
    for session in remaining:
        echo(session.client)
        close_cleanly(session)
    assert time.monotonic() - started < 60
