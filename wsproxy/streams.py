"""Byte streams the relay reads and writes: a plain socket, or TLS over one.

Both pumps of a session use the same client stream at once (one reads, one
writes), so each stream must be safe for one reader and one writer in
parallel.  A plain socket is.  An ``ssl.SSLSocket`` is not: OpenSSL forbids
two threads in one TLS connection, and a TLS 1.3 KeyUpdate makes OpenSSL
write from inside a read.  :class:`TLSStream` therefore drives TLS through
``ssl.MemoryBIO`` and an ``SSLObject`` touched only under a lock, while the
raw socket reads and writes happen outside it, so neither direction waits
for the other's network I/O.

Writes have a deadline that progress extends (``write_timeout``): a peer
that has accepted no byte for that long is gone, and the stream ends both
ways so that neither pump stays pinned on it.  :meth:`SocketStream.send_nowait`
never waits at all, for threads that serve many sessions (the heartbeat).
"""

import collections
import io
import select
import socket
import ssl
import struct
import threading
import time
from typing import Deque, List, Optional, Sequence

#: sendmsg accepts at most IOV_MAX (1024 on Linux) buffers at once.
_MAX_IOV = 512
#: Below this total size, joining buffers is cheaper than a scatter send.
_JOIN_BELOW = 16 * 1024
_RAW_READ = 256 * 1024
#: A fatal alert is one small record, sent without waiting: at most this
#: long for the other direction's send to finish, then no blocking send.
_ALERT_SEND_TIMEOUT = 1.0
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_POLLOUT = getattr(select, "POLLOUT", 0)
try:  # Linux: SIOCOUTQ (== TIOCOUTQ), the bytes the peer has not yet taken
    import fcntl
    import termios
    _OUTQ: Optional[int] = termios.TIOCOUTQ
except (ImportError, AttributeError):
    _OUTQ = None


def _unsent(sock: socket.socket) -> Optional[int]:
    """Bytes in ``sock``'s send queue not yet taken by the peer, or None where unknown."""
    if _OUTQ is None:
        return None
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return None


class WriteTimeout(socket.timeout):
    """The peer accepted no byte for ``write_timeout`` seconds; the stream was aborted."""


def send_buffers(sock: socket.socket, buffers: Sequence) -> None:
    """Send every byte of ``buffers`` in order, without joining large ones.

    Small writes are joined into one ``sendall``; large ones go out with
    ``sendmsg`` (scatter/gather) and partial sends are resumed with
    ``memoryview`` slices, so a 64 KiB payload is never copied here.
    """
    if len(buffers) == 1:
        sock.sendall(buffers[0])
        return
    total = 0
    for buf in buffers:
        total += len(buf)
    if total < _JOIN_BELOW or len(buffers) > _MAX_IOV:
        sock.sendall(b"".join(buffers))
        return
    pending = list(buffers)
    while pending:
        sent = sock.sendmsg(pending)
        while pending and sent >= len(pending[0]):
            sent -= len(pending[0])
            pending.pop(0)
        if sent:
            pending[0] = memoryview(pending[0])[sent:]


def send_before(sock: socket.socket, buffers: Sequence, timeout: float) -> None:
    """Like :func:`send_buffers`, but fail when no byte leaves for ``timeout`` seconds.

    The socket stays in blocking mode (its reader may be blocked in it);
    each send is made non-blocking with ``MSG_DONTWAIT`` and, when the
    socket buffer is full, ``poll`` waits for room.  Every byte the peer
    takes starts the ``timeout`` again, so a slow reader is never cut, only
    one that takes nothing.  The kernel signals room only once a good part
    of the buffer is free, which a slow reader may take long to free: so
    the send queue is also checked every quarter of the timeout (Linux
    ``SIOCOUTQ``), and any byte gone from it counts as progress.  Raises
    :class:`WriteTimeout` (the caller aborts).
    """
    total = 0
    for buf in buffers:
        total += len(buf)
    if len(buffers) > 1 and total < _JOIN_BELOW:
        buffers = [b"".join(buffers)]
    sent = 0
    if len(buffers) == 1:
        # Most writes leave whole at the first try: then no clock, no bookkeeping.
        try:
            sent = sock.send(buffers[0], _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent == total:
            return
    if len(buffers) == 1 or len(buffers) > _MAX_IOV:
        pending = [memoryview(buffers[0] if len(buffers) == 1 else b"".join(buffers))[sent:]]
    else:
        pending = [memoryview(buf) for buf in buffers]
    first = 0
    poller = None
    deadline = time.monotonic() + timeout
    queued: Optional[int] = None
    while first < len(pending):
        try:
            if first == len(pending) - 1:
                sent = sock.send(pending[first], _DONTWAIT)
            else:
                sent = sock.sendmsg(pending[first:], (), _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent:
            deadline = time.monotonic() + timeout
            queued = None
            while first < len(pending) and sent >= len(pending[first]):
                sent -= len(pending[first])
                first += 1
            if sent:
                pending[first] = pending[first][sent:]
            continue
        if poller is None:
            poller = select.poll()
            poller.register(sock, _POLLOUT)
        if queued is None:
            queued = _unsent(sock)
        left = deadline - time.monotonic()
        if left > 0 and poller.poll(min(left, timeout / 4) * 1000):
            continue
        now_queued = _unsent(sock)
        if now_queued is not None and queued is not None and now_queued < queued:
            deadline = time.monotonic() + timeout  # the peer took bytes: room will come
        queued = now_queued
        if time.monotonic() >= deadline:
            raise WriteTimeout("the peer accepted no byte for %g s (--write-timeout)" % timeout)


class SocketStream:
    """A connected socket (TCP or Unix) with the relay's small interface.

    ``write_timeout`` (seconds, None = never) bounds how long a write may
    wait without any byte leaving; it applies while the socket is in
    blocking mode (the session), the handshake's own deadlines otherwise.
    """

    secure = False

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.write_timeout: Optional[float] = None
        #: What :meth:`send_nowait` could not send yet; the next write sends it first.
        self._backlog: List[memoryview] = []
        #: The write timeout that aborted the stream: reads raise it too, so the
        #: other direction reports why the stream ended, not a mere EOF.
        self._broken: Optional[WriteTimeout] = None

    def fileno(self) -> int:
        return self.sock.fileno()

    def settimeout(self, timeout: Optional[float]) -> None:
        self.sock.settimeout(timeout)

    def recv_into(self, buffer) -> int:
        """Read into ``buffer``; 0 means the peer closed its side."""
        count = self.sock.recv_into(buffer)
        if not count and self._broken is not None:
            raise self._broken
        return count

    def sendall(self, buffers: Sequence) -> None:
        """Write every byte of the buffers, in order.

        Raises :class:`WriteTimeout`, after aborting the stream, when the
        peer accepts no byte for ``write_timeout`` seconds.
        """
        if self._backlog:
            buffers = self._backlog + list(buffers)
            self._backlog = []
        self._write(buffers)

    def _write(self, buffers: Sequence) -> None:
        timeout = self.write_timeout
        if timeout and _DONTWAIT and _POLLOUT and self.sock.gettimeout() is None:
            try:
                send_before(self.sock, buffers, timeout)
            except WriteTimeout as exc:
                self._broken = exc
                self.abort()
                raise
        else:
            send_buffers(self.sock, buffers)

    def break_with(self, exc: WriteTimeout) -> None:
        """A write made outside :meth:`sendall` (wsproxy.splice) timed out: abort, as it would."""
        self._broken = exc
        self.abort()

    @property
    def backlogged(self) -> bool:
        """True while bytes given to :meth:`send_nowait` still wait to be sent."""
        return bool(self._backlog)

    def send_nowait(self, buffers: Sequence) -> bool:
        """Send what the socket takes at once, never waiting; True if everything left.

        For small control frames from a thread that serves many sessions.
        The rest is kept and goes out first with the next write (so the
        order of bytes never changes); a caller sends nothing new while
        :attr:`backlogged`, which bounds what is kept.  Writers take turns
        (the relay's client lock), as for :meth:`sendall`.
        """
        data = b"".join(self._backlog + list(buffers))
        self._backlog = []
        if not data:
            return True
        sent = 0
        if _DONTWAIT:
            try:
                sent = self.sock.send(data, _DONTWAIT)
            except (BlockingIOError, InterruptedError):
                sent = 0
        if sent < len(data):
            self._backlog = [memoryview(data)[sent:]]
        return not self._backlog

    def shutdown_write(self) -> None:
        """Send EOF to the peer (everything written so far is still delivered)."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def abort(self) -> None:
        """Wake any thread blocked reading or writing this stream; both ways end."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class TLSStream(SocketStream):
    """TLS over a socket via ``MemoryBIO``: one reader and one writer may run at once.

    The ``SSLObject`` and its two BIOs are touched only under ``_tls_lock``,
    never held during network I/O.  Ciphertext leaves the outgoing BIO under
    that lock into ``_ciphertext``, a queue in the order OpenSSL produced
    it, and is sent from there by whichever thread holds ``_send_lock``.
    A writer waits for that lock (it must not outrun the network); a reader
    that has something to send (a TLS 1.3 KeyUpdate answer, an alert) never
    does: if the writer is sending, the writer sends the reader's records
    too, so reading goes on while the writer is blocked on a slow peer.
    """

    secure = True

    def __init__(self, sock: socket.socket, context: ssl.SSLContext,
                 server_side: bool = True, server_hostname: Optional[str] = None,
                 received: bytes = b"") -> None:
        """``received``: bytes of the TLS stream already read from ``sock`` (the sniff's)."""
        super().__init__(sock)
        self._incoming = ssl.MemoryBIO()
        if received:
            self._incoming.write(received)
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing,
                                     server_side=server_side, server_hostname=server_hostname)
        self._tls_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._ciphertext = collections.deque()  # type: Deque[bytes]
        self._eof = False
        # shutdown_write() was called while received data waited to be read.
        self._shutdown_wanted = False

    @property
    def tls_object(self) -> ssl.SSLObject:
        """The ``SSLObject`` (for ``getpeercert``, ``version``, ``cipher``)."""
        return self._tls

    def do_handshake(self, timeout: Optional[float]) -> None:
        """Run the TLS handshake within ``timeout`` seconds overall.

        Raises ``ssl.SSLError`` for a failed handshake (after sending the
        alert OpenSSL chose, RFC 8446 §6.2, so the peer learns why),
        ``socket.timeout`` when the deadline passes, ``ConnectionError``
        when the peer leaves.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            failure = None  # type: Optional[ssl.SSLError]
            with self._tls_lock:
                try:
                    self._tls.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    done = False
                except ssl.SSLError as exc:
                    failure = exc
                self._take_ciphertext_locked()
            if failure is not None:
                self._send_alert()
                raise failure
            self._send_queued(wait=True)
            if done:
                return
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise socket.timeout("TLS handshake timed out")
                self.sock.settimeout(left)
            data = self.sock.recv(_RAW_READ)
            if not data:
                raise ConnectionError("peer closed the connection during the TLS handshake")
            with self._tls_lock:
                self._incoming.write(data)

    # -- sending ciphertext, in order ---------------------------------------------------

    def _take_ciphertext_locked(self) -> None:
        """Under ``_tls_lock``: queue what OpenSSL wrote, keeping its order."""
        if self._outgoing.pending:
            self._ciphertext.append(self._outgoing.read())

    def _send_queued(self, wait: bool) -> None:
        """Send the queued ciphertext in order.

        ``wait`` False: when another thread holds the send lock, return at
        once; that thread checks the queue again after releasing the lock,
        so nothing queued is left behind.
        """
        queue = self._ciphertext
        while queue:
            if not self._send_lock.acquire(blocking=wait):
                return
            try:
                while queue:
                    self._write([queue.popleft()])
            finally:
                self._send_lock.release()

    def _send_queued_nowait(self) -> None:
        """Send the queued ciphertext the socket takes at once; keep the rest queued, in order."""
        if not self._send_lock.acquire(blocking=False):
            return  # the sender sends it (see _send_queued)
        queue = self._ciphertext
        try:
            while queue:
                chunk = queue.popleft()
                try:
                    sent = self.sock.send(chunk, _DONTWAIT) if _DONTWAIT else 0
                except (BlockingIOError, InterruptedError):
                    sent = 0
                if sent < len(chunk):
                    queue.appendleft(memoryview(chunk)[sent:])
                    return
        finally:
            self._send_lock.release()

    def _send_alert(self) -> None:
        """After a fatal TLS error: send the queued alert if it goes at once; never block."""
        if not self._send_lock.acquire(timeout=_ALERT_SEND_TIMEOUT):
            return
        try:
            while self._ciphertext:
                self.sock.send(self._ciphertext.popleft(), _DONTWAIT)
        except OSError:
            pass
        finally:
            self._send_lock.release()

    # -- the stream interface ---------------------------------------------------------

    def recv_into(self, buffer) -> int:
        size = len(buffer)
        while True:
            failure = None  # type: Optional[ssl.SSLError]
            with self._tls_lock:
                try:
                    count = self._tls.read(size, buffer)
                    if 0 < count < size:
                        count += self._read_more_locked(buffer, count, size)
                except ssl.SSLWantReadError:
                    count = -1
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    count = 0
                except ssl.SSLError as exc:
                    count = 0
                    if not self._eof:
                        failure = exc
                # Everything at hand is read: a close_notify put off by
                # shutdown_write() can go now without losing any of it.
                notified = count < 0 and self._close_notify_if_idle_locked()
                self._take_ciphertext_locked()
            if notified:
                self._finish_shutdown()
            if failure is not None:
                self._send_alert()
                raise failure
            # A read may have produced records to send (a KeyUpdate answer).
            self._send_queued(wait=False)
            if count > 0:
                return count
            if count == 0 or self._eof:
                if self._broken is not None:
                    raise self._broken
                return 0
            data = self.sock.recv(_RAW_READ)
            with self._tls_lock:
                if data:
                    self._incoming.write(data)
                else:
                    self._eof = True
                    self._incoming.write_eof()

    def _read_more_locked(self, buffer, count: int, size: int) -> int:
        """Under ``_tls_lock``: add the records already received after the first.

        ``SSLObject.read`` returns one TLS record (16 KiB at most) per call;
        taking every decrypted byte already at hand in one receive spares
        the pump three quarters of its trips for a 64 KiB frame.
        """
        view = memoryview(buffer)
        added = 0
        while count + added < size:
            try:
                more = self._tls.read(size - count - added, view[count + added:])
            except ssl.SSLError:
                break  # want-read, EOF or error: the next call sees it
            if not more:
                break
            added += more
        return added

    def sendall(self, buffers: Sequence) -> None:
        data = buffers[0] if len(buffers) == 1 else b"".join(buffers)
        with self._tls_lock:
            self._tls.write(data)
            self._take_ciphertext_locked()
        self._send_queued(wait=True)

    @property
    def backlogged(self) -> bool:
        return bool(self._ciphertext)

    def send_nowait(self, buffers: Sequence) -> bool:
        """As :meth:`SocketStream.send_nowait`: the records wait in the ciphertext queue."""
        data = b"".join(buffers)
        if data:
            with self._tls_lock:
                self._tls.write(data)
                self._take_ciphertext_locked()
        self._send_queued_nowait()
        return not self._ciphertext

    def shutdown_write(self) -> None:
        """Send TLS close_notify, then TCP EOF; reading goes on until the peer's EOF.

        ``SSLObject.unwrap`` sends close_notify and then also reads, for the
        peer's: with application data already received and not yet read,
        OpenSSL consumes it or fails the connection, and whatever the peer
        was still sending is lost.  So close_notify is sent only when
        nothing received is waiting to be read; otherwise the reader sends it
        as soon as it has taken everything at hand (:meth:`recv_into`).
        """
        with self._tls_lock:
            self._shutdown_wanted = True
            sent = self._close_notify_if_idle_locked()
        if sent:
            self._finish_shutdown()

    def _close_notify_if_idle_locked(self) -> bool:
        """Under ``_tls_lock``: send close_notify if asked and nothing is waiting to be read."""
        if not self._shutdown_wanted or self._incoming.pending or self._tls.pending():
            return False
        self._shutdown_wanted = False
        try:
            self._tls.unwrap()
        except ssl.SSLError:
            pass  # want-read: the peer's close_notify has not come (yet)
        self._take_ciphertext_locked()
        return True

    def _finish_shutdown(self) -> None:
        """Send the queued close_notify, then the TCP EOF."""
        try:
            self._send_queued(wait=True)
        except (OSError, ValueError):
            pass
        super().shutdown_write()


class StreamIO(io.RawIOBase):
    """A raw file over a stream, so a handler's ``rfile``/``wfile`` work over TLS too."""

    def __init__(self, stream: SocketStream) -> None:
        super().__init__()
        self._stream = stream

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._stream.recv_into(buffer)

    def write(self, data) -> int:
        self._stream.sendall([data])
        return len(data)
