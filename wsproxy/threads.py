"""Starting a connection's thread without waiting in line for it.

``Thread.start()`` returns only once the new thread has run far enough to
say it started, and to run it needs the GIL.  Behind thousands of busy
session threads that is a long wait, and the accept loop pays it serially
for every connection: with 9,000 sessions opening at once it was most of
the time it took to accept them.  :func:`start_unwaited` starts the thread
and returns at once; the thread announces itself when it runs, as before.

It relies on one detail of ``threading.Thread`` (CPython 3.9 to 3.13): the
start-up handshake is the ``_started`` event, set by the new thread and
waited for only by ``start()``.  Where that detail is missing, the thread
is started the ordinary way.  Such a thread must not be joined before it
ran (``join()`` refuses that); the server's connection threads never are.
"""

import threading


class _StartedFlag:
    """A thread's ``_started`` event whose first ``wait()`` (the one in ``start()``) returns at once."""

    __slots__ = ("_event", "_waited")

    def __init__(self, event: threading.Event) -> None:
        self._event = event
        self._waited = False

    def wait(self, timeout=None) -> bool:
        if not self._waited:
            self._waited = True
            return True
        return self._event.wait(timeout)

    def __getattr__(self, name):
        return getattr(self._event, name)


def start_unwaited(thread: threading.Thread) -> None:
    """Start ``thread``; do not wait until it runs (see the module docstring)."""
    started = getattr(thread, "_started", None)
    if isinstance(started, threading.Event) and not started.is_set():
        thread._started = _StartedFlag(started)
    thread.start()
