"""Listening sockets we did not bind: systemd socket activation and ``--inetd``.

Socket activation (``sd_listen_fds``): the manager binds, then starts us
with the sockets as file descriptors 3, 4, ... and ``LISTEN_FDS`` (how
many) and ``LISTEN_PID`` (our pid: variables inherited by some other
process are not for us).  ``--inetd`` (websockify's meaning, inetd's
``wait`` mode): the listening socket is standard input.

Either way the server is built with ``bind_and_activate=False`` around the
inherited socket; extra sockets get a :class:`Follower` that only accepts
and hands each connection to the first server, so every session, counter
and table lives in one place.
"""

import os
import socket
import socketserver
import stat
from typing import List, MutableMapping

from ..server import ProxyServer
from ..settings import ConfigError, Settings

#: The first inherited descriptor (``SD_LISTEN_FDS_START``).
LISTEN_FDS_START = 3


def activation_requested(environ: MutableMapping[str, str]) -> bool:
    """Whether ``environ`` passes us sockets (``LISTEN_FDS`` with our own ``LISTEN_PID``)."""
    return (environ.get("LISTEN_PID", "") == str(os.getpid())
            and environ.get("LISTEN_FDS", "0").isdigit() and int(environ["LISTEN_FDS"]) > 0)


def take_listen_fds(environ: MutableMapping[str, str]) -> List[socket.socket]:
    """The sockets the manager passed, as listening stream sockets; [] when none.

    The ``LISTEN_*`` variables are removed from ``environ`` (workers and
    anything we fork must not take the sockets again); the descriptors are
    made close-on-exec.  Raises :class:`ConfigError` when one is not a
    listening stream socket (a unit file mistake, such as ``ListenDatagram=``).
    """
    if not activation_requested(environ):
        return []
    count = int(environ["LISTEN_FDS"])
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        environ.pop(name, None)
    return [_listening_socket(fd, "socket activation: descriptor %d" % fd)
            for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + count)]


def take_stdin_socket() -> socket.socket:
    """``--inetd``: the listening socket on standard input.

    Standard input is replaced by ``/dev/null``; standard output and error,
    when they are the same socket (as inetd hands them over), too, so that
    a log line never goes to the listening socket.
    """
    sock = _listening_socket(os.dup(0), "--inetd: standard input")
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in (0, 1, 2):
            if fd == 0 or _is_socket(fd):
                os.dup2(null, fd)
    finally:
        os.close(null)
    return sock


def _is_socket(fd: int) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


def _listening_socket(fd: int, what: str) -> socket.socket:
    if not _is_socket(fd):
        raise ConfigError("%s is not a socket" % what)
    sock = socket.socket(fileno=fd)
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    if sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()
        raise ConfigError("%s is not a listening stream socket" % what)
    sock.set_inheritable(False)
    return sock


class InheritedUnixProxyServer(ProxyServer):
    """A :class:`ProxyServer` on an inherited ``AF_UNIX`` socket: its path
    belongs to whoever bound it, so closing does not remove it."""

    address_family = socket.AF_UNIX


def serve_inherited(sockets: List[socket.socket], settings: Settings) -> ProxyServer:
    """A :class:`ProxyServer` on ``sockets[0]``, with ``followers`` for the rest.

    Nothing is bound or listened here: the sockets already listen.  The
    returned server's ``followers`` attribute lists a :class:`Follower`
    per extra socket (the caller runs and stops them with the server).
    """
    first = sockets[0]
    server_class = InheritedUnixProxyServer if first.family == socket.AF_UNIX else ProxyServer
    server = server_class(_address(first), settings, bind_and_activate=False)
    server.socket.close()
    server.socket = first
    server.server_address = _address(first)
    # As server_activate does: several processes (--workers) may wait on it.
    first.setblocking(False)
    server.followers = [Follower(sock, server) for sock in sockets[1:]]
    return server


def _address(sock: socket.socket):
    address = sock.getsockname()
    if isinstance(address, bytes):  # an abstract Unix name
        return "@" + address.lstrip(b"\0").decode("utf-8", "replace")
    return address


class Follower(socketserver.BaseServer):
    """Accepts on one more inherited socket for a :class:`ProxyServer` (``leader``).

    Only the accept happens here: each connection goes to the leader's
    ``process_request``, so its limits, sessions and counters apply.
    """

    def __init__(self, sock: socket.socket, leader: ProxyServer) -> None:
        super().__init__(_address(sock), leader.RequestHandlerClass)
        self.socket = sock
        self.leader = leader
        sock.setblocking(False)

    def fileno(self) -> int:
        return self.socket.fileno()

    def get_request(self):
        return self.socket.accept()

    def verify_request(self, request, client_address) -> bool:
        return self.leader.verify_request(request, client_address)

    def process_request(self, request, client_address) -> None:
        self.leader.process_request(request, client_address)

    def handle_error(self, request, client_address) -> None:
        self.leader.handle_error(request, client_address)

    def shutdown_request(self, request) -> None:
        self.leader.shutdown_request(request)

    def server_close(self) -> None:
        self.socket.close()
