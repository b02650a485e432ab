"""Sockets with one deadline for a whole exchange: what the network token plugins share.

Every wait (connect, TLS handshake, each receive) gets only the time left
before the deadline, so a service that trickles its answer byte by byte
cannot hold a handshake longer than the lookup timeout.  :func:`http_get`
is a small HTTP/1.1 ``GET`` on top (``Connection: close``, redirects
followed, the answer parsed by ``http.client``).
"""

import http.client
import io
import socket
import ssl
import time
import urllib.parse
from typing import Optional, Tuple

#: Redirects followed by :func:`http_get` before it gives up.
MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)


class DeadlinePassed(OSError):
    """The deadline came before the exchange finished."""


def left(deadline: float) -> float:
    """Seconds left before ``deadline``; raises :class:`DeadlinePassed` when none are."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DeadlinePassed("no answer in time")
    return remaining


def connect(host: str, port: int, deadline: float,
            tls: Optional[ssl.SSLContext] = None) -> socket.socket:
    """A connected TCP socket (TLS-wrapped with ``tls``, checked against ``host``)."""
    sock = socket.create_connection((host, port), timeout=left(deadline))
    if tls is None:
        return sock
    try:
        sock.settimeout(left(deadline))
        return tls.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


def recv_some(sock: socket.socket, deadline: float, size: int = 16384) -> bytes:
    """One receive, waiting at most until ``deadline``; b"" at end of stream."""
    sock.settimeout(left(deadline))
    try:
        return sock.recv(size)
    except socket.timeout:
        raise DeadlinePassed("no answer in time") from None


class _Recorded:
    """Just enough of a socket for ``http.client.HTTPResponse`` to parse bytes already read."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, mode: str, *args, **kwargs):
        return io.BufferedReader(io.BytesIO(self._data))


def http_get(url: str, deadline: float, limit: int,
             context: Optional[ssl.SSLContext] = None
             ) -> Tuple[int, http.client.HTTPMessage, bytes, str]:
    """``GET url``; returns ``(status, headers, body, final_url)``.

    Follows up to :data:`MAX_REDIRECTS` redirects.  Raises ``OSError``
    (:class:`DeadlinePassed` when out of time), ``ValueError`` for an
    answer longer than ``limit`` bytes or a URL that is not http(s), and
    ``http.client.HTTPException`` for a malformed answer.
    """
    for _hop in range(MAX_REDIRECTS + 1):
        status, headers, body = _get_once(url, deadline, limit, context)
        location = headers.get("Location")
        if status not in _REDIRECTS or not location:
            return status, headers, body, url
        url = urllib.parse.urljoin(url, location.strip())
    raise ValueError("more than %d redirects" % MAX_REDIRECTS)


def _get_once(url: str, deadline: float, limit: int, context: Optional[ssl.SSLContext]):
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http(s):// URL, got %r" % url)
    tls = None
    if scheme == "https":
        tls = context if context is not None else ssl.create_default_context()
    port = parts.port or (443 if tls else 80)
    path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    host_header = parts.netloc.rpartition("@")[2]
    request = ("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: wsproxy\r\nAccept: */*\r\n"
               "Connection: close\r\n\r\n" % (path, host_header)).encode("latin-1")
    sock = connect(parts.hostname, port, deadline, tls)
    try:
        sock.settimeout(left(deadline))
        sock.sendall(request)
        data = bytearray()
        while True:
            chunk = recv_some(sock, deadline)
            if not chunk:
                break
            data += chunk
            if len(data) > limit + 16384:  # the body's limit plus room for the head
                raise ValueError("answer longer than %d bytes" % limit)
    finally:
        sock.close()
    response = http.client.HTTPResponse(_Recorded(bytes(data)), method="GET")
    response.begin()
    body = response.read()
    if len(body) > limit:
        raise ValueError("answer longer than %d bytes" % limit)
    return response.status, response.headers, body
