"""Which peers are trusted proxies (``--trusted-proxy``), and what they say about the client.

Shared by the server (PROXY protocol headers) and the handler
(``X-Forwarded-For``).  Only ``X-Forwarded-For`` is read: it is what
nginx (``$proxy_add_x_forwarded_for``), HAProxy (``option forwardfor``)
and most balancers append.  RFC 7239 ``Forwarded`` is ignored: reading two
headers lets a client put its own copy in the one a proxy does not write,
and have it believed.  Pure: no sockets.
"""

import functools
import ipaddress
from dataclasses import dataclass
from typing import Iterable, List, Optional, Tuple


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


def plain_address(text: str) -> Optional[str]:
    """The canonical text of ``text`` if it is a plain IPv4 or IPv6 address, else None.

    Plain means nothing else: no scope id (``fe80::1%eth0``; the scope of a
    hop we never saw means nothing here, and it is free text), no port, no
    brackets, no leading zeros in IPv4 (``010.0.0.1`` reads as octal to
    some tools).  An IPv4-mapped IPv6 address comes back as its IPv4 text.
    """
    text = text.strip(" \t")  # optional white space around list items (RFC 7230 §7)
    if not text or not _ADDRESS_CHARACTERS.issuperset(text):
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if ip.version == 4 and str(ip) != text:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped if mapped is not None else ip)


_ADDRESS_CHARACTERS = frozenset("0123456789abcdefABCDEF.:")


@dataclass(frozen=True)
class ForwardedClient:
    """What an ``X-Forwarded-For`` chain says about the client.

    Fields: ``address`` (the client's address, canonical text, or None
    when the chain names none that can be believed) and ``bad`` (the
    entry that stopped the walk because it is not a plain address, else
    None), ``chain`` (the believed entries: the client, then the trusted
    proxies after it).
    """

    address: Optional[str]
    bad: Optional[str] = None
    chain: Tuple[str, ...] = ()


def forwarded_client(x_forwarded_for: str, trusted: Tuple) -> ForwardedClient:
    """The client address an ``X-Forwarded-For`` value names, believing trusted hops only.

    Call it only when the connection's own peer is trusted.  Each proxy
    appends the address it received the request from, so walking the list
    from the right, every entry up to and including the first one that is
    not itself a trusted proxy was written by a trusted hop: that entry is
    the client (what nginx's realip module does with ``real_ip_recursive
    on``).  Entries further left were written by the client or hops we do
    not trust and are never looked at.  An entry met on the way that is not
    a plain address (:func:`plain_address`) ends the walk with no client.
    When every entry is a trusted proxy, the leftmost is the client.
    ``x_forwarded_for`` is the header's value (repeated header lines
    joined with ``,`` in order).
    """
    entries = [entry.strip(" \t") for entry in x_forwarded_for.split(",")]
    address = None
    believed: List[str] = []
    for entry in reversed(entries):
        if not entry:
            continue
        address = plain_address(entry)
        if address is None:
            return ForwardedClient(None, entry)
        believed.insert(0, address)
        if not is_trusted(address, trusted):
            break
    return ForwardedClient(address, None, tuple(believed))
