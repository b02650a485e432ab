"""A TLS half-close never loses what the peer is still sending (issue 12, item 9).

When wsproxy ends its sending side of a TLS connection (the client closed,
so the ``--ssl-target`` target's write side is shut; or the linger after
failing a TLS client), it sends close_notify and then goes on reading until
the peer's EOF.  Sending close_notify must neither consume nor fail on
application data that already arrived and was not yet read: the peer must be
able to finish what it is sending and then see a clean close_notify.
"""

import socket
import ssl
import threading

import pytest

import certs
from conftest import THREAD_DEADLINE
from wsproxy.streams import TLSStream

pki = pytest.fixture(scope="module")(certs.pki)

#: What the peer sends: far more than the socket buffers hold, so most of it
#: is still on its way when our side shuts its writing down.
ANSWER = 8 * 1024 * 1024


class AnsweringPeer:
    """A TLS server that sends ``ANSWER`` bytes, then reads until close_notify.

    Records ``sent``, ``error`` (what ended it early, if anything) and
    ``clean_eof`` (the other side's close_notify came after the whole answer).
    """

    def __init__(self, pki) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(pki.combined)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sent = 0
        self.error = None
        self.clean_eof = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            raw, _ = self.listener.accept()
            raw.settimeout(10)
            with self.context.wrap_socket(raw, server_side=True) as tls:
                block = b"x" * 65536
                while self.sent < ANSWER:
                    tls.sendall(block)
                    self.sent += len(block)
                while tls.recv(65536):
                    pass
                self.clean_eof = True
        except (OSError, ssl.SSLError) as exc:
            self.error = exc

    def stop(self) -> None:
        self.listener.close()
        self.thread.join(THREAD_DEADLINE)


@pytest.mark.parametrize("first_read", [1, 16384])
def test_shutdown_write_with_unread_data_loses_nothing(pki, first_read):
    peer = AnsweringPeer(pki)
    sock = socket.create_connection(("127.0.0.1", peer.port), timeout=10)
    stream = TLSStream(sock, ssl.create_default_context(cafile=pki.ca),
                       server_side=False, server_hostname="localhost")
    try:
        stream.do_handshake(10)
        buffer = bytearray(first_read)
        received = stream.recv_into(buffer)  # more has arrived than was read
        stream.shutdown_write()
        buffer = bytearray(65536)
        while True:
            count = stream.recv_into(buffer)
            if not count:
                break
            received += count
        peer.thread.join(10)
        assert peer.error is None, "the peer failed after sending %d bytes: %r" % (peer.sent,
                                                                                  peer.error)
        assert received == ANSWER, "received %d of %d bytes" % (received, ANSWER)
        assert peer.clean_eof, "our close_notify never reached the peer"
    finally:
        stream.close()
        peer.stop()
