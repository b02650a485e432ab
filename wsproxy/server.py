"""The listening server: accept, PROXY header, sniff the first bytes, TLS, limits, shutdown.

:class:`ProxyServer` is a ``socketserver.ThreadingTCPServer``; each accepted
connection gets its own thread, and everything that may wait on the client
(the PROXY protocol header with ``--proxy-protocol``, the first-byte sniff,
the TLS handshake, the HTTP handshake) runs there, bounded by
``handshake_timeout``, so a silent or slow client never delays anyone
else's accept.
"""

import errno
import itertools
import logging
import os
import socket
import socketserver
import ssl
import stat
import sys
import threading
import time
from typing import Any, Callable, Optional, Set, Tuple

from .access import open_auth_plugin
from .admission import AddressCounter, PendingHandshakes
from .auth import AuthTable
from . import routing, trust
from .handler import ProxyRequestHandler
from .logs import Throttle
from .observe import Observer
from .protocol import proxy_protocol, sniff
from .protocol.errors import HandshakeError
from .session import format_address
from .settings import ConfigError, Settings
from .streams import SocketStream, TLSStream

logger = logging.getLogger("wsproxy")

_TLS_VERSIONS = {
    "tlsv1_1": ssl.TLSVersion.TLSv1_1,
    "tlsv1_2": ssl.TLSVersion.TLSv1_2,
    "tlsv1_3": ssl.TLSVersion.TLSv1_3,
}
#: How long :meth:`ProxyServer.shutdown` waits for sessions to finish closing.
SHUTDOWN_GRACE = 5.0
#: The first read of a connection (the sniff): a whole request head, as a rule.
FIRST_READ = 4096
#: Connections allowed in the handshake phase at once (see ``process_request``).
MAX_PENDING_HANDSHAKES = 2048
#: One client address's share of them, past which its stalled ones are evicted.
MAX_PENDING_PER_ADDRESS = 256
#: Seconds a pending connection may wait for its client's request before it counts as stalled.
STALL_GRACE = 2.0
#: What ``shutdown()`` waits past ``SHUTDOWN_GRACE`` for aborted sessions to finish.
_SHUTDOWN_SLACK = 1.0
#: ``accept()`` errors that mean "out of descriptors or memory": back off, do not spin.
_ACCEPT_EXHAUSTED = frozenset(getattr(errno, name) for name in
                              ("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM") if hasattr(errno, name))
#: Seconds the accept loop pauses after such an error.
ACCEPT_BACKOFF = 0.1
#: While the handshake phase is full, how long the accept loop waits for a place to free
#: before letting ``process_request`` decide (see ``verify_request``); shorter than
#: ``STALL_GRACE``, so that waiting never ages silent connections into evictable ones; after
#: a wait in vain the accept loop does not wait again for ``_IMPATIENT`` seconds.
ADMISSION_PATIENCE = STALL_GRACE / 2
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
    #: True once the listener's TCP_NODELAY is known to pass to accepted connections.
    _nodelay_inherited = False

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
        if self.settings.target_proxy_protocol not in (None, "v1", "v2"):
            raise ConfigError("target-proxy-protocol: expected v1 or v2, got %r"
                              % (self.settings.target_proxy_protocol,))
        self.token_table = routing.open_token_lookup(self.settings)
        self.auth_table = AuthTable(self.settings.auth_file) if self.settings.auth_file else None
        self.auth_plugin = open_auth_plugin(self.settings)
        if self.settings.web_auth and self.auth_table is None and self.auth_plugin is None:
            raise ConfigError("web-auth: needs --auth-file or --auth-plugin, the credentials "
                              "to check")
        self._target_context: Optional[ssl.SSLContext] = None
        self._sessions: Set[ProxyRequestHandler] = set()
        self._sessions_lock = threading.Lock()
        #: Connection threads started and not yet ended (see ``process_request``).
        self._handlers = 0
        self._handlers_done = threading.Condition(threading.Lock())
        self._sessions_started = 0  # --run-once looks at it
        self._reserved = 0
        self._pending = PendingHandshakes(MAX_PENDING_HANDSHAKES, MAX_PENDING_PER_ADDRESS,
                                          STALL_GRACE)
        self._per_address = AddressCounter(self.settings.max_connections_per_ip)
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
        # Linux gives accepted connections the listener's TCP_NODELAY: one
        # setsockopt here instead of one per connection.
        if sys.platform.startswith("linux") and self.address_family != socket.AF_UNIX:
            try:
                self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._nodelay_inherited = True
            except OSError:
                pass
        # Several processes (--workers) may wait on this socket; all wake for
        # one connection and only one gets it.  A blocking accept() would
        # leave the others stuck in it, deaf to shutdown(): socketserver
        # treats the non-blocking accept's "nothing there" as no request.
        self.socket.setblocking(False)

    def get_request(self):
        """Accept a connection; out of descriptors, log (throttled) and pause instead of spinning.

        At the open-file limit ``accept()`` fails with EMFILE while the
        connection stays queued, so the listener stays readable: without a
        pause the accept loop would spin a core.
        """
        try:
            return super().get_request()
        except OSError as exc:
            if exc.errno in _ACCEPT_EXHAUSTED:
                self.warnings.warning("accept-exhausted", "cannot accept connections: %s "
                                      "(open-file limit %s); retrying every %g s",
                                      exc.strerror or exc, _open_file_limit(), ACCEPT_BACKOFF,
                                      interval=60.0)
                time.sleep(ACCEPT_BACKOFF)
            raise

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
        bound = self._pending.limit
        if self._pending_handshakes < bound:
            return True
        now = time.monotonic()
        if now < self._impatient_until:
            return True
        last, moved = self._pending_handshakes, now
        while self._pending_handshakes >= bound and not self._accept_stopping():
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
        memory: at most ``MAX_PENDING_HANDSHAKES`` connections may be in
        their handshake, each address with a fair share (see
        :mod:`wsproxy.admission`: stalled ones are evicted for new ones);
        past the bound, with nothing stalled to evict, new ones are closed
        at once.
        """
        admitted = self._pending.admit(request, client_address, self._log_eviction)
        self.observer.pending_handshakes(len(self._pending))
        if not admitted:
            self.warnings.warning("crowded", "%d connections still handshaking; refusing new "
                                  "ones (e.g. %s)", len(self._pending),
                                  format_address(client_address), interval=1.0)
            self.shutdown_request(request)
            return
        # Not socketserver's own: it keeps every thread in a list that it
        # scans at each new connection, quadratic with thousands of
        # sessions.  The threads are counted instead, and server_close()
        # waits for the count to reach zero as socketserver's waits for its
        # list.  Thread.start() waits until the new thread runs; that paces
        # the accept loop, and is kept: threads started without waiting
        # pile up thousands at once waiting for the GIL, where CPython's
        # lock degrades into a storm of futex calls (docs/performance.md).
        thread = threading.Thread(target=self.process_request_thread,
                                  args=(request, client_address), daemon=self.daemon_threads)
        with self._handlers_done:
            self._handlers += 1
        try:
            thread.start()
        except BaseException:
            self._handler_ended()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._handler_ended()

    def _handler_ended(self) -> None:
        with self._handlers_done:
            self._handlers -= 1
            if not self._handlers:
                self._handlers_done.notify_all()

    def _log_eviction(self, key: str, why: str) -> None:
        self.warnings.warning("stalled-handshake", "%s: closed a stalled connection still "
                              "handshaking after %g s (%s)", key, STALL_GRACE, why, interval=1.0)

    @property
    def _pending_handshakes(self) -> int:
        """How many connections are in their handshake now."""
        return len(self._pending)

    def service_actions(self) -> None:
        """Called by ``serve_forever`` on each turn of its loop: the watchdog's sign of life."""
        self.loop_turned = time.monotonic()
        super().service_actions()

    def handshake_finished(self, request=None) -> None:
        """A connection left the handshake phase (its session began, or it ended)."""
        if request is not None and self._pending.finished(request):
            self.observer.pending_handshakes(len(self._pending))

    def request_received(self, request) -> None:
        """The client sent its whole request: it can no longer count as stalled."""
        self._pending.request_read(request)

    def shutdown_request(self, request) -> None:
        # Forget it before closing (a no-op when its handler already did).
        if self._pending.finished(request):
            self.observer.pending_handshakes(len(self._pending))
        super().shutdown_request(request)

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
        with self._sessions_lock:
            # Under the lock register_session takes: a connection still
            # handshaking now can never become a session after this.
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
        Returns the client stream, any bytes already consumed, the
        client's address (``client_address``, or with ``--proxy-protocol``
        the one the balancer's header names) and the address the client
        reached when that header named it (else None), or None when the
        connection is finished here.
        """
        settings = self.settings
        if deadline is None:
            deadline = time.monotonic() + settings.handshake_timeout
        peer = format_address(client_address)
        try:
            local_address = None  # the address the client reached, when a balancer names it
            if settings.proxy_protocol:
                proxied = self._read_proxy_header(sock, client_address, deadline)
                if proxied is None:
                    return None
                proxied, local_address = proxied
                if proxied != client_address:
                    peer = "%s (via %s)" % (format_address(proxied), peer)
                    client_address = proxied
                    self._pending.move(sock, proxied)
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            # One read, not a peek and then a read: the request head
            # usually arrives whole in it, so a plain handshake reads once.
            # Whatever it is, the bytes are handed on (to TLS, to the Flash
            # check, to the request parser), never lost.
            consumed = sock.recv(FIRST_READ)
            if not consumed:
                return None
            kind = sniff.classify(consumed)
            if kind is sniff.ConnectionKind.TLS:
                started = self._start_tls(sock, peer, deadline, consumed)
                return started + (client_address, local_address) if started else None
            if consumed[:1] == b"<":
                consumed, kind = self._read_policy_request(sock, deadline, consumed)
                if kind is sniff.ConnectionKind.FLASH_POLICY:
                    self._answer_flash(sock, peer)
                    return None
            if settings.ssl_only or settings.verify_client:
                logger.info("%s: plain connection refused (%s)", peer,
                            "--ssl-only" if settings.ssl_only else "--verify-client needs TLS")
                return None
            if not self._nodelay_inherited:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass
            return SocketStream(sock), consumed, client_address, local_address
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
        With the client's address comes the one it reached (the header's
        destination; None when the header named no client).
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
        if real is None:
            return client_address, None
        return real, reader.header.destination

    def _read_policy_request(self, sock: socket.socket, deadline: float, consumed: bytes = b""):
        """Consume bytes while they (``consumed`` so far) may still be a Flash policy request."""
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

    def _start_tls(self, sock: socket.socket, peer: str, deadline: float, received: bytes = b""):
        if self.ssl_context is None:
            self.warnings.warning("tls-without-cert", "%s: TLS hello but no certificate "
                                  "configured (--cert); closing", peer)
            return None
        stream = TLSStream(sock, self.ssl_context, server_side=True, received=received)
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

    def check_capacity(self, address=None):
        """Reserve a place for a new session, or refuse it with 503.

        With ``max_connections``, at most that many sessions (counting those
        still connecting to their target) exist at once; with
        ``max_connections_per_ip``, at most that many from ``address`` (the
        client's, after the PROXY protocol or a trusted forwarding header).
        Once :meth:`shutdown` began, none.  Returns what the handler gives
        back with :meth:`release_capacity` when it is done.
        """
        limit = self.settings.max_connections
        with self._sessions_lock:
            if self._stopping.is_set():
                raise HandshakeError(503, "server shutting down")
            if limit and self._reserved >= limit:
                raise HandshakeError(503, "too many sessions (--max-connections %d)" % limit)
            key = None
            if address is not None:
                key = self._per_address.reserve(address)
                if key is None:
                    self._refuse_per_address(address)
            self._reserved += 1
        return key

    def _refuse_per_address(self, address) -> None:
        limit = self.settings.max_connections_per_ip
        self.warnings.warning("per-ip", "%s: %d sessions open from this address; refusing more "
                              "with 503 (--max-connections-per-ip)", format_address(address),
                              limit, interval=1.0)
        refusal = HandshakeError(503, "too many sessions from this address "
                                      "(--max-connections-per-ip %d)" % limit)
        refusal.logged = True  # the line above, throttled, is the operator's
        raise refusal

    def release_capacity(self, key=None) -> None:
        """Give back the place taken by :meth:`check_capacity` (``key``: what it returned)."""
        with self._sessions_lock:
            self._reserved -= 1
        if key is not None:
            self._per_address.release(key)

    def register_session(self, handler: ProxyRequestHandler) -> bool:
        """A session started relaying (called by the handler); False once shutdown began."""
        with self._sessions_lock:
            if self._stopping.is_set():
                return False
            self._sessions.add(handler)
            self._sessions_started += 1
        self.observer.session_started(handler.session)
        settings = self.settings
        if (settings.session_timeout or settings.heartbeat) and self._housekeeper is None:
            self._start_housekeeper()
        return True

    def unregister_session(self, handler: ProxyRequestHandler) -> None:
        """A session ended; its :class:`SessionInfo` holds the final numbers."""
        with self._sessions_lock:
            self._sessions.discard(handler)
            self.observer.session_leaving(handler.session)
        self.observer.session_ended(handler.session)

    def handshake_refused(self, handler: ProxyRequestHandler, status: int, reason: str) -> None:
        """A request was answered with HTTP error ``status`` (``handler.session`` describes it)."""
        self.observer.handshake_refused(handler.session, reason)

    @property
    def sessions_started(self) -> int:
        """How many sessions have started relaying since the server started."""
        with self._sessions_lock:
            return self._sessions_started

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
        if self.block_on_close:  # as socketserver does: wait for every connection's thread
            with self._handlers_done:
                self._handlers_done.wait_for(lambda: not self._handlers)
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

        One thread serves every session, so nothing here may wait on one
        client: pings are sent only as far as the socket takes them at once
        (:meth:`Relay.try_ping`), closes only queue the close frame.  A client that answered none of the last ``HEARTBEAT_MISSES`` pings
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
                    relay.close(1000, "idle timeout (%g s)" % idle_limit)
                elif beat and now - relay.last_client_activity >= beat * HEARTBEAT_MISSES:
                    relay.close(1011, "no answer to %d heartbeat pings" % HEARTBEAT_MISSES)
                elif ping_now:
                    relay.try_ping()

    @property
    def open_sessions(self) -> int:
        """How many sessions are relaying right now."""
        return len(self._sessions)

    def close_sessions(self, code: int = 1001, reason: str = "",
                       grace: Optional[float] = None) -> None:
        """Close every open session with ``code``, all at once; wait for them to end.

        Each close only queues the close frame and never waits, and a
        session whose client does not answer within the relay's close
        timeout is aborted, so this returns within ``grace`` (default
        ``SHUTDOWN_GRACE``) seconds plus a little whatever the clients do.
        """
        if grace is None:
            grace = SHUTDOWN_GRACE
        with self._sessions_lock:
            handlers = list(self._sessions)
        for handler in handlers:
            handler.close_session(code, reason)
        deadline = time.monotonic() + grace + _SHUTDOWN_SLACK
        while self._sessions and time.monotonic() < deadline:
            time.sleep(0.01)


def _open_file_limit() -> str:
    """The soft open-file limit, as text for a log line."""
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return "unknown"
    return "unlimited" if soft == getattr(resource, "RLIM_INFINITY", -1) else str(soft)


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
        # No --key-password: an empty one, so that an encrypted key fails
        # with a message instead of OpenSSL prompting on the terminal.
        context.load_cert_chain(settings.cert, settings.key or None,
                                password=settings.key_password or "")
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
