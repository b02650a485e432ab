"""Where a session's bytes go: the :class:`Target` value and its text forms.

Targets come only from configuration (the command line, the config file, the
token source or an embedder's hook); a client can never name one.  Parsing
here is pure: it opens no sockets.
"""

from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class Target:
    """A TCP ``host``/``port`` pair, or a Unix socket path in ``unix``.

    ``tls`` asks for TLS to the target (``--ssl-target``).
    """

    host: Optional[str] = None
    port: Optional[int] = None
    unix: Optional[str] = None
    tls: bool = False

    def __str__(self) -> str:
        if self.unix is not None:
            return "unix:" + self.unix
        if self.host is not None and ":" in self.host:
            return "[%s]:%d" % (self.host, self.port)
        return "%s:%d" % (self.host, self.port)


def parse_host_port(text: str, default_host: Optional[str] = None) -> Tuple[str, int]:
    """Split ``host:port``, ``[v6::addr]:port`` or (with ``default_host``) ``port``.

    Raises ``ValueError`` with a message saying what was expected.
    """
    text = text.strip()
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1:close + 2] != ":":
            raise ValueError("expected [IPV6]:PORT, got %r" % text)
        host, port_text = text[1:close], text[close + 2:]
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
        if ":" in host:
            raise ValueError("write an IPv6 address in brackets: [%s]:%s" % (host, port_text))
    elif default_host is not None:
        host, port_text = default_host, text
    else:
        raise ValueError("expected HOST:PORT, got %r" % text)
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("expected a port number 0-65535, got %r" % port_text)
    if not host and default_host is None:
        raise ValueError("expected HOST:PORT, got %r" % text)
    return host, int(port_text)


def parse_target(text: str) -> Target:
    """Parse ``host:port``, ``[v6]:port`` or ``unix:/path`` into a :class:`Target`."""
    text = text.strip()
    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            raise ValueError("expected unix:/PATH, got %r" % text)
        return Target(unix=path)
    host, port = parse_host_port(text)
    if port == 0:
        raise ValueError("target port must not be 0")
    return Target(host=host, port=port)
