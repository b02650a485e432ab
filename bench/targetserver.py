#!/usr/bin/env python3
"""The benchmark's TCP targets: a sink, a source and an echo behind one port.

Usage::

    python3 bench/targetserver.py [--cert PEM]

Listens on two ports of 127.0.0.1 the kernel picks: plain TCP, and TLS when
``--cert`` is given (for measuring the load client over TLS without a proxy).
Prints ``ports PLAIN TLS`` (TLS is 0 without ``--cert``) once listening and
serves until its standard input closes.

Every connection starts with a request of exactly ``REQUEST_SIZE`` ASCII
bytes, space-padded, that names its role; through a proxy the client sends it
as its first WebSocket message:

``SINK n``
    answer ``READY`` (one byte), read exactly ``n`` bytes into memory, hash
    them (after the last byte, so hashing never slows the transfer), then
    write one JSON line
    ``{"bytes", "sha256", "first", "last"}`` (``time.monotonic()`` at the first
    and last byte, comparable across processes on Linux), then wait for EOF.
``SOURCE n seed chunk framed``
    send ``n`` pseudo-random bytes drawn from ``seed``, one write of ``chunk``
    bytes at a time, then the 64 hex digits of their SHA-256, then close.
    ``framed`` 1 wraps every write in an unmasked RFC 6455 binary frame, so
    the client can be measured against this process with no proxy between.
``ECHO``
    send back every byte received, until EOF.
"""

import argparse
import hashlib
import json
import os
import random
import selectors
import socket
import ssl
import struct
import sys
import threading
import time
from typing import Dict, Tuple

REQUEST_SIZE = 64
#: A sink's first answer: its buffer is ready, the timed transfer may start.
READY = b"R"
#: The source cycles through this many seeded bytes; an odd size keeps
#: write boundaries drifting across the pool.
POOL_SIZE = 4 * 1024 * 1024 + 4099
_RECV_SIZE = 1024 * 1024

_pools: Dict[int, bytes] = {}
_digests: Dict[Tuple[int, int], str] = {}
_cache_lock = threading.Lock()


def request(role: str, *args: object) -> bytes:
    """The request bytes for ``role`` and its arguments."""
    text = " ".join([role] + [str(arg) for arg in args]).encode("ascii")
    if len(text) > REQUEST_SIZE:
        raise ValueError("request too long: %r" % text)
    return text.ljust(REQUEST_SIZE)


def source_pool(seed: int) -> bytes:
    """The seeded bytes a SOURCE stream cycles through."""
    with _cache_lock:
        pool = _pools.get(seed)
        if pool is None:
            pool = _pools[seed] = random.Random(seed).randbytes(POOL_SIZE)
        return pool


def source_digest(nbytes: int, seed: int) -> str:
    """SHA-256 (hex) of the first ``nbytes`` of the cycled pool for ``seed``."""
    key = (nbytes, seed)
    with _cache_lock:
        if key in _digests:
            return _digests[key]
    pool = source_pool(seed)
    digest = hashlib.sha256()
    whole, rest = divmod(nbytes, len(pool))
    for _ in range(whole):
        digest.update(pool)
    digest.update(pool[:rest])
    with _cache_lock:
        _digests[key] = digest.hexdigest()
        return _digests[key]


def frame_header(length: int) -> bytes:
    """Header of an unmasked, final RFC 6455 binary frame (§5.2)."""
    if length < 126:
        return struct.pack("!BB", 0x82, length)
    if length < 65536:
        return struct.pack("!BBH", 0x82, 126, length)
    return struct.pack("!BBQ", 0x82, 127, length)


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    parts = []
    while count:
        data = sock.recv(count)
        if not data:
            raise ConnectionError("peer closed before %d more bytes" % count)
        parts.append(data)
        count -= len(data)
    return b"".join(parts)


def touched_buffer(size: int) -> bytearray:
    """A zeroed buffer whose pages are already mapped (no page faults while timing)."""
    buffer = bytearray(size)
    buffer[::4096] = b"\x01" * len(range(0, size, 4096))
    return buffer


class BufferPool:
    """Large receive buffers kept between connections (mapping 1 GiB takes time)."""

    def __init__(self) -> None:
        self._free = []
        self._lock = threading.Lock()

    def take(self, size: int) -> bytearray:
        with self._lock:
            fitting = [b for b in self._free if len(b) >= size]
            if fitting:
                buffer = min(fitting, key=len)
                self._free.remove(buffer)
                return buffer
        return touched_buffer(max(size, 1))

    def give(self, buffer: bytearray) -> None:
        with self._lock:
            self._free.append(buffer)


_sink_buffers = BufferPool()


def serve_sink(sock: socket.socket, nbytes: int) -> None:
    """Receive into memory, then hash: hashing never slows the transfer being timed."""
    buffer = _sink_buffers.take(nbytes)
    try:
        view = memoryview(buffer)
        sock.sendall(READY)  # the client starts sending only now
        got = 0
        first = last = 0.0
        while got < nbytes:
            count = sock.recv_into(view[got:nbytes])
            if not count:
                raise ConnectionError("sink: peer closed after %d of %d bytes" % (got, nbytes))
            last = time.monotonic()
            if not got:
                first = last
            got += count
        digest = hashlib.sha256(view[:nbytes]).hexdigest()
        view.release()
    finally:
        _sink_buffers.give(buffer)
    report = {"bytes": got, "sha256": digest, "first": first, "last": last}
    sock.sendall(json.dumps(report).encode("ascii") + b"\n")
    while sock.recv(65536):
        pass


def serve_source(sock: socket.socket, nbytes: int, seed: int, chunk: int, framed: bool) -> None:
    pool = source_pool(seed)
    trailer = source_digest(nbytes, seed).encode("ascii")
    view = memoryview(pool)
    position, left = 0, nbytes
    while left:
        size = min(chunk, left, len(pool) - position)
        piece = view[position:position + size]
        if framed:  # one write per frame, as through a proxy: only the header is added
            sock.sendall(frame_header(size) + piece)
        else:
            sock.sendall(piece)
        left -= size
        position = (position + size) % len(pool)
    sock.sendall(frame_header(len(trailer)) + trailer if framed else trailer)
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(65536):
        pass


def serve_echo_blocking(sock: socket.socket) -> None:
    while True:
        data = sock.recv(65536)
        if not data:
            return
        sock.sendall(data)


class EchoLoop:
    """Echo for many plain sockets from one thread (cheap at thousands of sessions)."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._incoming = []
        self._lock = threading.Lock()
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            self._incoming.append(sock)
        self._wake_w.send(b"x")

    def run(self) -> None:
        pending: Dict[socket.socket, bytes] = {}
        while True:
            for key, events in self.selector.select():
                sock = key.fileobj
                if sock is self._wake_r:
                    self._take_new()
                    continue
                if events & selectors.EVENT_WRITE:
                    self._flush(sock, pending)
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    self._drop(sock, pending)
                    continue
                try:
                    sent = sock.send(data)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    self._drop(sock, pending)
                    continue
                if sent < len(data):
                    pending[sock] = data[sent:]
                    self.selector.modify(sock, selectors.EVENT_WRITE)

    def _take_new(self) -> None:
        try:
            self._wake_r.recv(65536)
        except BlockingIOError:
            pass
        with self._lock:
            new, self._incoming = self._incoming, []
        for sock in new:
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ)

    def _flush(self, sock: socket.socket, pending: Dict[socket.socket, bytes]) -> None:
        data = pending.pop(sock, b"")
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._drop(sock, pending)
            return
        if sent < len(data):
            pending[sock] = data[sent:]
        else:
            self.selector.modify(sock, selectors.EVENT_READ)

    def _drop(self, sock: socket.socket, pending: Dict[socket.socket, bytes]) -> None:
        pending.pop(sock, None)
        self.selector.unregister(sock)
        sock.close()


def handle(sock: socket.socket, echo_loop: EchoLoop, context) -> None:
    """Serve one connection according to its request; errors end it quietly."""
    handed_off = False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if context is not None:
            sock = context.wrap_socket(sock, server_side=True)
        words = _recv_exactly(sock, REQUEST_SIZE).decode("ascii").split()
        role, args = words[0], [int(word) for word in words[1:]]
        if role == "SINK":
            serve_sink(sock, *args)
        elif role == "SOURCE":
            nbytes, seed, chunk, framed = args
            serve_source(sock, nbytes, seed, chunk, bool(framed))
        elif role == "ECHO" and context is None:
            echo_loop.add(sock)
            handed_off = True
        elif role == "ECHO":
            serve_echo_blocking(sock)
        else:
            sys.stderr.write("targetserver: unknown request %r\n" % words)
    except (OSError, ValueError, IndexError, TypeError, ssl.SSLError) as exc:
        sys.stderr.write("targetserver: connection ended: %s\n" % exc)
    finally:
        if not handed_off:
            sock.close()


def accept_forever(listener: socket.socket, echo_loop: EchoLoop, context) -> None:
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=handle, args=(sock, echo_loop, context), daemon=True).start()


def listen() -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    return listener


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cert", help="PEM with certificate and key: also listen for TLS")
    options = parser.parse_args()
    threading.stack_size(256 * 1024)
    echo_loop = EchoLoop()
    threading.Thread(target=echo_loop.run, daemon=True).start()
    plain = listen()
    threading.Thread(target=accept_forever, args=(plain, echo_loop, None), daemon=True).start()
    tls_port = 0
    if options.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(options.cert)
        secure = listen()
        tls_port = secure.getsockname()[1]
        threading.Thread(target=accept_forever, args=(secure, echo_loop, context),
                         daemon=True).start()
    print("ports %d %d" % (plain.getsockname()[1], tls_port), flush=True)
    sys.stdin.read()  # until the parent closes the pipe (or dies)
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
