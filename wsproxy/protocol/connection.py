"""The server side of one RFC 6455 connection, without I/O.

Feed client bytes to :meth:`Connection.receive_data`, get back the payload
for the target; pop control replies (pongs, the close) with
:meth:`Connection.data_to_send`; frame target bytes for the client with
:meth:`Connection.send_data`.  :class:`wsproxy.protocol.hixie.HixieConnection`
has the same interface, so the relay drives both alike.

Binary payload is streamed: each piece of a frame is unmasked and handed on
as it arrives, so a 1 GiB message needs no more memory than one receive.
Text messages (binary mode) are held in one buffer until complete and valid
UTF-8, bounded by ``max_message_size``.  In base64 mode each text message is
decoded as it arrives, on its own: it must be whole base64 (1007).

With permessage-deflate agreed (RFC 7692), a message whose first frame has
RSV1 set is inflated as it arrives, in bounded steps, and then handled as
above; its inflated size is bounded by ``max_message_size`` (1009).  One
receive returns at most about :data:`OUTPUT_STEP` bytes of inflated payload
plus one message: the rest of the input waits (``input_pending``) until
:meth:`Connection.receive_more` is called, so a burst of small messages that
inflate to the limit never piles up.  Each piece of target data becomes one
compressed message, or an uncompressed one when compressing would not make
it smaller.

Control replies are bounded too: at most :data:`MAX_PENDING_PONGS` pongs (the
most recent: RFC 6455 §5.5.3 lets an endpoint leave earlier pings
unanswered), one heartbeat ping and the close wait to be sent, whatever the
client sends meanwhile.
"""

import codecs
import collections
import struct
import threading
from typing import List, Optional, Tuple

from . import b64
from .deflate import DeflateParams, PerMessageDeflate
from .errors import ProtocolError
from .frames import (CloseCode, Opcode, KNOWN_OPCODES, MAX_CONTROL_PAYLOAD, apply_mask, rotate_mask,
                     encode_close_payload, encode_frame, encode_header, parse_close_payload)

_UINT16 = struct.Struct("!H")
_UINT64 = struct.Struct("!Q")
_TEXT, _BINARY, _CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONTINUATION
_CLOSE, _PING, _PONG = Opcode.CLOSE, Opcode.PING, Opcode.PONG
_Utf8Decoder = codecs.getincrementaldecoder("utf-8")
#: Marks ``_message`` as compressed (RSV1 on its first frame): kept apart
#: from the opcode bits so an uncompressed message's checks stay as they were.
_COMPRESSED = 0x40

#: Longest frame header: 2 bytes, 8-byte length, 4-byte mask.
MAX_HEADER = 14

#: Payload pieces shorter than this are joined into one buffer as they are
#: decoded: an object per 1-byte frame would cost ~40 bytes per payload byte.
_SMALL_PIECE = 512

#: Pongs that may wait to be sent; an older one is dropped for a newer ping.
#: Enough that a burst of pings read at once (Autobahn 2.10: ten) is answered in full.
MAX_PENDING_PONGS = 16

#: Inflated payload one receive hands out before it pauses (``input_pending``);
#: a piece of input may add one message's worth (``max_message_size``) to it.
OUTPUT_STEP = 64 * 1024


def _add_binary(payload, out: List[bytes]) -> None:
    """Hand on a piece of binary payload: a large one as it is, small ones joined in one buffer.

    A run of small frames then costs the relay one write, not one per frame.
    Every bytearray in ``out`` is a fresh buffer of this connection's, never
    the caller's receive buffer, so appending to it is safe.
    """
    if len(payload) >= _SMALL_PIECE:
        out.append(payload)
    elif out and type(out[-1]) is bytearray:
        out[-1] += payload
    else:
        out.append(bytearray(payload))


class Connection:
    """One RFC 6455 server connection's protocol state.

    One thread may feed input while another frames output; the close is
    sent at most once whichever side asks first.

    ``subprotocol`` is the one agreed in the handshake: ``"base64"`` decodes
    text frames from base64 and sends base64 text frames; anything else
    (``"binary"`` or ``None``) relays bytes in binary frames.

    ``deflate`` holds the permessage-deflate parameters agreed in the
    handshake (None: no extension, RSV1 is a protocol error);
    ``compress_level`` is the zlib level for target data.  Compression
    applies to what goes on the wire: in base64 mode the base64 text.

    Attributes the relay reads: ``close_sent``, ``close_received``
    (``(code, reason)`` once the client's close arrived), ``failure`` (the
    :class:`ProtocolError` that ended input, if any), ``has_data_to_send``
    (control frames wait) and ``input_pending`` (input held back, see
    :meth:`receive_more`).
    """

    def __init__(self, subprotocol: Optional[str] = None,
                 max_message_size: int = 1024 * 1024,
                 deflate: Optional[DeflateParams] = None,
                 compress_level: int = 6) -> None:
        self.subprotocol = subprotocol
        self.max_message_size = max_message_size
        self.close_sent = False
        self.close_received: Optional[Tuple[int, str]] = None
        self.failure: Optional[ProtocolError] = None
        self._base64 = subprotocol == "base64"
        self._b64 = b64.Base64Decoder() if self._base64 else None
        self._deflate = (PerMessageDeflate(deflate, compress_level, max_message_size)
                         if deflate is not None else None)
        # Control frames waiting for the client, bounded whatever the client
        # sends: the newest pongs, one ping, one close.  Set by the reading
        # side (pongs, close), the heartbeat (ping) or the target side (close); taken by
        # whichever side writes to the client.  Every check of ``close_sent``
        # and every change of the slots happens under ``_close_lock``, so no
        # frame can be queued behind the close (RFC 6455 §5.5.1).
        self._pongs: "collections.deque[bytes]" = collections.deque(maxlen=MAX_PENDING_PONGS)
        self._ping: Optional[bytes] = None
        self._close_frame: Optional[bytes] = None
        #: True when :meth:`data_to_send` would return something.
        self.has_data_to_send = False
        self._close_lock = threading.Lock()
        #: True when a receive paused with input left (see :meth:`receive_more`).
        self.input_pending = False
        self._held = b""
        self._produced = 0
        self._input_done = False
        self._partial_header = b""
        # The frame whose payload is arriving.
        self._remaining = 0
        self._offset = 0
        self._mask = b""
        self._opcode = 0
        self._fin = True
        self._control = bytearray()
        # The data message in progress (fragmented or not yet complete).
        self._message: Optional[int] = None
        # A binary-mode text message: one growing buffer (a list of pieces
        # would cost an object per fragment: ~40 bytes for a 1-byte one).
        self._text: Optional[bytearray] = None
        self._checked = 0       # bytes of _text that passed the UTF-8 check
        self._utf8 = None

    # -- input ----------------------------------------------------------------

    def receive_data(self, data) -> List[bytes]:
        """Parse client bytes (split anywhere); return payload for the target.

        Never raises for bad input: a protocol violation sets ``failure``,
        queues a close frame with its code and ignores all later input.
        Payload decoded before the violation is still returned.

        Inflated output comes in bounded steps: when this receive has
        handed out :data:`OUTPUT_STEP` bytes of it, the rest of ``data`` is
        kept (copied), ``input_pending`` is set, and :meth:`receive_more`
        must be called (until ``input_pending`` is False) before more data
        is fed.
        """
        if self._input_done or not data:
            return []
        if self.input_pending:  # the caller skipped receive_more: keep the order
            data = self._held + bytes(data)
            self._held, self.input_pending = b"", False
        return self._receive(memoryview(data))

    def receive_more(self) -> List[bytes]:
        """Go on with input a receive held back (``input_pending``); same result."""
        if not self.input_pending:
            return []
        view = memoryview(self._held)
        self._held, self.input_pending = b"", False
        if self._input_done:
            return []
        return self._receive(view)

    def _receive(self, view: memoryview) -> List[bytes]:
        out: List[bytes] = []
        self._produced = 0
        try:
            if self._partial_header:
                view = self._complete_header(view)
                if view is None:
                    return out
                if self._remaining == 0:
                    # A frame without payload ends with its header.
                    self._on_payload(b"", True, out)
            self._parse(view, out)
            if self._text is not None and len(self._text) > self._checked:
                self._check_text(False)
        except ProtocolError as exc:
            self._fail(self._earlier_failure(exc))
        return out

    def _complete_header(self, view: memoryview) -> Optional[memoryview]:
        """Join a header split across receives without copying the whole receive."""
        held = self._partial_header
        joined = held + bytes(view[:MAX_HEADER])
        used = self._parse_header(joined, 0, len(joined))
        if used == 0:
            self._partial_header = joined
            return None
        self._partial_header = b""
        return view[used - len(held):]

    def _parse(self, view: memoryview, out: List[bytes]) -> None:
        pos, end = 0, len(view)
        while not self._input_done:
            remaining = self._remaining
            if remaining:
                take = end - pos
                if take <= 0:
                    return
                if take > remaining:
                    take = remaining
                mask = self._mask
                if self._offset & 3:  # a frame split across receives
                    mask = rotate_mask(mask, self._offset)
                payload = apply_mask(view[pos:pos + take], mask)
                pos += take
                self._offset += take
                self._remaining = remaining - take
                self._on_payload(payload, self._remaining == 0, out)
                continue
            if pos >= end:
                return
            if self._produced >= OUTPUT_STEP:
                # Pause at a frame boundary (a frame's payload in one receive
                # is one piece): the caller sends this much on first.
                self._held = bytes(view[pos:end])
                self.input_pending = True
                return
            if self._message is None and end - pos >= 6:
                # The common case in one step: a whole unfragmented binary
                # frame (FIN, no RSV bit, masked, length under 64 KiB) in
                # this receive.  Every rule _parse_header checks holds for
                # it by its first two bytes; the state it would set is the
                # state after the frame, which is the state before it.
                second = view[pos + 1]
                if view[pos] == 0x82 and 0x80 <= second < 0xFF:
                    start = pos + 6
                    length = second & 0x7F
                    if length == 126:
                        start = pos + 8
                        length = _UINT16.unpack_from(view, pos + 2)[0] if start <= end else -1
                    stop = start + length
                    if 0 <= length and stop <= end:
                        if length:
                            _add_binary(
                                apply_mask(view[start:stop], bytes(view[start - 4:start])), out)
                        pos = stop
                        continue
            used = self._parse_header(view, pos, end)
            if used == 0:
                self._partial_header = bytes(view[pos:end])
                return
            pos += used
            if self._remaining == 0:
                self._on_payload(b"", True, out)

    def _parse_header(self, buf, pos: int, end: int) -> int:
        """Parse one frame header at ``buf[pos:]``; return its size, 0 if incomplete.

        Enforces the per-frame rules of RFC 6455 §5.2-§5.5.
        """
        if end - pos < 2:
            return 0
        first, second = buf[pos], buf[pos + 1]
        opcode = first & 0x0F
        fin = bool(first & 0x80)
        length = second & 0x7F
        # Checks on the first two bytes come before waiting for the rest of
        # the header: a whole unmasked frame may be shorter than a masked header.
        if first & 0x70:
            # §5.2: RSV bits "MUST be 0 unless an extension is negotiated".
            # RFC 7692 §6: permessage-deflate gives RSV1 a meaning on the
            # first frame of a data message, and only there (§6.1).
            if ((first & 0x70) != 0x40 or self._deflate is None
                    or (opcode != _TEXT and opcode != _BINARY)):
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "reserved bits set")
        if not second & 0x80:
            # §5.1: "The server MUST close the connection upon receiving a frame that is not masked."
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "unmasked client frame")
        if opcode not in KNOWN_OPCODES:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "unknown opcode %d" % opcode)
        if opcode >= 8:
            # §5.5: control frames MUST NOT be fragmented and carry at most 125 bytes.
            if not fin:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "fragmented control frame")
            if length > MAX_CONTROL_PAYLOAD:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "control frame over 125 bytes")
        size = 6
        if length == 126:
            size = 8
            if end - pos < size:
                return 0
            length = _UINT16.unpack_from(buf, pos + 2)[0]
        elif length == 127:
            size = 14
            if end - pos < size:
                return 0
            length = _UINT64.unpack_from(buf, pos + 2)[0]
            if length >> 63:
                # §5.2: "the most significant bit MUST be 0".
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "64-bit length with the top bit set")
        elif end - pos < size:
            return 0
        if opcode >= 8:
            self._control = bytearray()
        elif first & 0x40:
            self._start_compressed_message(opcode)
        else:
            self._start_data_frame(opcode, fin, length)
        self._opcode = opcode
        self._fin = fin
        self._remaining = length
        self._offset = 0
        self._mask = bytes(buf[pos + size - 4:pos + size])
        return size

    def _start_data_frame(self, opcode: int, fin: bool, length: int) -> None:
        """Apply §5.4's fragmentation rules to a data frame header."""
        if opcode == _CONT:
            if self._message is None:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "continuation without a message")
        elif opcode == _TEXT or opcode == _BINARY:
            if self._message is not None:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "new message inside a fragmented one")
            self._message = opcode
            if opcode == _TEXT and not self._base64:
                self._utf8 = _Utf8Decoder()
                self._text = bytearray()
                self._checked = 0
        else:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "unknown opcode %d" % opcode)
        if self._message == _TEXT and not self._base64:
            if len(self._text) + length > self.max_message_size:
                raise ProtocolError(CloseCode.MESSAGE_TOO_BIG,
                                    "text message over %d bytes" % self.max_message_size)

    def _start_compressed_message(self, opcode: int) -> None:
        """The first frame of a compressed message (RSV1, text or binary: checked already).

        Its size limit applies to the inflated bytes, in :meth:`_on_compressed`.
        """
        if self._message is not None:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "new message inside a fragmented one")
        self._message = opcode | _COMPRESSED
        if opcode == _TEXT and not self._base64:
            self._utf8 = _Utf8Decoder()
            self._text = bytearray()
            self._checked = 0

    def _on_payload(self, payload: bytes, frame_done: bool, out: List[bytes]) -> None:
        opcode = self._opcode
        if opcode >= 8:
            self._control += payload
            if frame_done:
                if self._text is not None and len(self._text) > self._checked:
                    # Text before this frame is checked first: no pong (or
                    # close echo) for a frame that follows invalid UTF-8.
                    self._check_text(False)
                self._on_control(opcode, bytes(self._control))
            return
        message = self._message
        if message == _BINARY:
            if payload:
                _add_binary(payload, out)
        elif message & _COMPRESSED:
            self._on_compressed(payload, frame_done and self._fin, out)
        elif self._base64:
            if payload:
                decoded = self._b64.feed(payload)
                if decoded:
                    out.append(decoded)
        else:
            self._on_text(payload, frame_done and self._fin, out)
        if frame_done and self._fin:
            if self._base64 and message & 0x0F == _TEXT:
                # Each message is base64 on its own: no group carries over.
                self._b64.finish()
            self._message = None

    def _on_compressed(self, payload: bytes, message_done: bool, out: List[bytes]) -> None:
        """Inflate a piece of a compressed message; hand on its output as if sent plain."""
        kind = self._message & 0x0F
        produced = 0
        for chunk in self._deflate.inflate(payload, message_done):
            if kind == _BINARY:
                out.append(chunk)
                produced += len(chunk)
            elif self._base64:
                decoded = self._b64.feed(chunk)
                if decoded:
                    out.append(decoded)
                    produced += len(decoded)
            else:
                self._on_text(chunk, False, out)
        if kind == _TEXT and not self._base64 and message_done:
            produced += len(self._text)
            self._on_text(b"", True, out)
        # Counted for the pause in _parse: inflated output is what can
        # outgrow the input that carried it.
        self._produced += produced

    def _on_text(self, payload: bytes, message_done: bool, out: List[bytes]) -> None:
        """Hold a binary-mode text message until it is whole and valid UTF-8.

        The UTF-8 check runs once per receive (see :meth:`_receive`), and
        before any control frame or other failure that follows the text,
        not per frame: a message in 1-byte fragments costs one append each,
        and an invalid byte still fails the connection before the message
        ends, ahead of anything that came after it.
        """
        if payload:
            self._text += payload
        if message_done:
            self._check_text(True)
            if self._text:
                out.append(self._text)
            self._text = None
            self._utf8 = None

    def _earlier_failure(self, exc: ProtocolError) -> ProtocolError:
        """``exc``, or the invalid UTF-8 that came before it in the stream (checked late)."""
        if self._text is not None and len(self._text) > self._checked:
            try:
                self._check_text(False)
            except ProtocolError as earlier:
                return earlier
        return exc

    def _check_text(self, final: bool) -> None:
        """Run the incremental UTF-8 check over the text not checked yet."""
        text = self._text
        try:
            self._utf8.decode(text[self._checked:], final)
        except UnicodeDecodeError:
            # §8.1: invalid UTF-8 in a text message fails the connection (1007).
            raise ProtocolError(CloseCode.INVALID_DATA, "text message is not UTF-8") from None
        self._checked = len(text)

    def _on_control(self, opcode: int, payload: bytes) -> None:
        if opcode == _PING:
            # §5.5.2: answer a ping with a pong carrying the same payload;
            # §5.5.3: past the bound, the oldest pong not yet sent is dropped.
            pong = encode_frame(_PONG, payload)
            with self._close_lock:
                if not self.close_sent:
                    self._pongs.append(pong)
                    self.has_data_to_send = True
        elif opcode == _CLOSE:
            code, reason = parse_close_payload(payload)
            self.close_received = (code, reason)
            self._input_done = True
            # §5.5.1: answer with a close, normally echoing the status code.
            self.send_close(None if code == CloseCode.NO_STATUS else code, "")
        # §5.5.3: an unsolicited pong is ignored.

    def _fail(self, exc: ProtocolError) -> None:
        self.failure = exc
        self._input_done = True
        self.send_close(exc.code, exc.reason)

    # -- output ---------------------------------------------------------------

    def data_to_send(self) -> List[bytes]:
        """Take the control frames waiting for the client (pong, ping, close), in order."""
        with self._close_lock:
            return self._take_replies()

    def _take_replies(self) -> List[bytes]:
        """Under ``_close_lock``: empty the slots; the close, if any, comes last."""
        if not self.has_data_to_send:
            return []
        replies = list(self._pongs)
        self._pongs.clear()
        if self._ping is not None:
            replies.append(self._ping)
        if self._close_frame is not None:
            replies.append(self._close_frame)
        self._ping = self._close_frame = None
        self.has_data_to_send = False
        return replies

    def send_data(self, payload) -> list:
        """Frames carrying target bytes to the client, as a list of buffers.

        Control frames already queued (pongs, a heartbeat ping) come first
        and leave the queue: a pong queued while the client's message was
        being read must not trail the target's answer to that message
        (Autobahn 5.6, 5.20).  Returns ``[]`` once a close was sent: RFC 6455
        §5.5.1 forbids data frames after it.  The payload object itself is
        the last buffer (binary mode), so the caller must send before
        reusing it.
        """
        with self._close_lock:
            # Under the lock no close can be queued meanwhile, so what is
            # taken here is never a close that the data would then follow.
            if self.close_sent:
                return []
            frames = self._take_replies() if self.has_data_to_send else []
        if self._deflate is not None:
            return frames + self._compressed_frame(payload)
        if self._base64:
            text = b64.encode(payload)
            frames += [encode_header(_TEXT, len(text)), text]
        else:
            frames += [encode_header(_BINARY, len(payload)), payload]
        return frames

    # -- zero-copy output (wsproxy.splice) ------------------------------------------

    @property
    def frames_bytes_as_is(self) -> bool:
        """True when target bytes go out unchanged, in binary frames.

        Only then (no base64, no compression) may a payload bypass this
        object: the kernel moves it while only the header is built here.
        """
        return not self._base64 and self._deflate is None

    def send_data_header(self, length: int) -> list:
        """:meth:`send_data` for a payload this object never sees.

        Returns the queued control frames and the header of one binary
        frame of ``length`` bytes, or ``[]`` once a close was sent; the
        caller writes the ``length`` payload bytes right after, before any
        other frame.  Only when :attr:`frames_bytes_as_is` holds.
        """
        with self._close_lock:
            if self.close_sent:
                return []
            frames = self._take_replies() if self.has_data_to_send else []
        frames.append(encode_header(_BINARY, length))
        return frames

    def _compressed_frame(self, payload) -> list:
        """One message for ``payload``: compressed with RSV1 set, or plain if that is smaller."""
        if self._base64:
            opcode, data = _TEXT, b64.encode(payload)
        else:
            opcode, data = _BINARY, payload
        compressed = self._deflate.compress(data)
        if compressed is None:
            return [encode_header(opcode, len(data)), data]
        # RFC 7692 §6: RSV1 on the first (here: only) frame marks the message compressed.
        return [encode_header(opcode, len(compressed), rsv1=True), compressed]

    def send_close(self, code: Optional[int] = CloseCode.NORMAL, reason: str = "") -> None:
        """Queue a close frame (once, even when both sides of a relay race to close)."""
        with self._close_lock:
            if self.close_sent:
                return
            self.close_sent = True
            self._close_frame = encode_frame(_CLOSE, encode_close_payload(code, reason))
            self.has_data_to_send = True

    def send_ping(self, payload: bytes = b"") -> None:
        """Queue a ping (heartbeat), replacing one not yet sent; nothing after the close."""
        ping = encode_frame(_PING, payload[:MAX_CONTROL_PAYLOAD])
        with self._close_lock:
            if not self.close_sent:
                self._ping = ping
                self.has_data_to_send = True
