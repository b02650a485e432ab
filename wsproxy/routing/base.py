"""What every token plugin shares: its failure, and turning its answer into a :class:`Target`.

A plugin answers a token websockify's way: ``(host, port)`` with the port
as a number or text, ``('unix_socket', path)``, or ``None`` for a token it
does not know.  :func:`to_target` checks such an answer and makes it a
:class:`Target`; the built-ins may also answer with a :class:`Target`.
Pure: no sockets.
"""

from typing import Any, Optional

from wsproxy.plugins import BasePlugin
from wsproxy.targets import Target
from wsproxy.tokens import SERVICE_TIMEOUT, TokenServiceError

#: The host name websockify's plugins answer with for a Unix socket target.
UNIX_SOCKET = "unix_socket"

#: Seconds one lookup may take (the token service's deadline): connect,
#: ask and read the whole answer.  Past it the handshake gets 503.
LOOKUP_TIMEOUT = SERVICE_TIMEOUT

#: Longest answer read from a file, an HTTP service or Redis for one token.
MAX_ANSWER = 64 * 1024


class TokenLookupError(TokenServiceError):
    """A token source gave no usable answer; the handshake is refused with 503.

    The message says which source and why, for one log line; it never holds
    a password.
    """


class BuiltinPlugin(BasePlugin):
    """A built-in token plugin: bounds its own lookups, so it is called directly.

    A plugin from elsewhere is called on a helper thread with a deadline
    instead (see :class:`wsproxy.routing.adapter.PluginTokens`).
    """

    #: True: :meth:`lookup` returns (or raises) within :data:`LOOKUP_TIMEOUT`.
    bounded = True
    #: The plugin's name in messages.
    name = "TokenPlugin"


def to_target(host: Any, port: Any) -> Target:
    """A :class:`Target` from a plugin's answer; ``ValueError`` saying what is wrong.

    ``host`` ``'unix_socket'`` makes ``port`` the socket's path.  Otherwise
    ``host`` is a name or address (an IPv6 one may be in brackets) and
    ``port`` a number 1-65535, given as an int, text or bytes.
    """
    if isinstance(host, bytes):
        host = host.decode("utf-8", "replace")
    if isinstance(port, bytes):
        port = port.decode("ascii", "replace")
    if not isinstance(host, str):
        raise ValueError("expected a host name, got %r" % (host,))
    host = host.strip()
    if host == UNIX_SOCKET:
        if not isinstance(port, str) or not port.strip() or "\x00" in port:
            raise ValueError("expected a socket path after unix_socket, got %r" % (port,))
        return Target(unix=port.strip())
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or len(host) > 255 or not all(0x20 < ord(char) < 0x7F for char in host):
        raise ValueError("expected a host name, got %r" % (host,))
    if isinstance(port, str) and port.strip().isdigit():
        port = int(port.strip())
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port <= 65535:
        raise ValueError("expected a port number 1-65535, got %r" % (port,))
    return Target(host=host, port=port)


def answer_to_target(answer: Any) -> Optional[Target]:
    """A plugin's whole answer as a :class:`Target`, or None; ``ValueError`` if malformed."""
    if answer is None or isinstance(answer, Target):
        return answer
    if isinstance(answer, (str, bytes)) or not hasattr(answer, "__len__") or len(answer) != 2:
        raise ValueError("expected (host, port) or ('unix_socket', path), got %r" % (answer,))
    host, port = answer
    return to_target(host, port)


def split_host_port(text: str) -> Target:
    """``host:port`` (the last ``:`` splits) or ``unix_socket:/path`` as a Target; ValueError."""
    text = text.strip()
    if text.startswith(UNIX_SOCKET + ":"):
        return to_target(UNIX_SOCKET, text[len(UNIX_SOCKET) + 1:])
    host, colon, port = text.rpartition(":")
    if not colon:
        raise ValueError("expected host:port or unix_socket:/path, got %r" % text)
    return to_target(host, port)


class TokenRejected(Exception):
    """A plugin refuses a token it understood (an expired JWT, say): 404, the reason logged.

    Its message says why, without the token; it is the log line and the
    text of the 404 answer.
    """
