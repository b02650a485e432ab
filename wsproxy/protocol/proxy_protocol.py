"""HAProxy's PROXY protocol (versions 1 and 2): read the header a balancer sends, write our own.

A load balancer in TCP mode (HAProxy's ``send-proxy`` / ``send-proxy-v2``)
opens each connection to wsproxy with one header naming the client it relays
for.  :class:`ProxyHeaderReader` takes the connection's first bytes in pieces
of any size, consumes exactly the header's bytes and never one more (the
bytes after it belong to TLS, HTTP or Flash), and hands back a
:class:`ProxyHeader`.  :func:`build_header` writes the same header the other
way, for a target that wants to know wsproxy's client
(``--target-proxy-protocol``).  Section numbers cite the specification,
HAProxy's ``doc/proxy-protocol.txt`` ("The PROXY protocol, Versions 1 & 2").

This module never touches a socket.
"""

import enum
import ipaddress
import re
import struct
from dataclasses import dataclass
from typing import Iterable, Optional, Tuple, Union

__all__ = [
    "Command",
    "Family",
    "ProxyHeader",
    "ProxyHeaderError",
    "ProxyHeaderReader",
    "SSLClient",
    "SSLSubtype",
    "TLVType",
    "Transport",
    "UNIQUE_ID_MAX_LENGTH",
    "V1_MAX_LENGTH",
    "V2_HEADER_LENGTH",
    "V2_MAX_LENGTH",
    "V2_SIGNATURE",
    "build_header",
    "encode_tlvs",
    "parse_header",
    "parse_tlvs",
    "ssl_tlv",
]

Buffer = Union[bytes, bytearray, memoryview]
#: ``(host, port)`` for TCP and UDP, the socket path for AF_UNIX.
Address = Union[Tuple[str, int], str]
#: One version 2 TLV vector: its type byte and its value.
TLV = Tuple[int, bytes]

#: §2.1: a version 1 header starts with "PROXY" and one space.
V1_PREFIX = b"PROXY "
#: §2.1: "If the CRLF sequence is not found in the first 107 characters, the
#: receiver should declare the line invalid."
V1_MAX_LENGTH = 107
#: §2.2: the constant 12-byte block that starts a version 2 header.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: §2.2: signature, version and command, family and transport, length.
V2_HEADER_LENGTH = 16
#: Our bound on a version 2 header with its addresses and TLVs.  The
#: specification fits a header "in the smallest TCP segment that any TCP/IP
#: host is required to support" (536 bytes) when it has no TLVs; HAProxy's
#: own TLVs (ALPN, authority, SSL, unique id) stay well under this.
V2_MAX_LENGTH = 2048


class ProxyHeaderError(ValueError):
    """The connection does not start with a valid PROXY protocol header.

    §2.1: "Any sequence which does not exactly match the protocol must be
    discarded and cause the receiver to abort the connection."  The message
    says what was wrong, for one log line.
    """


class Command(enum.Enum):
    """§2.2: why the balancer opened the connection."""

    #: Opened by the balancer itself (a health check): use the connection's
    #: own endpoints.
    LOCAL = 0x0
    #: Relayed on behalf of a client, whose addresses the header carries.
    PROXY = 0x1


class Family(enum.Enum):
    """§2.2: the relayed connection's address family (version 1's ``UNKNOWN`` is UNSPEC)."""

    UNSPEC = 0x0
    INET = 0x1
    INET6 = 0x2
    UNIX = 0x3


class Transport(enum.Enum):
    """§2.2: the relayed connection's transport (version 1 only ever says STREAM, or UNSPEC)."""

    UNSPEC = 0x0
    STREAM = 0x1
    DGRAM = 0x2


class TLVType(enum.IntEnum):
    """§2.2.1-§2.2.7: the registered version 2 TLV types (0xE0-0xEF are left for custom use)."""

    ALPN = 0x01
    #: §2.2.2: "the host name value passed by the client, as an UTF8-encoded string".
    AUTHORITY = 0x02
    CRC32C = 0x03
    NOOP = 0x04
    #: §2.2.5: "an opaque byte sequence of up to 128 bytes" identifying the connection.
    UNIQUE_ID = 0x05
    SSL = 0x20
    NETNS = 0x30


class SSLSubtype(enum.IntEnum):
    """§2.2.6: the sub-TLVs inside a ``PP2_TYPE_SSL`` value."""

    VERSION = 0x21
    CN = 0x22
    CIPHER = 0x23
    SIG_ALG = 0x24
    KEY_ALG = 0x25


class SSLClient(enum.IntFlag):
    """§2.2.6: the ``client`` bit field opening a ``PP2_TYPE_SSL`` value."""

    SSL = 0x01
    CERT_CONN = 0x02
    CERT_SESS = 0x04


#: §2.2.5: the longest ``PP2_TYPE_UNIQUE_ID`` value.
UNIQUE_ID_MAX_LENGTH = 128


@dataclass(frozen=True)
class ProxyHeader:
    """One parsed PROXY protocol header.

    Fields: ``version`` (1 or 2), ``command`` (:class:`Command`), ``family``
    (:class:`Family`), ``transport`` (:class:`Transport`), ``source`` and
    ``destination`` (``(host, port)`` for INET and INET6, the socket path
    for UNIX, ``None`` when the header carries no usable address: LOCAL,
    UNSPEC or version 1's ``UNKNOWN``), ``length`` (how many bytes the
    header took on the wire, TLVs included) and ``tlvs`` (a version 2
    header's ``(type, value)`` vectors, in order).
    """

    version: int
    command: Command
    family: Family
    transport: Transport
    source: Optional[Address]
    destination: Optional[Address]
    length: int
    tlvs: Tuple[TLV, ...] = ()

    def tlv(self, kind: int) -> Optional[bytes]:
        """The value of the first TLV of type ``kind``, or ``None``."""
        return next((value for tlv_type, value in self.tlvs if tlv_type == kind), None)

    @property
    def client_address(self) -> Optional[Address]:
        """The client the balancer relays for, or ``None``: then use the connection's peer.

        §2.2: for LOCAL "the receiver must ... use the real connection
        endpoints"; §2.1: for UNKNOWN it "SHOULD accept the connection and
        use the real connection's parameters".
        """
        if self.command is Command.LOCAL:
            return None
        return self.source


class _Version(enum.Enum):
    ONE = 1
    TWO = 2


class ProxyHeaderReader:
    """Incremental reader of one PROXY protocol header, version 1 or 2.

    Call :meth:`feed` with bytes as they arrive; it consumes only header
    bytes and says how many it took.  Once the header is complete it is in
    :attr:`header` and :meth:`wanted` is 0.  Garbage (no header at all),
    a wrong signature, an oversize or malformed header raise
    :class:`ProxyHeaderError` as soon as the bytes seen prove it.

    ``max_v2_length`` bounds a version 2 header (16 bytes plus its length
    field); version 1 is always bounded by :data:`V1_MAX_LENGTH`.
    """

    def __init__(self, max_v2_length: int = V2_MAX_LENGTH) -> None:
        self.max_v2_length = max_v2_length
        self.header: Optional[ProxyHeader] = None
        self._buffer = bytearray()
        self._version: Optional[_Version] = None
        self._total: Optional[int] = None  # a version 2 header's length, once known

    def wanted(self) -> int:
        """How many more bytes the header may take at most: peek this many and feed them.

        :meth:`feed` takes only the header's own bytes, so peeking (or
        buffering) this many never loses the client's first bytes.  It is
        exact once a version 2 header's fixed part is in; before that, and
        for version 1 (whose end is its CRLF), it is the most that the
        specification allows.  0 once the header is complete.
        """
        if self.header is not None:
            return 0
        if self._version is _Version.TWO:
            return (self._total or V2_HEADER_LENGTH) - len(self._buffer)
        return V1_MAX_LENGTH - len(self._buffer)

    def feed(self, data: Buffer) -> int:
        """Consume the header bytes at the start of ``data``; return how many were taken.

        Bytes after the header's end are left alone (the count excludes
        them).  Returns 0 once the header is complete.  Raises
        :class:`ProxyHeaderError` for anything that is not a valid header.
        """
        view = memoryview(data).cast("B")
        if self.header is not None or not view:
            return 0
        if self._version is None:
            first = view[0]
            if first == V1_PREFIX[0]:
                self._version = _Version.ONE
            elif first == V2_SIGNATURE[0]:
                self._version = _Version.TWO
            else:
                raise ProxyHeaderError("not a PROXY protocol header: the connection starts "
                                       "with %r" % bytes(view[:16]))
        if self._version is _Version.ONE:
            return self._feed_v1(view)
        return self._feed_v2(view)

    # -- version 1 (§2.1) ---------------------------------------------------------

    def _feed_v1(self, view: memoryview) -> int:
        chunk = bytes(view[:V1_MAX_LENGTH - len(self._buffer)])
        end = chunk.find(b"\n")
        if end >= 0:
            chunk = chunk[:end + 1]
        start = len(self._buffer)
        self._buffer += chunk
        _check_v1_bytes(self._buffer, start)
        if end < 0:
            if len(self._buffer) >= V1_MAX_LENGTH:
                raise ProxyHeaderError("version 1 header without CRLF in its first %d bytes"
                                       % V1_MAX_LENGTH)
            return len(chunk)
        self.header = _parse_v1_line(bytes(self._buffer[:-2]), len(self._buffer))
        return len(chunk)

    # -- version 2 (§2.2) ---------------------------------------------------------

    def _feed_v2(self, view: memoryview) -> int:
        taken = 0
        while self.header is None and taken < len(view):
            chunk = view[taken:taken + self.wanted()]
            start = len(self._buffer)
            self._buffer += chunk
            taken += len(chunk)
            if self._total is None:
                self._check_v2_fixed_part(start)
            if self._total is not None and len(self._buffer) == self._total:
                self.header = _parse_v2(bytes(self._buffer))
        return taken

    def _check_v2_fixed_part(self, start: int) -> None:
        """Check the first 16 bytes as they arrive (``start``: how many were checked before)."""
        buffer = self._buffer
        if start < len(V2_SIGNATURE):
            seen = bytes(buffer[:len(V2_SIGNATURE)])
            if not V2_SIGNATURE.startswith(seen):
                raise ProxyHeaderError("not a PROXY protocol header: wrong version 2 "
                                       "signature %r" % seen)
        if start <= 12 < len(buffer):
            # §2.2: "The highest four bits contains the version ... the
            # receiver must only accept this value"; for other commands
            # "Receivers must drop connections".
            if buffer[12] >> 4 != 2:
                raise ProxyHeaderError("version 2 signature with version %d" % (buffer[12] >> 4))
            if buffer[12] & 0x0F not in (Command.LOCAL.value, Command.PROXY.value):
                raise ProxyHeaderError("unknown version 2 command 0x%x" % (buffer[12] & 0x0F))
        if start <= 13 < len(buffer) and buffer[12] & 0x0F == Command.PROXY.value:
            # §2.2: other families and transports "must be rejected as
            # invalid by receivers".  LOCAL ignores the family.
            if buffer[13] >> 4 not in _FAMILIES or buffer[13] & 0x0F not in _TRANSPORTS:
                raise ProxyHeaderError("unknown version 2 family and transport 0x%02x" % buffer[13])
        if len(buffer) == V2_HEADER_LENGTH:
            # §2.2: "the length of the protocol header in bytes is always
            # exactly 16 + this value".
            total = V2_HEADER_LENGTH + struct.unpack_from("!H", buffer, 14)[0]
            if total > self.max_v2_length:
                raise ProxyHeaderError("version 2 header of %d bytes (more than %d)"
                                       % (total, self.max_v2_length))
            self._total = total


def parse_header(data: Buffer) -> Optional[ProxyHeader]:
    """Parse the header at the start of ``data``; ``None`` if ``data`` ends before it does.

    The header's :attr:`~ProxyHeader.length` says where the client's own
    bytes begin.  Raises :class:`ProxyHeaderError` like
    :meth:`ProxyHeaderReader.feed`.
    """
    reader = ProxyHeaderReader()
    reader.feed(data)
    return reader.header


# -- version 1 details ---------------------------------------------------------------

# §2.1: ports are decimal "in the range [0..65535]" without heading zeroes.
_V1_PORT = re.compile(r"0|[1-9][0-9]{0,4}")


def _check_v1_bytes(buffer: bytearray, start: int) -> None:
    """Reject a version 1 prefix as soon as its bytes cannot start a valid line."""
    seen = bytes(buffer[:len(V1_PREFIX)])
    if not V1_PREFIX.startswith(seen):
        raise ProxyHeaderError("not a PROXY protocol header: the connection starts with %r"
                               % bytes(buffer[:16]))
    # From one byte back: a CR that ended the previous piece meets its successor here.
    for index in range(max(0, start - 1), len(buffer)):
        byte = buffer[index]
        if byte == 0x0A:
            # §2.1: "The receiver must not tolerate a single CR or LF
            # character to end the line when a complete CRLF sequence is
            # expected."
            if index == 0 or buffer[index - 1] != 0x0D:
                raise ProxyHeaderError("version 1 line ends with LF without CR")
        elif byte == 0x0D:
            if index + 1 < len(buffer) and buffer[index + 1] != 0x0A:
                raise ProxyHeaderError("version 1 line holds a CR not followed by LF")
        elif not 0x20 <= byte <= 0x7E:
            raise ProxyHeaderError("version 1 line holds a byte that is not printable "
                                   "US-ASCII (0x%02x)" % byte)


def _parse_v1_line(line: bytes, length: int) -> ProxyHeader:
    """Parse the line without its CRLF: ``PROXY TCP4|TCP6 SRC DST SPORT DPORT`` or UNKNOWN."""
    text = line.decode("ascii")
    fields = text.split(" ")
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        # §2.1: "the receiver must ignore anything presented before the CRLF".
        return ProxyHeader(1, Command.PROXY, Family.UNSPEC, Transport.UNSPEC, None, None, length)
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("malformed version 1 line %r (expected PROXY TCP4|TCP6 "
                               "SRC DST SPORT DPORT, or PROXY UNKNOWN)" % text)
    family = Family.INET if fields[1] == "TCP4" else Family.INET6
    source = _v1_address(fields[2], family)
    destination = _v1_address(fields[3], family)
    source_port, destination_port = _v1_port(fields[4]), _v1_port(fields[5])
    return ProxyHeader(1, Command.PROXY, family, Transport.STREAM, (source, source_port),
                       (destination, destination_port), length)


def _v1_address(text: str, family: Family) -> str:
    """§2.1: an address "in its canonical format" matching the announced family."""
    try:
        if family is Family.INET:
            address = ipaddress.IPv4Address(text)
            # "Heading zeroes are not permitted": the canonical text is the only one.
            if str(address) != text:
                raise ValueError(text)
        else:
            if "%" in text:  # a scope id is no part of the wire format
                raise ValueError(text)
            address = ipaddress.IPv6Address(text)
    except ValueError:
        raise ProxyHeaderError("version 1 line with a bad %s address %r"
                               % ("IPv4" if family is Family.INET else "IPv6", text)) from None
    return str(address)


def _v1_port(text: str) -> int:
    if not _V1_PORT.fullmatch(text) or int(text) > 65535:
        raise ProxyHeaderError("version 1 line with a bad port %r" % text)
    return int(text)


# -- version 2 details ---------------------------------------------------------------

_FAMILIES = {family.value: family for family in Family}
_TRANSPORTS = {transport.value: transport for transport in Transport}
# §2.2: address block sizes: 2*4 + 2*2, 2*16 + 2*2, 2*108.
_ADDRESS_LENGTHS = {Family.INET: 12, Family.INET6: 36, Family.UNIX: 216}
_UNIX_PATH_LENGTH = 108


def _parse_v2(header: bytes) -> ProxyHeader:
    """Parse a complete version 2 header (its 16 bytes, addresses and TLVs)."""
    command = Command(header[12] & 0x0F)
    length = len(header)
    block = header[V2_HEADER_LENGTH:]
    if command is Command.LOCAL:
        # §2.2: "discard the protocol block including the family which is
        # ignored"; its TLVs are kept when they parse, as information only.
        declared = _FAMILIES.get(header[13] >> 4, Family.UNSPEC)
        return ProxyHeader(2, command, Family.UNSPEC, Transport.UNSPEC, None, None, length,
                           _lenient_tlvs(block[_ADDRESS_LENGTHS.get(declared, 0):]))
    family = _FAMILIES[header[13] >> 4]
    transport = _TRANSPORTS[header[13] & 0x0F]
    if family is Family.UNSPEC or transport is Transport.UNSPEC:
        # §2.2: "The receiver should ignore address information."
        return ProxyHeader(2, command, family, transport, None, None, length,
                           _lenient_tlvs(block))
    needed = _ADDRESS_LENGTHS[family]
    if len(block) < needed:
        raise ProxyHeaderError("version 2 %s header with %d address bytes (needs %d)"
                               % (family.name, len(block), needed))
    # Whatever follows the addresses is TLVs (§2.2.1-).
    tlvs = parse_tlvs(block[needed:])
    if family is Family.UNIX:
        source = _unix_path(block[:_UNIX_PATH_LENGTH])
        destination = _unix_path(block[_UNIX_PATH_LENGTH:2 * _UNIX_PATH_LENGTH])
        return ProxyHeader(2, command, family, transport, source, destination, length, tlvs)
    size = 4 if family is Family.INET else 16
    make = ipaddress.IPv4Address if family is Family.INET else ipaddress.IPv6Address
    source_ip, destination_ip = make(block[:size]), make(block[size:2 * size])
    source_port, destination_port = struct.unpack_from("!HH", block, 2 * size)
    return ProxyHeader(2, command, family, transport, (str(source_ip), source_port),
                       (str(destination_ip), destination_port), length, tlvs)


def _unix_path(raw: bytes) -> str:
    """A ``sun_path`` field: the bytes before the first NUL (non-UTF-8 shown escaped)."""
    return raw.split(b"\x00", 1)[0].decode("utf-8", "backslashreplace")


# -- TLVs (§2.2.1-§2.2.7) ---------------------------------------------------------------

_TLV_HEAD = struct.Struct("!BH")


def parse_tlvs(data: Buffer) -> Tuple[TLV, ...]:
    """Split a block of TLV vectors (type, 2-byte length, value) into ``(type, value)`` pairs.

    Also reads the sub-TLVs of a ``PP2_TYPE_SSL`` value (after its first
    5 bytes).  Raises :class:`ProxyHeaderError` when a vector runs past the
    block's end.
    """
    data = bytes(data)
    tlvs = []
    offset = 0
    while offset < len(data):
        if offset + _TLV_HEAD.size > len(data):
            raise ProxyHeaderError("version 2 TLV block ends inside a TLV's type and length")
        kind, size = _TLV_HEAD.unpack_from(data, offset)
        offset += _TLV_HEAD.size
        if offset + size > len(data):
            raise ProxyHeaderError("version 2 TLV 0x%02x of %d bytes runs past the header's end"
                                   % (kind, size))
        tlvs.append((kind, data[offset:offset + size]))
        offset += size
    return tuple(tlvs)


def _lenient_tlvs(data: bytes) -> Tuple[TLV, ...]:
    """TLVs of a header whose block the receiver must ignore: kept when they parse, else none."""
    try:
        return parse_tlvs(data)
    except ProxyHeaderError:
        return ()


def encode_tlvs(tlvs: Iterable[TLV]) -> bytes:
    """Join ``(type, value)`` pairs into TLV vectors.

    Raises ValueError for a type or a value that does not fit a TLV.
    """
    out = bytearray()
    for kind, value in tlvs:
        if not 0 <= kind <= 0xFF or len(value) > 0xFFFF:
            raise ValueError("TLV type 0x%x with %d bytes does not fit a TLV" % (kind, len(value)))
        out += _TLV_HEAD.pack(kind, len(value)) + bytes(value)
    return bytes(out)


def ssl_tlv(version: Optional[str] = None, cipher: Optional[str] = None,
            common_name: Optional[str] = None, client_certificate: bool = False,
            verified: bool = True) -> TLV:
    """A ``PP2_TYPE_SSL`` TLV (§2.2.6) describing the client's TLS connection.

    ``version`` (``"TLSv1.3"``), ``cipher`` (OpenSSL's name) and
    ``common_name`` (of the client certificate) become sub-TLVs when given;
    ``client_certificate`` says the client presented one on this
    connection and ``verified`` that it passed verification.  §2.2.6: the
    ``verify`` field "will be zero if the client presented a certificate
    and it was successfully verified, and non-zero otherwise".
    """
    client = SSLClient.SSL | (SSLClient.CERT_CONN if client_certificate else 0)
    subs = [(SSLSubtype.VERSION, version), (SSLSubtype.CIPHER, cipher),
            (SSLSubtype.CN, common_name)]
    verify = 0 if client_certificate and verified else 1
    value = struct.pack("!BI", int(client), verify) + encode_tlvs(
        (kind, text.encode("utf-8")) for kind, text in subs if text)
    return TLVType.SSL, value


# -- writing a header ----------------------------------------------------------------

def build_header(version: int, source: Optional[Address], destination: Optional[Address],
                 tlvs: Iterable[TLV] = ()) -> bytes:
    """The PROXY protocol header naming a TCP connection from ``source`` to ``destination``.

    ``version`` is 1 or 2; ``source`` and ``destination`` are ``(ip, port)``
    pairs.  When either is missing or not an IP address (a Unix socket
    client, an address wsproxy does not know), version 1 says ``PROXY
    UNKNOWN`` and version 2 sends a LOCAL header (§2.1, §2.2: the receiver
    then uses the connection's own endpoints).  IPv4-mapped IPv6 addresses
    are written as IPv4; an IPv4 address beside an IPv6 one is mapped into
    IPv6, since one header holds one family.  ``tlvs`` go into a version 2
    header only (version 1 has none).  Raises ValueError for a version
    other than 1 or 2, or TLVs that make the header too long.
    """
    pair = _inet_pair(source, destination)
    if version == 1:
        if pair is None:
            return b"PROXY UNKNOWN\r\n"
        family, (source_ip, source_port), (destination_ip, destination_port) = pair
        return ("PROXY %s %s %s %d %d\r\n" % (
            "TCP4" if family is Family.INET else "TCP6", _v1_text(source_ip),
            _v1_text(destination_ip), source_port, destination_port)).encode("ascii")
    if version != 2:
        raise ValueError("PROXY protocol version %r (expected 1 or 2)" % (version,))
    if pair is None:
        command, family_transport, block = Command.LOCAL, 0x00, b""
    else:
        family, (source_ip, source_port), (destination_ip, destination_port) = pair
        command = Command.PROXY
        family_transport = family.value << 4 | Transport.STREAM.value
        block = (source_ip.packed + destination_ip.packed
                 + struct.pack("!HH", source_port, destination_port))
    block += encode_tlvs(tlvs)
    if len(block) > 0xFFFF:
        raise ValueError("version 2 header of %d bytes is too long" % len(block))
    return (V2_SIGNATURE + bytes([0x20 | command.value, family_transport])
            + struct.pack("!H", len(block)) + block)


def _v1_text(ip) -> str:
    """An address as version 1 writes it: RFC 5952 text, an IPv4-mapped one as ``::ffff:a.b.c.d``.

    RFC 5952 §5 recommends the dotted form for mapped addresses; Python
    writes it only from 3.13 on, so it is spelled out here for every version.
    """
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return "::ffff:%s" % ip.ipv4_mapped
    return str(ip)


def _inet_pair(source: Optional[Address], destination: Optional[Address]):
    """``(family, (ip, port), (ip, port))`` for two IP endpoints of one family, or None."""
    ends = []
    for address in (source, destination):
        if not isinstance(address, tuple) or len(address) < 2:
            return None
        try:
            # A scope id (fe80::1%eth0) is no part of the wire format.
            ip = ipaddress.ip_address(str(address[0]).partition("%")[0])
            port = int(address[1])
        except (TypeError, ValueError):
            return None
        if not 0 <= port <= 0xFFFF:
            return None
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        ends.append((ip, port))
    if ends[0][0].version != ends[1][0].version:
        ends = [(ipaddress.IPv6Address("::ffff:%s" % ip) if ip.version == 4 else ip, port)
                for ip, port in ends]
    family = Family.INET if ends[0][0].version == 4 else Family.INET6
    return family, ends[0], ends[1]
