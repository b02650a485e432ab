"""The PROXY protocol header wsproxy sends its target first (``--target-proxy-protocol``).

A backend behind wsproxy sees every connection come from wsproxy; this
header tells it who the client is, in the format HAProxy's ``send-proxy``
and ``send-proxy-v2`` write (nginx's ``listen ... proxy_protocol`` and
HAProxy's ``accept-proxy`` read it).  :func:`header_for` gathers what one
session knows (the client's address as wsproxy believes it, the address it
reached, the Host header, the session number, the client's TLS connection)
and returns the bytes; the handler writes them.  No sockets here.
"""

import ssl
from typing import Any, List, Optional

from .protocol.proxy_protocol import TLV, TLVType, UNIQUE_ID_MAX_LENGTH, build_header, ssl_tlv

#: ``--target-proxy-protocol`` values and the header version each sends.
VERSIONS = {"v1": 1, "v2": 2}

#: The longest authority TLV sent; a longer Host header is left out (HAProxy
#: reads at most 255 bytes of it).
AUTHORITY_MAX_LENGTH = 255


def header_for(version: str, source: Any, destination: Any, number: int,
               host: Optional[str] = None, tls: Optional[ssl.SSLObject] = None) -> bytes:
    """The header for one session to its target.

    ``version`` is ``"v1"`` or ``"v2"``; ``source`` the client's address as
    wsproxy believes it and ``destination`` the address it reached
    (``(ip, port)``; anything else, such as a Unix socket client's empty
    name, makes the header say UNKNOWN / LOCAL).  Version 2 adds TLVs:
    ``PP2_TYPE_AUTHORITY`` from ``host`` (a Host header; its port is
    dropped), ``PP2_TYPE_UNIQUE_ID`` with the session ``number`` and, when
    ``tls`` is the client's TLS connection, ``PP2_TYPE_SSL``.  Raises
    ValueError for an unknown ``version``.
    """
    if version not in VERSIONS:
        raise ValueError("target-proxy-protocol: expected v1 or v2, got %r" % (version,))
    if VERSIONS[version] == 1:
        return build_header(1, source, destination)
    tlvs: List[TLV] = []
    authority = host_name(host)
    if authority:
        tlvs.append((TLVType.AUTHORITY, authority))
    tlvs.append((TLVType.UNIQUE_ID, str(number).encode("ascii")[:UNIQUE_ID_MAX_LENGTH]))
    if tls is not None:
        tlvs.append(_ssl_tlv(tls))
    return build_header(2, source, destination, tlvs)


def host_name(host: Optional[str]) -> Optional[bytes]:
    """A Host header's host (``example.org``, ``::1``), UTF-8, or None when empty or too long."""
    host = (host or "").strip()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    data = host.encode("utf-8", "replace")
    return data if 0 < len(data) <= AUTHORITY_MAX_LENGTH else None


def _ssl_tlv(tls: ssl.SSLObject) -> TLV:
    """§2.2.6 for the client's TLS connection: version, cipher, client certificate's CN."""
    cipher = tls.cipher()
    # getpeercert() holds the certificate only when it was verified
    # (--verify-client); an unverified one reads as none at all.
    certificate = tls.getpeercert() or {}
    common_name = next((value for rdn in certificate.get("subject", ()) for key, value in rdn
                        if key == "commonName"), None)
    return ssl_tlv(version=tls.version(), cipher=cipher[0] if cipher else None,
                   common_name=common_name, client_certificate=bool(certificate))
