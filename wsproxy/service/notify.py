"""Telling a service manager how we are: the ``sd_notify`` datagram protocol.

systemd (``Type=notify``) passes ``NOTIFY_SOCKET``, an ``AF_UNIX`` datagram
socket (a path, or an abstract name written ``@name``); each datagram is
newline-separated ``KEY=VALUE`` lines: ``READY=1`` once we serve,
``RELOADING=1`` (with ``MONOTONIC_USEC``) then ``READY=1`` around a reload,
``STOPPING=1`` when shutting down, ``STATUS=`` free text, ``WATCHDOG=1`` as
a keep-alive at least every ``WATCHDOG_USEC``.  Without ``NOTIFY_SOCKET``
every call here does nothing, so the CLI calls it unconditionally.

Only the standard library: a datagram per message, no reply expected.
"""

import logging
import os
import socket
import threading
import time
from typing import Callable, Mapping, Optional

logger = logging.getLogger("wsproxy")

#: How often STATUS= is refreshed when no watchdog asks for something shorter.
STATUS_INTERVAL = 5.0
#: The longest a send may block (a manager whose queue is full is not worth a hang).
SEND_TIMEOUT = 1.0


class Notifier:
    """Send ``KEY=VALUE`` datagrams to ``NOTIFY_SOCKET`` (or nothing without it).

    ``environ`` is read once, here; the variables are then removed from it
    so that worker processes and anything we fork do not talk to the
    manager in our name.  A failed send is logged once, never raised: the
    proxy serves on even if the manager stopped listening.
    """

    def __init__(self, environ: Mapping[str, str], pid: Optional[int] = None) -> None:
        self.address = _socket_address(environ.get("NOTIFY_SOCKET", ""))
        self.pid = os.getpid() if pid is None else pid
        self.watchdog_interval = _watchdog_interval(environ, self.pid)
        self._sock: Optional[socket.socket] = None
        self._lock = threading.Lock()
        self._failed = False
        if self.address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.settimeout(SEND_TIMEOUT)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *lines: str) -> bool:
        """Send one datagram made of ``lines``; True if it left."""
        if self._sock is None:
            return False
        message = "\n".join(lines).encode("utf-8", "replace")
        with self._lock:
            if self._sock is None:
                return False
            try:
                self._sock.sendto(message, self.address)
            except OSError as exc:
                if not self._failed:
                    logger.warning("cannot notify the service manager at NOTIFY_SOCKET: %s",
                                   exc.strerror or exc)
                self._failed = True
                return False
        self._failed = False
        return True

    def ready(self, status: str = "") -> bool:
        lines = ["READY=1", "MAINPID=%d" % os.getpid()]
        if status:
            lines.append("STATUS=" + status)
        return self.send(*lines)

    def reloading(self) -> bool:
        # systemd 253+ (Type=notify-reload) wants the CLOCK_MONOTONIC time the
        # reload began, so it can tell this reload from an older one.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", "MONOTONIC_USEC=%d" % usec)

    def stopping(self, status: str = "") -> bool:
        return self.send("STOPPING=1", *(["STATUS=" + status] if status else []))

    def status(self, text: str) -> bool:
        return self.send("STATUS=" + text)

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def take_notifier(environ) -> Notifier:
    """A :class:`Notifier` for ``environ`` (``os.environ``), removing its variables from it."""
    notifier = Notifier(environ)
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        environ.pop(name, None)
    return notifier


def _socket_address(text: str):
    if not text:
        return None
    if text.startswith("@"):
        return "\0" + text[1:]  # the Linux abstract namespace
    if text.startswith("/"):
        return text
    logger.warning("NOTIFY_SOCKET=%r is neither a path nor @name; not notifying", text)
    return None


def _watchdog_interval(environ: Mapping[str, str], pid: int) -> Optional[float]:
    """Half of ``WATCHDOG_USEC`` in seconds (as sd_watchdog_enabled advises), or None."""
    text = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return None  # meant for another process
    try:
        usec = int(text)
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2e6


class Keepalive:
    """A thread that sends ``WATCHDOG=1`` while ``alive()`` holds, and ``STATUS=`` updates.

    ``alive`` says whether the server still accepts (its accept loop still
    turns); once it answers False the pings stop for good, so the manager's
    watchdog fires and restarts a wedged proxy.  ``status`` gives the text
    of ``STATUS=``, sent whenever it changes (checked every ``interval``
    seconds, the watchdog's half period or :data:`STATUS_INTERVAL`).
    """

    def __init__(self, notifier: Notifier, alive: Callable[[], bool],
                 status: Callable[[], str]) -> None:
        self.notifier = notifier
        self.alive = alive
        self.status = status
        self.interval = notifier.watchdog_interval or STATUS_INTERVAL
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        if not self.notifier.enabled:
            return
        self._thread = threading.Thread(target=self._run, name="wsproxy-notify", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the thread (no more WATCHDOG=1 or STATUS=) and wait for it."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)

    def _run(self) -> None:
        pinging = self.notifier.watchdog_interval is not None
        last_status = None
        while True:
            if pinging:
                if self.alive():
                    self.notifier.watchdog()
                else:
                    pinging = False
                    logger.error("the accept loop stopped turning; no longer answering "
                                 "the service manager's watchdog")
            text = self.status()
            if text != last_status:
                self.notifier.status(text)
                last_status = text
            if self._stop.wait(self.interval):
                return
