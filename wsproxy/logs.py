"""Helpers for the one log funnel: peer text made safe, repeated warnings throttled.

:func:`escape` turns any text a peer chose (a client's path, a close reason,
a forwarded address, a PROXY protocol UNIX path, a Unix socket peer name)
into printable ASCII on one line, so nobody can forge a log line or drive
the operator's terminal.  :class:`Throttle` lets the first warning of one
kind of event through and holds back its repeats for a while, so a flood
of, say, TLS hellos to a server without a certificate writes a few lines,
not one per connection.  No sockets here; nothing is configured at import.
"""

import logging
import threading
import time
from typing import Callable, Dict, List

#: Seconds during which repeats of one kind of warning are only counted.
THROTTLE_INTERVAL = 10.0


def escape(text: object) -> str:
    """``text`` as printable ASCII on one line (``\\n``, ``\\x1b``, ``\\u2028``, ...).

    Backslashes are doubled, so the escaped form is never ambiguous.
    """
    return str(text).encode("unicode_escape", "backslashreplace").decode("ascii")


def escape_controls(text: str) -> str:
    """Escape only what can break a line or a terminal: C0/C1 controls, DEL, U+2028/2029.

    For whole formatted log messages (the last net before a handler
    writes), where readable non-ASCII text should stay as it is.
    """
    if text.isprintable():
        return text
    out: List[str] = []
    for char in text:
        code = ord(char)
        if code < 0x20 or 0x7F <= code <= 0x9F or code in (0x2028, 0x2029):
            out.append(char.encode("unicode_escape").decode("ascii"))
        else:
            out.append(char)
    return "".join(out)


class Throttle:
    """One warning per kind of event per ``interval`` seconds; the repeats are counted.

    ``logger`` is where lines go; ``clock`` (default ``time.monotonic``) is
    replaceable for tests.  :meth:`log` writes the line when no line of
    that ``kind`` was written in the last ``interval`` seconds (the first
    one always), noting how many were held back since; otherwise it only
    counts.  Thread-safe; memory is one entry per kind, and kinds are a
    fixed set of names chosen by the caller, never peer text.
    """

    def __init__(self, logger: logging.Logger, interval: float = THROTTLE_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._last: Dict[str, float] = {}
        self._held: Dict[str, int] = {}

    def log(self, kind: str, level: int, message: str, *args, interval: float = None) -> bool:
        """Log ``message % args`` at ``level`` unless ``kind`` was logged too recently.

        ``interval`` overrides the throttle's own for this kind.  Returns
        True when the line was written.
        """
        wait = self.interval if interval is None else interval
        now = self.clock()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < wait:
                self._held[kind] = self._held.get(kind, 0) + 1
                return False
            self._last[kind] = now
            held = self._held.pop(kind, 0)
        if held:
            message += " (%d more like this in the last %s s)" % (
                held, _seconds(now - last if last is not None else wait))
        self.logger.log(level, message, *args)
        return True

    def warning(self, kind: str, message: str, *args, interval: float = None) -> bool:
        """:meth:`log` at WARNING level."""
        return self.log(kind, logging.WARNING, message, *args, interval=interval)

    def held(self, kind: str) -> int:
        """How many lines of ``kind`` are held back right now (for tests and status)."""
        with self._lock:
            return self._held.get(kind, 0)


def _seconds(value: float) -> str:
    return "%d" % round(value) if value >= 1 else "%.1f" % value
