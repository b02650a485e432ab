"""Running under a service manager: socket activation, ``--inetd``, readiness and
watchdog notification, privilege drop, the open-file limit.

Process concerns only: the CLI layer calls these; nothing below it (server,
handler, relay) imports this package.
"""

from .activation import Follower, serve_inherited, take_listen_fds, take_stdin_socket
from .fdlimit import raise_open_file_limit
from .lifecycle import Lifecycle
from .notify import Keepalive, Notifier, take_notifier
from .privileges import Identity, PrivilegeError, drop_privileges, preload, resolve

__all__ = [
    "Follower", "serve_inherited", "take_listen_fds", "take_stdin_socket",
    "Lifecycle", "Keepalive", "Notifier", "take_notifier",
    "Identity", "PrivilegeError", "drop_privileges", "preload", "resolve",
    "raise_open_file_limit",
]
