"""Token plugin ``JWTTokenApi``: the token is a signed JWT naming its own target.

The source is a key file, as websockify reads it: a PEM RSA public key,
certificate or private key (for RS256/RS384/RS512, and PS256/PS384/PS512
as websockify's JWT library accepts them too), or else the HMAC
secret written base64url-encoded (for HS256/HS384/HS512; the file ``c2VjcmV0``
is the secret ``secret``).  The token is a JWS compact serialization
(RFC 7515 §7.1) whose claims hold ``host`` and ``port``; ``nbf`` and
``exp`` (RFC 7519 §4.1.4-5, seconds since the epoch) are enforced without
leeway.  The key's kind fixes the algorithms it accepts, so an RSA public
key can never serve as an HMAC secret.  Encrypted tokens (JWE) and EC keys
are refused with a message saying so.

A token that fails any check is refused like an unknown one (404), with
the reason in the log line; the key file is read again when it changes.
"""

import base64
import binascii
import hmac
import json
import os
import re
import time
from typing import Any, Dict, Optional, Tuple, Union

from wsproxy.settings import ConfigError

from . import rsa
from .base import BuiltinPlugin, TokenLookupError, TokenRejected, to_target

#: Longest token accepted (a JWT naming a target is a few hundred bytes).
MAX_TOKEN = 16 * 1024

_HMAC_HASHES = {"HS256": "sha256", "HS384": "sha384", "HS512": "sha512"}
_RSA_HASHES = {"RS256": "sha256", "RS384": "sha384", "RS512": "sha512",
               "PS256": "sha256", "PS384": "sha384", "PS512": "sha512"}
_BASE64URL = re.compile(r"^[A-Za-z0-9_-]*={0,2}$")

Key = Union[bytes, rsa.RSAPublicKey]


def b64url_decode(text: str) -> bytes:
    """base64url without padding (RFC 7515 §2); ValueError when malformed."""
    text = text.strip()
    if not _BASE64URL.match(text):
        raise ValueError("not base64url")
    text = text.rstrip("=")
    if len(text) % 4 == 1:
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None


def read_key(data: bytes, where: str) -> Key:
    """The verification key a key file holds; :class:`ConfigError` naming ``token-source``."""
    if rsa.is_pem(data):
        try:
            return rsa.public_key_from_pem(data)
        except rsa.KeyFileError as exc:
            raise ConfigError("token-source: JWTTokenApi key %s: %s" % (where, exc)) from None
    try:
        secret = b64url_decode(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        secret = b""
    if not secret:
        raise ConfigError("token-source: JWTTokenApi key %s: expected a PEM RSA key or "
                          "certificate, or an HMAC secret written base64url-encoded" % where)
    return secret


def verify(token: str, key: Key, now: float) -> Tuple[Any, Any]:
    """The ``(host, port)`` a valid JWT names; :class:`TokenRejected` saying why not."""
    if len(token) > MAX_TOKEN:
        raise TokenRejected("JWT longer than %d bytes" % MAX_TOKEN)
    parts = token.strip().split(".")
    if len(parts) == 5:
        raise TokenRejected("encrypted JWTs (JWE) are not supported; sign the token (JWS)")
    if len(parts) != 3:
        raise TokenRejected("not a JWT (expected header.payload.signature)")
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
        signature = b64url_decode(parts[2])
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise TokenRejected("malformed JWT") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise TokenRejected("malformed JWT")
    if "enc" in header:
        raise TokenRejected("encrypted JWTs (JWE) are not supported; sign the token (JWS)")
    algorithm = header.get("alg")
    signed = (parts[0] + "." + parts[1]).encode("ascii")
    if isinstance(key, bytes):
        if algorithm not in _HMAC_HASHES:
            raise TokenRejected("JWT algorithm %r does not fit an HMAC key (HS256/384/512)"
                                % (algorithm,))
        expected = hmac.new(key, signed, _HMAC_HASHES[algorithm]).digest()
        if len(key) < len(expected):
            # RFC 7518 §3.2: the key must be at least as long as the hash output.
            raise TokenRejected("the HMAC secret has %d bytes; %s needs at least %d"
                                % (len(key), algorithm, len(expected)))
        valid = hmac.compare_digest(expected, signature)
    else:
        if algorithm not in _RSA_HASHES:
            raise TokenRejected("JWT algorithm %r does not fit an RSA key (RS256/384/512, "
                                "PS256/384/512)" % (algorithm,))
        if algorithm.startswith("PS"):
            valid = key.verify_pss(signed, signature, _RSA_HASHES[algorithm])
        else:
            valid = key.verify(signed, signature, _RSA_HASHES[algorithm])
    if not valid:
        raise TokenRejected("JWT signature does not match the key")
    _check_time(claims, now)
    if "host" not in claims or "port" not in claims:
        raise TokenRejected("JWT claims name no host and port")
    return claims["host"], claims["port"]


def _check_time(claims: Dict[str, Any], now: float) -> None:
    for name in ("nbf", "exp"):
        value = claims.get(name)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise TokenRejected("JWT claim %r is not a number of seconds" % name)
    if "nbf" in claims and now < claims["nbf"]:
        raise TokenRejected("JWT not valid yet (nbf)")
    if "exp" in claims and now > claims["exp"]:
        raise TokenRejected("JWT expired (exp)")


class JWTTokenApi(BuiltinPlugin):
    """The token is a JWT signed with the key in the source file; its claims name the target.

    Raises :class:`ConfigError` naming ``token-source`` when the key file
    is missing or holds no usable key.
    """

    name = "JWTTokenApi"

    def __init__(self, src: Optional[str]) -> None:
        super().__init__(src)
        if not src:
            raise ConfigError("token-source: JWTTokenApi needs a key file")
        self.path = os.path.abspath(os.path.expanduser(src))
        self._signature: Optional[Tuple[int, int, int]] = None
        self._key: Key = b""
        try:
            self._load()
        except OSError as exc:
            raise ConfigError("token-source: JWTTokenApi cannot read the key %s: %s"
                              % (self.path, exc.strerror or exc)) from None

    def _load(self) -> None:
        st = os.stat(self.path)
        signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        if signature == self._signature:
            return
        with open(self.path, "rb") as stream:
            data = stream.read(1024 * 1024)
        self._key = read_key(data, self.path)
        self._signature = signature

    def lookup(self, token: str):
        try:
            self._load()  # the key may have been replaced since
        except (OSError, ConfigError) as exc:
            raise TokenLookupError("JWTTokenApi key %s unusable: %s"
                                   % (self.path, getattr(exc, "strerror", None) or exc)) from None
        host, port = verify(token, self._key, time.time())
        try:
            return to_target(host, port)
        except ValueError as exc:
            raise TokenRejected("JWT claims: %s" % exc) from None
