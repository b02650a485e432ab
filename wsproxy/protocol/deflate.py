"""RFC 7692 permessage-deflate: negotiation and the per-message codec, without I/O.

:func:`negotiate` reads the client's ``Sec-WebSocket-Extensions`` offers and
returns the :class:`DeflateParams` wsproxy agrees to, whose
:meth:`~DeflateParams.response_header` is the answer.
:class:`PerMessageDeflate` is one connection's codec: it deflates outgoing
messages (or says that one is better sent as it is) and inflates incoming
ones in bounded steps, so a small message that inflates to gigabytes never
holds more than ``max_message_size`` bytes.

Only :mod:`zlib` from the standard library is needed.
"""

import re
import zlib
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

from .errors import HandshakeError, ProtocolError
from .frames import CloseCode

#: RFC 7692 §7: the extension's registered name.
EXTENSION_NAME = "permessage-deflate"
#: RFC 7692 §7.1.2: window bits are 8 to 15 (a 256-byte to 32 KiB LZ77 window).
MIN_WINDOW_BITS = 8
MAX_WINDOW_BITS = 15
#: zlib's deflate takes (1 << (bits + 2)) + (1 << (memLevel + 9)) bytes (zconf.h).
#: memLevel follows the window: bits - 7, zlib's default 8 for a 32 KiB window,
#: so a smaller window really saves memory (12 bits: 32 KiB instead of 144).
MEM_LEVEL_BELOW_BITS = 7
#: The most inflated output one zlib call may produce (bounds memory per step).
INFLATE_CHUNK = 64 * 1024
#: A read at least this long that did not shrink makes wsproxy send the next
#: long reads plain without trying, for BACKOFF_FIRST bytes, doubling up to
#: BACKOFF_MAX while they still do not shrink.  Shorter reads are always
#: tried: they cost little, and a shell's small outputs deflate well.
BACKOFF_MIN_READ = 8 * 1024
BACKOFF_FIRST = 64 * 1024
BACKOFF_MAX = 1024 * 1024

#: RFC 7692 §7.2.1/§7.2.2: the empty stored block a sync flush ends with,
#: removed by the sender and appended again by the receiver.
_TAIL = b"\x00\x00\xff\xff"

# RFC 6455 §9.1 (with RFC 7230's token and quoted-string): the header grammar.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_QUOTED = re.compile(r'"((?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\t\x20-\x7e\x80-\xff])*)"')
_OWS = re.compile(r"[ \t]*")
_ESCAPE = re.compile(r"\\(.)")
# RFC 7692 §7.1.2.1: "a decimal integer value without leading zeroes between 8 to 15".
_WINDOW_BITS_VALUE = re.compile(r"[89]|1[0-5]")

#: One extension of a ``Sec-WebSocket-Extensions`` header: its name and its
#: parameters in order, each ``(name, value)`` with value None when absent.
#: Names are lower-cased.
Extension = Tuple[str, List[Tuple[str, Optional[str]]]]


def parse_extensions(value: str) -> List[Extension]:
    """Parse a ``Sec-WebSocket-Extensions`` value into its extensions, in order.

    Follows RFC 6455 §9.1: a comma-separated list of ``name *(; param)``
    where ``param`` is ``token [= (token / quoted-string)]`` and a quoted
    value must be a token once unquoted.  Empty list elements are skipped
    (RFC 7230 §7).  Raises ``HandshakeError(400)`` for anything else.
    """
    extensions: List[Extension] = []
    pos, end = 0, len(value)
    while True:
        pos = _OWS.match(value, pos).end()
        if pos < end and value[pos] == ",":
            pos += 1
            continue
        if pos >= end:
            return extensions
        name, pos = _expect_token(value, pos, "an extension name")
        params: List[Tuple[str, Optional[str]]] = []
        while True:
            pos = _OWS.match(value, pos).end()
            if pos >= end or value[pos] == ",":
                break
            if value[pos] != ";":
                raise _malformed("unexpected %r after %s" % (value[pos], name))
            pos = _OWS.match(value, pos + 1).end()
            param, pos = _expect_token(value, pos, "a parameter name")
            param_value = None
            after = _OWS.match(value, pos).end()
            if after < end and value[after] == "=":
                param_value, pos = _parameter_value(value, _OWS.match(value, after + 1).end())
            params.append((param.lower(), param_value))
        extensions.append((name.lower(), params))


def _expect_token(value: str, pos: int, what: str) -> Tuple[str, int]:
    match = _TOKEN.match(value, pos)
    if match is None:
        raise _malformed("expected %s at offset %d" % (what, pos))
    return match.group(), match.end()


def _parameter_value(value: str, pos: int) -> Tuple[str, int]:
    """A parameter value at ``pos``: a token, or a quoted string holding one."""
    quoted = _QUOTED.match(value, pos)
    if quoted is None:
        return _expect_token(value, pos, "a parameter value")
    text = _ESCAPE.sub(r"\1", quoted.group(1))
    # RFC 6455 §9.1: the unescaped quoted-string "MUST conform to the 'token' ABNF".
    if _TOKEN.fullmatch(text) is None:
        raise _malformed("quoted parameter value %r is not a token" % text)
    return text, quoted.end()


def _malformed(detail: str) -> HandshakeError:
    return HandshakeError(400, "malformed Sec-WebSocket-Extensions: " + detail)


@dataclass(frozen=True)
class DeflateParams:
    """The permessage-deflate parameters agreed for one connection.

    Fields as they appear in the answer: ``server_no_context_takeover``
    (wsproxy forgets its LZ77 window after each message),
    ``client_no_context_takeover`` (the client does, so wsproxy may too),
    ``server_max_window_bits`` / ``client_max_window_bits`` (None when the
    answer does not name them: 15).  ``compress_window_bits`` is the window
    wsproxy compresses with, at most ``server_max_window_bits``.
    """

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: Optional[int] = None
    client_max_window_bits: Optional[int] = None
    compress_window_bits: int = MAX_WINDOW_BITS

    @property
    def inflate_window_bits(self) -> int:
        """The largest window the client may compress with (what inflating needs)."""
        return self.client_max_window_bits or MAX_WINDOW_BITS

    def response_header(self) -> str:
        """The ``Sec-WebSocket-Extensions`` value that accepts the offer."""
        parts = [EXTENSION_NAME]
        if self.server_no_context_takeover:
            parts.append("server_no_context_takeover")
        if self.client_no_context_takeover:
            parts.append("client_no_context_takeover")
        if self.server_max_window_bits is not None:
            parts.append("server_max_window_bits=%d" % self.server_max_window_bits)
        if self.client_max_window_bits is not None:
            parts.append("client_max_window_bits=%d" % self.client_max_window_bits)
        return "; ".join(parts)


def negotiate(header: Optional[str],
              max_window_bits: int = MAX_WINDOW_BITS) -> Optional[DeflateParams]:
    """Accept the first permessage-deflate offer wsproxy can honour; None if none.

    ``header`` is the request's ``Sec-WebSocket-Extensions`` value (repeated
    headers joined with commas) or None; ``max_window_bits`` is the largest
    window wsproxy compresses with (clamped to 9-15).  An offer with an
    unknown parameter, a repeated one or a bad value is declined, as RFC
    7692 §7 requires, and the next one is tried.  Raises
    ``HandshakeError(400)`` when the header does not parse at all.
    """
    if not header:
        return None
    max_window_bits = min(max(max_window_bits, MIN_WINDOW_BITS + 1), MAX_WINDOW_BITS)
    for name, params in parse_extensions(header):
        if name == EXTENSION_NAME:
            agreed = _accept_offer(params, max_window_bits)
            if agreed is not None:
                return agreed
    return None


def _accept_offer(params: List[Tuple[str, Optional[str]]],
                  max_window_bits: int) -> Optional[DeflateParams]:
    """The answer to one offer, or None to decline it (RFC 7692 §7, §7.1)."""
    seen = set()
    server_no_context = client_no_context = False
    server_bits: Optional[int] = None
    client_bits: Optional[int] = None
    for name, value in params:
        # §7: decline an offer with "multiple extension parameters with the same name".
        if name in seen:
            return None
        seen.add(name)
        if name == "server_no_context_takeover" or name == "client_no_context_takeover":
            # §7.1.1.1, §7.1.1.2: "This extension parameter has no value."
            if value is not None:
                return None
            if name == "server_no_context_takeover":
                server_no_context = True
            else:
                client_no_context = True
        elif name == "server_max_window_bits":
            # §7.1.2.1: in an offer it always carries a value.
            if value is None or _WINDOW_BITS_VALUE.fullmatch(value) is None:
                return None
            server_bits = int(value)
        elif name == "client_max_window_bits":
            # §7.1.2.2: with or without a value in an offer.
            if value is not None:
                if _WINDOW_BITS_VALUE.fullmatch(value) is None:
                    return None
                client_bits = int(value)
        else:
            # §7: "an extension parameter not defined for use in an offer".
            return None
    compress_bits = max_window_bits
    answer_server_bits = None
    if server_bits is not None:
        # §7.1.2.1: answer "with the same or smaller value as the offer".  When
        # the client named no limit, the answer leaves it out: a client's
        # 32 KiB window inflates a stream made with a smaller one.
        compress_bits = min(server_bits, max_window_bits)
        answer_server_bits = compress_bits
    return DeflateParams(server_no_context_takeover=server_no_context,
                         # §7.1.1.2: the client will not take over its context
                         # anyway; saying so lets wsproxy drop its inflater.
                         client_no_context_takeover=client_no_context,
                         server_max_window_bits=answer_server_bits,
                         # §7.1.2.2: a value in the offer binds the client only
                         # once echoed; then inflating needs only that window.
                         client_max_window_bits=client_bits,
                         compress_window_bits=compress_bits)


class PerMessageDeflate:
    """One connection's permessage-deflate codec (RFC 7692 §7.2).

    ``params`` are the agreed :class:`DeflateParams`, ``level`` the zlib
    level (0-9) for outgoing messages, ``max_message_size`` the most bytes
    one incoming message may inflate to.  The zlib objects are made on
    first use, so a direction that carries nothing costs no memory.

    Not thread-safe: one thread feeds :meth:`inflate`, and one at a time
    calls :meth:`compress` (the relay holds its client-write lock).
    """

    def __init__(self, params: DeflateParams, level: int = 6,
                 max_message_size: int = 1024 * 1024) -> None:
        self.params = params
        self.level = min(max(level, 0), 9)
        self.max_message_size = max_message_size
        # zlib refuses an 8-bit window for raw deflate; with 9 bits it never
        # emits a distance over 512 - 262 = 250 bytes (its MAX_DIST), so the
        # stream also fits the 256-byte window of server_max_window_bits=8.
        self._compress_bits = max(params.compress_window_bits, MIN_WINDOW_BITS + 1)
        # §7.1.1.1: without context takeover each message starts with an empty
        # window; a full flush ends the message and empties it at once.
        self._flush_mode = (zlib.Z_FULL_FLUSH if params.server_no_context_takeover
                            else zlib.Z_SYNC_FLUSH)
        self._compressor = None
        self._decompressor = None
        self._inflated = 0
        self._backoff = 0       # bytes of long reads to skip after the next failure
        self._skip = 0          # bytes of long reads still to send plain untried

    # -- sending -------------------------------------------------------------------

    def compress(self, data) -> Optional[bytes]:
        """The compressed payload of one message holding ``data``, or None.

        None means the message is better sent uncompressed (RSV1 clear):
        compressing did not make it smaller, or long reads lately did not
        (see :data:`BACKOFF_MIN_READ`), so this one is not even tried.
        Each call flushes, so the payload is a whole message (§7.2.1)
        without the trailing ``00 00 ff ff``.
        """
        size = len(data)
        if not size or not self.level:
            return None
        long_read = size >= BACKOFF_MIN_READ
        if long_read and self._skip > 0:
            # Sending plain needs no state change: the client's window and
            # ours hold only what was sent compressed.
            self._skip -= size
            return None
        compressor = self._compressor
        if compressor is None:
            bits = self._compress_bits
            compressor = self._compressor = zlib.compressobj(
                self.level, zlib.DEFLATED, -bits, bits - MEM_LEVEL_BELOW_BITS)
        out = compressor.compress(data) + compressor.flush(self._flush_mode)
        # §7.2.1: "Remove 4 octets (that are 0x00 0x00 0xff 0xff) from the tail end."
        payload = out[:-4] if out.endswith(_TAIL) else out
        if len(payload) < size:
            if long_read:
                self._backoff = 0
            return payload
        if self._flush_mode == zlib.Z_SYNC_FLUSH:
            # The client will never inflate this attempt, so its window lacks
            # the data; a full flush makes wsproxy's window forget it (and what
            # came before), so no later message refers to it.  Costs one call,
            # against a copy() of the whole deflate state before every attempt.
            compressor.flush(zlib.Z_FULL_FLUSH)
        if long_read:
            # Incompressible streams (random, encrypted, already compressed
            # video or images) then cost one try per BACKOFF_MAX bytes.
            self._backoff = min(self._backoff * 2, BACKOFF_MAX) if self._backoff else BACKOFF_FIRST
            self._skip = self._backoff
        return None

    # -- receiving -----------------------------------------------------------------

    def inflate(self, data, end: bool) -> Iterator[bytes]:
        """Inflate one piece of a compressed message; yield its output in chunks.

        ``data`` is payload in order, split anywhere; ``end`` is True with the
        message's last piece.  Chunks are at most :data:`INFLATE_CHUNK`
        bytes, each produced only when the previous one was taken.  Raises
        :class:`ProtocolError`: 1009 once the message inflates past
        ``max_message_size``, 1002 for data that is not DEFLATE.
        """
        decompressor = self._decompressor
        if decompressor is None:
            decompressor = zlib.decompressobj(-self.params.inflate_window_bits)
            self._decompressor = decompressor
        if data:
            yield from self._drain(decompressor, data)
        if end:
            if not decompressor.eof:
                # §7.2.2: "Append 4 octets of 0x00 0x00 0xff 0xff to the tail end".
                yield from self._drain(decompressor, _TAIL)
            self._inflated = 0
            # A block with BFINAL set (§7.2.3.4) ends the stream: the next
            # message starts a new one.
            if decompressor.eof or self.params.client_no_context_takeover:
                self._decompressor = None

    def _drain(self, decompressor, data) -> Iterator[bytes]:
        while not decompressor.eof:
            try:
                chunk = decompressor.decompress(data, INFLATE_CHUNK)
            except zlib.error as exc:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR,
                                    "invalid compressed data: %s" % exc) from None
            data = decompressor.unconsumed_tail
            if chunk:
                self._inflated += len(chunk)
                if self._inflated > self.max_message_size:
                    raise ProtocolError(CloseCode.MESSAGE_TOO_BIG,
                                        "message inflates to over %d bytes" % self.max_message_size)
                yield chunk
            # A full chunk may leave output pending inside zlib even when all
            # input was taken (a long match half copied): ask again.
            if not data and len(chunk) < INFLATE_CHUNK:
                return
        # After the final block zlib keeps further bytes in unused_data; the
        # RFC's own example (§7.2.3.4) has one such padding byte.  Ignored.
