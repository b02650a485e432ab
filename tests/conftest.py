"""Shared fixtures: TCP targets, a proxy in a thread, log capture, leak checks.

Everything runs over real sockets on 127.0.0.1 with real threads.  Waiting
is done by polling a condition against a deadline (:func:`wait_until`),
never by sleeping a fixed time.
"""

import hashlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional, Set, Union

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from wsclient import DEFAULT_TIMEOUT, OP_BINARY, WSClient, open_session  # noqa: E402

#: How long teardown waits for threads started by a test to end.
THREAD_DEADLINE = 5.0


def wait_until(condition: Callable[[], object], timeout: float = DEFAULT_TIMEOUT,
               message: Union[str, Callable[[], str]] = "condition") -> object:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``.

    ``message`` says what was awaited; a callable is asked only on failure,
    so it can describe the state at that moment.
    """
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            what = message() if callable(message) else message
            pytest.fail("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


#: The checkout, for running ``python -m wsproxy`` as a child process.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Seconds a child command that should exit (or start listening) may take.
EXIT_DEADLINE = 15.0


def child_env() -> dict:
    """The environment for ``python -m wsproxy`` children: this checkout first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def echo_round_trip(port: int, host: str = "127.0.0.1", size: int = 70000,
                    close_code: int = 1000) -> None:
    """A whole binary session through a proxy in front of an echo target.

    ``size`` random bytes go there and back; the client closes with ``close_code``.
    """
    payload = os.urandom(size)
    with open_session(port, protocols=["binary"], host=host) as ws:
        ws.send_binary(payload)
        assert ws.recv_stream(len(payload), opcode=OP_BINARY) == payload
        ws.send_close(close_code)
        assert ws.recv_close()[0] == close_code
        ws.expect_closed()


_HANDED_OUT: Set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound then released).

    Never one handed out before in this run: the kernel may give a released
    port again at once, and two calls in a row (one server's two ports) must
    not get the same one.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


# -- TCP targets -------------------------------------------------------------------


class TargetConnection:
    """One connection accepted by a :class:`TargetServer`, and what it saw.

    ``received`` holds every byte read (when the server records them),
    ``received_count`` and ``received_sha256`` always track them.  ``eof`` is
    set when the peer shut down its write side; ``finished`` when this
    connection's thread ended.  ``sent_count`` / ``sent_sha256`` describe
    what the target sent on its own (``send_on_connect``).
    """

    def __init__(self, sock: socket.socket, address) -> None:
        self.sock = sock
        self.address = address
        self.lock = threading.Lock()
        self.received = bytearray()
        self.received_count = 0
        self._received_hash = hashlib.sha256()
        self.sent_count = 0
        self.sent_sha256 = hashlib.sha256().hexdigest()
        self.eof = threading.Event()
        self.finished = threading.Event()
        self.error = None  # type: Optional[BaseException]

    @property
    def received_sha256(self) -> str:
        with self.lock:
            return self._received_hash.hexdigest()

    def record(self, data: bytes, keep: bool) -> None:
        with self.lock:
            if keep:
                self.received += data
            self.received_count += len(data)
            self._received_hash.update(data)

    def received_bytes(self) -> bytes:
        with self.lock:
            return bytes(self.received)

    def wait_received(self, count: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until at least ``count`` bytes arrived."""
        wait_until(lambda: self.received_count >= count, timeout,
                   lambda: "the target to receive %d bytes (has %d)" % (count, self.received_count))

    def wait_eof(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until the proxy shut down its side of this connection."""
        if not self.eof.wait(timeout):
            pytest.fail("the target saw no EOF from the proxy within %.1fs" % timeout)


class TargetServer:
    """A threaded TCP server standing in for the proxied service.

    Per connection, in order: send ``send_on_connect``; if
    ``close_after_send``, shut down the write side (the bytes, then FIN) and
    only drain; otherwise read, record (``keep`` keeps the bytes, else only
    hash and count), echo back when ``echo``, and stop after ``close_after``
    bytes.  When the peer shuts down its write side, send ``send_on_eof``.
    The connection then closes gracefully (FIN first, drain, close).  With
    ``flood`` it instead only sends, as fast as the peer reads, until the
    connection fails (``sent_count`` counts the bytes).
    """

    def __init__(self, echo: bool = True, keep: bool = True, send_on_connect: bytes = b"",
                 close_after_send: bool = False, close_after: Optional[int] = None,
                 send_on_eof: bytes = b"", flood: bool = False) -> None:
        self.echo = echo
        self.flood = flood
        self.keep = keep
        self.send_on_connect = send_on_connect
        self.close_after_send = close_after_send
        self.close_after = close_after
        self.send_on_eof = send_on_eof
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.connections = []  # type: List[TargetConnection]
        self._threads = []  # type: List[threading.Thread]
        self._lock = threading.Lock()
        self._stopping = False
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True,
                                               name="target-accept-%d" % self.port)
        self._accept_thread.start()

    @property
    def address(self) -> str:
        return "127.0.0.1:%d" % self.port

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, address = self.listener.accept()
            except OSError:
                return
            if self._stopping:
                sock.close()
                return
            connection = TargetConnection(sock, address)
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True,
                                      name="target-conn-%d" % self.port)
            with self._lock:
                self.connections.append(connection)
                self._threads.append(thread)
            thread.start()

    def _serve(self, connection: TargetConnection) -> None:
        sock = connection.sock
        try:
            if self.flood:
                block = b"\x5a" * 65536
                while True:
                    sock.sendall(block)
                    connection.sent_count += len(block)
            if self.send_on_connect:
                sock.sendall(self.send_on_connect)
                connection.sent_count = len(self.send_on_connect)
                connection.sent_sha256 = hashlib.sha256(self.send_on_connect).hexdigest()
            if self.close_after_send:
                sock.shutdown(socket.SHUT_WR)
                self._drain(connection)
                return
            while True:
                data = sock.recv(65536)
                if not data:
                    connection.eof.set()
                    if self.send_on_eof:
                        sock.sendall(self.send_on_eof)
                    break
                connection.record(data, self.keep)
                if self.echo:
                    sock.sendall(data)
                if self.close_after is not None and connection.received_count >= self.close_after:
                    sock.shutdown(socket.SHUT_WR)
                    self._drain(connection)
                    return
        except OSError as exc:
            connection.error = exc
        finally:
            try:
                sock.close()
            finally:
                connection.finished.set()

    def _drain(self, connection: TargetConnection) -> None:
        """After our FIN: read (and record) until the proxy closes, so close sends no RST."""
        while True:
            data = connection.sock.recv(65536)
            if not data:
                connection.eof.set()
                return
            connection.record(data, self.keep)

    def wait_connection(self, index: int = 0, timeout: float = DEFAULT_TIMEOUT) -> TargetConnection:
        """Return the ``index``-th accepted connection, waiting for it."""
        wait_until(lambda: len(self.connections) > index, timeout,
                   "connection #%d to the target" % (index + 1))
        return self.connections[index]

    def stop(self) -> None:
        """Stop accepting, end every connection and join all threads."""
        self._stopping = True
        try:  # wake the blocking accept()
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            pass
        self._accept_thread.join(THREAD_DEADLINE)
        self.listener.close()
        with self._lock:
            connections, threads = list(self.connections), list(self._threads)
        for connection in connections:
            try:
                connection.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            thread.join(THREAD_DEADLINE)


@pytest.fixture
def make_target():
    """Factory: ``make_target(**options)`` starts a :class:`TargetServer`; all stop after the test."""
    servers = []  # type: List[TargetServer]

    def start(**options) -> TargetServer:
        server = TargetServer(**options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def echo_target(make_target) -> TargetServer:
    """An echo target that keeps every byte it received."""
    return make_target()


@pytest.fixture
def sink_target(make_target) -> TargetServer:
    """A target that only counts and hashes what it receives."""
    return make_target(echo=False, keep=False)


@pytest.fixture
def source_target(make_target):
    """Factory: ``source_target(n)`` sends ``n`` random bytes per connection, then FIN."""

    def start(count: int) -> TargetServer:
        return make_target(echo=False, send_on_connect=os.urandom(count), close_after_send=True)

    return start


# -- log capture and leak checks ---------------------------------------------------


class LogCapture(logging.Handler):
    """Collects every record sent to the ``wsproxy`` logger (and its children)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records = []  # type: List[logging.LogRecord]
        self._records_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._records_lock:
            self.records.append(record)

    def snapshot(self) -> List[logging.LogRecord]:
        with self._records_lock:
            return list(self.records)

    def messages(self) -> List[str]:
        return [record.getMessage() for record in self.snapshot()]

    def find(self, *fragments: str) -> List[str]:
        """Messages containing every one of ``fragments``."""
        return [text for text in self.messages() if all(part in text for part in fragments)]

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = DEFAULT_TIMEOUT,
                 what: str = "a log line") -> str:
        """Wait for a message satisfying ``predicate``; return it."""
        def matching():
            return [text for text in self.messages() if predicate(text)]
        found = wait_until(matching, timeout,
                           lambda: "%s; the log holds:\n%s" % (what, "\n".join(self.messages())))
        return found[0]

    def tracebacks(self) -> List[logging.LogRecord]:
        return [record for record in self.snapshot() if record.exc_info or record.stack_info]

    def assert_no_traceback(self) -> None:
        bad = self.tracebacks()
        assert not bad, "log records carry a traceback: %s" % [
            (record.getMessage(), record.exc_info) for record in bad]


@pytest.fixture
def wsproxy_log():
    """Capture the ``wsproxy`` logger at DEBUG; fail at teardown on any traceback."""
    logger = logging.getLogger("wsproxy")
    capture = LogCapture()
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(capture)
    try:
        yield capture
    finally:
        logger.removeHandler(capture)
        logger.setLevel(old_level)
    capture.assert_no_traceback()


@pytest.fixture(autouse=True)
def no_thread_leak():
    """Every test must leave the process with as many threads as it found.

    Autouse fixtures are set up before any other, so this one is checked
    after every proxy, target and server fixture has stopped.
    """
    before = threading.active_count()
    yield
    deadline = time.monotonic() + THREAD_DEADLINE
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    after = threading.active_count()
    assert after <= before, "threads leaked: %d before, %d after: %s" % (
        before, after, [thread.name for thread in threading.enumerate()])


# -- the proxy under test ------------------------------------------------------------


class RunningProxy:
    """A ProxyServer serving in a thread; ``port`` is where it listens."""

    def __init__(self, server, settings) -> None:
        self.server = server
        self.settings = settings
        self.port = server.server_address[1]
        self.clients = []  # type: List[WSClient]
        # A short poll interval only makes shutdown() return sooner.
        self.thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True, name="proxy-serve-%d" % self.port)
        self.thread.start()

    @property
    def target(self) -> str:
        return "%s:%d" % (self.settings.target_host, self.settings.target_port)

    def client(self, timeout: float = DEFAULT_TIMEOUT) -> WSClient:
        """A connected client that has not sent anything yet."""
        client = WSClient(self.port, timeout=timeout)
        self.clients.append(client)
        return client

    def session(self, protocols=None, **request_options) -> WSClient:
        """A client whose handshake succeeded (101, right accept key)."""
        client = open_session(self.port, protocols=protocols, **request_options)
        self.clients.append(client)
        return client

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(THREAD_DEADLINE)


@pytest.fixture
def proxy(request, make_target, wsproxy_log, capsys):
    """Factory: ``proxy(target=None, **settings_fields)`` starts a ProxyServer.

    The target defaults to the ``echo_target`` fixture; pass ``target=`` (a
    :class:`TargetServer`) or ``target_port=`` to change it.  Every proxy
    stops after the test; teardown fails if anything printed a traceback.
    """
    running = []  # type: List[RunningProxy]

    def start(target: Optional[TargetServer] = None, **fields) -> RunningProxy:
        from wsproxy import ProxyServer, Settings
        fields.setdefault("target_host", "127.0.0.1")
        if "target_port" not in fields:
            if target is None:
                target = request.getfixturevalue("echo_target")
            fields["target_port"] = target.port
        settings = Settings(**fields)
        server = ProxyServer(("127.0.0.1", 0), settings)
        proxy_run = RunningProxy(server, settings)
        running.append(proxy_run)
        return proxy_run

    yield start
    for proxy_run in running:
        proxy_run.stop()
    captured = capsys.readouterr()
    sys.stdout.write(captured.out)
    sys.stderr.write(captured.err)
    assert "Traceback" not in captured.err, "a traceback was printed:\n" + captured.err


# -- a real Redis server --------------------------------------------------------------


class RedisServer:
    """A ``redis-server`` child on 127.0.0.1:``port`` (no persistence), stopped by the fixture."""

    def __init__(self, directory: str, password: Optional[str] = None) -> None:
        import shutil
        import subprocess
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.port = free_port()
        self.password = password
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", directory, "--protected-mode", "no"]
        if password:
            args += ["--requirepass", password]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        wait_until(self._answers, timeout=10.0,
                   message=lambda: "redis-server to answer on port %d (exit status %s)"
                   % (self.port, self.process.poll()))

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail("redis-server exited with status %d" % self.process.returncode)
        try:
            return self.command("PING") in (b"+PONG", b"-NOAUTH Authentication required.")
        except OSError:
            return False

    def command(self, *words: str, db: int = 0) -> bytes:
        """Send one command (after AUTH/SELECT as needed); return the last reply's first line."""
        commands = []
        if self.password and words[0] != "PING":
            commands.append(("AUTH", self.password))
        if db:
            commands.append(("SELECT", str(db)))
        commands.append(words)
        data = b""
        for command in commands:
            data += b"*%d\r\n" % len(command)
            for word in command:
                raw = word.encode("utf-8")
                data += b"$%d\r\n%s\r\n" % (len(raw), raw)
        with socket.create_connection(("127.0.0.1", self.port), timeout=DEFAULT_TIMEOUT) as sock:
            sock.sendall(data)
            received = b""
            while received.count(b"\r\n") < len(commands):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                received += chunk
        return received.split(b"\r\n")[len(commands) - 1]

    def set(self, key: str, value: str, db: int = 0) -> None:
        assert self.command("SET", key, value, db=db) == b"+OK"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except Exception:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def redis_server(tmp_path):
    """Factory: ``redis_server(password=None)`` starts a real Redis; skips without redis-server."""
    import shutil
    if shutil.which("redis-server") is None and not os.path.exists("/usr/bin/redis-server"):
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    servers = []  # type: List[RedisServer]

    def start(password: Optional[str] = None) -> RedisServer:
        server = RedisServer(str(tmp_path), password)
        servers.append(server)
        return server
    yield start
    for server in servers:
        server.stop()


# -- wsproxy as a child process --------------------------------------------------------


def run_wsproxy(*args: str, cwd: str = ROOT,
                timeout: float = EXIT_DEADLINE) -> subprocess.CompletedProcess:
    """Run ``python -m wsproxy ARGS`` to completion; fail the test if it hangs."""
    try:
        return subprocess.run([sys.executable, "-m", "wsproxy"] + list(args), cwd=cwd,
                              env=child_env(), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout, universal_newlines=True)
    except subprocess.TimeoutExpired:
        pytest.fail("wsproxy %s did not exit within %.0fs" % (" ".join(args), timeout))


def port_listens(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def ipv6_available() -> bool:
    """Whether this machine can listen on the IPv6 loopback ``::1``."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not ipv6_available(), reason="IPv6 loopback (::1) not available")


def stop_process(process: "subprocess.Popen", timeout: float = EXIT_DEADLINE) -> Optional[int]:
    """SIGTERM ``process`` (unless it already ended) and return its exit status.

    Returns None when it did not end within ``timeout`` and had to be killed.
    """
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)
        return None


class WsproxyProcess:
    """A running ``python -m MODULE ARGS`` with standard output and error in a file.

    ``module`` is ``wsproxy`` or another front door (``wsproxy.websockify``);
    ``env`` defaults to :func:`child_env`, ``stdin`` to ``/dev/null``.
    """

    def __init__(self, args: List[str], directory: Path, cwd: str = ROOT,
                 module: str = "wsproxy", env: Optional[dict] = None,
                 stdin=subprocess.DEVNULL) -> None:
        self.args = list(args)
        self.module = module
        self.output_path = directory / "output.txt"
        with open(str(self.output_path), "wb") as output:
            self.process = subprocess.Popen([sys.executable, "-m", module] + self.args,
                                            cwd=cwd, env=env or child_env(), stdin=stdin,
                                            stdout=output, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_for(self, condition, what: str, timeout: float = EXIT_DEADLINE):
        """Poll ``condition`` while the process lives; fail naming ``what``."""
        def check():
            if not self.alive():
                pytest.fail("wsproxy %s exited with %s while waiting for %s: %s"
                            % (" ".join(self.args), self.process.returncode, what, self.output()))
            return condition()
        return wait_until(check, timeout, what)

    def wait_log(self, text: str, timeout: float = EXIT_DEADLINE) -> None:
        """Wait for ``text`` in the output; fail if the process ends without writing it."""
        def seen():
            if text in self.output():
                return True
            if not self.alive():
                pytest.fail("%s %s exited with %s before writing %r: %s"
                            % (self.module, " ".join(self.args), self.process.returncode, text,
                               self.output()))
            return False
        wait_until(seen, timeout, lambda: "%r in the output:\n%s" % (text, self.output()))

    def wait_listening(self, port: int) -> None:
        self.wait_for(lambda: port_listens(port), "wsproxy to listen on port %d" % port)

    def send_signal(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    def wait_exit(self, timeout: float = EXIT_DEADLINE) -> int:
        """Wait for the process to end by itself; return its exit status."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail("wsproxy %s still running after %.0fs: %s"
                        % (" ".join(self.args), timeout, self.output()))

    def stop(self) -> Optional[int]:
        """SIGTERM and wait; the exit status, or None when it had to be killed."""
        return stop_process(self.process)


@pytest.fixture
def wsproxy_process(tmp_path):
    """Factory: ``wsproxy_process(*args, cwd=ROOT, module="wsproxy")`` runs ``python -m MODULE``.

    Every process is stopped after the test, which fails if one printed a
    traceback.
    """
    started: List[WsproxyProcess] = []

    def start(*args: str, cwd: str = ROOT, module: str = "wsproxy") -> WsproxyProcess:
        directory = tmp_path / ("process%d" % len(started))
        directory.mkdir()
        child = WsproxyProcess(list(args), directory, cwd=cwd, module=module)
        started.append(child)
        return child

    yield start
    for child in started:
        child.stop()
    for child in started:
        assert "Traceback" not in child.output(), child.output()
