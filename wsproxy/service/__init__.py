"""Running under a service manager: socket activation, ``--inetd``, readiness and
watchdog notification, privilege drop.

Process concerns only: the CLI layer calls these; nothing below it (server,
handler, relay) imports this package.
"""

from .activation import Follower, serve_inherited, take_listen_fds, take_stdin_socket
from .lifecycle import Lifecycle
from .notify import Keepalive, Notifier, take_notifier
from .privileges import Identity, PrivilegeError, drop_privileges, preload, resolve

__all__ = [
    "Follower", "serve_inherited", "take_listen_fds", "take_stdin_socket",
    "Lifecycle", "Keepalive", "Notifier", "take_notifier",
    "Identity", "PrivilegeError", "drop_privileges", "preload", "resolve",
]
