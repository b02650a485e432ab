"""Byte streams the relay reads and writes: a plain socket, or TLS over one.

Both pumps of a session use the same client stream at once (one reads, one
writes), so each stream must be safe for one reader and one writer in
parallel.  A plain socket is.  An ``ssl.SSLSocket`` is not: OpenSSL forbids
two threads in one TLS connection, and a TLS 1.3 KeyUpdate makes OpenSSL
write from inside a read.  :class:`TLSStream` therefore drives TLS through
``ssl.MemoryBIO`` and an ``SSLObject`` touched only under ``_tls_lock``,
while the raw socket reads and writes happen outside that lock, so neither
direction waits for the other's network I/O.
"""

import io
import socket
import ssl
import threading
import time
from typing import Optional, Sequence

#: sendmsg accepts at most IOV_MAX (1024 on Linux) buffers at once.
_MAX_IOV = 512
#: Below this total size, joining buffers is cheaper than a scatter send.
_JOIN_BELOW = 16 * 1024
_RAW_READ = 64 * 1024
#: A fatal alert is one small record, sent without waiting: at most this
#: long for the other direction's send to finish, then no blocking send.
_ALERT_SEND_TIMEOUT = 1.0
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


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


class SocketStream:
    """A connected socket (TCP or Unix) with the relay's small interface."""

    secure = False

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def settimeout(self, timeout: Optional[float]) -> None:
        self.sock.settimeout(timeout)

    def recv_into(self, buffer) -> int:
        """Read into ``buffer``; 0 means the peer closed its side."""
        return self.sock.recv_into(buffer)

    def sendall(self, buffers: Sequence) -> None:
        """Write every byte of the buffers, in order."""
        send_buffers(self.sock, buffers)

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

    Lock order is always ``_tls_lock`` then ``_send_lock``; ciphertext is
    taken from the outgoing BIO under ``_tls_lock`` and the send lock is
    taken before that lock is released, so records reach the wire in the
    order OpenSSL produced them.  No thread holds ``_tls_lock`` during
    network I/O.
    """

    secure = True

    def __init__(self, sock: socket.socket, context: ssl.SSLContext,
                 server_side: bool = True, server_hostname: Optional[str] = None) -> None:
        super().__init__(sock)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing,
                                     server_side=server_side, server_hostname=server_hostname)
        self._tls_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._eof = False

    @property
    def tls_object(self) -> ssl.SSLObject:
        """The ``SSLObject`` (for ``getpeercert``, ``version``, ``cipher``)."""
        return self._tls

    def do_handshake(self, timeout: Optional[float]) -> None:
        """Run the TLS handshake within ``timeout`` seconds overall.

        Raises ``ssl.SSLError`` for a failed handshake, ``socket.timeout``
        when the deadline passes, ``ConnectionError`` when the peer leaves.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._tls_lock:
                try:
                    self._tls.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    done = False
                except ssl.SSLError:
                    # Send the alert OpenSSL wrote (RFC 8446 §6.2: e.g.
                    # protocol_version), so the peer learns why.
                    self._send_alert_locked()
                    raise
                outgoing = self._outgoing.read()
            if outgoing:
                self.sock.sendall(outgoing)
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

    def _send_alert_locked(self) -> None:
        """Under ``_tls_lock``, after a fatal TLS error: best-effort send of the alert."""
        alert = self._outgoing.read()
        # Never block here: the writer may be stuck on a peer that reads nothing.
        if not alert or not self._send_lock.acquire(timeout=_ALERT_SEND_TIMEOUT):
            return
        try:
            self.sock.send(alert, _DONTWAIT)
        except OSError:
            pass
        finally:
            self._send_lock.release()

    def _flush_locked(self) -> Optional[bytes]:
        """Under ``_tls_lock``: take pending ciphertext and the send lock with it."""
        if not self._outgoing.pending:
            return None
        data = self._outgoing.read()
        self._send_lock.acquire()
        return data

    def _send_flushed(self, data: Optional[bytes]) -> None:
        if data is None:
            return
        try:
            self.sock.sendall(data)
        finally:
            self._send_lock.release()

    def recv_into(self, buffer) -> int:
        size = len(buffer)
        while True:
            with self._tls_lock:
                try:
                    count = self._tls.read(size, buffer)
                except ssl.SSLWantReadError:
                    count = -1
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    count = 0
                except ssl.SSLError:
                    if self._eof:
                        count = 0
                    else:
                        self._send_alert_locked()
                        raise
                pending = self._flush_locked()
            self._send_flushed(pending)
            if count >= 0:
                return count
            if self._eof:
                return 0
            data = self.sock.recv(_RAW_READ)
            with self._tls_lock:
                if data:
                    self._incoming.write(data)
                else:
                    self._eof = True
                    self._incoming.write_eof()

    def sendall(self, buffers: Sequence) -> None:
        data = buffers[0] if len(buffers) == 1 else b"".join(buffers)
        with self._tls_lock:
            self._tls.write(data)
            pending = self._flush_locked()
        self._send_flushed(pending)

    def shutdown_write(self) -> None:
        """Send TLS close_notify, then TCP EOF."""
        try:
            with self._tls_lock:
                try:
                    self._tls.unwrap()
                except ssl.SSLError:
                    pass
                pending = self._flush_locked()
            self._send_flushed(pending)
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
