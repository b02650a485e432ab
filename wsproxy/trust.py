"""Which peers are trusted proxies (``--trusted-proxy``): addresses and networks.

Shared by the server (PROXY protocol headers) and the handler
(``X-Forwarded-For`` / ``Forwarded``).  Pure: no sockets.
"""

import functools
import ipaddress
from typing import Iterable, Tuple


@functools.lru_cache(maxsize=32)
def _parse(entries: Tuple[str, ...]) -> Tuple:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def networks(entries: Iterable[str]) -> Tuple:
    """``--trusted-proxy`` entries (addresses or networks) as ``ip_network`` objects."""
    entries = tuple(entries or ())
    return _parse(entries) if entries else ()


def is_trusted(address, trusted: Tuple) -> bool:
    """True when ``address`` (text) lies in one of the ``trusted`` networks.

    An IPv4-mapped IPv6 address (``::ffff:10.0.0.1``, as a dual-stack
    listener reports IPv4 peers) counts as its IPv4 address.
    """
    try:
        ip = ipaddress.ip_address(address)
    except (TypeError, ValueError):
        return False
    if getattr(ip, "ipv4_mapped", None) is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in trusted)
