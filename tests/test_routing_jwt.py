"""Tests for wsproxy/routing/jwt.py and rsa.py: JWTTokenApi with keys openssl made.

HMAC tokens are signed here with ``hmac``; RSA tokens are signed by the
``openssl`` command with a key it generated, and checked against that key
as a public key, a certificate, a PKCS#1 public key and the private key.
"""

import base64
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import time

import pytest

from wsclient import OP_BINARY, open_session

from wsproxy import ConfigError, Target
from wsproxy.protocol.errors import HandshakeError
from wsproxy.routing import PluginTokens, TokenLookupError
from wsproxy.routing import rsa


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def unsigned(header: dict, claims: dict) -> str:
    return b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())


def hs_token(secret: bytes, claims: dict, alg: str = "HS256") -> str:
    head = unsigned({"alg": alg, "typ": "JWT"}, claims)
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    return head + "." + b64url(hmac.new(secret, head.encode(), digest).digest())


SECRET = b"a shared secret at least as long as the longest hash: 64 bytes...."
CLAIMS = {"host": "10.0.0.7", "port": 5907}


@pytest.fixture
def hmac_key(tmp_path):
    path = tmp_path / "secret.key"
    path.write_text(b64url(SECRET) + "\n")  # websockify's format: base64url of the secret
    return path


def rejected(tokens, token):
    with pytest.raises(HandshakeError) as caught:
        tokens.lookup(token)
    assert caught.value.status == 404
    return caught.value.reason


# -- HMAC -----------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_tokens(hmac_key, alg):
    tokens = PluginTokens("JWTTokenApi", str(hmac_key))
    assert tokens.lookup(hs_token(SECRET, CLAIMS, alg)) == Target(host="10.0.0.7", port=5907)
    assert "signature" in rejected(tokens, hs_token(SECRET[::-1], CLAIMS, alg))


def test_hmac_secret_shorter_than_the_hash_is_refused(tmp_path):
    # RFC 7518 §3.2, enforced by websockify's JWT library too.
    path = tmp_path / "short.key"
    path.write_text(b64url(b"x" * 40))
    tokens = PluginTokens("JWTTokenApi", str(path))
    assert tokens.lookup(hs_token(b"x" * 40, CLAIMS, "HS256")) == Target(host="10.0.0.7",
                                                                          port=5907)
    assert "needs at least 48" in rejected(tokens, hs_token(b"x" * 40, CLAIMS, "HS384"))


def test_nbf_and_exp_are_enforced(hmac_key):
    tokens = PluginTokens("JWTTokenApi", str(hmac_key))
    now = int(time.time())
    good = dict(CLAIMS, nbf=now - 10, exp=now + 60)
    assert tokens.lookup(hs_token(SECRET, good)) == Target(host="10.0.0.7", port=5907)
    assert "expired" in rejected(tokens, hs_token(SECRET, dict(CLAIMS, exp=now - 1)))
    assert "not valid yet" in rejected(tokens, hs_token(SECRET, dict(CLAIMS, nbf=now + 60)))
    assert "number" in rejected(tokens, hs_token(SECRET, dict(CLAIMS, exp="tomorrow")))


def test_malformed_and_unsupported_tokens_are_rejected(hmac_key):
    tokens = PluginTokens("JWTTokenApi", str(hmac_key))
    head = unsigned({"alg": "none"}, CLAIMS)
    assert "does not fit" in rejected(tokens, head + ".")
    assert "JWE" in rejected(tokens, "a.b.c.d.e")
    enc = unsigned({"alg": "dir", "enc": "A256GCM"}, CLAIMS) + ".c2ln"
    assert "JWE" in rejected(tokens, enc)
    assert "not a JWT" in rejected(tokens, "just-a-token")
    assert "malformed" in rejected(tokens, "!!.??.**")
    assert "host and port" in rejected(tokens, hs_token(SECRET, {"host": "h"}))
    assert "claims" in rejected(tokens, hs_token(SECRET, {"host": "h", "port": 0}))


def test_key_file_is_reread_when_it_changes(hmac_key):
    tokens = PluginTokens("JWTTokenApi", str(hmac_key))
    hmac_key.write_text(b64url(b"the new secret".ljust(32, b".")))
    os.utime(hmac_key, ns=(1, 1))  # a different mtime, whatever the clock's resolution
    assert tokens.lookup(hs_token(b"the new secret".ljust(32, b"."), CLAIMS)) == Target(host="10.0.0.7", port=5907)
    hmac_key.unlink()
    with pytest.raises(TokenLookupError, match="unusable"):
        tokens.lookup(hs_token(b"the new secret".ljust(32, b"."), CLAIMS))


@pytest.mark.parametrize("content", ["", "not base64 at all!", "\xff"])
def test_unusable_hmac_key_files_are_config_errors(tmp_path, content):
    path = tmp_path / "key"
    path.write_text(content)
    with pytest.raises(ConfigError, match="token-source"):
        PluginTokens("JWTTokenApi", str(path))


def test_missing_key_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="token-source: JWTTokenApi cannot read"):
        PluginTokens("JWTTokenApi", str(tmp_path / "nosuch"))


# -- RSA with openssl --------------------------------------------------------------------------


def openssl(*args, data=None, cwd=None):
    result = subprocess.run(["openssl"] + list(args), input=data, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


@pytest.fixture(scope="module")
def rsa_keys(tmp_path_factory):
    """An RSA key made by openssl, in every form websockify's key files take."""
    if shutil.which("openssl") is None:
        pytest.skip("RS256 tests need the openssl command to make an RSA key")
    directory = tmp_path_factory.mktemp("rsa")
    openssl("genrsa", "-out", "private.pem", "2048", cwd=directory)
    openssl("rsa", "-in", "private.pem", "-pubout", "-out", "public.pem", cwd=directory)
    openssl("rsa", "-in", "private.pem", "-RSAPublicKey_out", "-out", "pkcs1-public.pem",
            cwd=directory)
    openssl("rsa", "-in", "private.pem", "-traditional", "-out", "traditional.pem", cwd=directory)
    openssl("req", "-x509", "-key", "private.pem", "-subj", "/CN=jwt signer", "-days", "2",
            "-out", "cert.pem", cwd=directory)
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-out", "ec.pem", cwd=directory)
    openssl("pkey", "-in", "ec.pem", "-pubout", "-out", "ec-public.pem", cwd=directory)
    openssl("genrsa", "-aes128", "-passout", "pass:secret", "-out", "encrypted.pem", "2048",
            cwd=directory)
    return directory


def rs_token(keys, claims, alg="RS256"):
    head = unsigned({"alg": alg, "typ": "JWT"}, claims)
    digest = "-sha" + alg[2:]
    pss = []
    if alg.startswith("PS"):  # RFC 7518 §3.5: MGF1 with the same hash, salt as long as it
        pss = ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest"]
    signature = openssl("dgst", digest, "-sign", str(keys / "private.pem"), *pss,
                        data=head.encode())
    return head + "." + b64url(signature)


@pytest.mark.parametrize("key_file", ["public.pem", "cert.pem", "pkcs1-public.pem",
                                      "private.pem", "traditional.pem"])
@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"])
def test_rsa_tokens_signed_by_openssl(rsa_keys, key_file, alg):
    tokens = PluginTokens("JWTTokenApi", str(rsa_keys / key_file))
    token = rs_token(rsa_keys, CLAIMS, alg)
    assert tokens.lookup(token) == Target(host="10.0.0.7", port=5907)
    head, payload, signature = token.split(".")
    forged = unsigned({"alg": alg}, dict(CLAIMS, port=22)).split(".")[1]
    assert "signature" in rejected(tokens, ".".join((head, forged, signature)))


def test_pss_and_pkcs1_signatures_are_not_interchangeable(rsa_keys):
    tokens = PluginTokens("JWTTokenApi", str(rsa_keys / "public.pem"))
    for signed_as, claimed in (("RS256", "PS256"), ("PS256", "RS256")):
        head, payload, signature = rs_token(rsa_keys, CLAIMS, signed_as).split(".")
        relabelled = unsigned({"alg": claimed, "typ": "JWT"}, CLAIMS)
        assert "signature" in rejected(tokens, relabelled + "." + signature)


def test_rsa_public_key_cannot_serve_as_an_hmac_secret(rsa_keys):
    # The classic confusion: an HS256 token "signed" with the public key's bytes.
    public = (rsa_keys / "public.pem").read_bytes()
    tokens = PluginTokens("JWTTokenApi", str(rsa_keys / "public.pem"))
    assert "does not fit an RSA key" in rejected(tokens, hs_token(public, CLAIMS))


@pytest.mark.parametrize("key_file, message", [
    ("ec.pem", "EC"), ("ec-public.pem", "EC"), ("encrypted.pem", "password")])
def test_ec_and_encrypted_keys_are_refused_clearly(rsa_keys, key_file, message):
    with pytest.raises(ConfigError) as caught:
        PluginTokens("JWTTokenApi", str(rsa_keys / key_file))
    assert "token-source" in str(caught.value) and message in str(caught.value)


def test_pkcs1_v15_check_refuses_near_misses(rsa_keys):
    key = rsa.public_key_from_pem((rsa_keys / "public.pem").read_bytes())
    message = b"signed bytes"
    signature = openssl("dgst", "-sha256", "-sign", str(rsa_keys / "private.pem"), data=message)
    assert key.verify(message, signature, "sha256")
    assert not key.verify(message + b"!", signature, "sha256")
    assert not key.verify(message, signature, "sha384")
    assert not key.verify(message, signature[:-1], "sha256")
    assert not key.verify(message, (key.n + 1).to_bytes(key.size + 1, "big")[1:], "sha256")


def test_jwt_routes_through_the_proxy(proxy, make_target, rsa_keys, wsproxy_log):
    target = make_target(send_on_connect=b"J")
    running = proxy(target_port=1, token_plugin="JWTTokenApi",
                    token_source=str(rsa_keys / "cert.pem"))
    token = rs_token(rsa_keys, {"host": "127.0.0.1", "port": target.port,
                                "exp": int(time.time()) + 60})
    with open_session(running.port, protocols=["binary"], path="/?token=" + token) as ws:
        assert ws.recv_stream(1, opcode=OP_BINARY) == b"J"
        ws.send_close(1000)
        ws.recv_close()
    expired = rs_token(rsa_keys, {"host": "127.0.0.1", "port": target.port, "exp": 1})
    with running.client() as ws:
        ws.handshake(expect_status=404, path="/?token=" + expired)
    wsproxy_log.wait_for(lambda text: "refused: 404" in text and "expired" in text,
                         what="one log line saying the JWT expired")
    assert len(target.connections) == 1
