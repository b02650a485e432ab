"""RSA public keys from PEM files; RSASSA-PKCS1-v1_5 and RSASSA-PSS checks (RFC 8017 §8).

Reads what ``openssl`` writes: ``PUBLIC KEY`` (SubjectPublicKeyInfo),
``RSA PUBLIC KEY`` (PKCS#1), ``CERTIFICATE`` (X.509; its subject's key),
``PRIVATE KEY`` (PKCS#8) and ``RSA PRIVATE KEY`` (PKCS#1; only the public
half is kept).  The DER inside is walked with a tiny reader that knows
tags, lengths and nesting, nothing more.  EC, Ed25519 and encrypted keys
are refused with a message saying so.  Pure: no sockets, no files.
"""

import base64
import binascii
import hashlib
import hmac
import re
from typing import List, NamedTuple, Tuple

#: RFC 8017 §9.2 note 1: the DER DigestInfo prefix for each hash.
DIGEST_INFO = {
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}

#: The smallest modulus accepted, in bits.
MIN_BITS = 1024

_SEQUENCE, _INTEGER, _BIT_STRING, _OCTET_STRING, _OID = 0x30, 0x02, 0x03, 0x04, 0x06
_RSA_OID = bytes.fromhex("2a864886f70d010101")  # 1.2.840.113549.1.1.1 rsaEncryption
_KNOWN_OIDS = {
    bytes.fromhex("2a8648ce3d0201"): "an EC key",  # 1.2.840.10045.2.1 id-ecPublicKey
    bytes.fromhex("2b6570"): "an Ed25519 key",  # 1.3.101.112
    bytes.fromhex("2b6571"): "an Ed448 key",  # 1.3.101.113
    bytes.fromhex("2a864886f70d01010a"): "an RSA-PSS-only key (give a plain RSA key)",  # 1.2.840.113549.1.1.10
}
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)


class KeyFileError(ValueError):
    """A key file wsproxy cannot use; the message says why."""


class RSAPublicKey(NamedTuple):
    """An RSA public key: modulus ``n`` and exponent ``e``."""

    n: int
    e: int

    @property
    def size(self) -> int:
        """The modulus length in bytes (k in RFC 8017)."""
        return (self.n.bit_length() + 7) // 8

    def verify(self, message: bytes, signature: bytes, hash_name: str) -> bool:
        """True when ``signature`` is this key's RSASSA-PKCS1-v1_5 signature of ``message``.

        RFC 8017 §8.2.2: the expected encoded message is built and compared
        whole (in constant time), never parsed, so no padding trick passes.
        """
        k = self.size
        if len(signature) != k:
            return False
        s = int.from_bytes(signature, "big")
        if s >= self.n:
            return False
        encoded = pow(s, self.e, self.n).to_bytes(k, "big")
        digest_info = DIGEST_INFO[hash_name] + hashlib.new(hash_name, message).digest()
        if k < len(digest_info) + 11:
            return False
        expected = b"\x00\x01" + b"\xff" * (k - len(digest_info) - 3) + b"\x00" + digest_info
        return hmac.compare_digest(encoded, expected)


    def verify_pss(self, message: bytes, signature: bytes, hash_name: str) -> bool:
        """True when ``signature`` is this key's RSASSA-PSS signature of ``message``.

        RFC 8017 §9.1.2 (EMSA-PSS-VERIFY) with MGF1 over the same hash and a
        salt as long as the hash, as RFC 7518 §3.5 fixes for PS256/384/512.
        """
        if len(signature) != self.size:
            return False
        s = int.from_bytes(signature, "big")
        if s >= self.n:
            return False
        em_bits = self.n.bit_length() - 1
        em_len = (em_bits + 7) // 8
        m = pow(s, self.e, self.n)
        if m.bit_length() > em_len * 8:
            return False
        encoded = m.to_bytes(em_len, "big")
        h_len = hashlib.new(hash_name).digest_size
        salt_len = h_len
        if em_len < h_len + salt_len + 2 or encoded[-1] != 0xBC:
            return False
        masked, digest = encoded[:em_len - h_len - 1], encoded[em_len - h_len - 1:-1]
        unused_bits = 8 * em_len - em_bits
        if unused_bits and masked[0] >> (8 - unused_bits):
            return False
        db = bytearray(a ^ b for a, b in zip(masked, _mgf1(digest, len(masked), hash_name)))
        db[0] &= 0xFF >> unused_bits
        padding = em_len - h_len - salt_len - 2
        if any(db[:padding]) or db[padding] != 0x01:
            return False
        salt = bytes(db[len(db) - salt_len:])
        expected = hashlib.new(hash_name, b"\0" * 8 + hashlib.new(hash_name, message).digest()
                               + salt).digest()
        return hmac.compare_digest(digest, expected)


def _mgf1(seed: bytes, length: int, hash_name: str) -> bytes:
    """RFC 8017 §B.2.1: the mask generation function MGF1."""
    out = bytearray()
    counter = 0
    while len(out) < length:
        out += hashlib.new(hash_name, seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return bytes(out[:length])


# -- DER ------------------------------------------------------------------------------


def _element(data: bytes, offset: int) -> Tuple[int, bytes, int]:
    """The DER element at ``offset``: ``(tag, content, offset after it)``; ValueError if cut short."""
    if offset + 2 > len(data):
        raise ValueError("truncated DER")
    tag, length = data[offset], data[offset + 1]
    offset += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or offset + count > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[offset:offset + count], "big")
        offset += count
    if offset + length > len(data):
        raise ValueError("truncated DER")
    return tag, data[offset:offset + length], offset + length


def _children(content: bytes) -> List[Tuple[int, bytes]]:
    """The elements a constructed value (a SEQUENCE) holds, as ``(tag, content)``."""
    items = []
    offset = 0
    while offset < len(content):
        tag, value, offset = _element(content, offset)
        items.append((tag, value))
    return items


def _sequence(data: bytes) -> List[Tuple[int, bytes]]:
    tag, content, _end = _element(data, 0)
    if tag != _SEQUENCE:
        raise ValueError("expected a DER SEQUENCE")
    return _children(content)


def _integer(item: Tuple[int, bytes]) -> int:
    tag, content = item
    if tag != _INTEGER or not content:
        raise ValueError("expected a DER INTEGER")
    return int.from_bytes(content, "big", signed=True)


def _rsa_public(n: int, e: int) -> RSAPublicKey:
    if n <= 0 or e < 3 or e % 2 == 0:
        raise KeyFileError("not a usable RSA key")
    if n.bit_length() < MIN_BITS:
        raise KeyFileError("the RSA key has %d bits; at least %d are needed"
                        % (n.bit_length(), MIN_BITS))
    return RSAPublicKey(n, e)


def _from_pkcs1_public(der: bytes) -> RSAPublicKey:
    items = _sequence(der)
    return _rsa_public(_integer(items[0]), _integer(items[1]))


def _from_pkcs1_private(der: bytes) -> RSAPublicKey:
    items = _sequence(der)  # version, n, e, d, p, q, ...
    return _rsa_public(_integer(items[1]), _integer(items[2]))


def _algorithm(item: Tuple[int, bytes]) -> bytes:
    """The OID of an AlgorithmIdentifier; KeyFileError for a known key kind that is not RSA."""
    tag, content = item
    if tag != _SEQUENCE:
        raise ValueError("expected an AlgorithmIdentifier")
    oid_tag, oid = _children(content)[0]
    if oid_tag != _OID:
        raise ValueError("expected an OID")
    if oid != _RSA_OID:
        what = _KNOWN_OIDS.get(oid, "a key of an unknown kind")
        raise KeyFileError("%s; only RSA keys (RS*, PS*) and HMAC secrets (HS*) "
                        "are supported" % what)
    return oid


def _from_spki(der: bytes) -> RSAPublicKey:
    algorithm, key = _sequence(der)[:2]
    _algorithm(algorithm)
    tag, bits = key
    if tag != _BIT_STRING or not bits or bits[0] != 0:
        raise ValueError("expected a BIT STRING key")
    return _from_pkcs1_public(bits[1:])


def _from_certificate(der: bytes) -> RSAPublicKey:
    tbs_tag, tbs = _sequence(der)[0]
    fields = _children(tbs)
    if fields and fields[0][0] == 0xA0:  # [0] EXPLICIT version
        fields = fields[1:]
    # serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo
    tag, spki = fields[5]
    return _from_spki(bytes([tag]) + _der_length(len(spki)) + spki)


def _from_pkcs8(der: bytes) -> RSAPublicKey:
    items = _sequence(der)  # version, algorithm, privateKey
    _algorithm(items[1])
    tag, key = items[2]
    if tag != _OCTET_STRING:
        raise ValueError("expected an OCTET STRING key")
    return _from_pkcs1_private(key)


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


_READERS = {
    "PUBLIC KEY": _from_spki,
    "RSA PUBLIC KEY": _from_pkcs1_public,
    "CERTIFICATE": _from_certificate,
    "TRUSTED CERTIFICATE": _from_certificate,
    "PRIVATE KEY": _from_pkcs8,
    "RSA PRIVATE KEY": _from_pkcs1_private,
}
_REFUSED = {
    "EC PRIVATE KEY": "an EC key",
    "EC PARAMETERS": "EC parameters",
    "ENCRYPTED PRIVATE KEY": "a password-protected key",
}


def is_pem(data: bytes) -> bool:
    """True when ``data`` holds a PEM block."""
    return b"-----BEGIN " in data


def public_key_from_pem(data: bytes) -> RSAPublicKey:
    """The RSA public key in the first key or certificate block of PEM ``data``.

    Raises :class:`KeyFileError` saying why when there is none, or when the
    first key is EC, Ed25519, encrypted or malformed.
    """
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError("not a PEM file (not ASCII)") from None
    for match in _PEM_BLOCK.finditer(text):
        label, body = match.group(1), match.group(2)
        if label in _REFUSED:
            raise KeyFileError("%s; only RSA keys (RS*, PS*) and HMAC secrets (HS*) "
                            "without a password are supported" % _REFUSED[label])
        reader = _READERS.get(label)
        if reader is None:
            continue
        if "Proc-Type:" in body and "ENCRYPTED" in body:
            raise KeyFileError("a password-protected key; give the public key or certificate")
        try:
            der = base64.b64decode("".join(line for line in body.split() if ":" not in line),
                                   validate=True)
            return reader(der)
        except KeyFileError:
            raise
        except (ValueError, IndexError, binascii.Error) as exc:
            raise KeyFileError("malformed %s: %s" % (label, exc)) from None
    raise KeyFileError("no PUBLIC KEY, CERTIFICATE or PRIVATE KEY block")
