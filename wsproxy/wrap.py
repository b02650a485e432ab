"""Wrap mode: run a program on a free loopback port and relay to it.

``wsproxy LISTEN -- COMMAND ARGS...`` (websockify's wrap mode, without its
LD_PRELOAD shim): wsproxy picks a free port on 127.0.0.1 and tells the
program, which must listen there itself.  The port replaces ``{port}`` in
the arguments and is in the environment as ``WSPROXY_WRAP_PORT``.  When the
program exits, ``--wrap-mode`` decides: ``exit`` (wsproxy exits with the
program's status), ``ignore`` (keep serving; sessions then fail), or
``respawn`` (start it again; as websockify throttles it, not while its
last :data:`RESPAWN_LIMIT` starts were on average less than
:data:`RESPAWN_WINDOW` seconds ago).  Stopping
wsproxy stops the program.

A process concern: only the command-line layer uses this module; the
server and handler just see a TCP target on 127.0.0.1.
"""

import logging
import os
import signal
import socket
import subprocess
import time
from typing import List, Optional

logger = logging.getLogger("wsproxy")

#: The environment variable that carries the port to the program.
PORT_VARIABLE = "WSPROXY_WRAP_PORT"
#: What ``{port}`` in the program's arguments becomes.
PLACEHOLDER = "{port}"
#: respawn: the last this many starts ...
RESPAWN_LIMIT = 3
#: ... must be on average at least this many seconds ago.
RESPAWN_WINDOW = 10.0
#: How long to wait for the program to listen before serving anyway.
READY_TIMEOUT = 30.0
#: How long the program may take to exit after SIGTERM before SIGKILL.
STOP_TIMEOUT = 5.0
#: The wrapped program's address.
HOST = "127.0.0.1"


def pick_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class WrappedProgram:
    """The wrapped program: started, watched, restarted and stopped here.

    ``command`` is the program and its arguments, ``port`` the loopback
    port it is told to listen on, ``mode`` one of exit/ignore/respawn.
    """

    def __init__(self, command: List[str], port: int, mode: str = "exit") -> None:
        self.command = [word.replace(PLACEHOLDER, str(port)) for word in command]
        self.port = port
        self.mode = mode
        self.process: Optional[subprocess.Popen] = None
        self.exit_status: Optional[int] = None
        self._starts: List[float] = []
        self._throttle_logged = False

    def start(self) -> None:
        """Start the program; raises OSError when it cannot be executed."""
        environment = dict(os.environ)
        environment[PORT_VARIABLE] = str(self.port)
        # A session of its own: stopping wsproxy stops the program and
        # whatever it started, and a Ctrl-C meant for wsproxy reaches it
        # only through wsproxy's orderly stop.
        self.process = subprocess.Popen(self.command, env=environment, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        self._starts = (self._starts + [time.monotonic()])[-RESPAWN_LIMIT:]
        self._throttle_logged = False
        logger.info("started %s (pid %d) on port %d", " ".join(self.command),
                    self.process.pid, self.port)

    def listening(self) -> bool:
        """True once something listens on the program's port.

        Linux's socket table answers without connecting (a probe connection
        would be a client to the program: a VNC server logs it, a program
        serving one client would take it for its one); elsewhere, connect.
        """
        found = _listening_in_proc(self.port)
        if found is not None:
            return found
        try:
            socket.create_connection((HOST, self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check(self, now: float) -> Optional[int]:
        """Look after the program once; the exit status wsproxy should exit with, or None.

        Call it periodically from the main loop.  It reaps an exited
        program and, per ``mode``, asks wsproxy to exit, does nothing, or
        restarts it (throttled).
        """
        if self.process is not None:
            status = self.process.poll()
            if status is None:
                return None
            self.process = None
            self.exit_status = status
            logger.info("the wrapped command exited with status %d (--wrap-mode %s)",
                        status, self.mode)
            if self.mode == "exit":
                return status if status >= 0 else 128 - status
        if self.mode != "respawn":
            return None
        recent = self._starts[-RESPAWN_LIMIT:]
        if len(recent) >= RESPAWN_LIMIT and now - sum(recent) / len(recent) < RESPAWN_WINDOW:
            if not self._throttle_logged:
                self._throttle_logged = True
                logger.warning("the wrapped command is respawning too fast (%d starts, on "
                               "average less than %.0f s ago); waiting before starting it "
                               "again", RESPAWN_LIMIT, RESPAWN_WINDOW)
            return None
        try:
            self.start()
        except OSError as exc:
            logger.error("cannot start the wrapped command again: %s", exc.strerror or exc)
            self._starts = (self._starts + [now])[-RESPAWN_LIMIT:]
        return None

    def stop(self) -> None:
        """SIGTERM the program's process group, SIGKILL it after :data:`STOP_TIMEOUT`."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            logger.warning("the wrapped command ignored SIGTERM for %.0f s; killing it",
                           STOP_TIMEOUT)
            _signal_group(process, signal.SIGKILL)
            process.wait()
        logger.info("stopped the wrapped command")


#: /proc/net/tcp's state column for a listening socket.
_TCP_LISTEN = "0A"


def _listening_in_proc(port: int) -> Optional[bool]:
    """Whether /proc/net/tcp lists a socket listening on ``port`` on 127.0.0.1 or
    every address; None when the table cannot be read (not Linux)."""
    wanted = {"0100007F:%04X" % port, "00000000:%04X" % port}
    try:
        with open("/proc/net/tcp") as table:
            next(table, None)  # the heading
            for line in table:
                fields = line.split()
                if len(fields) > 3 and fields[1] in wanted and fields[3] == _TCP_LISTEN:
                    return True
    except OSError:
        return None
    return False


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except OSError:
        try:
            process.send_signal(signum)
        except OSError:
            pass
