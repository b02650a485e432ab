"""Streaming base64 for the ``base64`` subprotocol.

Clients in base64 mode send text frames of base64; a chunk may be split at
any byte across frames and fragments, so the decoder carries the last
incomplete 4-character group over to the next call.  Each message may carry
its own padding, so padded groups may also appear mid-stream.
"""

import binascii
import re

from .errors import ProtocolError

_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_ALPHABET_AND_PAD = _ALPHABET + b"="
# A whole run of groups where padding only ends a group.
_VALID_PADDED = re.compile(rb"(?:[A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)*")
# Split points: right after a padded group, before the next group.
_AFTER_PADDING = re.compile(rb"(?<==)(?=[^=])")

#: RFC 6455 close code for data that does not match the message type.
INVALID_DATA = 1007


def encode(data) -> bytes:
    """Base64 text of ``data`` (bytes-like), no newline."""
    return binascii.b2a_base64(data, newline=False)


class Base64Decoder:
    """Decode a base64 text stream fed in arbitrary pieces.

    :meth:`feed` returns the bytes decodable so far and raises
    :class:`ProtocolError` (1007) on any character outside the base64
    alphabet or misplaced padding.
    """

    __slots__ = ("_carry",)

    def __init__(self) -> None:
        self._carry = b""

    @property
    def pending(self) -> int:
        """Characters held back waiting for the rest of their group."""
        return len(self._carry)

    def feed(self, text) -> bytes:
        data = self._carry + bytes(text) if self._carry else bytes(text)
        usable = len(data) & ~3
        self._carry = data[usable:]
        if data.translate(None, _ALPHABET):
            # Slow path: something other than the plain alphabet is present.
            if data.translate(None, _ALPHABET_AND_PAD):
                raise ProtocolError(INVALID_DATA, "invalid base64 character")
            chunk = data[:usable]
            first_pad = chunk.find(b"=")
            # Common case: each message padded at its end, so "=" only closes
            # the last group ("xx==" or "xxx="): one C call, no regex.
            if (usable - 2 <= first_pad and b"=" not in self._carry
                    and not chunk[first_pad:].strip(b"=")):
                return binascii.a2b_base64(chunk)
            carry_pad = self._carry.find(b"=")
            # A held-back group may only be "xx=" waiting for its last "=".
            if _VALID_PADDED.fullmatch(chunk) is None or carry_pad not in (-1, 2):
                raise ProtocolError(INVALID_DATA, "misplaced base64 padding")
            return b"".join(binascii.a2b_base64(part) for part in _AFTER_PADDING.split(chunk))
        return binascii.a2b_base64(data[:usable]) if usable else b""
