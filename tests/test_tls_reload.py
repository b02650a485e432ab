"""SIGHUP re-reads ``--cert``/``--key``: new connections get the new certificate.

Two unrelated certificate sets made by the test; a real ``python -m
wsproxy`` child; a real TLS client checking which certificate it was
served before and after the reload, while a wss:// session opened before
the reload goes on.  A bad new file keeps the old certificate, with one
error line.
"""

import os
import shutil
import signal
import ssl

import pytest

from certs import pki
from conftest import EXIT_DEADLINE, free_port
from test_tls import TLSClient, client_context

OP_BINARY = 0x2


@pytest.fixture(scope="module")
def two_pkis(tmp_path_factory):
    return pki(tmp_path_factory), pki(tmp_path_factory)


def install(files, directory) -> None:
    """Put ``files``' certificate and key at the paths wsproxy reads (renamed into place)."""
    for source, name in ((files.cert, "server.pem"), (files.key, "server.key")):
        shutil.copy(source, str(directory / (name + ".new")))
        os.replace(str(directory / (name + ".new")), str(directory / name))


def served_certificate(port: int, files) -> bytes:
    """Connect, verifying against ``files``' CA; the DER certificate the server sent."""
    with TLSClient(port, client_context(files.ca)) as wss:
        wss.handshake(protocols=["binary"])
        der = wss.sock.getpeercert(binary_form=True)
        echo(wss, b"new connection")
        wss.send_close(1000)
        wss.recv_close()
    return der


def der_of(files) -> bytes:
    with open(files.cert) as stream:
        return ssl.PEM_cert_to_DER_cert(stream.read())


def echo(ws, payload: bytes) -> None:
    ws.send_binary(payload)
    assert ws.recv_stream(len(payload), opcode=OP_BINARY) == payload


def test_sighup_swaps_the_certificate_and_keeps_sessions(wsproxy_process, echo_target,
                                                         two_pkis, tmp_path):
    first, second = two_pkis
    install(first, tmp_path)
    port = free_port()
    child = wsproxy_process("-f", "--cert", str(tmp_path / "server.pem"), "--key",
                            str(tmp_path / "server.key"), "127.0.0.1:%d" % port,
                            echo_target.address)
    child.wait_listening(port)
    assert served_certificate(port, first) == der_of(first)
    with TLSClient(port, client_context(first.ca)) as old:
        old.handshake(protocols=["binary"])
        echo(old, b"before the reload")

        install(second, tmp_path)
        child.send_signal(signal.SIGHUP)
        child.wait_for(lambda: "certificate reloaded" in child.output(), "the reload")
        assert served_certificate(port, second) == der_of(second)
        with pytest.raises(ssl.SSLCertVerificationError):
            TLSClient(port, client_context(first.ca))
        echo(old, b"after the reload, same session")

        # A half-written renewal: the certificate no longer matches the key.
        shutil.copy(first.cert, str(tmp_path / "server.pem"))
        child.send_signal(signal.SIGHUP)
        child.wait_for(lambda: child.output().count("SIGHUP: log reopened") == 2,
                       "the second reload")
        child.wait_for(lambda: "keeping the previous certificate" in child.output(),
                       "the error line")
        assert served_certificate(port, second) == der_of(second)
        echo(old, b"after the failed reload")
        old.send_close(1000)
        assert old.recv_close()[0] == 1000
    child.send_signal(signal.SIGTERM)
    assert child.wait_exit(EXIT_DEADLINE) == 0
    errors = [line for line in child.output().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "keeping the previous certificate" in errors[0], errors
