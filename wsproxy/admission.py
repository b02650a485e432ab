"""Who gets in: pending handshakes shared fairly between client addresses, sessions per address.

Every accepted connection holds a thread until its handshake ends, so the
server bounds how many are pending (:class:`PendingHandshakes`).  Without
more, one address's silent sockets would fill that bound and lock everyone
out until they time out.  So each address has a share of the bound, and a
connection that is *stalled* -- still handshaking after ``stall_grace``
seconds, with its request not yet read and no byte of it waiting to be read
-- may be evicted, oldest first: by a new connection of the same address
once that address holds its share, and by anyone's new connection once the
whole bound is full (taken from the address holding the most).

The share bites on stalled connections only, never on prompt ones: many
real clients share one address (a NAT, a balancer without the PROXY
protocol, a benchmark on 127.0.0.1), and one whose request arrives
promptly is never evicted, even when its address has many pending (then
the address simply goes over its share, up to the whole bound).

:class:`AddressCounter` counts open sessions per client address for
``--max-connections-per-ip``.
"""

import collections
import ipaddress
import select
import socket
import threading
import time
from typing import Callable, Dict, Optional

_POLLIN = getattr(select, "POLLIN", None)


def address_key(address) -> str:
    """The client address as a key: the IP as text (IPv4-mapped IPv6 as IPv4), else ``"local"``."""
    if not isinstance(address, tuple) or not address:
        return "local"  # a Unix socket peer
    host = address[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return str(host)
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped if mapped is not None else ip)


class _Pending:
    """One connection still handshaking: its socket, key, start time, progress."""

    __slots__ = ("sock", "key", "started", "request_read")

    def __init__(self, sock: socket.socket, key: str, started: float) -> None:
        self.sock = sock
        self.key = key
        self.started = started
        self.request_read = False


class PendingHandshakes:
    """The connections still handshaking, bounded in total, with a fair share per address.

    ``limit`` bounds them all; ``share`` is what one address may hold
    before its stalled connections are evicted for its new ones;
    ``stall_grace`` is how long a connection may wait for its client's
    request before it counts as stalled.  Thread-safe.
    """

    def __init__(self, limit: int, share: int, stall_grace: float) -> None:
        self.limit = limit
        self.share = max(1, share)
        self.stall_grace = stall_grace
        self._lock = threading.Lock()
        self._records: Dict[socket.socket, _Pending] = {}
        #: Per address, how many of its connections are pending.
        self._counts: Dict[str, int] = {}
        #: Per address, its pending connections that may yet prove stalled, oldest first.
        #: One found prompt leaves for good, so each is looked at (and its socket
        #: asked for unread bytes) once, however many connections follow it.
        self._suspects: Dict[str, "collections.OrderedDict[socket.socket, _Pending]"] = {}

    def __len__(self) -> int:
        return len(self._records)

    def admit(self, sock: socket.socket, address,
              on_evict: Callable[[str, str], None]) -> bool:
        """Register a new connection; False when it must be refused (the bound is full).

        Evicts (shuts down) stalled connections as described in the module
        docstring, calling ``on_evict(key, why)`` for each.
        """
        key = address_key(address)
        now = time.monotonic()
        with self._lock:
            if self._counts.get(key, 0) >= self.share:
                self._evict_stalled(key, now, on_evict, "its share of pending handshakes is full")
            if len(self._records) >= self.limit:
                for other in sorted(self._counts, key=self._counts.__getitem__, reverse=True):
                    if self._evict_stalled(other, now, on_evict, "all pending handshakes are taken"):
                        break
            if len(self._records) >= self.limit:
                return False
            record = _Pending(sock, key, now)
            self._records[sock] = record
            self._link(record)
        return True

    def request_read(self, sock: socket.socket) -> None:
        """The client sent its whole request: it is no longer waited for."""
        record = self._records.get(sock)
        if record is not None:
            record.request_read = True  # no lock: the next look at it drops it from the suspects

    def move(self, sock: socket.socket, address) -> None:
        """Count the connection for ``address`` from now on (the PROXY header named it)."""
        with self._lock:
            record = self._records.get(sock)
            if record is None:
                return
            self._unlink(record)
            record.key = address_key(address)
            self._link(record)

    def finished(self, sock: socket.socket) -> bool:
        """The connection left the handshake (or closed); True the first time only.

        Called before the socket is closed: eviction shuts sockets down under
        the same lock, so it never touches a descriptor number reused since.
        """
        with self._lock:
            record = self._records.pop(sock, None)
            if record is None:
                return False
            self._unlink(record)
        return True

    def _link(self, record: _Pending) -> None:
        self._counts[record.key] = self._counts.get(record.key, 0) + 1
        self._suspects.setdefault(record.key, collections.OrderedDict())[record.sock] = record

    def _unlink(self, record: _Pending) -> None:
        left = self._counts.get(record.key, 0) - 1
        if left > 0:
            self._counts[record.key] = left
        else:
            self._counts.pop(record.key, None)
        suspects = self._suspects.get(record.key)
        if suspects is not None:
            suspects.pop(record.sock, None)
            if not suspects:
                del self._suspects[record.key]

    def _evict_stalled(self, key: str, now: float, on_evict, why: str) -> bool:
        """Under the lock: shut down the oldest stalled connection of ``key``; True if one was."""
        suspects = self._suspects.get(key)
        while suspects:
            sock, record = next(iter(suspects.items()))
            if now - record.started < self.stall_grace:
                return False  # oldest first: every later one is younger still
            if record.request_read or _has_unread_bytes(sock):
                suspects.popitem(last=False)  # the client did its part; the server is the slow one
                continue
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            del self._records[sock]
            self._unlink(record)
            on_evict(record.key, why)
            return True
        if suspects is not None:  # every one proved prompt
            del self._suspects[key]
        return False


def _has_unread_bytes(sock: socket.socket) -> bool:
    """True when the client's bytes (or its EOF) wait in the socket, unread by its thread.

    ``poll`` with no wait, not a peeking ``recv``: the socket has a Python
    timeout set by its thread, and ``recv`` would wait that long first.
    """
    if _POLLIN is None:
        return False
    poller = select.poll()
    try:
        poller.register(sock, _POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True  # a broken socket ends by itself; leave it to its thread


class AddressCounter:
    """Open sessions per client address, for ``--max-connections-per-ip``. Thread-safe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: Dict[str, int] = {}
        self._lock = threading.Lock()

    def reserve(self, address) -> Optional[str]:
        """Count a session for ``address``; its key, or None when the address is at the limit."""
        key = address_key(address)
        with self._lock:
            count = self._counts.get(key, 0)
            if self.limit and count >= self.limit:
                return None
            self._counts[key] = count + 1
        return key

    def release(self, key: str) -> None:
        """Give back what :meth:`reserve` counted under ``key``."""
        with self._lock:
            count = self._counts.get(key, 0) - 1
            if count > 0:
                self._counts[key] = count
            else:
                self._counts.pop(key, None)
