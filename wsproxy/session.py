"""What the hooks and the access log learn about one session."""

import time
from dataclasses import dataclass, field
from typing import Any, List, Optional

from .logs import escape


@dataclass
class SessionInfo:
    """One proxied WebSocket session, as passed to the session hooks.

    Fields: ``number`` (unique within one server, and across its ``--workers``), ``client_address``
    (the peer, or the forwarded client address from a trusted proxy),
    ``target`` (a :class:`~wsproxy.Target`, or a description of an embedder's
    socket), ``protocol`` (``"rfc6455"``, ``"hixie-76"`` or ``"hixie-75"``),
    ``subprotocol`` (``"binary"``, ``"base64"`` or ``None``), ``path`` (the
    request target), ``started`` (``time.time()`` at the 101).  Filled in when
    it ends: ``bytes_from_client`` / ``bytes_to_client`` (payload bytes),
    ``close_code`` (sent or received; 1006 when the connection just
    dropped), ``close_reason`` and ``duration`` in seconds.

    What the audit log also records, when known: ``via`` (the balancer
    that sent a PROXY protocol header), ``forwarded_for`` (the addresses
    believed from a trusted proxy's forwarding header, client first),
    ``tls_version`` and ``client_cert`` (the client certificate's subject),
    ``user`` (``--auth-file``), ``token`` (``--token-source``),
    ``compression`` (the agreed ``Sec-WebSocket-Extensions``) and, for a
    refused handshake, ``status`` (the HTTP status answered).
    """

    number: int
    client_address: Any
    target: Any = None
    protocol: str = "rfc6455"
    subprotocol: Optional[str] = None
    path: str = "/"
    started: float = field(default_factory=time.time)
    bytes_from_client: int = 0
    bytes_to_client: int = 0
    close_code: Optional[int] = None
    close_reason: str = ""
    duration: float = 0.0
    via: Any = None
    forwarded_for: List[str] = field(default_factory=list)
    tls_version: Optional[str] = None
    client_cert: Optional[str] = None
    user: Optional[str] = None
    token: Optional[str] = None
    compression: Optional[str] = None
    status: Optional[int] = None

    @property
    def client_text(self) -> str:
        """The client address as ``host:port`` (or a Unix socket's name)."""
        return format_address(self.client_address)


def format_address(address: Any) -> str:
    """``host:port`` or ``[v6]:port`` for an address tuple; the text otherwise, for a log line.

    Always escaped (see :func:`wsproxy.logs.escape`): an address may come
    from a peer (a PROXY protocol UNIX path, a Unix socket client's name)
    and must not be able to break or forge a log line.
    """
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = escape(address[0]), escape(address[1])
        return ("[%s]:%s" if ":" in host else "%s:%s") % (host, port)
    return escape(address) if address else "unix"

