"""The request handler: handshake, hooks, target connection, then the relay.

:class:`ProxyRequestHandler` is a ``socketserver.StreamRequestHandler``.  It
works best under :class:`wsproxy.ProxyServer` (TLS sniffing, the Flash policy
answer, the session registry and ``--max-connections``), but also mounted in
a plain ``socketserver.ThreadingTCPServer`` or
``http.server.ThreadingHTTPServer``: then it relays plain ``ws://`` only and
takes its settings from the class attribute ``settings``.

Embedders override the hook methods (``check_request``, ``select_target``,
``session_started``, ``session_ended``, ``client_data``, ``target_data``);
wsproxy's own features (origin, auth, tokens, recording) sit on the same
hooks.
"""

import logging
import socket
import ssl
import time
from typing import Callable, List, Optional, Tuple, Union

from . import auth, observe, target_proxy, tokens, trust, web
from .logs import escape
from .protocol import deflate, handshake, hixie
from .protocol.connection import Connection
from .protocol.errors import HandshakeError
from .protocol.frames import CloseCode
from .protocol.handshake import Request
from .redact import redact_text
from .relay import Relay
from .session import SessionInfo, format_address
from .settings import Settings
from .streams import SocketStream, StreamIO, TLSStream
from .targets import Target

import socketserver

logger = logging.getLogger("wsproxy")

TargetChoice = Union[Target, socket.socket]
Payload = Union[bytes, bytearray, memoryview]
_READ_CHUNK = 4096

#: ``--close-unreachable``: the close reason, and how long to wait for the client's close.
UNREACHABLE_REASON = "cannot connect to the target"
UNREACHABLE_LINGER = 1.0


class ProxyRequestHandler(socketserver.StreamRequestHandler):
    """Handles one client connection from first byte to last.

    Attributes set during a request: ``settings``, ``stream`` (the client
    byte stream, TLS or plain), ``http_request`` (the parsed
    :class:`~wsproxy.protocol.handshake.Request`) and ``session``
    (:class:`SessionInfo`, once the upgrade is accepted).
    """

    #: Settings used when the server is not a :class:`ProxyServer`.
    settings: Optional[Settings] = None

    # -- socketserver's template methods ---------------------------------------------

    def setup(self) -> None:
        server_settings = getattr(self.server, "settings", None)
        self.settings = server_settings or type(self).settings or Settings()
        self.initial_data = b""
        self.http_request: Optional[Request] = None
        self.session: Optional[SessionInfo] = None
        self.relay: Optional[Relay] = None
        self.target_stream: Optional[SocketStream] = None
        self.recorder = None  # a wsproxy.record.Recorder with --record
        self.remote_address = self.client_address
        self._capacity_reserved = False
        self._capacity_key = None
        self._handshaking = True
        self.user: Optional[str] = None
        #: What the audit log records beyond the session's basics (see :meth:`_session_info`).
        self.forwarded_for: List[str] = []
        self.token: Optional[str] = None
        self.compression: Optional[str] = None
        self._protocol = self._subprotocol = self._target = None
        #: One deadline for the whole handshake: sniff, TLS and HTTP.
        self.handshake_deadline = time.monotonic() + self.settings.handshake_timeout
        prepare = getattr(self.server, "prepare_connection", None)
        if prepare is not None:
            prepared = prepare(self.request, self.client_address, self.handshake_deadline)
        else:
            prepared = (SocketStream(self.request), b"")
        self.stream = prepared[0] if prepared else None
        #: The balancer's address when a PROXY protocol header named the client.
        self.proxy_address = None
        #: The address the client reached, when the balancer's header named it.
        self.local_address = None
        if prepared:
            self.initial_data = prepared[1]
            if len(prepared) > 3:
                self.local_address = prepared[3]
            if len(prepared) > 2 and prepared[2] != self.client_address:
                # --proxy-protocol: the header named the real client; it is
                # the client for logs, access decisions and forwarded headers.
                self.proxy_address = self.client_address
                self.client_address = self.remote_address = prepared[2]
        self.connection = self.request
        self.rfile = self.wfile = None
        if self.stream is not None:
            raw = StreamIO(self.stream)
            self.rfile = raw
            self.wfile = raw
        number = getattr(self.server, "next_session_number", None)
        self.number = number() if number else id(self)
        self.log_prefix = "session %d %s: " % (self.number, format_address(self.client_address))
        if self.proxy_address is not None:
            self.log_prefix = "session %d %s (via %s): " % (self.number, format_address(
                self.client_address), format_address(self.proxy_address))

    def handle(self) -> None:
        if self.stream is None:
            return
        try:
            request, rest = self._read_head()
            received = getattr(self.server, "request_received", None)
            if received is not None:
                received(self.request)
            self.http_request = request
            self._apply_forwarded(request)
            self._dispatch(request, rest)
        except HandshakeError as exc:
            # A refusal the server already logged (throttled) is only a debug line here.
            logger.log(logging.DEBUG if getattr(exc, "logged", False) else logging.INFO,
                       "%srefused: %s", self.log_prefix, _escape(str(exc)))
            self._send_raw(handshake.error_response(exc))
            refused = getattr(self.server, "handshake_refused", None)
            if refused is not None:
                self.session = self._session_info(status=exc.status)
                refused(self, exc.status, exc.reason)
        except socket.timeout:
            logger.info("%shandshake timed out", self.log_prefix)
        except (ConnectionError, ssl.SSLError) as exc:
            logger.info("%sconnection ended during the handshake: %s", self.log_prefix, exc)
        except OSError as exc:
            logger.info("%sconnection failed: %s", self.log_prefix, exc)
        finally:
            self._leave_handshake()
            if self.target_stream is not None:
                self.target_stream.close()
            if self._capacity_reserved:
                self.server.release_capacity(self._capacity_key)

    def finish(self) -> None:
        # rfile/wfile are unbuffered views of the stream: nothing to flush.
        self._leave_handshake()  # also when setup() already finished the connection
        # RFC 8446 §6.1: end a TLS connection with close_notify.
        if self.stream is not None and self.stream.secure:
            self.stream.shutdown_write()

    # -- hooks an embedder overrides ----------------------------------------------------

    def check_request(self, request: Request) -> Optional[int]:
        """Accept or refuse an upgrade request, before any target is contacted.

        Runs once per WebSocket handshake, after the request is known to be
        a valid upgrade.  Return ``None`` to accept, or an HTTP status (e.g.
        403) to refuse; raise :class:`HandshakeError` to refuse with a reason
        and headers of your own.  The default enforces ``--origin`` (403)
        and ``--auth-file`` (401).
        """
        allowed = self.settings.origin
        if allowed:
            origin = request.headers.get("origin") or request.headers.get("sec-websocket-origin")
            if origin not in allowed:
                raise HandshakeError(403, "origin not allowed")
        self.authenticate(request)
        return None

    def check_http_request(self, request: Request) -> None:
        """Accept or refuse a plain HTTP request (not an upgrade) before it is answered.

        The one place that decides whether a page served here (a
        ``--web`` file or listing, the ``--status`` page, any page added
        later) needs credentials: with ``--web-auth`` every one does, as
        the upgrade does (``--auth-file`` and ``--auth-plugin`` alike).  Raise :class:`HandshakeError` to refuse (401
        with ``WWW-Authenticate`` by default).
        """
        if self.settings.web_auth:
            self.authenticate(request)
            # The --auth-plugin too, told the configured target as websockify tells it.
            settings = self.settings
            configured = None
            if settings.target_host is not None and settings.target_port:
                configured = Target(host=settings.target_host, port=settings.target_port)
            self.check_auth_plugin(request, configured)

    def authenticate(self, request: Request) -> None:
        """Check ``--auth-file`` credentials; sets ``self.user``, or raises HandshakeError 401.

        Does nothing without an auth table.
        """
        auth_table = getattr(self.server, "auth_table", None)
        if auth_table is not None:
            user = auth_table.check(request.headers.get("authorization"))
            if user is None:
                raise HandshakeError(401, "authentication required",
                                     {"WWW-Authenticate": auth.WWW_AUTHENTICATE})
            self.user = user

    def select_target(self, request: Request) -> TargetChoice:
        """Choose where this session's bytes go.

        Runs after :meth:`check_request` accepted the request.  Return a
        :class:`Target` (host/port or Unix path; ``tls=True`` for TLS) or an
        already connected ``socket.socket`` (wsproxy closes it at the end).
        Raise :class:`HandshakeError` (e.g. 404) to refuse.  The default is
        the token's target with ``--token-source``, else the configured one.
        """
        settings = self.settings
        token_table = getattr(self.server, "token_table", None)
        if token_table is not None:
            token = tokens.token_from_request(request.target, request.headers, settings.host_token)
            self.token = token
            try:
                target = token_table.lookup(token) if token else None
            except tokens.TokenServiceError as exc:
                self._warn("token-service", "%s%s", self.log_prefix, exc)
                raise HandshakeError(503, "token service unavailable") from None
            if target is None:
                raise HandshakeError(404, "unknown or missing token")
            if settings.ssl_target and not target.tls and target.unix is None:
                target = Target(host=target.host, port=target.port, tls=True)
            return target
        if settings.unix_target:
            return Target(unix=settings.unix_target, tls=settings.ssl_target)
        if settings.target_host is not None and settings.target_port:
            return Target(host=settings.target_host, port=settings.target_port,
                          tls=settings.ssl_target)
        raise HandshakeError(500, "no target configured")

    def check_auth_plugin(self, request: Request, choice: Optional[TargetChoice]) -> None:
        """Run the ``--auth-plugin`` (if any) on ``request``; HandshakeError when it refuses.

        Called after :meth:`select_target`, since a websockify auth plugin
        is told the target (``choice``; None where there is none yet).
        """
        auth_plugin = getattr(self.server, "auth_plugin", None)
        if auth_plugin is None:
            return
        host = port = None
        if isinstance(choice, Target) and choice.unix is None:
            host, port = choice.host, choice.port
        peer_cert = None
        if self.stream is not None and self.stream.secure:
            try:
                peer_cert = self.stream.tls_object.getpeercert()
            except (AttributeError, ValueError, ssl.SSLError):
                peer_cert = None
        auth_plugin.check(request.header_list, host, port, peer_cert)

    def session_started(self, session: SessionInfo) -> None:
        """Called once the 101 answer is sent, before any payload moves."""

    def session_ended(self, session: SessionInfo) -> None:
        """Called once both directions have ended; byte counts and close code are final."""

    def client_data(self, data: memoryview) -> Optional[Payload]:
        """Observe or transform payload from the client before it reaches the target.

        Return the bytes to forward, or ``None`` to forward ``data`` as is.
        Not called at all unless overridden, so unused it costs nothing.
        ``data`` is only valid during the call: copy what you keep.
        """
        return None

    def target_data(self, data: memoryview) -> Optional[Payload]:
        """Observe or transform bytes from the target before they are framed.

        Same contract as :meth:`client_data`.
        """
        return None

    # -- the handshake ----------------------------------------------------------------

    def _read_head(self) -> Tuple[Request, bytes]:
        """Read until the blank line ending the request head, within the deadline."""
        settings = self.settings
        deadline = self.handshake_deadline
        buffer = bytearray(self.initial_data)
        chunk = bytearray(_READ_CHUNK)
        while True:
            end = handshake.find_head_end(buffer, settings.max_header_size)
            if end >= 0:
                return handshake.parse_request(bytes(buffer[:end])), bytes(buffer[end:])
            count = self._recv_before(deadline, chunk)
            if not count:
                raise ConnectionError("client closed the connection before the request ended")
            buffer += chunk[:count]

    def _apply_forwarded(self, request: Request) -> None:
        """Behind a ``--trusted-proxy``, take the client address it forwarded.

        Only when the peer itself is trusted, and only from
        ``X-Forwarded-For``, walked from the right past trusted hops (see
        :func:`wsproxy.trust.forwarded_client`); ``Forwarded`` is ignored,
        as are both headers from any other peer.
        """
        trusted = trust.networks(self.settings.trusted_proxy)
        peer = self.client_address[0] if isinstance(self.client_address, tuple) else None
        if not trusted or not trust.is_trusted(peer, trusted):
            return
        found = trust.forwarded_client(request.headers.get("x-forwarded-for", ""), trusted)
        if found.bad is not None:
            logger.info("%signored a forwarded address that is not an IP address: %s",
                        self.log_prefix, _escape(found.bad))
            return
        self.forwarded_for = list(found.chain)  # the client, then the proxies believed
        if found.address is not None and found.address != peer:
            self.remote_address = (found.address, 0)
            self.log_prefix = "session %d %s (via %s): " % (
                self.number, _escape(found.address), format_address(self.client_address))

    def _recv_before(self, deadline: float, chunk: bytearray) -> int:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("handshake timed out")
        self.stream.settimeout(left)
        return self.stream.recv_into(chunk)

    def _dispatch(self, request: Request, rest: bytes) -> None:
        if not handshake.is_websocket_attempt(request):
            self.handle_http(request)
            return
        if hixie.is_hixie(request.headers):
            answer, rest, protocol = self._hixie_answer(request, rest)
            subprotocol = "base64"
            connection = hixie.HixieConnection(self.settings.max_message_size)
        else:
            key = handshake.check_rfc6455(request)
            subprotocol = handshake.choose_subprotocol(
                request.header_tokens("sec-websocket-protocol"))
            # RFC 7692: permessage-deflate only when asked for, never for hixie.
            agreed = None
            if self.settings.compress:
                agreed = deflate.negotiate(request.headers.get("sec-websocket-extensions"),
                                           self.settings.compress_window_bits)
            self.compression = agreed.response_header() if agreed else None
            answer = handshake.accept_response(
                key, subprotocol,
                {"Sec-WebSocket-Extensions": agreed.response_header()} if agreed else {})
            protocol = "rfc6455"
            connection = Connection(subprotocol, self.settings.max_message_size,
                                    deflate=agreed, compress_level=self.settings.compress_level)
        self._protocol, self._subprotocol = protocol, subprotocol
        refusal = self.check_request(request)
        if refusal is not None:
            status = int(refusal)
            # Only an error status refuses; anything else would look like success.
            raise HandshakeError(status if 400 <= status <= 599 else 403, "refused")
        reserve = getattr(self.server, "check_capacity", None)
        if reserve is not None:
            self._capacity_key = reserve(self.remote_address)
            self._capacity_reserved = True
        choice = self.select_target(request)
        self.check_auth_plugin(request, choice)
        self._target = choice if isinstance(choice, Target) else None
        try:
            self.target_stream, target = self._connect(choice)
        except HandshakeError as exc:
            if exc.status != 502 or not self.settings.close_unreachable or protocol != "rfc6455":
                raise
            self._close_unreachable(answer, connection, exc)
            return
        self._send_raw(answer)
        self.stream.settimeout(None)
        self._run_session(request, target, protocol, subprotocol, connection, rest)

    def _hixie_answer(self, request: Request, rest: bytes):
        """Validate a hixie-75/76 request; read key3 for 76; return the 101 answer."""
        if request.method != "GET":
            raise HandshakeError(405, "only GET can open a WebSocket", {"Allow": "GET"})
        key3 = None
        protocol = "hixie-75"
        if hixie.is_hixie76(request.headers):
            protocol = "hixie-76"
            deadline = self.handshake_deadline
            buffer = bytearray(rest)
            chunk = bytearray(8)
            while len(buffer) < 8:
                count = self._recv_before(deadline, memoryview(chunk)[:8 - len(buffer)])
                if not count:
                    raise ConnectionError("client closed the connection before key3")
                buffer += chunk[:count]
            key3, rest = bytes(buffer[:8]), bytes(buffer[8:])
        offered = request.headers.get("sec-websocket-protocol") or request.headers.get("websocket-protocol")
        answer = hixie.hixie_response(request.target, request.headers, key3, self.stream.secure,
                                      offered.strip() if offered else None)
        return answer, rest, protocol

    def handle_http(self, request: Request) -> None:
        """Answer a plain HTTP request (not an upgrade).

        ``--status PATH`` answers JSON counters there, ``--metrics PATH``
        Prometheus text (to ``--metrics-allow`` addresses only); ``--web
        DIR`` serves static files; otherwise 405 with a short text naming
        the proxy.  :meth:`check_http_request` may refuse it first
        (``--web-auth``).
        """
        settings = self.settings
        self.check_http_request(request)
        page = self._counter_page(request.path)
        if page is not None:
            if request.method not in ("GET", "HEAD"):
                raise HandshakeError(405, "%s is read-only" % page[0], {"Allow": "GET, HEAD"})
            name, render, content_type = page
            body = render()
            logger.info("%s%s page", self.log_prefix, name)
            self._send_raw(handshake.http_response(
                200, b"" if request.method == "HEAD" else body,
                {"Cache-Control": "no-store", "Content-Length": str(len(body))},
                content_type=content_type))
            return
        if settings.web:
            self._serve_file(request)
            return
        raise HandshakeError(405, "this is a WebSocket proxy (wsproxy); plain HTTP is not served here",
                             {"Allow": "GET"})

    def _counter_page(self, path: str):
        """``(name, render, content type)`` of the counter page at ``path``, or None.

        Raises 403 for ``--metrics`` asked by an address ``--metrics-allow``
        does not list.
        """
        settings = self.settings
        if settings.status and path == settings.status:
            render = getattr(self.server, "status_document", None)
            return ("status", render, "application/json") if render is not None else None
        if settings.metrics and path == settings.metrics:
            render = getattr(self.server, "metrics_document", None)
            if render is None:
                return None
            allowed = trust.networks(settings.metrics_allow)
            address = self.remote_address
            if allowed and isinstance(address, tuple) and not trust.is_trusted(address[0], allowed):
                raise HandshakeError(403, "metrics not available to this address")
            return ("metrics", render, observe.METRICS_CONTENT_TYPE)
        return None

    def _serve_file(self, request: Request) -> None:
        answer = web.respond(self.settings.web, request.method, request.target,
                             request.headers, self.settings.web_listing)
        try:
            head = ["HTTP/1.1 %d %s" % (answer.status, handshake.reason_phrase(answer.status))]
            head += ["%s: %s" % pair for pair in answer.headers]
            head += ["Server: wsproxy", "Connection: close"]
            self._send_raw(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + answer.body)
            if answer.file is not None:
                left = answer.length
                while left > 0:
                    chunk = answer.file.read(min(left, 65536))
                    if not chunk:
                        break
                    self.stream.sendall([chunk])
                    left -= len(chunk)
        finally:
            answer.close()
        # redact_text: a page URL may carry ?password= or ?token= (noVNC's do).
        logger.info("%s%s %s -> %d", self.log_prefix, request.method,
                    _escape(redact_text(request.target)), answer.status)

    # -- the target ---------------------------------------------------------------------

    def _connect(self, choice: TargetChoice) -> Tuple[SocketStream, object]:
        """Connect to the chosen target; a failure refuses the handshake with 502."""
        if isinstance(choice, socket.socket):
            _nodelay(choice)
            if self.settings.target_proxy_protocol:
                self._send_proxy_header(choice, "socket %s" % format_address(_peer(choice)))
            choice.settimeout(None)  # the relay blocks; an idle session is not an error
            return SocketStream(choice), "socket %s" % format_address(_peer(choice))
        target = choice
        timeout = self.settings.handshake_timeout
        try:
            if target.unix is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.settimeout(timeout)
                    sock.connect(target.unix)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection((target.host, target.port), timeout=timeout)
                _nodelay(sock)
        except OSError as exc:
            self._warn("target-unreachable", "%scannot reach target %s: %s", self.log_prefix,
                       target, exc.strerror or exc)
            raise HandshakeError(502, "target unreachable") from None
        if self.settings.target_proxy_protocol:
            # Before TLS, as HAProxy's send-proxy does: the target reads
            # the header in clear, then the handshake.
            self._send_proxy_header(sock, target)
        stream = SocketStream(sock)
        if target.tls:
            stream = self._wrap_target_tls(sock, target)
        sock.settimeout(None)
        return stream, target

    def _close_unreachable(self, answer: bytes, connection: Connection,
                           exc: HandshakeError) -> None:
        """``--close-unreachable``: accept, then close 1011 with a reason.

        A browser's WebSocket API never shows an HTTP status, only a close
        frame's code and reason; websockify answers an unreachable target
        this way and noVNC shows the reason to its user.
        """
        connection.send_close(CloseCode.INTERNAL_ERROR, UNREACHABLE_REASON)
        self._send_raw(answer + b"".join(connection.data_to_send()))
        logger.info("%saccepted and closed with 1011: %s", self.log_prefix, UNREACHABLE_REASON)
        refused = getattr(self.server, "handshake_refused", None)
        if refused is not None:  # counted and audited as the refusal it is
            self.session = self._session_info(status=101)
            refused(self, 101, "%s (closed with 1011)" % exc.reason)
        # Wait briefly for the client's answering close frame (or its EOF):
        # closing with its bytes unread could reset the connection before
        # the client has read ours.
        try:
            self.stream.settimeout(UNREACHABLE_LINGER)
            self.stream.recv_into(bytearray(_READ_CHUNK))
        except OSError:
            pass

    def _send_proxy_header(self, sock: socket.socket, target) -> None:
        """``--target-proxy-protocol``: name the client to the target before any payload.

        The client is :attr:`remote_address` (the balancer's PROXY header,
        a trusted forwarded address, or the peer); the destination is the
        one the balancer's header named, else the address the client
        reached.  A failure closes ``sock`` and refuses with 502.
        """
        destination = self.local_address
        if destination is None:
            try:
                destination = self.request.getsockname()
            except OSError:
                destination = None
        request = self.http_request
        tls = self.stream.tls_object if isinstance(self.stream, TLSStream) else None
        header = target_proxy.header_for(
            self.settings.target_proxy_protocol, self.remote_address, destination, self.number,
            request.headers.get("host") if request is not None else None, tls)
        try:
            sock.settimeout(self.settings.handshake_timeout)
            sock.sendall(header)
        except OSError as exc:
            sock.close()
            self._warn("target-unreachable", "%scannot send the PROXY header to target %s: %s",
                       self.log_prefix, target, exc.strerror or exc)
            raise HandshakeError(502, "target unreachable") from None
        logger.debug("%sPROXY %s header to target %s: %d bytes", self.log_prefix,
                     self.settings.target_proxy_protocol, target, len(header))

    def _wrap_target_tls(self, sock: socket.socket, target: Target) -> SocketStream:
        make_context = getattr(self.server, "target_ssl_context", None)
        context = make_context() if make_context else ssl.create_default_context()
        stream = TLSStream(sock, context, server_side=False,
                           server_hostname=target.host if context.check_hostname else None)
        try:
            stream.do_handshake(self.settings.handshake_timeout)
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            self._warn("target-tls", "%sTLS to target %s failed: %s", self.log_prefix, target, exc)
            raise HandshakeError(502, "target TLS failed") from None
        return stream

    # -- the session ----------------------------------------------------------------

    def _run_session(self, request: Request, target, protocol: str,
                     subprotocol: Optional[str], connection, rest: bytes) -> None:
        self._target = target
        session = self._session_info()
        self.session = session
        if self.settings.record:
            self.recorder = self._open_recorder(self.settings.record)
        relay = Relay(self.stream, self.target_stream, connection,
                      on_client_data=self._hook_chain("client_data", "record_from_client"),
                      on_target_data=self._hook_chain("target_data", "record_to_client"),
                      log_prefix=self.log_prefix)
        self.relay = relay
        register = getattr(self.server, "register_session", None)
        if register is not None and register(self) is False:
            # shutdown() began after the 101: this session must never run.
            logger.info("%sclosed at once: the server is shutting down", self.log_prefix)
            if self.recorder is not None:
                self.recorder.close()
            connection.send_close(1001, "server shutting down")
            self._send_raw(b"".join(connection.data_to_send()))
            return
        self._leave_handshake()
        # A peer that accepts no byte for this long is gone: end the session
        # rather than pin both pumps on it forever (--write-timeout).
        write_timeout = self.settings.write_timeout or None
        self.stream.write_timeout = write_timeout
        self.target_stream.write_timeout = write_timeout
        logger.info("%sopen to %s (%s%s)", self.log_prefix, target, protocol,
                    ", " + subprotocol if subprotocol else "")
        started = time.monotonic()
        try:
            self.session_started(session)
            relay.run(rest)
        finally:
            recorder = getattr(self, "recorder", None)
            if recorder is not None:
                recorder.close()
            # The session's numbers are written once, here; the server's
            # status, metrics and audit log all read them from ``session``.
            session.bytes_from_client = relay.bytes_from_client
            session.bytes_to_client = relay.bytes_to_client
            session.close_code = relay.close_code
            session.close_reason = relay.close_reason
            session.duration = time.monotonic() - started
            unregister = getattr(self.server, "unregister_session", None)
            if unregister is not None:
                unregister(self)
            logger.info("%sclosed: target %s, %d bytes from client, %d bytes to client, "
                        "%.3f s, close %s (%s)", self.log_prefix, target,
                        session.bytes_from_client, session.bytes_to_client, session.duration,
                        session.close_code, _escape(session.close_reason))
            self.session_ended(session)

    def _session_info(self, status: Optional[int] = None) -> SessionInfo:
        """This connection's :class:`SessionInfo`, with what is known so far."""
        request = self.http_request
        tls_version = client_cert = None
        if self.stream is not None and self.stream.secure:
            tls = self.stream.tls_object
            tls_version = tls.version()
            client_cert = _subject_text((tls.getpeercert() or {}).get("subject"))
        return SessionInfo(
            number=self.number, client_address=self.remote_address, target=self._target,
            protocol=self._protocol or "rfc6455", subprotocol=self._subprotocol,
            path=request.target if request is not None else "/",
            via=self.proxy_address, forwarded_for=list(self.forwarded_for),
            tls_version=tls_version, client_cert=client_cert, user=self.user,
            token=self.token, compression=self.compression, status=status)

    def _hook_chain(self, hook_name: str, recorder_method: str) -> Optional[Callable]:
        """The relay's data hook: the recorder and/or an overridden data hook, or None."""
        hook = getattr(self, hook_name)
        overridden = getattr(type(self), hook_name) is not getattr(ProxyRequestHandler, hook_name)
        recorder = getattr(self, "recorder", None)
        record = getattr(recorder, recorder_method, None) if recorder is not None else None
        # --traffic: one line per chunk, websockify's "}" (from the client)
        # and "{" (from the target) leading it.
        traffic = None
        if self.settings.traffic:
            traffic = "} from the client" if hook_name == "client_data" else "{ from the target"
        if not overridden and record is None and traffic is None:
            return None

        def observe(data: memoryview):
            if overridden:
                replaced = hook(data)
                if replaced is not None:
                    data = replaced
            if record is not None:
                record(data)
            if traffic is not None:
                logger.info("%s%s: %d bytes", self.log_prefix, traffic, len(data))
            return data
        return observe

    def _open_recorder(self, base_path: str):
        """The session's recorder at ``base_path.N``: never overwrites a file."""
        # Imported here: ``python3 -m wsproxy.record`` must not find the
        # module already loaded by the package import (runpy warns then).
        from .record import Recorder

        number = self.number
        problem = "no free recording number"
        for _attempt in range(1000):
            try:
                return Recorder.create(base_path, number)
            except FileExistsError:
                number += 1
            except OSError as exc:
                problem = exc.strerror or str(exc)
                break
        logger.warning("%scannot record to %s.%d: %s", self.log_prefix, base_path, number, problem)
        return None

    def close_session(self, code: int = 1001, reason: str = "") -> None:
        """Close this session from another thread (server shutdown, timeouts)."""
        if self.relay is not None:
            self.relay.close(code, reason)

    # -- helpers ---------------------------------------------------------------------

    def _leave_handshake(self) -> None:
        """Tell a :class:`ProxyServer` (once) that this connection stopped handshaking."""
        if not self._handshaking:
            return
        self._handshaking = False
        finished = getattr(self.server, "handshake_finished", None)
        if finished is not None:
            finished(self.request)

    def _warn(self, kind: str, message: str, *args) -> None:
        """Log a warning that every handshake may repeat (a target down), throttled.

        Through the server's :class:`~wsproxy.logs.Throttle` when it has
        one; each refusal still gets its own info line.
        """
        warnings = getattr(self.server, "warnings", None)
        if warnings is not None:
            warnings.warning(kind, message, *args)
        else:
            logger.warning(message, *args)

    def _send_raw(self, data: bytes) -> None:
        try:
            self.stream.settimeout(self.settings.handshake_timeout)
            self.stream.sendall([data])
        except OSError:
            pass


def _subject_text(subject) -> Optional[str]:
    """A certificate subject from ``getpeercert()`` as ``CN=name,O=org`` (None without one)."""
    if not subject:
        return None
    names = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
             "countryName": "C", "stateOrProvinceName": "ST", "localityName": "L",
             "emailAddress": "emailAddress", "domainComponent": "DC"}
    parts = ["%s=%s" % (names.get(key, key), value) for rdn in subject for key, value in rdn]
    return ",".join(parts)


def _nodelay(sock: socket.socket) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def _peer(sock: socket.socket):
    try:
        return sock.getpeername()
    except OSError:
        return None


def _escape(text: str) -> str:
    """Make client-controlled text safe for one log line."""
    return escape(text)
