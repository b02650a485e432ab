"""Throw-away TLS material for the tests, made with the ``openssl`` command.

:func:`make_test_pki` writes into a directory a small CA, a server
certificate it signed (for ``localhost`` and ``127.0.0.1``), the same
certificate and key in one PEM file, and a second, unrelated CA (a client
that trusts only that one rejects the server).  Keys are P-256 so the whole
set takes a fraction of a second.

:func:`pki` is the pytest helper the test modules call from a fixture: it
skips the test, saying why, when ``openssl`` is not installed.
"""

import os
import shutil
import subprocess
from dataclasses import dataclass

import pytest

#: Everything the certificates need, in one file passed with -config/-extfile.
_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = wsproxy test

[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash

[v3_server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""


class OpenSSLMissing(RuntimeError):
    """The ``openssl`` command is not on ``PATH``."""


@dataclass(frozen=True)
class TestPKI:
    """Paths of the generated files.

    ``ca`` (the CA certificate clients trust), ``cert`` and ``key`` (the
    server's certificate and key, in separate files), ``combined`` (the
    server certificate followed by its key, one PEM file), ``other_ca`` (a
    CA that signed nothing used here).
    """

    __test__ = False  # not a test class, whatever its name says

    ca: str
    cert: str
    key: str
    combined: str
    other_ca: str


def _run(args, directory: str) -> None:
    result = subprocess.run(args, cwd=directory, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, timeout=60)
    if result.returncode != 0:
        raise RuntimeError("%s failed (%d):\n%s" % (" ".join(args), result.returncode,
                                                    result.stdout.decode("utf-8", "replace")))


def _new_ca(openssl: str, directory: str, name: str, config: str) -> None:
    _run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
          "-nodes", "-keyout", name + ".key", "-out", name + ".pem", "-days", "2",
          "-subj", "/CN=wsproxy test CA " + name, "-config", config, "-extensions", "v3_ca"],
         directory)


def make_test_pki(directory: str) -> TestPKI:
    """Write a CA, a server certificate it signed and a second CA into ``directory``.

    Raises :class:`OpenSSLMissing` without an ``openssl`` command and
    ``RuntimeError`` (with openssl's output) when a step fails.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise OpenSSLMissing("the openssl command is not installed")
    config = os.path.join(directory, "openssl.cnf")
    with open(config, "w") as stream:
        stream.write(_OPENSSL_CONFIG)
    _new_ca(openssl, directory, "ca", config)
    _new_ca(openssl, directory, "other-ca", config)
    _run([openssl, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
          "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
          "-config", config], directory)
    _run([openssl, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
          "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "2",
          "-out", "server.pem", "-extfile", config, "-extensions", "v3_server"], directory)
    combined = os.path.join(directory, "server-combined.pem")
    with open(combined, "wb") as out:
        for part in ("server.pem", "server.key"):
            with open(os.path.join(directory, part), "rb") as stream:
                out.write(stream.read())
    return TestPKI(ca=os.path.join(directory, "ca.pem"),
                   cert=os.path.join(directory, "server.pem"),
                   key=os.path.join(directory, "server.key"),
                   combined=combined,
                   other_ca=os.path.join(directory, "other-ca.pem"))


def pki(tmp_path_factory) -> TestPKI:
    """Make the files in a fresh temporary directory, or skip the test without openssl."""
    try:
        return make_test_pki(str(tmp_path_factory.mktemp("pki")))
    except OpenSSLMissing as exc:
        pytest.skip("TLS tests need self-signed certificates: %s" % exc)
