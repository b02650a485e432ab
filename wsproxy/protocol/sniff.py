"""Classify a connection by its first bytes, and answer Flash policy requests.

One listening port serves TLS, plain HTTP (WebSocket upgrades) and Flash
socket policy requests.  The server peeks at the first bytes a client sends
and hands them to :func:`classify`; this module never reads a socket itself.
"""

import enum
import re
from typing import Optional

__all__ = [
    "ConnectionKind",
    "FLASH_POLICY_REQUEST",
    "classify",
    "flash_policy_response",
]


class ConnectionKind(enum.Enum):
    """What a connection speaks, judged from its first bytes."""

    TLS = "tls"
    FLASH_POLICY = "flash-policy"
    HTTP = "http"


# What Flash Player sends before it opens a socket to a host: the request tag
# terminated by a NUL byte.  It then waits for a policy document, also
# NUL-terminated, and closes the connection.
FLASH_POLICY_REQUEST = b"<policy-file-request/>\x00"

# 0x16 is the content type of a TLS handshake record (RFC 8446 §5.1, RFC 5246
# §6.2.1); a ClientHello in the old SSLv2-compatible format starts with a
# two-byte record header whose high bit is set (RFC 5246 Appendix E.2), which
# in practice is 0x80.
_TLS_FIRST_BYTES = frozenset((0x16, 0x80))


def classify(first_bytes: bytes) -> Optional[ConnectionKind]:
    """Say what a connection speaks from the bytes it has sent so far.

    ``first_bytes`` is whatever the server has peeked (bytes, bytearray or
    memoryview).  Returns :attr:`ConnectionKind.TLS` for a TLS or SSLv2-style
    hello, :attr:`ConnectionKind.FLASH_POLICY` when the bytes begin with the
    whole of :data:`FLASH_POLICY_REQUEST`, ``None`` when they are empty or a
    strict prefix of that request (peek again, with a deadline: the rest may
    still be in flight), and :attr:`ConnectionKind.HTTP` for anything else.
    Never raises on any byte string.
    """
    if not first_bytes:
        return None
    if first_bytes[0] in _TLS_FIRST_BYTES:
        return ConnectionKind.TLS
    head = bytes(first_bytes[:len(FLASH_POLICY_REQUEST)])
    if head == FLASH_POLICY_REQUEST:
        return ConnectionKind.FLASH_POLICY
    if FLASH_POLICY_REQUEST.startswith(head):
        return None
    return ConnectionKind.HTTP


# The allowed values of the policy document's two attributes.  Both patterns
# exclude every XML-special character (<, >, &, ", '), so a configured value
# cannot break out of its attribute.
#   domain: "*", a host name or address, or "*." and a domain suffix.
_POLICY_DOMAIN = re.compile(r"\*|(?:\*\.)?[A-Za-z0-9._:-]+")
#   to-ports: "*", or a comma-separated list of ports and "low-high" ranges.
_POLICY_PORT_ITEM = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?")


def _check_policy_ports(ports: str) -> None:
    """Raise ``ValueError`` unless ``ports`` is ``*`` or a valid port list."""
    if ports == "*":
        return
    for item in ports.split(","):
        match = _POLICY_PORT_ITEM.fullmatch(item)
        if match is None:
            raise ValueError("Flash policy ports must be '*' or a comma-separated "
                             "list of PORT or LOW-HIGH, got %r" % ports)
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        if not 0 < low <= high <= 65535:
            raise ValueError("Flash policy port range %r is not within 1-65535 "
                             "with LOW <= HIGH" % item)


def flash_policy_response(domain: str = "*", ports: str = "*") -> bytes:
    """Build the socket policy document that answers a Flash policy request.

    ``domain`` is the ``allow-access-from domain`` value (``*``, a host name
    or address, or ``*.example.com``); ``ports`` is the ``to-ports`` value
    (``*``, or ports and ``LOW-HIGH`` ranges separated by commas, e.g.
    ``80,443,5900-5910``).  Returns the ASCII document followed by the NUL
    byte that ends it.  Raises ``ValueError`` if either value holds anything
    else, so no configured value can change the XML's structure, and
    ``TypeError`` if either is not a ``str``.
    """
    if not isinstance(domain, str) or not isinstance(ports, str):
        raise TypeError("Flash policy domain and ports must be str")
    if _POLICY_DOMAIN.fullmatch(domain) is None:
        raise ValueError("Flash policy domain must be '*', a host name or address, "
                         "or '*.' and a domain, got %r" % domain)
    _check_policy_ports(ports)
    document = ('<cross-domain-policy><allow-access-from domain="%s" to-ports="%s" />'
                '</cross-domain-policy>' % (domain, ports))
    return document.encode("ascii") + b"\x00"
