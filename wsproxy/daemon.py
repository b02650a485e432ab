"""Running in the background: double fork, ``setsid``, pid file, output streams.

The server socket is bound *before* :func:`detach` so a bind error reaches
the launching terminal; the launching process exits 0 only once the daemon
reports it is ready (the socket already listens by then).
"""

import os
import signal
import sys
from typing import Optional


class DaemonError(RuntimeError):
    """The daemon could not start; the message says why."""


def detach(log_path: Optional[str] = None) -> int:
    """Become a daemon: fork twice, start a new session, ``chdir /``.

    Standard input goes to ``/dev/null``, standard output and error to
    ``log_path`` (appended) or ``/dev/null``.  The launching process does
    not return: it waits until the daemon calls :func:`report_ready` and
    exits 0, or exits 1 with the daemon's message if it fails first.
    Returns, in the daemon, the write end of the readiness pipe.
    """
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        _wait_for_daemon(read_end)
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    os.umask(0o022)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.close(null)
    redirect_output(log_path)
    return write_end


def _wait_for_daemon(read_end: int) -> None:
    """In the launcher: exit 0 on "ready", 1 with the daemon's message otherwise."""
    # The daemon's signal handlers were inherited; the launcher keeps the
    # default ones so that SIGTERM or Ctrl-C still ends it while it waits.
    for name in ("SIGTERM", "SIGINT", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    chunks = []
    while True:
        data = os.read(read_end, 4096)
        if not data:
            break
        chunks.append(data)
    message = b"".join(chunks).decode("utf-8", "replace")
    if message == "ready":
        os._exit(0)
    sys.stderr.write("wsproxy: %s\n" % (message or "the daemon exited before it was ready"))
    sys.stderr.flush()
    os._exit(1)


def report_ready(pipe: int, message: str = "ready") -> None:
    """In the daemon: tell the launcher we are serving (or why we are not)."""
    try:
        os.write(pipe, message.encode("utf-8"))
    finally:
        os.close(pipe)


def redirect_output(log_path: Optional[str]) -> None:
    """Point standard output and error at ``log_path`` (appended) or ``/dev/null``.

    Called by :func:`detach`, and again on SIGHUP so that stray output
    follows a rotated log file.  Raises ``OSError`` if ``log_path`` cannot
    be opened (the streams are then left as they were).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    if log_path:
        # O_NOFOLLOW, as for the pid file and the log handler's own open.
        out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o640)
    else:
        out = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(out, 1)
        os.dup2(out, 2)
    finally:
        os.close(out)


def write_pid_file(path: str) -> None:
    """Write our pid to ``path`` (replacing a stale file)."""
    try:
        # O_NOFOLLOW: a symlink planted at the path (say in /tmp) must not
        # make a root daemon overwrite the file it points to.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as handle:
            handle.write("%d\n" % os.getpid())
    except OSError as exc:
        raise DaemonError("pid-file: cannot write %s: %s" % (path, exc.strerror)) from None


def remove_pid_file(path: str) -> None:
    """Remove ``path`` if it still names this process."""
    try:
        with open(path) as handle:
            if handle.read().strip() != str(os.getpid()):
                return
        os.unlink(path)
    except OSError:
        pass
