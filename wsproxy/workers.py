"""``--workers N``: several processes serving one listening socket.

A threaded Python proxy is held to one core by the GIL.  The parent binds
the socket once, then forks N workers that all accept on it (the kernel
hands each connection to one of them).  The parent only supervises: it
restarts a worker that dies, passes SIGTERM/SIGINT/SIGHUP on, and returns
once every worker has exited after a stop.

Each worker gets its own settings copy, threads and sessions; what must be
unique across workers (session numbers, hence recording file names) comes
from a counter in shared memory.  Limits such as ``--max-connections`` apply
per worker.
"""

import logging
import mmap
import os
import signal
import struct
import threading
import time
from typing import Callable, Dict, Optional

logger = logging.getLogger("wsproxy")

#: A worker that dies sooner than this after its start is restarted only after a pause.
_QUICK_DEATH = 1.0
_RESTART_PAUSE = 1.0
_FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class SharedCounter:
    """Session numbers unique across workers, kept in shared memory.

    Worker ``i`` of ``n`` hands out ``i+1``, ``i+1+n``, ``i+1+2n``, ...:
    each worker writes only its own slot (so no cross-process lock is
    needed), and the slot lives in anonymous shared memory created before
    the fork, so a restarted worker continues where its predecessor stopped
    instead of reusing numbers.
    """

    _SLOT = struct.Struct("Q")

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._memory = mmap.mmap(-1, self._SLOT.size * slots)
        self._lock = threading.Lock()

    def next(self, slot: int) -> int:
        offset = self._SLOT.size * slot
        with self._lock:
            issued = self._SLOT.unpack_from(self._memory, offset)[0]
            self._SLOT.pack_into(self._memory, offset, issued + 1)
        return issued * self.slots + slot + 1


def cpu_count() -> int:
    """The number of CPUs this process may run on (``--workers auto``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class WorkerPool:
    """Fork ``count`` workers running ``serve(index)`` and keep them running.

    ``serve`` runs in the child and returns its exit status; it must handle
    SIGTERM itself (the parent forwards signals).  It starts with SIGTERM,
    SIGINT and SIGHUP blocked and calls :func:`unblock_signals` once its
    handlers are in place.  :meth:`run` returns 0
    once a stop was requested and every worker has exited.
    """

    def __init__(self, count: int, serve: Callable[[int], int],
                 on_stop: Optional[Callable[[], None]] = None) -> None:
        self.count = count
        self.serve = serve
        #: Called once when a stop is requested (the CLI closes the parent's
        #: copy of the listening socket, so a draining host refuses at once).
        self.on_stop = on_stop
        #: Called once every worker is forked, and after SIGHUP was passed on
        #: (the CLI tells the service manager).
        self.on_started: Optional[Callable[[], None]] = None
        self.on_reload: Optional[Callable[[], None]] = None
        self.children: Dict[int, int] = {}      # pid -> worker index
        self._started: Dict[int, float] = {}    # pid -> start time
        self._stopping = False

    def run(self) -> int:
        previous = {signum: signal.signal(signum, self._on_signal) for signum in _FORWARDED_SIGNALS}
        try:
            for index in range(self.count):
                self._spawn(index)
            if self.on_started is not None:
                self.on_started()
            while self.children:
                try:
                    pid, status = os.waitpid(-1, 0)
                except ChildProcessError:
                    break
                index = self.children.pop(pid, None)
                if index is None:
                    continue
                lived = time.monotonic() - self._started.pop(pid, 0.0)
                if self._stopping:
                    continue
                if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
                    # A clean exit (--timeout, --idle-timeout) is final.
                    logger.info("worker %d (pid %d) finished", index, pid)
                    continue
                logger.warning("worker %d (pid %d) exited with status %s; restarting it",
                               index, pid, _describe_status(status))
                if lived < _QUICK_DEATH:
                    time.sleep(_RESTART_PAUSE)  # a crash loop must not become a fork storm
                if not self._stopping:
                    self._spawn(index)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return 0

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Ask every worker to stop (as SIGTERM would)."""
        self._begin_stop()
        self._forward(signum)

    def _spawn(self, index: int) -> Optional[int]:
        # Signals stay blocked across the fork until the child has its own
        # handlers: a SIGHUP that arrives first must not kill it (SIG_DFL).
        signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED_SIGNALS)
        pid = -1
        try:
            pid = os.fork()
        finally:
            if pid != 0:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED_SIGNALS)
        if pid == 0:
            status = 1
            try:
                for signum in _FORWARDED_SIGNALS:
                    signal.signal(signum, signal.SIG_DFL)
                status = self.serve(index)
            except BaseException:  # the child must never return into the parent's code
                logger.exception("worker %d failed", index)
            finally:
                logging.shutdown()
                os._exit(status)
        self.children[pid] = index
        self._started[pid] = time.monotonic()
        logger.info("worker %d started (pid %d)", index, pid)
        return pid

    def _on_signal(self, signum, _frame) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._begin_stop()
        self._forward(signum)
        if signum == signal.SIGHUP and self.on_reload is not None and not self._stopping:
            self.on_reload()

    def _begin_stop(self) -> None:
        if not self._stopping and self.on_stop is not None:
            self.on_stop()
        self._stopping = True

    def _forward(self, signum: int) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass


def unblock_signals() -> None:
    """In a worker, once its signal handlers are installed: let signals in."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED_SIGNALS)


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return "signal %d" % os.WTERMSIG(status)
    return str(os.waitstatus_to_exitcode(status)) if hasattr(os, "waitstatus_to_exitcode") else str(status)
