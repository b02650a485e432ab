"""One running server as the service manager sees it: ready, reloading, stopping.

:class:`Lifecycle` ties a :class:`ProxyServer` (and its followers on extra
inherited sockets) to a :class:`Notifier`: the CLI's main loop calls
:meth:`Lifecycle.started`, :meth:`reloading`/:meth:`reloaded` around a
SIGHUP and :meth:`stopping` before it shuts the server down.
"""

import threading
import time
from typing import Callable, List, Optional

from .notify import Keepalive, Notifier

#: The accept loop turns at least every poll interval (0.5 s); a loop not
#: seen for this long is wedged, and the watchdog pings stop.
STALE_LOOP = 5.0


class Lifecycle:
    """Readiness, status and watchdog for one server; followers run and stop with it.

    ``notifier`` may be None (a worker process: its supervisor notifies).
    ``alive`` overrides the watchdog's liveness check (the supervisor of
    ``--workers`` passes "some worker runs").
    """

    def __init__(self, server, notifier: Optional[Notifier],
                 alive: Optional[Callable[[], bool]] = None,
                 stale_after: float = STALE_LOOP) -> None:
        self.server = server
        self.notifier = notifier
        self.stale_after = stale_after
        self._alive = alive
        self._serving: Optional[threading.Thread] = None
        self._followers: List[threading.Thread] = []
        self._keepalive: Optional[Keepalive] = None
        self._stopped = False

    def start_followers(self) -> None:
        """Accept on the extra inherited sockets too (each in its own thread)."""
        for follower in getattr(self.server, "followers", None) or ():
            thread = threading.Thread(target=follower.serve_forever, name="wsproxy-accept-more",
                                      daemon=True)
            thread.start()
            self._followers.append(thread)

    def started(self, serving: Optional[threading.Thread] = None) -> None:
        """The server listens (``serving`` runs its accept loop): READY=1, then the keepalive."""
        self._serving = serving
        if self.notifier is None:
            return
        self.notifier.ready(self.status_text())
        self._keepalive = Keepalive(self.notifier, self.alive, self.status_text)
        self._keepalive.start()

    def alive(self) -> bool:
        """Whether the accept loop still turns (for the watchdog)."""
        if self._alive is not None:
            return self._alive()
        if self._serving is not None and not self._serving.is_alive():
            return False
        turned = getattr(self.server, "loop_turned", None)
        if turned is None:
            return True  # not yet gone round once
        return time.monotonic() - turned < self.stale_after

    def status_text(self) -> str:
        sessions = getattr(self.server, "open_sessions", None)
        if sessions is None:
            return "serving"
        return "%d open session%s" % (sessions, "" if sessions == 1 else "s")

    def reloading(self) -> None:
        if self.notifier is not None:
            self.notifier.reloading()

    def reloaded(self) -> None:
        if self.notifier is not None:
            self.notifier.ready(self.status_text())

    def stopping(self, why: str = "") -> None:
        """No more READY/WATCHDOG: STOPPING=1, and the followers stop accepting."""
        if self._stopped:
            return
        self._stopped = True
        if self._keepalive is not None:
            self._keepalive.stop()
        if self.notifier is not None:
            self.notifier.stopping(why)
        for follower in getattr(self.server, "followers", None) or ():
            if self._followers:  # their loops run here (shutdown() waits for a loop)
                follower.shutdown()
            follower.server_close()
        for thread in self._followers:
            thread.join(5.0)
