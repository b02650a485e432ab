"""Zero-copy downstream: target bytes reach the client without entering user space.

On Linux (Python 3.10+ has ``os.splice``) a plain binary session moves a
bulk stream from the target socket into a pipe and from the pipe into the
client socket; wsproxy only writes the frame header in between.  That
needs the payload on the wire exactly as the target sent it, so a session
takes this path only when nothing has to see or change the bytes: no TLS
on either side, RFC 6455 without base64 and without compression, no
recording and no ``target_data`` hook (see :func:`pump_for`).

Small reads gain nothing from a pipe (two more system calls per message,
two more file descriptors per session), so the pump starts as the plain
copy loop and switches to splicing once a read fills its buffer (a bulk
stream); a splice that moves little switches it back.  An idle or
interactive session therefore never holds a pipe.

Each spliced frame carries exactly the bytes one splice put in the pipe,
and its header and payload leave under the relay's client lock, so a pong
or close frame can never land inside it (RFC 6455 §5.4: control frames
may be injected only between frames).
"""

import errno
import fcntl
import logging
import os
import select
import socket
import struct
import time
from typing import Callable, Optional

from .protocol.connection import Connection
from .protocol.frames import CloseCode
from .streams import WriteTimeout, _unsent

logger = logging.getLogger("wsproxy")

#: Linux with Python 3.10+: both the system call and the pipe-size knob.
AVAILABLE = hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ")

#: Largest spliced frame: a splice moves at most this much.  Four times the
#: copy path's 64 KiB reads (fewer frames for both ends to handle), well
#: under the 1 MiB message limit common in client libraries, and a pong
#: waits behind at most one such frame.
MAX_FRAME = 256 * 1024
#: The pipe asked for (F_SETPIPE_SZ): one frame.  Linux counts pipe pages
#: per user (fs.pipe-user-pages-soft, 16,384 pages by default): 256 KiB
#: pipes let 256 sessions splice at once where 1 MiB pipes would let 64.
PIPE_SIZE = MAX_FRAME
#: Past that budget new pipes get two pages; so small a pipe is not worth it.
_MIN_PIPE = 64 * 1024
#: The copy loop's buffer: a read that fills it marks a bulk stream.
_COPY_BUFFER = 16 * 1024
#: A splice moving less than this means the stream went quiet: copy again.
_SMALL = 4 * 1024

_MOVE = getattr(os, "SPLICE_F_MOVE", 0)
#: Errors meaning "this pair of descriptors cannot be spliced": copy instead.
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, getattr(errno, "EOPNOTSUPP", errno.EINVAL)}


def eligible(relay) -> bool:
    """True when ``relay``'s target → client bytes may bypass user space."""
    connection = relay.connection
    return (AVAILABLE and getattr(relay, "splice", True)
            and relay.on_target_data is None
            and not relay.client.secure and not relay.target.secure
            and isinstance(connection, Connection) and connection.frames_bytes_as_is)


def pump_for(relay) -> Optional[Callable[[], None]]:
    """The zero-copy downstream pump for ``relay``, or None when it does not qualify."""
    if not eligible(relay):
        return None
    return SplicePump(relay).run


class SplicePump:
    """Target → client for one session, spliced while the stream is bulk.

    Reads, framing, draining and the end of the session follow the
    relay's own downstream pump: on the target's EOF everything read is
    sent, then close 1000; after a close was sent, the target is read (and
    its bytes dropped) until its EOF.  ``spliced`` counts the payload bytes
    that went through the pipe; ``relay.bytes_to_client`` counts them all.
    """

    def __init__(self, relay) -> None:
        self.relay = relay
        self.spliced = 0
        self.frames = 0
        self._pipe = None  # type: Optional[tuple]
        self._pipe_size = 0
        #: False once the pipe cannot be had or the kernel refuses the splice.
        self._usable = True

    # -- the session's downstream ----------------------------------------------------

    def run(self) -> None:
        relay = self.relay
        try:
            try:
                code, reason = self._pump()
            finally:
                self._close_pipe()
                if self.spliced:
                    logger.debug("%sdownstream: %d of %d bytes spliced, in %d frames",
                                 relay.log_prefix, self.spliced, relay.bytes_to_client, self.frames)
            if not relay._upstream_done.is_set():
                relay._send_close(code, reason)
                relay._note_end(code, reason)
                # Give the client time to answer the close, then stop waiting.
                if not relay._upstream_done.wait(_close_timeout()):
                    relay.client.abort()
        except Exception:  # a bug must not leave the session hanging
            logger.exception("%sdownstream pump failed", relay.log_prefix)
            relay.client.abort()

    def _pump(self):
        """Move bytes until the target's EOF; return the close code and reason to send."""
        relay = self.relay
        target = relay.target
        buffer = bytearray(_COPY_BUFFER)
        view = memoryview(buffer)
        splicing = draining = False
        while True:
            try:
                if splicing:
                    count = self._splice_in()
                else:
                    count = target.recv_into(buffer)
            except OSError as exc:
                if splicing and exc.errno in _UNSUPPORTED:
                    self._give_up("cannot splice from the target: %s" % os.strerror(exc.errno))
                    splicing = False
                    continue
                if relay._upstream_done.is_set():
                    break
                return CloseCode.INTERNAL_ERROR, "target connection error: %s" % _describe(exc)
            if not count:
                break
            relay.last_activity = time.monotonic()
            if draining:
                continue
            if splicing:
                sent = self._send_spliced(count)
            else:
                sent = self._send_copied(view[:count])
            if not sent:
                # A close was sent or the client is gone: drop what the
                # target still sends, but read it until its EOF.
                draining = True
                splicing = False
                relay._flush()
                continue
            if relay.connection.has_data_to_send:
                relay._flush()  # control frames queued while we were writing
            relay.bytes_to_client += count
            if splicing:
                if count < _SMALL:
                    splicing = False
            elif count == len(buffer) and self._usable:
                splicing = self._open_pipe()
        return CloseCode.NORMAL, "target closed the connection"

    # -- the copy path (short reads) ----------------------------------------------------

    def _send_copied(self, data: memoryview) -> bool:
        relay = self.relay
        with relay._client_lock:
            frames = relay.connection.send_data(data)
            if not frames:
                return False
            try:
                relay.client.sendall(frames)
            except OSError as exc:
                self._write_failed(exc)
                return False
        return True

    def _write_failed(self, exc: OSError) -> None:
        if isinstance(exc, socket.timeout):  # --write-timeout
            self.relay._note_end(CloseCode.ABNORMAL, "client write failed: %s" % _describe(exc))

    # -- the splice path (bulk) ------------------------------------------------------------

    def _splice_in(self) -> int:
        """Splice what the target has (at least one byte, blocking) into the empty pipe; 0 at EOF."""
        target = self.relay.target
        source = target.fileno()
        while True:
            try:
                return os.splice(source, self._pipe[1], MAX_FRAME, flags=_MOVE)
            except BlockingIOError:
                # A socket with a timeout is non-blocking underneath: wait as recv would.
                _wait(source, select.POLLIN, target.sock.gettimeout())

    def _send_spliced(self, count: int) -> bool:
        """One binary frame: the header, then the ``count`` bytes in the pipe.

        Both leave under the client lock, so no other frame comes between.
        False once a close was sent or the client cannot be written to.
        """
        relay = self.relay
        client = relay.client
        with relay._client_lock:
            frames = relay.connection.send_data_header(count)
            if not frames:
                return False
            try:
                # Through the stream: a heartbeat's unsent rest goes first,
                # and the write timeout applies.
                client.sendall(frames)
                self._splice_out(count)
            except OSError as exc:
                self._write_failed(exc)
                return False
        self.spliced += count
        self.frames += 1
        return True

    def _splice_out(self, count: int) -> None:
        """Drain the pipe's ``count`` bytes into the client socket.

        A splice into a blocking socket cannot be given a deadline from
        here (the kernel ignores SPLICE_F_NONBLOCK on the socket side), so
        with a write timeout the socket carries one of its own
        (``SO_SNDTIMEO``, a quarter of ``write_timeout``, set when the pipe
        is made): a splice that moves nothing for that long fails with
        EAGAIN, and the send queue is asked (``SIOCOUTQ``) whether the
        client took any byte meanwhile.  As for the stream's own writes,
        every byte taken counts as progress, so a slow reader is never
        cut; one that takes nothing for ``write_timeout`` seconds aborts
        the stream and raises ``WriteTimeout``.  One splice per frame, and
        no system call beyond it while the client keeps up.
        """
        client = self.relay.client
        destination = client.fileno()
        timeout = client.write_timeout if client.sock.gettimeout() is None else None
        left = count
        deadline = queued = None
        while left:
            started = time.monotonic()
            try:
                left -= os.splice(self._pipe[0], destination, left, flags=_MOVE)
                deadline = None
            except BlockingIOError:
                if not timeout:  # a socket with a timeout is non-blocking underneath
                    _wait(destination, select.POLLOUT, client.sock.gettimeout())
                    continue
                deadline, queued = self._no_room(timeout, started, deadline, queued)
            except OSError as exc:
                if exc.errno not in _UNSUPPORTED:
                    raise
                # The header is out: the payload must follow, copied.
                self._give_up("cannot splice to the client: %s" % os.strerror(exc.errno))
                while left:
                    chunk = os.read(self._pipe[0], left)
                    client.sendall([chunk])
                    left -= len(chunk)

    def _no_room(self, timeout: float, started: float, deadline, queued):
        """A splice found no room for ``SO_SNDTIMEO``: go on while the client takes bytes.

        Returns the new deadline and send-queue size; raises
        ``WriteTimeout`` (after aborting the client stream) once no byte
        left the queue for ``timeout`` seconds.
        """
        client = self.relay.client
        now = time.monotonic()
        now_queued = _unsent(client.sock)
        if deadline is None:
            deadline = started + timeout
        elif now_queued is not None and queued is not None and now_queued < queued:
            deadline = now + timeout  # the client took bytes: room will come
        if now >= deadline:
            exc = WriteTimeout("the peer accepted no byte for %g s (--write-timeout)" % timeout)
            client.break_with(exc)
            raise exc
        return deadline, now_queued

    # -- the pipe ---------------------------------------------------------------------------

    def _open_pipe(self) -> bool:
        """Make the session's pipe (once); False when none can be had."""
        if self._pipe is not None:
            return True
        client = self.relay.client
        if client.write_timeout:
            try:  # the write timeout's clock for blocking splices (see _splice_out)
                _set_send_timeout(client.sock, client.write_timeout / 4)
            except OSError as exc:
                self._give_up("no SO_SNDTIMEO: %s" % os.strerror(exc.errno))
                return False
        try:
            self._pipe = os.pipe2(os.O_CLOEXEC)
        except OSError as exc:  # EMFILE/ENFILE: this session copies, others go on
            self._give_up("no pipe: %s" % os.strerror(exc.errno))
            return False
        try:
            self._pipe_size = fcntl.fcntl(self._pipe[0], fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:  # EPERM: this user's pipe budget is spent
            self._pipe_size = fcntl.fcntl(self._pipe[0], fcntl.F_GETPIPE_SZ)
        if self._pipe_size < _MIN_PIPE:
            self._close_pipe()
            self._give_up("pipe of %d bytes only" % self._pipe_size)
            return False
        logger.debug("%sdownstream: zero-copy splice on (pipe of %d bytes)",
                     self.relay.log_prefix, self._pipe_size)
        return True

    def _close_pipe(self) -> None:
        if self._pipe is not None:
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None

    def _give_up(self, why: str) -> None:
        """Copy from now on (the pipe stays until the session ends, if any)."""
        self._usable = False
        logger.debug("%sdownstream: copying, %s", self.relay.log_prefix, why)


def _set_send_timeout(sock: socket.socket, seconds: float) -> None:
    """``SO_SNDTIMEO``: a blocking send (or splice) into ``sock`` waits at most ``seconds``.

    Only blocking writes feel it: every other write to the client goes out
    with ``MSG_DONTWAIT`` (:func:`wsproxy.streams.send_before`).
    """
    whole = int(seconds)
    micro = int((seconds - whole) * 1e6) or (0 if whole else 1)  # 0 would mean "forever"
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("@ll", whole, micro))


def _wait(fd: int, event: int, timeout: Optional[float]) -> None:
    """Wait until ``fd`` is ready for ``event``; socket.timeout after ``timeout`` seconds."""
    poller = select.poll()
    poller.register(fd, event)
    if not poller.poll(None if timeout is None else max(0, int(timeout * 1000))):
        raise socket.timeout("timed out")


def _close_timeout() -> float:
    # Read at call time: tests and embedders may change the relay's constant.
    from . import relay
    return relay.CLOSE_TIMEOUT


def _describe(exc: OSError) -> str:
    if isinstance(exc, socket.timeout):
        return str(exc) or "timed out"
    return exc.strerror or exc.__class__.__name__
