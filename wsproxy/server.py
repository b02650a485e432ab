"""The listening server: accept, PROXY header, sniff the first bytes, TLS, limits, shutdown.

:class:`ProxyServer` is a ``socketserver.ThreadingTCPServer``; each accepted
connection gets its own thread, and everything that may wait on the client
(the PROXY protocol header with ``--proxy-protocol``, the first-byte sniff,
the TLS handshake, the HTTP handshake) runs there, bounded by
``handshake_timeout``, so a silent or slow client never delays anyone
else's accept.
"""

import itertools
import logging
import os
import socket
import socketserver
import ssl
import stat
import threading
import time
from typing import Any, Callable, Optional, Set, Tuple

from .auth import AuthTable
from . import trust
from .handler import ProxyRequestHandler
from .logs import Throttle
from .observe import Observer
from .protocol import proxy_protocol, sniff
from .protocol.errors import HandshakeError
from .session import format_address
from .settings import ConfigError, Settings
from .streams import SocketStream, TLSStream
from .tokens import open_token_source

logger = logging.getLogger("wsproxy")

_TLS_VERSIONS = {
    "tlsv1_1": ssl.TLSVersion.TLSv1_1,
    "tlsv1_2": ssl.TLSVersion.TLSv1_2,
    "tlsv1_3": ssl.TLSVersion.TLSv1_3,
}
#: How long :meth:`ProxyServer.shutdown` waits for sessions to finish closing.
SHUTDOWN_GRACE = 5.0
#: Connections allowed in the handshake phase at once (see ``process_request``).
MAX_PENDING_HANDSHAKES = 2048
#: While the handshake phase is full, how long the accept loop waits for a place to free
#: before refusing (see ``verify_request``); after a wait in vain it refuses at once for
#: ``_IMPATIENT`` seconds.
ADMISSION_PATIENCE = 2.0
_IMPATIENT = 1.0
#: Unanswered heartbeat pings before a session is closed.
HEARTBEAT_MISSES = 3


class ProxyServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """A WebSocket-to-TCP proxy server.

    ``server_address`` is ``(host, port)`` (port 0 picks a free one; an IPv6
    host listens on IPv6, dual-stack for ``"::"`` where the OS allows);
    ``settings`` is a :class:`Settings`; ``handler_class`` defaults to
    :class:`ProxyRequestHandler` (pass a subclass to use its hooks).

    Run it with ``serve_forever()`` in any thread; ``shutdown()`` stops
    accepting and closes every open session with 1001 (going away).
    """

    daemon_threads = True
    allow_reuse_address = True
    #: The listen backlog (the kernel caps it at net.core.somaxconn): a burst of thousands of
    #: connections waits here, not in SYN retransmits of 1, 3, 7 s.
    request_queue_size = 4096

    def __init__(self, server_address: Tuple[str, int], settings: Optional[Settings] = None,
                 handler_class: type = ProxyRequestHandler,
                 bind_and_activate: bool = True) -> None:
        self.settings = settings if settings is not None else Settings()
        if isinstance(server_address, tuple) and ":" in server_address[0]:
            self.address_family = socket.AF_INET6
        self.ssl_context = build_server_ssl_context(self.settings)
        if (self.settings.proxy_protocol and not self.settings.trusted_proxy
                and self.address_family != socket.AF_UNIX):
            raise ConfigError("proxy-protocol: needs --trusted-proxy, the addresses of the "
                              "balancers allowed to send the PROXY header")
        self.token_table = (open_token_source(self.settings.token_source)
                            if self.settings.token_source else None)
        self.auth_table = AuthTable(self.settings.auth_file) if self.settings.auth_file else None
        if self.settings.web_auth and self.auth_table is None:
            raise ConfigError("web-auth: needs --auth-file, the credentials to check")
        self._target_context: Optional[ssl.SSLContext] = None
        self._sessions: Set[ProxyRequestHandler] = set()
        self._sessions_lock = threading.Lock()
        self._reserved = 0
        self._pending_handshakes = 0
        self._impatient_until = 0.0
        #: Warnings one kind of event can repeat at will (a flood) go through this.
        self.warnings = Throttle(logger)
        self._numbers = itertools.count(1)
        #: Set by ``--workers`` to a counter shared by all worker processes.
        self.session_number_source: Optional[Callable[[], int]] = None
        #: Status counts, metrics and the audit log: every session record goes there.
        self.observer = Observer(self.settings)
        self._housekeeper: Optional[threading.Thread] = None
        self._stopping = threading.Event()
        self.started = time.time()
        #: When ``serve_forever`` last went round its loop (see :meth:`service_actions`).
        self.loop_turned: Optional[float] = None
        self._started_monotonic = time.monotonic()
        if self.settings.ssl_target and self.settings.target_insecure:
            logger.warning("TLS to the target is NOT verified (--target-insecure): "
                           "anyone on the path to it can read and change the traffic")
        super().__init__(server_address, handler_class, bind_and_activate)

    # -- socketserver hooks -----------------------------------------------------------

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.server_address[0] in ("::", ""):
            try:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            except (OSError, AttributeError):
                pass
        super().server_bind()

    def server_activate(self) -> None:
        super().server_activate()
        # Several processes (--workers) may wait on this socket; all wake for
        # one connection and only one gets it.  A blocking accept() would
        # leave the others stuck in it, deaf to shutdown(): socketserver
        # treats the non-blocking accept's "nothing there" as no request.
        self.socket.setblocking(False)

    def verify_request(self, request, client_address) -> bool:
        """Backpressure: while the handshake phase is full and moving, wait for a place.

        A burst of prompt clients (thousands opened at once from one
        address) fills the pending-handshake bound only because their
        threads have not all run yet; places keep freeing, so the accept
        loop waits for one (the rest wait in the listen backlog) instead of
        resetting connections.  When no place frees for
        ``ADMISSION_PATIENCE`` seconds (silent connections hold them),
        ``process_request`` decides as before (refuses, or evicts a stalled
        one), and does so without waiting for the next ``_IMPATIENT``
        seconds, so a flood is turned away at full speed.
        """
        if self._pending_handshakes < MAX_PENDING_HANDSHAKES:
            return True
        now = time.monotonic()
        if now < self._impatient_until:
            return True
        last, moved = self._pending_handshakes, now
        while self._pending_handshakes >= MAX_PENDING_HANDSHAKES and not self._accept_stopping():
            time.sleep(0.002)
            now = time.monotonic()
            if self._pending_handshakes < last:
                moved = now  # a handshake finished: the phase is moving
            elif now - moved >= ADMISSION_PATIENCE:
                self._impatient_until = now + _IMPATIENT
                break
            last = self._pending_handshakes
            self.loop_turned = now  # waiting here is the accept loop at work
        return True

    def _accept_stopping(self) -> bool:
        """True once ``shutdown()``/``stop_accepting()`` asked ``serve_forever`` to return."""
        return self._stopping.is_set() or getattr(self, "_BaseServer__shutdown_request", False)

    def process_request(self, request, client_address) -> None:
        """Start the connection's thread, unless too many are still handshaking.

        Every connection gets a thread before anything is known of it, so
        a flood of silent connections could otherwise exhaust threads and
        memory: past ``MAX_PENDING_HANDSHAKES`` connections that have not
        finished their handshake, new ones are closed at once.
        """
        with self._sessions_lock:
            crowded = self._pending_handshakes >= MAX_PENDING_HANDSHAKES
            if not crowded:
                self._pending_handshakes += 1
                self.observer.pending_handshakes(self._pending_handshakes)
        if crowded:
            self.warnings.warning("crowded", "%d connections still handshaking; refusing new "
                                  "ones (e.g. %s)", MAX_PENDING_HANDSHAKES,
                                  format_address(client_address), interval=1.0)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def service_actions(self) -> None:
        """Called by ``serve_forever`` on each turn of its loop: the watchdog's sign of life."""
        self.loop_turned = time.monotonic()
        super().service_actions()

    def handshake_finished(self) -> None:
        """A connection left the handshake phase (its session began, or it ended)."""
        with self._sessions_lock:
            self._pending_handshakes -= 1
            self.observer.pending_handshakes(self._pending_handshakes)

    def handle_error(self, request, client_address) -> None:
        """An unexpected exception in a handler: one log line with the traceback."""
        logger.exception("internal error while serving %s", format_address(client_address))

    def stop_accepting(self) -> None:
        """Stop ``serve_forever`` and close the listener; open sessions go on."""
        super().shutdown()
        self.socket.close()

    def shutdown(self) -> None:
        """Stop accepting, close the listener, send close 1001 to every open session, wait for them.

        The listener closes first, so that while sessions are closing a
        load balancer's new connections are refused at once (and sent to
        another instance) instead of waiting in a backlog nobody serves.
        """
        self.stop_accepting()
        self._stopping.set()
        self.close_sessions(1001, "server shutting down")

    def target_ssl_context(self) -> ssl.SSLContext:
        """The client-side TLS context for ``--ssl-target`` (built once).

        Verifies against ``--target-cafile`` (else the system store) unless
        ``--target-insecure``.
        """
        if self._target_context is None:
            settings = self.settings
            try:
                context = ssl.create_default_context(cafile=settings.target_cafile)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError("target-cafile: cannot load %s: %s"
                                  % (settings.target_cafile, exc)) from None
            if settings.target_insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._target_context = context
        return self._target_context

    def reload_tls(self) -> None:
        """Re-read ``--cert``/``--key``/``--cafile`` (SIGHUP) into a new TLS context.

        Connections accepted from now on use it; open sessions keep the one
        they began with.  Raises :class:`ConfigError` and keeps the current
        context when the files cannot be loaded (a half-written renewal).
        """
        if self.settings.cert:
            self.ssl_context = build_server_ssl_context(self.settings)

    def reload(self) -> None:
        """Re-read what may change while running (SIGHUP): audit log, tokens, auth file.

        Counters are kept: metrics never go down across a reload.
        """
        self.observer.reopen()
        for name in ("token_table", "auth_table"):
            table = getattr(self, name, None)
            if table is not None and hasattr(table, "reload"):
                table.reload()

    # -- per connection (runs in the connection's own thread) -------------------------

    def next_session_number(self) -> int:
        """A number unique within this server (or all its workers), for logs and recordings."""
        if self.session_number_source is not None:
            return self.session_number_source()
        return next(self._numbers)

    def prepare_connection(self, sock: socket.socket, client_address,
                           deadline: Optional[float] = None
                           ) -> Optional[Tuple[SocketStream, bytes, Any]]:
        """Read the PROXY header, sniff the first bytes; answer Flash, wrap TLS, or refuse.

        Runs in the connection's own thread, before ``deadline`` (a
        ``time.monotonic()`` value; default ``handshake_timeout`` from now).
        Returns the client stream, any bytes already consumed and the
        client's address (``client_address``, or with ``--proxy-protocol``
        the one the balancer's header names), or None when the connection
        is finished here.
        """
        settings = self.settings
        if deadline is None:
            deadline = time.monotonic() + settings.handshake_timeout
        peer = format_address(client_address)
        try:
            if settings.proxy_protocol:
                proxied = self._read_proxy_header(sock, client_address, deadline)
                if proxied is None:
                    return None
                if proxied != client_address:
                    peer = "%s (via %s)" % (format_address(proxied), peer)
                    client_address = proxied
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            first = sock.recv(1, socket.MSG_PEEK)
            if not first:
                return None
            kind = sniff.classify(first)
            if kind is sniff.ConnectionKind.TLS:
                started = self._start_tls(sock, peer, deadline)
                return started + (client_address,) if started else None
            consumed = b""
            if first == b"<":
                consumed, kind = self._read_policy_request(sock, deadline)
                if kind is sniff.ConnectionKind.FLASH_POLICY:
                    self._answer_flash(sock, peer)
                    return None
            if settings.ssl_only or settings.verify_client:
                logger.info("%s: plain connection refused (%s)", peer,
                            "--ssl-only" if settings.ssl_only else "--verify-client needs TLS")
                return None
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            return SocketStream(sock), consumed, client_address
        except socket.timeout:
            logger.info("%s: no request before the handshake timeout", peer)
        except (OSError, ssl.SSLError) as exc:
            logger.info("%s: connection failed before the handshake: %s", peer, exc)
        return None

    def _read_proxy_header(self, sock: socket.socket, client_address, deadline: float):
        """Consume the PROXY protocol header (``--proxy-protocol``); return the client's address.

        The header must come from a ``--trusted-proxy`` (any peer of a Unix
        socket listener, whose file mode decides who connects).  Exactly
        the header's bytes are read, so the TLS/Flash/HTTP sniff that
        follows sees the client's own first byte.  A LOCAL header (a
        balancer's health check) or UNKNOWN keeps ``client_address``.
        Returns None, after one log line, when the connection must close:
        an untrusted peer, a missing or malformed header, or none before
        ``deadline``.
        """
        peer = format_address(client_address)
        if isinstance(client_address, tuple) and not trust.is_trusted(
                client_address[0], trust.networks(self.settings.trusted_proxy)):
            self.warnings.warning("untrusted-proxy-peer", "%s: PROXY protocol connection from "
                                  "a peer that is not a --trusted-proxy; closed", peer)
            return None
        reader = proxy_protocol.ProxyHeaderReader()
        taken = 0
        try:
            while reader.header is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise socket.timeout()
                sock.settimeout(left)
                # Peek, so that nothing past the header's end leaves the
                # socket; then take exactly the bytes the reader used (they
                # are already received, so the recv returns at once).
                peeked = sock.recv(reader.wanted(), socket.MSG_PEEK)
                if not peeked:
                    raise proxy_protocol.ProxyHeaderError(
                        "the connection closed %s" % ("inside it" if taken else "before it"))
                used = reader.feed(peeked)
                _discard(sock, used)
                taken += used
        except proxy_protocol.ProxyHeaderError as exc:
            self.warnings.warning("bad-proxy-header", "%s: PROXY protocol header missing or "
                                  "malformed: %s; closed", peer, exc)
            return None
        except socket.timeout:
            logger.info("%s: no complete PROXY protocol header before the handshake "
                        "timeout; closed", peer)
            return None
        real = reader.header.client_address
        return real if real is not None else client_address

    def _read_policy_request(self, sock: socket.socket, deadline: float):
        """Consume bytes while they may still be a Flash policy request."""
        consumed = b""
        while True:
            kind = sniff.classify(consumed) if consumed else None
            if kind is not None:
                return consumed, kind
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout()
            sock.settimeout(left)
            data = sock.recv(len(sniff.FLASH_POLICY_REQUEST) - len(consumed))
            if not data:
                return consumed, sniff.ConnectionKind.HTTP
            consumed += data

    def _answer_flash(self, sock: socket.socket, peer: str) -> None:
        settings = self.settings
        if not settings.flash_policy:
            logger.info("%s: Flash policy request closed (--no-flash-policy)", peer)
            return
        sock.sendall(sniff.flash_policy_response(settings.flash_policy_domain,
                                                 settings.flash_policy_ports))
        logger.info("%s: answered a Flash policy request", peer)

    def _start_tls(self, sock: socket.socket, peer: str, deadline: float):
        if self.ssl_context is None:
            self.warnings.warning("tls-without-cert", "%s: TLS hello but no certificate "
                                  "configured (--cert); closing", peer)
            return None
        stream = TLSStream(sock, self.ssl_context, server_side=True)
        try:
            stream.do_handshake(max(0.0, deadline - time.monotonic()))
        except socket.timeout:
            logger.info("%s: TLS handshake timed out", peer)
            return None
        except (ssl.SSLError, OSError) as exc:
            logger.info("%s: TLS handshake failed: %s", peer, getattr(exc, "reason", None) or exc)
            return None
        return stream, b""

    # -- sessions -------------------------------------------------------------------

    def check_capacity(self) -> None:
        """Reserve a place for a new session, or refuse it with 503.

        With ``max_connections``, at most that many sessions (counting those
        still connecting to their target) exist at once; the handler gives
        the place back with :meth:`release_capacity` when it is done.
        """
        limit = self.settings.max_connections
        with self._sessions_lock:
            if limit and self._reserved >= limit:
                raise HandshakeError(503, "too many sessions (--max-connections %d)" % limit)
            self._reserved += 1

    def release_capacity(self) -> None:
        """Give back the place taken by :meth:`check_capacity`."""
        with self._sessions_lock:
            self._reserved -= 1

    def register_session(self, handler: ProxyRequestHandler) -> None:
        """A session started relaying (called by the handler)."""
        with self._sessions_lock:
            self._sessions.add(handler)
        self.observer.session_started(handler.session)
        settings = self.settings
        if (settings.session_timeout or settings.heartbeat) and self._housekeeper is None:
            self._start_housekeeper()

    def unregister_session(self, handler: ProxyRequestHandler) -> None:
        """A session ended; its :class:`SessionInfo` holds the final numbers."""
        with self._sessions_lock:
            self._sessions.discard(handler)
            self.observer.session_leaving(handler.session)
        self.observer.session_ended(handler.session)

    def handshake_refused(self, handler: ProxyRequestHandler, status: int, reason: str) -> None:
        """A request was answered with HTTP error ``status`` (``handler.session`` describes it)."""
        self.observer.handshake_refused(handler.session, reason)

    def status_document(self) -> bytes:
        """The ``--status`` JSON: uptime, open sessions, totals and per-target counts."""
        with self._sessions_lock:
            live = [(str(handler.session.target), handler.relay.bytes_from_client,
                     handler.relay.bytes_to_client) for handler in self._sessions]
            return self.observer.status_document(live, len(live))

    def metrics_document(self) -> bytes:
        """The ``--metrics`` text (Prometheus format 0.0.4), every worker's counters."""
        return self.observer.metrics_document()

    def server_close(self) -> None:
        super().server_close()
        self.observer.close()

    # -- timeouts ---------------------------------------------------------------------

    def _start_housekeeper(self) -> None:
        with self._sessions_lock:
            if self._housekeeper is not None:
                return
            self._housekeeper = threading.Thread(target=self._housekeep, daemon=True,
                                                 name="wsproxy-housekeeper")
        self._housekeeper.start()

    def _housekeep(self) -> None:
        """Close idle sessions (``--session-timeout``) and ping clients (``--heartbeat``).

        A client that answered none of the last ``HEARTBEAT_MISSES`` pings
        (no byte from it for that many intervals) is closed with 1011, as the
        ``websockets`` library does for a keepalive timeout.
        """
        settings = self.settings
        idle_limit, beat = settings.session_timeout, settings.heartbeat
        step = min(value for value in (idle_limit, beat, 1.0) if value > 0) / 4
        next_ping = time.monotonic() + beat
        while not self._stopping.wait(step):
            now = time.monotonic()
            with self._sessions_lock:
                handlers = list(self._sessions)
            ping_now = beat > 0 and now >= next_ping
            if ping_now:
                next_ping = now + beat
            for handler in handlers:
                relay = handler.relay
                if relay is None or relay.closing:
                    continue
                if idle_limit and now - relay.last_activity >= idle_limit:
                    relay.close_in_background(1000, "idle timeout (%g s)" % idle_limit)
                elif beat and now - relay.last_client_activity >= beat * HEARTBEAT_MISSES:
                    relay.close_in_background(1011, "no answer to %d heartbeat pings" % HEARTBEAT_MISSES)
                elif ping_now:
                    relay.try_ping()

    @property
    def open_sessions(self) -> int:
        """How many sessions are relaying right now."""
        return len(self._sessions)

    def close_sessions(self, code: int = 1001, reason: str = "",
                       grace: float = SHUTDOWN_GRACE) -> None:
        """Close every open session with ``code`` and wait up to ``grace`` seconds."""
        with self._sessions_lock:
            handlers = list(self._sessions)
        for handler in handlers:
            handler.close_session(code, reason)
        deadline = time.monotonic() + grace
        while self._sessions and time.monotonic() < deadline:
            time.sleep(0.01)


def _discard(sock: socket.socket, count: int) -> None:
    """Read and drop exactly ``count`` bytes (already known to be waiting)."""
    while count > 0:
        data = sock.recv(count)
        if not data:
            raise ConnectionError("connection closed inside the PROXY protocol header")
        count -= len(data)


def build_server_ssl_context(settings: Settings) -> Optional[ssl.SSLContext]:
    """The server-side TLS context from ``--cert``/``--key``/..., or None without a cert.

    Raises :class:`ConfigError` naming the option for a bad path or value.
    """
    if not settings.cert:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.minimum_version = _TLS_VERSIONS[settings.ssl_version]
    except KeyError:
        raise ConfigError("ssl-version: expected one of %s, got %r"
                          % (", ".join(sorted(_TLS_VERSIONS)), settings.ssl_version)) from None
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    try:
        context.load_cert_chain(settings.cert, settings.key or None)
    except FileNotFoundError:
        missing = settings.cert if not os.path.exists(settings.cert) else settings.key
        raise ConfigError("%s: no such file: %s"
                          % ("cert" if missing == settings.cert else "key", missing)) from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError("cert/key: cannot load the certificate or key: %s" % exc) from None
    if settings.ssl_ciphers:
        try:
            context.set_ciphers(settings.ssl_ciphers)
        except ssl.SSLError:
            raise ConfigError("ssl-ciphers: no usable cipher in %r" % settings.ssl_ciphers) from None
    if settings.verify_client:
        if not settings.cafile:
            raise ConfigError("verify-client: needs --cafile")
        try:
            context.load_verify_locations(settings.cafile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("cafile: cannot load %s: %s" % (settings.cafile, exc)) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class UnixProxyServer(ProxyServer):
    """A :class:`ProxyServer` listening on a Unix socket (``--unix-listen``).

    ``server_address`` is the socket's path; it is created with
    ``settings.unix_listen_mode`` and removed by :meth:`server_close`.
    """

    address_family = socket.AF_UNIX

    def server_bind(self) -> None:
        path = self.server_address
        if os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)  # a stale socket from an earlier run
        old_mask = os.umask(0o777 & ~self.settings.unix_listen_mode)
        try:
            self.socket.bind(path)
        finally:
            os.umask(old_mask)
        os.chmod(path, self.settings.unix_listen_mode)
        self.server_address = self.socket.getsockname()

    def server_close(self) -> None:
        super().server_close()
        try:
            os.unlink(self.server_address)
        except (OSError, TypeError):
            pass
