"""The two pumps of a session and its close logic.

The handler's own thread pumps client → target (:meth:`Relay.run`); one
extra thread pumps target → client.  Every write to the client goes through
``_client_lock`` together with the protocol's check that no close was sent,
so no data frame ever follows a close frame (RFC 6455 §5.5.1).

Closing without loss:
- the target closes: everything it sent is framed and sent, then close 1000;
- the client sends close: everything it sent before reaches the target, then
  the target's write side is shut down and the socket closed.  The client's
  TCP connection ends as soon as the close echo is written (RFC 6455
  §5.5.1), while the target side finishes on its own.

Bounded memory: the upstream pump hands inflated data to the target in
bounded steps (the protocol's ``input_pending``), and does not read on from
a client while control replies to it wait behind a writer that cannot write
to it.
"""

import logging
import socket
import threading
import time
from typing import Callable, Optional

from . import splice as _splice
from .protocol.frames import CloseCode
from .streams import SocketStream

logger = logging.getLogger("wsproxy")

#: Receive buffers start small (idle sessions cost little) and grow when full.
_FIRST_BUFFER = 16 * 1024
_MAX_CLIENT_BUFFER = 256 * 1024
#: RFC-free choice: each target read of up to 64 KiB becomes one frame.
_MAX_TARGET_BUFFER = 64 * 1024
#: How long to wait for the client's answer to our close frame.
CLOSE_TIMEOUT = 5.0

DataHook = Callable[[memoryview], object]


class Relay:
    """Moves one session's bytes both ways until both directions have ended.

    ``connection`` is the sans-I/O protocol object (RFC 6455 or hixie);
    ``on_client_data`` / ``on_target_data``, when given, see (and may
    replace) each chunk of payload on its way; they are not called at all
    when ``None``, so an unused hook costs nothing.

    After :meth:`run` returns: ``bytes_from_client`` / ``bytes_to_client``
    count payload bytes, ``close_code`` is the code of the close frame sent
    or received (1006 when the TCP connection just ended), ``close_reason``
    says why in words.
    """

    def __init__(self, client: SocketStream, target: SocketStream, connection,
                 on_client_data: Optional[DataHook] = None,
                 on_target_data: Optional[DataHook] = None,
                 log_prefix: str = "") -> None:
        self.client = client
        self.target = target
        self.connection = connection
        self.on_client_data = on_client_data
        self.on_target_data = on_target_data
        self.log_prefix = log_prefix
        self.bytes_from_client = 0
        self.bytes_to_client = 0
        self.close_code: int = CloseCode.ABNORMAL
        self.close_reason = ""
        self.last_activity = self.last_client_activity = time.monotonic()
        self.closing = False
        self._finished = threading.Event()
        self._client_lock = threading.Lock()
        self._upstream_done = threading.Event()
        self._downstream: Optional[threading.Thread] = None
        self._watchdog: Optional[threading.Timer] = None

    # -- the session --------------------------------------------------------------

    def run(self, initial_data: bytes = b"") -> None:
        """Pump both ways; return when both pumps have finished.

        ``initial_data`` is client bytes already read past the handshake.
        """
        self._downstream = threading.Thread(target=self._downstream_pump(), daemon=True,
                                            name="wsproxy-downstream")
        self._downstream.start()
        try:
            self._pump_upstream(initial_data)
        finally:
            deadline = time.monotonic() + CLOSE_TIMEOUT
            self._upstream_done.set()
            self._finish_target()
            connection = self.connection
            if connection.close_received is not None and connection.failure is None:
                self._end_client(deadline)
            # A client that stopped reading can hold the downstream pump in a
            # write forever; after the grace time, abort it.
            self._downstream.join(max(0.0, deadline - time.monotonic()))
            if self._downstream.is_alive():
                self.client.abort()
                self._stop_target_reads()
                self._downstream.join()
            # A close echo queued while the downstream pump held the client
            # lock (it drops its data after a close) must still go out.
            self._flush()
            if self.connection.failure is not None:
                self._linger()
            self._finished.set()
            if self._watchdog is not None:
                self._watchdog.cancel()

    def close(self, code: int = CloseCode.GOING_AWAY, reason: str = "") -> None:
        """Close the session from outside (shutdown, timeouts): thread-safe, never waits.

        Queues a close frame (data not yet framed is dropped) and shuts the
        target: the downstream pump wakes and sends the close from the
        session's own thread, so a caller serving many sessions (shutdown,
        the housekeeper) never blocks on one client.  The client gets
        ``CLOSE_TIMEOUT`` seconds to answer; after that (or if the close
        cannot even be written in that time) both connections are aborted.
        """
        self.closing = True
        self._note_end(code, reason)
        if self._finished.is_set():
            return
        if self._watchdog is None:
            watchdog = threading.Timer(CLOSE_TIMEOUT, self._abort_if_running)
            watchdog.daemon = True
            self._watchdog = watchdog
            watchdog.start()
        self.connection.send_close(code, reason)
        self.target.abort()
        if self._finished.is_set():
            self._watchdog.cancel()

    def _abort_if_running(self) -> None:
        if not self._finished.is_set():
            self.client.abort()
            self.target.abort()

    def try_ping(self, payload: bytes = b"") -> bool:
        """Ping the client (heartbeat) without ever waiting; thread-safe.

        Skipped (False) while another thread writes to the client, or while
        the previous ping still waits in a full socket buffer: a client busy
        receiving data is alive, and one that reads nothing gets no ping now
        (the missed-heartbeat close still comes).  What the socket does not
        take at once goes out first with the next write.
        """
        if not self._client_lock.acquire(blocking=False):
            return False
        try:
            client = self.client
            if client.backlogged:
                client.send_nowait([])
                return False
            self.connection.send_ping(payload)
            replies = self.connection.data_to_send()
            client.send_nowait(replies)
        except OSError:
            return False
        finally:
            self._client_lock.release()
        return True

    # -- client → target ----------------------------------------------------------

    def _pump_upstream(self, initial_data: bytes = b"") -> None:
        buffer = bytearray(_FIRST_BUFFER)
        view = memoryview(buffer)
        if initial_data and not self._from_client(memoryview(initial_data)):
            return
        client = self.client
        while True:
            try:
                count = client.recv_into(buffer)
            except OSError as exc:
                self._note_end(CloseCode.ABNORMAL, "client connection error: %s" % _describe(exc))
                return
            if not count:
                self._note_end(CloseCode.ABNORMAL, "client closed the connection without a close frame")
                return
            if not self._from_client(view[:count]):
                return
            if count == len(buffer) and len(buffer) < _MAX_CLIENT_BUFFER:
                buffer = bytearray(len(buffer) * 4)
                view = memoryview(buffer)

    def _from_client(self, data: memoryview) -> bool:
        """Handle one receive from the client; False once the session must end."""
        self.last_activity = self.last_client_activity = time.monotonic()
        connection = self.connection
        payload = connection.receive_data(data)
        while True:
            if payload and not self._to_target(payload):
                return False
            if not connection.input_pending:
                break
            # Inflated data goes to the target in bounded steps: the next
            # step is decoded only once the previous one was written.
            payload = connection.receive_more()
        self._flush()
        if connection.failure is not None:
            failure = connection.failure
            self._note_end(failure.code, "protocol error from client: %s" % failure.reason)
            return False
        if connection.close_received is not None:
            code, reason = connection.close_received
            self._note_end(code, "client closed" + (": " + reason if reason else ""))
            return False
        if connection.has_data_to_send:
            # A pong is waiting behind the downstream pump's write to this
            # client.  The reply queue is bounded (a few pongs), but a client
            # that cannot be written to must not be read from either: wait
            # for the write, so TCP flow control holds the client back.
            with self._client_lock:
                self._flush_locked()
        return True

    def _to_target(self, payload: list) -> bool:
        """Write one step of client payload to the target; False if that failed."""
        for chunk in payload:
            self.bytes_from_client += len(chunk)
        if self.on_client_data is not None:
            chunk = payload[0] if len(payload) == 1 else b"".join(payload)
            payload = [self.on_client_data(memoryview(chunk))]
        try:
            # Many frames from one receive leave in one system call.
            self.target.sendall(payload)
        except OSError as exc:
            self._note_end(CloseCode.INTERNAL_ERROR, "target write failed: %s" % _describe(exc))
            self._send_close(CloseCode.INTERNAL_ERROR, "target connection lost")
            return False
        return True

    def _end_client(self, deadline: float) -> None:
        """After the close handshake: send the close echo, then end the client's TCP connection.

        RFC 6455 §5.5.1: once the server has both sent and received a
        close frame it "MUST close the underlying TCP connection
        immediately" (§7.1.1: the server closes first).  The target side
        finishes on its own: the downstream pump reads it to its EOF and
        drops what it sends.  A writer stuck on a client that does not
        read gets until ``deadline``; then the client is aborted.
        """
        lock = self._client_lock
        if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            self.client.abort()
            return
        try:
            self._flush_locked()
            self.client.shutdown_write()
        finally:
            lock.release()

    def _linger(self) -> None:
        """After failing the connection: FIN after our close frame, then drain.

        The client may still be sending (the rest of a bad message, its
        close reply).  Closing with those bytes unread would make the kernel
        answer with a reset, which can destroy our close frame before the
        client reads it (RFC 6455 §7.1.1 has the server wait for the
        client).  So shut our write side, then read and discard until the
        client's EOF, for at most ``CLOSE_TIMEOUT``.
        """
        self._flush()
        client = self.client
        client.shutdown_write()
        deadline = time.monotonic() + CLOSE_TIMEOUT
        scratch = bytearray(4096)
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                client.settimeout(left)
                if not client.recv_into(scratch):
                    break
        except (OSError, ValueError):
            pass

    def _finish_target(self) -> None:
        """After upstream ends: deliver what was written, then end the target."""
        # The downstream pump reads on until the target's EOF (at most
        # CLOSE_TIMEOUT): closing a socket with unread bytes in it resets the
        # connection, and the reset destroys bytes the target has not read.
        self.target.shutdown_write()

    def _stop_target_reads(self) -> None:
        """Wake the downstream pump if it is blocked reading the target."""
        try:
            self.target.sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    # -- target → client ----------------------------------------------------------

    #: False: never splice (``Settings.splice``); the handler sets it per session.
    splice = True

    def _downstream_pump(self) -> Callable[[], None]:
        """Zero-copy (wsproxy.splice) when this session qualifies, else the copy loop."""
        return (_splice.pump_for(self) if self.splice else None) or self._pump_downstream

    def _pump_downstream(self) -> None:
        connection = self.connection
        client, target = self.client, self.target
        hook = self.on_target_data
        lock = self._client_lock
        buffer = bytearray(_FIRST_BUFFER)
        view = memoryview(buffer)
        code, reason = CloseCode.NORMAL, "target closed the connection"
        draining = False
        try:
            while True:
                try:
                    count = target.recv_into(buffer)
                except OSError as exc:
                    if self._upstream_done.is_set():
                        break
                    code, reason = CloseCode.INTERNAL_ERROR, "target connection error: %s" % _describe(exc)
                    break
                if not count:
                    break
                self.last_activity = time.monotonic()
                if draining:
                    continue
                data = view[:count]
                if hook is not None:
                    data = hook(data)
                    if not len(data):
                        continue
                with lock:
                    frames = connection.send_data(data)
                    if frames:
                        try:
                            client.sendall(frames)
                        except OSError as exc:
                            if isinstance(exc, socket.timeout):  # --write-timeout
                                self._note_end(CloseCode.ABNORMAL, "client write failed: %s"
                                               % _describe(exc))
                            frames = []
                if not frames:
                    # A close was sent or the client is gone: drop what the
                    # target still sends, but read it until its EOF.
                    draining = True
                    self._flush()
                    continue
                if connection.has_data_to_send:
                    self._flush()  # control frames queued while we were writing
                self.bytes_to_client += len(data)
                if count == len(buffer) and len(buffer) < _MAX_TARGET_BUFFER:
                    buffer = bytearray(_MAX_TARGET_BUFFER)
                    view = memoryview(buffer)
            if not self._upstream_done.is_set():
                self._send_close(code, reason)
                self._note_end(code, reason)
                # Give the client time to answer the close, then stop waiting.
                if not self._upstream_done.wait(CLOSE_TIMEOUT):
                    client.abort()
        except Exception:  # a bug must not leave the session hanging
            logger.exception("%sdownstream pump failed", self.log_prefix)
            client.abort()

    # -- helpers ---------------------------------------------------------------------

    def _send_close(self, code: int, reason: str) -> None:
        with self._client_lock:
            self.connection.send_close(code, reason)
            self._flush_locked()
        self._flush()

    def _flush(self) -> None:
        """Send queued control frames (pongs, close) without ever waiting.

        If another thread is writing to the client, return at once: every
        holder of ``_client_lock`` calls this again after releasing it, so
        nothing queued is left behind, and a reader never blocks behind a
        writer stuck on a client that stopped reading.
        """
        connection = self.connection
        while connection.has_data_to_send:
            if not self._client_lock.acquire(blocking=False):
                return
            try:
                self._flush_locked()
            finally:
                self._client_lock.release()

    def _flush_locked(self) -> None:
        replies = self.connection.data_to_send()
        if replies:
            try:
                self.client.sendall(replies)
            except OSError:
                pass

    def _note_end(self, code: int, reason: str) -> None:
        """Remember the first reason the session ended (later ones are effects)."""
        if not self.close_reason:
            self.close_code = int(code)
            self.close_reason = reason


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return str(exc) or "timed out"
    return exc.strerror or exc.__class__.__name__ if isinstance(exc, OSError) else str(exc)
