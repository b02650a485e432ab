"""Base64 for the ``base64`` subprotocol, one message at a time.

Clients in base64 mode send each message as the base64 text of its bytes,
encoded on its own (padding, if any, ends the message).  A message may be
split at any byte across frames and fragments, so the decoder carries the
last incomplete 4-character group over to the next piece of the same
message; :meth:`Base64Decoder.finish` ends the message and fails it if a
group is left incomplete.  Nothing carries over from one message to the
next: ``QQ`` then ``QkNE`` is an error, not the bytes of ``QQQk`` ``NE``.
"""

import binascii
import sys

from .errors import ProtocolError

#: Python 3.11+: ``a2b_base64(strict_mode=True)`` checks the alphabet while it decodes.
_STRICT = sys.version_info >= (3, 11)

_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_ALPHABET_AND_PAD = _ALPHABET + b"="

#: RFC 6455 close code for data that does not match the message type.
INVALID_DATA = 1007


def encode(data) -> bytes:
    """Base64 text of ``data`` (bytes-like), no newline."""
    return binascii.b2a_base64(data, newline=False)


class Base64Decoder:
    """Decode the base64 text of one message after another, fed in arbitrary pieces.

    :meth:`feed` returns the bytes decodable so far and raises
    :class:`ProtocolError` (1007) on any character outside the base64
    alphabet, on misplaced padding and on text after a message's padding;
    :meth:`finish` ends a message and raises 1007 when it was not whole
    base64 (RFC 4648 §4: a length that is a multiple of four).
    """

    __slots__ = ("_carry", "_padded")

    def __init__(self) -> None:
        self._carry = b""
        self._padded = False  # the message's last group is in: nothing may follow

    @property
    def pending(self) -> int:
        """Characters held back waiting for the rest of their group."""
        return len(self._carry)

    def feed(self, text) -> bytes:
        """Decode the next piece of the current message's text."""
        if self._carry:
            data = self._carry + bytes(text)
        else:  # a fresh buffer (unmasked, or inflated) needs no copy
            data = text if type(text) is bytes or type(text) is bytearray else bytes(text)
        if not data:
            return b""
        if self._padded:
            raise ProtocolError(INVALID_DATA, "base64 text after the message's padding")
        size = len(data)
        usable = size & ~3
        self._carry = data[usable:]
        if _STRICT and usable and data[usable - 1] != 0x3D:
            # The common piece: whole groups of the plain alphabet, no padding.
            # The strict decoder rejects anything else, in one pass with the
            # decoding; then the checks below name what was wrong.
            try:
                decoded = binascii.a2b_base64(memoryview(data)[:usable], strict_mode=True)
            except binascii.Error:
                decoded = None
            if decoded is not None and not self._carry.translate(None, _ALPHABET):
                return decoded
        if data.translate(None, _ALPHABET):
            # Slow path: something other than the plain alphabet is present.
            if data.translate(None, _ALPHABET_AND_PAD):
                raise ProtocolError(INVALID_DATA, "invalid base64 character")
            pad = data.index(b"=")
            rest = size - pad
            # Padding only ends the message's last group: "xx==" or "xxx="
            # (or "xx=" waiting for its last "=" in the next piece).
            if not ((pad & 3 == 2 and rest <= 2 and data[-1:] == b"=")
                    or (pad & 3 == 3 and rest == 1)):
                raise ProtocolError(INVALID_DATA, "misplaced base64 padding")
            self._padded = not self._carry
        return binascii.a2b_base64(data[:usable]) if usable else b""

    def finish(self) -> None:
        """End the current message; raise 1007 if it did not end on a whole group."""
        carry = self._carry
        self._carry = b""
        self._padded = False
        if carry:
            raise ProtocolError(INVALID_DATA, "message is not whole base64 (%d characters "
                                "past the last 4-character group)" % len(carry))
