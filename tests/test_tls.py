"""TLS on the listening port, through real sockets: sniffing, refusals, bulk traffic.

The proxy tells TLS from plain HTTP by the first byte, on one port.  These
tests use the standard library's TLS client against a certificate made for
the run (``certs.py``), check every failure ends in one log line and no
traceback, that silent clients never hold up anyone else, and stream data
both ways at once over one wss:// session to prove the two pumps never
corrupt the TLS connection they share (also with TLS 1.3 key updates, which
make OpenSSL write from inside a read).
"""

import _ssl
import ctypes
import hashlib
import os
import select
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from typing import Callable, List, Optional

import pytest

from certs import pki
from conftest import wait_until
from wsclient import OP_BINARY, OP_CLOSE, WSClient, encode_frame

from wsproxy import ConfigError, ProxyServer, Settings

#: ``WSPROXY_LONG_TESTS=1`` streams 256 MiB each way instead of 32 MiB.
HERE = os.path.dirname(os.path.abspath(__file__))
LONG_TESTS = os.environ.get("WSPROXY_LONG_TESTS") == "1"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """The run's CA, server certificate/key and an unrelated CA (skips without openssl)."""
    return pki(tmp_path_factory)


def client_context(cafile: str, maximum: Optional[ssl.TLSVersion] = None) -> ssl.SSLContext:
    """A verifying client context that trusts ``cafile`` only."""
    context = ssl.create_default_context(cafile=cafile)
    if maximum is not None:
        context.maximum_version = maximum
    return context


class TLSClient(WSClient):
    """The raw RFC 6455 test client, over TLS.

    The TLS handshake runs in the constructor (raising ``ssl.SSLError`` if
    it fails).  Reading first drains what the TLS layer already decrypted,
    which ``select`` on the socket cannot see.
    """

    def __init__(self, port: int, context: ssl.SSLContext, server_hostname: str = "localhost",
                 timeout: float = 10.0, suppress_ragged_eofs: bool = True) -> None:
        super().__init__(port, timeout=timeout)
        raw = self.sock
        try:
            self.sock = context.wrap_socket(raw, server_hostname=server_hostname,
                                            suppress_ragged_eofs=suppress_ragged_eofs)
        except BaseException:
            raw.close()
            raise

    def _recv_some(self, deadline: float, what: str) -> bytes:
        if self.sock.pending():
            return self.sock.recv(256 * 1024)
        return super()._recv_some(deadline, what)


def echo_session(ws: WSClient, size: int = 1000) -> None:
    """Handshake, one binary round trip through the echo target, clean close."""
    ws.handshake()
    payload = os.urandom(size)
    ws.send_binary(payload)
    assert ws.recv_stream(len(payload)) == payload
    ws.send_close(1000)
    assert ws.recv_close() == (1000, "")
    ws.expect_closed()


def lines_about(log, client_port: int) -> List[str]:
    """Log messages naming the client's address."""
    return log.find("127.0.0.1:%d" % client_port)


def wait_closed(sock: socket.socket, timeout: float) -> bytes:
    """Read until the peer closes (EOF or reset); return what arrived. Fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    received = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail("the server did not close the connection within %.1fs (got %r)"
                        % (timeout, bytes(received[:100])))
        readable, _, _ = select.select([sock], [], [], left)
        if not readable:
            continue
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(received)
        if not chunk:
            return bytes(received)
        received += chunk


def raw_client_hello(context: ssl.SSLContext, server_hostname: str = "localhost") -> bytes:
    """The bytes of a real ClientHello, made without a network (MemoryBIO)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


# -- wss:// and ws:// on one port ----------------------------------------------------


@pytest.mark.parametrize("combined", [False, True], ids=["cert+key", "combined-pem"])
def test_wss_and_ws_on_the_same_port(proxy, tls_files, combined):
    if combined:
        running = proxy(cert=tls_files.combined)
    else:
        running = proxy(cert=tls_files.cert, key=tls_files.key)
    with TLSClient(running.port, client_context(tls_files.ca)) as wss:
        assert wss.sock.version() in ("TLSv1.2", "TLSv1.3")
        echo_session(wss)
    with TLSClient(running.port, client_context(tls_files.ca),
                   server_hostname="127.0.0.1") as wss_by_address:
        echo_session(wss_by_address)
    with WSClient(running.port) as ws:
        echo_session(ws)


def test_wss_large_messages_both_ways(proxy, tls_files):
    running = proxy(cert=tls_files.cert, key=tls_files.key)
    with TLSClient(running.port, client_context(tls_files.ca)) as wss:
        wss.handshake(protocols=["binary"])
        for size in (1, 125, 126, 65535, 65536, 300 * 1024):
            payload = os.urandom(size)
            wss.send_binary(payload)
            assert wss.recv_stream(size) == payload


def test_tls12_client_accepted_by_default(proxy, tls_files):
    running = proxy(cert=tls_files.cert, key=tls_files.key)
    with TLSClient(running.port, client_context(tls_files.ca, ssl.TLSVersion.TLSv1_2)) as wss:
        assert wss.sock.version() == "TLSv1.2"
        echo_session(wss)


@pytest.mark.parametrize("closer", ["client", "target"])
def test_wss_session_ends_with_close_notify(proxy, make_target, tls_files, closer):
    # RFC 8446 §6.1: each party MUST send close_notify before closing its
    # write side.  A client that does not forgive a truncated TLS stream
    # must see a clean end after the WebSocket closing handshake.
    target = make_target(close_after=5) if closer == "target" else make_target()
    running = proxy(target=target, cert=tls_files.cert, key=tls_files.key)
    with TLSClient(running.port, client_context(tls_files.ca),
                   suppress_ragged_eofs=False) as wss:
        wss.handshake(protocols=["binary"])
        wss.send_binary(b"12345")
        assert wss.recv_stream(5) == b"12345"
        if closer == "client":
            wss.send_close(1000)
            assert wss.recv_close() == (1000, "")
        else:
            assert wss.recv_close()[0] == 1000
            wss.send_close(1000)
        try:
            rest = wss.expect_closed()
        except ssl.SSLEOFError as exc:
            pytest.fail("TLS stream cut without close_notify: %s" % exc)
        assert rest == b""


# -- refusals and failures: one log line each, no traceback -------------------------


def test_ssl_only_refuses_plain_without_an_answer(proxy, tls_files, wsproxy_log):
    running = proxy(cert=tls_files.cert, key=tls_files.key, ssl_only=True)
    with WSClient(running.port, timeout=5) as ws:
        ws.send_request()
        assert ws.expect_closed() == b"", "a refused plain connection must get no answer"
        client_port = ws.local_port
    wsproxy_log.wait_for(lambda text: "127.0.0.1:%d" % client_port in text
                         and "ssl-only" in text, what="the --ssl-only refusal")
    assert len(lines_about(wsproxy_log, client_port)) == 1, lines_about(wsproxy_log, client_port)
    with TLSClient(running.port, client_context(tls_files.ca)) as wss:
        echo_session(wss)


def test_tls_hello_without_certificate_is_closed_and_logged(proxy, tls_files, wsproxy_log):
    running = proxy()
    sock = socket.create_connection(("127.0.0.1", running.port), timeout=5)
    client_port = sock.getsockname()[1]
    with pytest.raises((ssl.SSLError, OSError)):
        client_context(tls_files.ca).wrap_socket(sock, server_hostname="localhost")
    sock.close()
    line = wsproxy_log.wait_for(lambda text: "127.0.0.1:%d" % client_port in text,
                                what="a log line for the TLS hello")
    assert "cert" in line and "TLS" in line, line
    assert len(lines_about(wsproxy_log, client_port)) == 1


@pytest.mark.parametrize("hello", [
    b"\x16\x03\x01" + b"junk" * 30,                        # TLS record header, then junk
    b"\x16\x03\x01\x00\x30" + b"\x01" + b"\xff" * 47,        # a plausible record, bad hello
    b"\x80\x2e\x01\x00\x02" + b"\x00" * 43,                  # SSLv2-format hello, 46 bytes
], ids=["junk", "bad-hello-body", "sslv2"])
def test_broken_tls_hello_is_one_log_line(proxy, tls_files, wsproxy_log, hello):
    running = proxy(cert=tls_files.cert, key=tls_files.key)
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
        client_port = sock.getsockname()[1]
        sock.sendall(hello)
        answer = wait_closed(sock, 5)
    # At most a TLS alert record (content type 21) may come back, nothing else.
    assert answer == b"" or answer[:1] == b"\x15", answer[:50]
    wsproxy_log.wait_for(lambda text: "127.0.0.1:%d" % client_port in text,
                         what="a log line for the broken hello")
    assert len(lines_about(wsproxy_log, client_port)) == 1, lines_about(wsproxy_log, client_port)
    wsproxy_log.assert_no_traceback()
    # The server is still fine.
    with TLSClient(running.port, client_context(tls_files.ca)) as wss:
        echo_session(wss)


def test_client_rejecting_the_certificate_is_one_log_line(proxy, tls_files, wsproxy_log):
    running = proxy(cert=tls_files.cert, key=tls_files.key)
    sock = socket.create_connection(("127.0.0.1", running.port), timeout=5)
    client_port = sock.getsockname()[1]
    with pytest.raises(ssl.SSLCertVerificationError):
        client_context(tls_files.other_ca).wrap_socket(sock, server_hostname="localhost")
    sock.close()
    line = wsproxy_log.wait_for(lambda text: "127.0.0.1:%d" % client_port in text,
                                what="a log line for the rejected certificate")
    assert "TLS" in line, line
    assert len(lines_about(wsproxy_log, client_port)) == 1, lines_about(wsproxy_log, client_port)
    wsproxy_log.assert_no_traceback()


def test_tls_handshake_timeout_closes(proxy, tls_files, wsproxy_log):
    running = proxy(cert=tls_files.cert, key=tls_files.key, handshake_timeout=0.5)
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
        client_port = sock.getsockname()[1]
        started = time.monotonic()
        sock.sendall(b"\x16")
        wait_closed(sock, 3.0)
        elapsed = time.monotonic() - started
    assert elapsed >= 0.4, "closed after %.2fs, before the handshake timeout" % elapsed
    line = wsproxy_log.wait_for(lambda text: "127.0.0.1:%d" % client_port in text,
                                what="the TLS timeout log line")
    assert "timed out" in line, line
    assert len(lines_about(wsproxy_log, client_port)) == 1


def test_silence_after_the_tls_handshake_times_out(proxy, tls_files, wsproxy_log):
    running = proxy(cert=tls_files.cert, key=tls_files.key, handshake_timeout=0.5)
    with TLSClient(running.port, client_context(tls_files.ca)) as wss:
        client_port = wss.local_port
        started = time.monotonic()
        assert wss.expect_closed(timeout=3.0) == b""
        elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 2.0, elapsed
    line = wsproxy_log.wait_for(lambda text: "127.0.0.1:%d" % client_port in text,
                                what="the handshake timeout log line")
    assert "timed out" in line, line


def test_trickled_client_hello_is_bounded_by_the_handshake_timeout(proxy, tls_files):
    # A hello sent one byte every 50 ms would take many seconds; the timeout
    # bounds the whole TLS handshake, not each read.
    running = proxy(cert=tls_files.cert, key=tls_files.key, handshake_timeout=0.5)
    hello = raw_client_hello(client_context(tls_files.ca))
    assert len(hello) > 100
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.monotonic()
        closed = False
        for index in range(len(hello)):
            try:
                sock.sendall(hello[index:index + 1])
            except OSError:
                closed = True
                break
            readable, _, _ = select.select([sock], [], [], 0.05)  # pacing, not synchronisation
            if readable:
                try:
                    closed = not sock.recv(100)
                except ConnectionResetError:
                    closed = True
                if closed:
                    break
            assert time.monotonic() - started < 3.0, "still open after 3 s of trickling"
        elapsed = time.monotonic() - started
    assert closed, "the whole hello went through without the server closing"
    assert elapsed < 2.0, elapsed


def test_tls13_only_refuses_a_tls12_client(proxy, tls_files, wsproxy_log):
    running = proxy(cert=tls_files.cert, key=tls_files.key, ssl_version="tlsv1_3")
    sock = socket.create_connection(("127.0.0.1", running.port), timeout=5)
    client_port = sock.getsockname()[1]
    with pytest.raises(ssl.SSLError) as refused:
        client_context(tls_files.ca, ssl.TLSVersion.TLSv1_2).wrap_socket(
            sock, server_hostname="localhost")
    sock.close()
    # The server's protocol_version alert tells the client why (RFC 8446 §6.2).
    assert "VERSION" in str(refused.value).upper(), refused.value
    wsproxy_log.wait_for(lambda text: "127.0.0.1:%d" % client_port in text,
                         what="the refused TLS 1.2 log line")
    assert len(lines_about(wsproxy_log, client_port)) == 1
    with TLSClient(running.port, client_context(tls_files.ca)) as wss:
        assert wss.sock.version() == "TLSv1.3"
        echo_session(wss)


@pytest.mark.parametrize("option,value,named", [
    ("cert", "/nonexistent/wsproxy-test.pem", "cert"),
    ("key", "/nonexistent/wsproxy-test.key", "key"),
    ("ssl_version", "sslv3", "ssl-version"),
    ("ssl_ciphers", "NO-SUCH-CIPHER", "ssl-ciphers"),
])
def test_bad_tls_option_is_a_config_error_naming_it(tls_files, option, value, named):
    fields = {"target_host": "127.0.0.1", "target_port": 9, "cert": tls_files.cert,
              "key": tls_files.key, option: value}
    with pytest.raises(ConfigError) as error:
        ProxyServer(("127.0.0.1", 0), Settings(**fields)).server_close()
    assert named in str(error.value), error.value


def test_certificate_file_that_is_not_pem_is_a_config_error(tls_files, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"not a certificate\n")
    with pytest.raises(ConfigError) as error:
        ProxyServer(("127.0.0.1", 0), Settings(target_host="127.0.0.1", target_port=9,
                                               cert=str(junk))).server_close()
    assert "cert" in str(error.value)


# -- silent clients hold up nobody ---------------------------------------------------


def test_silent_and_one_byte_clients_do_not_delay_others(proxy, tls_files):
    running = proxy(cert=tls_files.cert, key=tls_files.key)
    threads_before = threading.active_count()
    idle = []  # type: List[socket.socket]
    try:
        for _ in range(50):
            idle.append(socket.create_connection(("127.0.0.1", running.port), timeout=5))
        for first in (b"G", b"\x16", b"<", b"G", b"\x16", b"<", b"G", b"\x16", b"G", b"\x80"):
            sock = socket.create_connection(("127.0.0.1", running.port), timeout=5)
            idle.append(sock)
            sock.sendall(first)
        # Give the server the chance to accept them all (with a thread per
        # connection, each has its thread waiting); go on regardless: the
        # real client must be served either way.
        deadline = time.monotonic() + 2.0
        while (threading.active_count() - threads_before < len(idle)
               and time.monotonic() < deadline):
            time.sleep(0.01)
        for make in (lambda: WSClient(running.port, timeout=5),
                     lambda: TLSClient(running.port, client_context(tls_files.ca), timeout=5)):
            started = time.monotonic()
            with make() as ws:
                ws.handshake()
                ws.send_binary(b"still served")
                assert ws.recv_stream(12) == b"still served"
                elapsed = time.monotonic() - started
            assert elapsed < 1.0, "handshake and echo took %.2fs behind idle clients" % elapsed
    finally:
        for sock in idle:
            sock.close()


# -- bulk traffic both ways at once over one TLS session ------------------------------


class KeyUpdater:
    """Asks OpenSSL for a TLS 1.3 KeyUpdate on a client ``SSLSocket``, via ctypes.

    Python's ``ssl`` module has no call for it, so this reads the ``SSL *``
    from the ``_ssl._SSLSocket`` object (just after the object header and one
    pointer, in CPython 3.7 to 3.13) and calls ``SSL_key_update`` in the
    libssl that ``_ssl`` is linked with.  :meth:`probe` first checks the
    layout in a child process, so a mismatch skips the test instead of
    crashing the run.
    """

    SSL_KEY_UPDATE_REQUESTED = 1
    TLS1_3_VERSION = 0x0304

    def __init__(self) -> None:
        lib = ctypes.CDLL(_ssl.__file__)
        self._key_update = lib.SSL_key_update
        self._key_update.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self._key_update.restype = ctypes.c_int
        self._version = lib.SSL_version
        self._version.argtypes = [ctypes.c_void_p]
        self._version.restype = ctypes.c_int
        self._offset = object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p)

    def _ssl_pointer(self, tls_socket: ssl.SSLSocket) -> int:
        inner = tls_socket._sslobj  # the _ssl._SSLSocket
        return ctypes.c_void_p.from_address(id(inner) + self._offset).value

    def check(self, tls_socket: ssl.SSLSocket) -> None:
        """Raise AssertionError unless the pointer is a TLS 1.3 connection."""
        version = self._version(self._ssl_pointer(tls_socket))
        assert version == self.TLS1_3_VERSION, hex(version)

    def request(self, tls_socket: ssl.SSLSocket) -> bool:
        """Queue a KeyUpdate asking the peer for one back; sent with the next write."""
        return self._key_update(self._ssl_pointer(tls_socket), self.SSL_KEY_UPDATE_REQUESTED) == 1

    _probed = {}  # type: dict

    @classmethod
    def probe(cls, tls_files) -> Optional[str]:
        """None if key updates work here, else why not (checked once, in a child process)."""
        if "result" not in cls._probed:
            cls._probed["result"] = cls._run_probe(tls_files)
        return cls._probed["result"]

    @staticmethod
    def _run_probe(tls_files) -> Optional[str]:
        code = r"""
import socket, ssl, sys, threading
sys.path[:0] = [%r, %r]
from test_tls import KeyUpdater
server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
server.load_cert_chain(%r, %r)
client = ssl.create_default_context(cafile=%r)
a, b = socket.socketpair()
def serve():
    s = server.wrap_socket(a, server_side=True)
    while True:
        data = s.recv(100)
        if not data:
            break
        s.sendall(data)
thread = threading.Thread(target=serve)
thread.start()
c = client.wrap_socket(b, server_hostname="localhost")
updater = KeyUpdater()
updater.check(c)
assert updater.request(c)
c.sendall(b"ping")
assert c.recv(100) == b"ping"
c.close()
thread.join()
print("key-update-ok")
""" % (HERE, os.path.dirname(HERE), tls_files.cert, tls_files.key, tls_files.ca)
        try:
            result = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, timeout=30)
        except subprocess.TimeoutExpired:
            return "the key-update probe hung"
        output = result.stdout.decode("utf-8", "replace")
        if result.returncode != 0 or "key-update-ok" not in output:
            return ("cannot reach SSL_key_update from Python here (exit %d): %s"
                    % (result.returncode, output.strip()[-300:]))
        return None


class FrameReader:
    """Incremental reader of the proxy's unmasked binary frames; hashes the payload."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.payload_bytes = 0
        self.digest = hashlib.sha256()
        self.closed_with = None  # type: Optional[bytes]

    def feed(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while len(buffer) >= 2:
            first, second = buffer[0], buffer[1]
            assert not second & 0x80, "server frames must not be masked"
            length, offset = second & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length, offset = struct.unpack_from("!H", buffer, 2)[0], 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length, offset = struct.unpack_from("!Q", buffer, 2)[0], 10
            if len(buffer) < offset + length:
                return
            opcode = first & 0x0F
            payload = bytes(buffer[offset:offset + length])
            del buffer[:offset + length]
            if opcode == OP_CLOSE:
                self.closed_with = payload
                return
            assert opcode == OP_BINARY, "unexpected opcode %d mid-stream" % opcode
            self.digest.update(payload)
            self.payload_bytes += len(payload)


def stream_both_ways(tls_socket: ssl.SSLSocket, total: int, frame_size: int = 64 * 1024,
                     between_frames: Optional[Callable[[int], None]] = None,
                     timeout: float = 120.0):
    """Send ``total`` random bytes in masked binary frames while reading the echo.

    One thread drives the non-blocking ``SSLSocket`` (a client ``SSLSocket``
    is no safer than the server's from two threads), sending whenever the
    socket takes data and reading whenever it has some, so both directions
    are in flight at once.  ``between_frames(n)`` runs before frame ``n``
    is sent.  Returns ``(sent_sha256, reader, echoed_before_last_send)``.
    """
    tls_socket.setblocking(False)
    sent_digest = hashlib.sha256()
    reader = FrameReader()
    sent = 0
    frames = 0
    pending = memoryview(b"")
    echoed_before_last_send = 0
    deadline = time.monotonic() + timeout
    while reader.payload_bytes < total:
        if not pending and sent < total:
            if between_frames is not None:
                between_frames(frames)
            payload = os.urandom(min(frame_size, total - sent))
            sent_digest.update(payload)
            sent += len(payload)
            frames += 1
            pending = memoryview(encode_frame(OP_BINARY, payload))
            if sent == total:
                echoed_before_last_send = reader.payload_bytes
        left = deadline - time.monotonic()
        assert left > 0, "stalled: sent %d, echoed %d of %d" % (sent, reader.payload_bytes, total)
        want_write = [tls_socket] if pending else []
        if tls_socket.pending():
            readable, writable = [tls_socket], []
        else:
            readable, writable, _ = select.select([tls_socket], want_write, [], min(left, 1.0))
        if readable:
            try:
                data = tls_socket.recv(256 * 1024)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                data = None
            if data is not None:
                assert data, "connection closed after %d of %d echoed bytes" % (
                    reader.payload_bytes, total)
                reader.feed(data)
                assert reader.closed_with is None, "close frame mid-stream: %r" % (
                    reader.closed_with,)
        if writable and pending:
            try:
                count = tls_socket.send(pending)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                count = 0
            pending = pending[count:]
    tls_socket.setblocking(True)
    return sent_digest.hexdigest(), reader, echoed_before_last_send


def bulk_size() -> int:
    return 256 * 1024 * 1024 if LONG_TESTS else 32 * 1024 * 1024


@pytest.mark.parametrize("tls_version", ["default", "tls1.3-key-updates"])
def test_wss_bulk_both_directions_at_once(proxy, make_target, tls_files, tls_version):
    updater = None
    if tls_version != "default":
        reason = KeyUpdater.probe(tls_files)
        if reason is not None:
            pytest.skip(reason)
        updater = KeyUpdater()
    total = bulk_size()
    target = make_target(keep=False)
    running = proxy(target=target, cert=tls_files.cert, key=tls_files.key,
                    ssl_version="tlsv1_3" if updater else "tlsv1_2")
    context = client_context(tls_files.ca)
    key_updates_back = []
    requested = []
    if updater is not None:
        # CPython's TLS message trace hook (private, but present since 3.8):
        # count the KeyUpdate messages the proxy sends back.
        def watch(conn, direction, version, content_type, msg_type, data):
            if direction == "read" and msg_type == ssl._TLSMessageType.KEY_UPDATE:
                key_updates_back.append(time.monotonic())
        context._msg_callback = watch

    with TLSClient(running.port, context, timeout=10) as wss:
        wss.handshake(protocols=["binary"])
        between = None
        if updater is not None:
            updater.check(wss.sock)

            def between(frame_number):
                # Every other frame (128 KiB): ask the proxy for a key
                # update back while both pumps are busy.
                if frame_number % 2 == 1 and updater.request(wss.sock):
                    requested.append(frame_number)
        sent_sha, reader, echoed_early = stream_both_ways(wss.sock, total,
                                                          between_frames=between)
        assert reader.payload_bytes == total
        assert reader.digest.hexdigest() == sent_sha, "echoed stream differs from the sent one"
        assert echoed_early > 0, "nothing came back before the last frame was sent"
        wss.send_close(1000)
        assert wss.recv_close() == (1000, "")
    connection = target.wait_connection()
    connection.wait_received(total, timeout=10)
    assert connection.received_sha256 == sent_sha
    if updater is not None:
        assert len(requested) >= total // (256 * 1024), len(requested)
        # The proxy answered (most of) our requests with key updates of its own.
        assert len(key_updates_back) >= len(requested) // 2, (len(key_updates_back),
                                                              len(requested))


class FloodTarget:
    """A target that writes without end while it reads, so a client that reads
    nothing stalls the proxy's downstream pump.

    ``stalled`` is set once its socket stays unwritable: the proxy stopped
    reading it, so its downstream pump is blocked writing to the client.
    ``received`` counts what arrived from the client.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stalled = threading.Event()
        self.received = 0
        self.threads = [threading.Thread(target=self._run, daemon=True, name="flood-target")]
        self.threads[0].start()

    def _run(self) -> None:
        conn, _ = self.listener.accept()
        reader = threading.Thread(target=self._read, args=(conn,), daemon=True,
                                  name="flood-target-read")
        self.threads.append(reader)
        reader.start()
        chunk = os.urandom(64 * 1024)
        try:
            while True:
                _, writable, _ = select.select([], [conn], [], 0.2)
                if not writable:
                    self.stalled.set()
                    continue
                conn.send(chunk)
        except OSError:
            pass
        finally:
            reader.join(10)
            conn.close()

    def _read(self, conn: socket.socket) -> None:
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                self.received += len(data)
        except OSError:
            pass
        try:
            conn.shutdown(socket.SHUT_RDWR)  # stop the writer too
        except OSError:
            pass

    def stop(self) -> None:
        self.listener.close()
        for thread in self.threads:
            thread.join(10)


@pytest.mark.parametrize("scheme", ["ws", "wss-tls1.3-key-update"])
def test_stalled_downstream_never_stalls_upstream(proxy, tls_files, scheme):
    # The client reads nothing, so the proxy's downstream pump blocks writing
    # to it; its uploads must still reach the target.  Over TLS the client
    # also asks for a key update with every frame: the reading pump must
    # never wait for the writer blocked on the network (TLSStream lets the
    # thread that holds the send lock send the reader's records).
    updater = None
    if scheme != "ws":
        reason = KeyUpdater.probe(tls_files)
        if reason is not None:
            pytest.skip(reason)
        updater = KeyUpdater()
    target = FloodTarget()
    try:
        running = proxy(target_port=target.port, cert=tls_files.cert, key=tls_files.key,
                        ssl_version="tlsv1_3")
        if updater is None:
            client = WSClient(running.port)  # type: WSClient
        else:
            client = TLSClient(running.port, client_context(tls_files.ca))
        with client:
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            client.handshake(protocols=["binary"])
            if not target.stalled.wait(10):
                pytest.fail("the proxy never stopped reading the flooding target")
            # One frame at a time: each must reach the target before the next goes.
            for number in range(1, 5):
                if updater is not None:
                    assert updater.request(client.sock)
                client.send_binary(b"u" * 1000)
                wait_until(lambda: target.received >= 1000 * number, 2,
                           "frame %d to reach the target past a stalled downstream "
                           "(it had %d bytes before)" % (number, target.received))
    finally:
        target.stop()
