"""Seeded fuzzing through real sockets: mutated handshakes and mutated frame streams.

Every case is built from ``random.Random`` with a fixed seed and its own
index, so a failure names the case and :func:`handshake_case` /
:func:`frame_case` rebuild exactly the bytes that were sent.  Cases run a
few at a time over parallel connections against one proxy per test.

What each case must get back:

- a mutated handshake (RFC 6455, and the hixie-75/76 drafts): an HTTP
  status in the set its mutation allows (a harmless mutation still gets
  101, with the right accept value or hixie-76 answer, a broken one 4xx),
  or the connection simply ends when the request never ended;
- a mutated frame stream after a good handshake, in binary and in base64
  mode: :func:`expected_outcome` reads the stream the way RFC 6455 (and
  RFC 4648 for base64) says a server must and gives the close codes
  allowed for the first violation (1002, 1007, 1009), the clean close's
  echo, or the plain end of the connection for a stream cut short; also
  the pongs owed and the payload the echo target sends back.

Never a hang (every wait has a deadline), never a traceback in the log, and
afterwards the server serves a normal session and the process is back to
the threads and file descriptors it had before the batch.
"""

import base64
import codecs
import hashlib
import os
import random
import re
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, FrozenSet, List, Optional, Sequence, Tuple

from conftest import echo_round_trip, wait_until
from wsclient import (OP_BINARY, OP_CLOSE, OP_PONG, OP_TEXT, ClientError, ConnectionClosed,
                      WSClient, accept_for, close_payload, mask_bytes, open_session, parse_close)

#: Fixed seeds: change them only together with the case counts below.
HANDSHAKE_SEED = 6455
FRAME_SEED = 1006
BASE64_SEED = 4648
#: Case counts (a few thousand in all, well under a minute).
HANDSHAKE_CASES = 2000
FRAME_CASES = 2500
BASE64_CASES = 800
#: Requests that stop in the middle and then stay silent until the proxy gives up.
SILENT_CASES = 24
#: Connections driven at once.
PARALLEL = 8
#: Seconds one case may take before it counts as a hang.
CASE_DEADLINE = 8.0
#: The proxy's limits during the fuzz (small, so limit cases stay cheap).  The
#: handshake timeout also bounds the connect to the target.
HANDSHAKE_TIMEOUT = 2.0
MAX_HEADER_SIZE = 4096
MAX_MESSAGE_SIZE = 4096
#: Failures quoted in full in the report (all are counted).
QUOTED_FAILURES = 8

#: An outcome that is not an HTTP status: the connection ended with no answer.
EOF = "eof"


class CaseFailure(AssertionError):
    """One fuzz case got an answer its input does not allow."""


# -- baselines ----------------------------------------------------------------------


def open_fds() -> int:
    """File descriptors open in this process right now."""
    return len(os.listdir("/proc/self/fd"))


def wait_for_baseline(threads: int, fds: int) -> None:
    """Wait until this process is back to ``threads`` threads and ``fds`` descriptors."""
    wait_until(lambda: threading.active_count() <= threads and open_fds() <= fds, 10.0,
               lambda: "threads %d -> %d and fds %d -> %d to return to the baseline: %s"
               % (threads, threading.active_count(), fds, open_fds(),
                  sorted(thread.name for thread in threading.enumerate())))


def run_cases(cases: Sequence, check: Callable[[object], None]) -> List[Tuple[str, str]]:
    """Run ``check`` on every case, :data:`PARALLEL` at a time.

    Returns ``(kind, description)`` for each failed case, ``kind`` being the
    case's mutation (handshakes) or the answer it expected (frames).
    """
    failures = []  # type: List[Tuple[str, str]]

    def one(case) -> None:
        try:
            check(case)
        except (ClientError, CaseFailure, OSError) as exc:
            failures.append((case.kind, "%s: %s: %s" % (case.describe(), type(exc).__name__, exc)))

    with ThreadPoolExecutor(max_workers=PARALLEL, thread_name_prefix="fuzz-client") as pool:
        for _ in pool.map(one, cases):
            pass
    return failures


def report(what: str, total: int, failures: List[Tuple[str, str]]) -> str:
    """The failures counted by kind, with the first of each kind quoted in full."""
    kinds = {}  # type: dict
    for kind, text in failures:
        kinds.setdefault(kind, []).append(text)
    lines = ["%d of %d %s cases failed:" % (len(failures), total, what)]
    for kind, texts in sorted(kinds.items(), key=lambda item: -len(item[1]))[:QUOTED_FAILURES]:
        lines.append("- %d x %s, e.g. %s" % (len(texts), kind, texts[0]))
    return "\n".join(lines)


# -- mutated handshakes ----------------------------------------------------------------


@dataclass
class HandshakeCase:
    """One request as sent: its bytes, how they are cut, what may answer it.

    ``pieces`` are sent one system call each; ``then`` is ``"fin"`` (shut
    down our write side after the request) or ``"wait"`` (keep it open).
    ``allowed`` holds the HTTP statuses (and :data:`EOF`) that may answer,
    or the one :class:`HixieAnswer` a hixie-76 request must get.
    ``key`` is the request's valid key when a 101 must carry its accept value.
    """

    index: int
    mutation: str
    pieces: List[bytes]
    then: str
    allowed: FrozenSet[object]
    key: Optional[str] = None

    @property
    def data(self) -> bytes:
        return b"".join(self.pieces)

    @property
    def kind(self) -> str:
        return re.split(r" ['\"]| at | None", self.mutation)[0]

    def describe(self) -> str:
        return "handshake case %d/%d (%s, %d pieces, then %s, allowed %s) %r" % (
            HANDSHAKE_SEED, self.index, self.mutation, len(self.pieces), self.then,
            sorted(map(str, self.allowed)), self.data[:160])


def good_key(rng: random.Random) -> str:
    return base64.b64encode(bytes(rng.getrandbits(8) for _ in range(16))).decode("ascii")


def base_headers(key: str) -> List[Tuple[str, str]]:
    return [("Host", "127.0.0.1"), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")]


def render(headers: Sequence[Tuple[str, str]], request_line: str = "GET / HTTP/1.1",
           line_end: str = "\r\n") -> bytes:
    lines = [request_line] + ["%s: %s" % pair for pair in headers]
    return (line_end.join(lines) + line_end + line_end).encode("latin-1")


def replace_header(headers, name: str, value: Optional[str]) -> List[Tuple[str, str]]:
    """A copy with header ``name`` given ``value`` (None removes it)."""
    out = []
    for existing, old in headers:
        if existing.lower() == name.lower():
            if value is not None:
                out.append((existing, value))
        else:
            out.append((existing, old))
    return out


def random_pieces(rng: random.Random, data: bytes) -> List[bytes]:
    """``data`` cut at random places (sometimes byte by byte)."""
    if len(data) < 600 and rng.random() < 0.15:
        return [data[i:i + 1] for i in range(len(data))]
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 4))))
    bounds = [0] + cuts + [len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def _harmless(rng, key, headers):
    """Variations RFC 6455 and RFC 7230 allow: still a 101."""
    choice = rng.randrange(6)
    if choice == 0:  # header names are case-insensitive
        headers = [(name.upper() if rng.random() < 0.5 else name.lower(), value)
                   for name, value in headers]
    elif choice == 1:  # optional whitespace around values
        headers = [(name, rng.choice(" \t") + value + " " * rng.randrange(3))
                   for name, value in headers]
    elif choice == 2:  # list-valued headers may be repeated
        headers = headers + [("Connection", "keep-alive"), ("Upgrade", "websocket")]
    elif choice == 3:
        headers = headers + [("Sec-WebSocket-Protocol", "binary, base64"), ("Origin", "http://x"),
                             ("User-Agent", "fuzz/" + "\xe9" * rng.randrange(5))]
    elif choice == 4:
        headers = replace_header(headers, "Connection", "keep-alive, Upgrade")
        headers = replace_header(headers, "Upgrade", "WebSocket")
    rng.shuffle(headers)
    return "harmless", render(headers), frozenset([101])


def _bad_key(rng, key, headers):
    bad = rng.choice([
        "", "x", "not base64 at all!!", key[:-2], key + "AA==", key.replace("=", ""),
        base64.b64encode(b"\x00" * 15).decode(), base64.b64encode(b"\x01" * 17).decode(),
        "====", key[:10] + "*" + key[11:], "\xe9" * 24,
    ])
    return "bad key %r" % bad, render(replace_header(headers, "Sec-WebSocket-Key", bad)), \
        frozenset([400])


def _missing_key(rng, key, headers):
    return "no key", render(replace_header(headers, "Sec-WebSocket-Key", None)), frozenset([400])


def _bad_version(rng, key, headers):
    bad = rng.choice(["", "8", "12", "14", "0", "13.0", "13, 8", "8, 13", "abc", "-13",
                      "\xb9\xb3", "1 3", "130", "013"])
    value = None if rng.random() < 0.15 else bad
    return "version %r" % value, render(replace_header(headers, "Sec-WebSocket-Version", value)), \
        frozenset([426])


def _duplicated(rng, key, headers):
    name, allowed = rng.choice([
        ("Sec-WebSocket-Key", frozenset([400])),
        ("Sec-WebSocket-Version", frozenset([400, 426])),
        # RFC 7230 §5.4: "A server MUST respond with a 400 (Bad Request)
        # status code to any request message that contains more than one
        # Host header field".
        ("Host", frozenset([400])),
    ])
    value = dict(headers)[name]
    if name == "Sec-WebSocket-Key" and rng.random() < 0.5:
        value = good_key(rng)
    elif name == "Host" and rng.random() < 0.5:
        value = "evil.example"
    at = rng.randrange(len(headers) + 1)
    headers = headers[:at] + [(name, value)] + headers[at:]
    return "duplicate %s" % name, render(headers), allowed


def _folded(rng, key, headers):
    # RFC 7230 §3.2.4: obs-fold in a request is rejected with 400.
    fold = rng.choice(" \t") + rng.choice(["x", "websocket", "13", "Upgrade"])
    lines = ["GET / HTTP/1.1"] + ["%s: %s" % pair for pair in headers]
    lines.insert(rng.randint(1, len(lines)), fold)
    return "folded header", ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), frozenset([400])


def _bad_request_line(rng, key, headers):
    line, allowed = rng.choice([
        ("POST / HTTP/1.1", [405]), ("get / HTTP/1.1", [405]), ("PUT / HTTP/1.1", [405]),
        ("GET / HTTP/1.0", [400, 426, 505]), ("GET / HTTP/2.0", [400, 505]),
        ("GET / HTTP/1.1x", [400]), ("GET / http/1.1", [400]), ("GET  / HTTP/1.1", [400]),
        ("GET / HTTP/1.1 extra", [400]), ("GET", [400]), ("", [400]),
        ("G\x00T / HTTP/1.1", [400]), ("GET /\x7f HTTP/1.1", [400]),
        ("GET /\xff HTTP/1.1", [400]), ("GET\t/ HTTP/1.1", [400]),
    ])
    return "request line %r" % line, render(headers, request_line=line), frozenset(allowed)


def _bad_header_line(rng, key, headers):
    bad = rng.choice(["Host : 127.0.0.1", "NoColonHere", ": empty-name", "Bad Name: x",
                      "X-Nul: a\x00b", "X-Ctl: \x01", "X-Del: \x7f", "X\xe9: y", "(x): y",
                      "X-Cr: a\rb"])
    at = rng.randrange(len(headers) + 1)
    lines = ["GET / HTTP/1.1"] + ["%s: %s" % pair for pair in headers]
    lines.insert(at + 1, bad)
    return "header line %r" % bad, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), \
        frozenset([400])


def _missing_header(rng, key, headers):
    name = rng.choice(["Host", "Upgrade", "Connection"])
    if name == "Connection" and rng.random() < 0.5:
        return "Connection without upgrade", \
            render(replace_header(headers, "Connection", "keep-alive")), frozenset([400])
    return "no %s" % name, render(replace_header(headers, name, None)), frozenset([400])


def _oversized(rng, key, headers):
    choice = rng.randrange(3)
    if choice == 0:
        headers = headers + [("X-Big", "a" * (MAX_HEADER_SIZE + rng.randrange(200)))]
    elif choice == 1:
        headers = headers + [("X-H%d" % i, "v" * 40) for i in range(MAX_HEADER_SIZE // 40 + 5)]
    else:
        return "oversized request line", \
            ("GET /" + "p" * (MAX_HEADER_SIZE + rng.randrange(500))).encode(), frozenset([431, 414])
    return "oversized head", render(headers), frozenset([431])


def _binary_junk(rng, key, headers):
    junk = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 600)))
    if rng.random() < 0.5:
        junk += b"\r\n\r\n"
    if junk[:1] in (b"\x16", b"\x80"):
        allowed = [EOF]  # a TLS hello, and no certificate configured: closed
    elif b"\r\n\r\n" in junk:
        allowed = [400, 405, 426, 431, EOF]
    else:
        allowed = [EOF, 400]
    return "binary junk", junk, frozenset(allowed)


def hixie76_key(rng: random.Random) -> Tuple[str, int]:
    """A hixie-76 ``Sec-WebSocket-Key1/2`` value and the number it stands for (§4.1 step 17-26)."""
    spaces = rng.randint(1, 12)
    number = rng.randint(0, 0xFFFFFFFF // spaces)
    chars = list(str(number * spaces))
    for _ in range(rng.randint(1, 12)):
        chars.insert(rng.randrange(len(chars) + 1), chr(rng.choice(
            list(range(0x21, 0x30)) + list(range(0x3A, 0x7F)))))
    for _ in range(spaces):
        chars.insert(rng.randint(1, len(chars) - 1), " ")
    return "".join(chars), number


def _hixie(rng, key, headers):
    """The drafts before RFC 6455 (hixie-75, hixie-76), whole or broken."""
    base = [("Host", "127.0.0.1"), ("Upgrade", "WebSocket"), ("Connection", "Upgrade"),
            ("Origin", "http://127.0.0.1")]
    if rng.random() < 0.2:
        return "hixie-75", render(base), frozenset([101])
    key1, number1 = hixie76_key(rng)
    key2, number2 = hixie76_key(rng)
    key3 = random_bytes(rng, 8)
    answer = hashlib.md5(struct.pack(">II", number1, number2) + key3).digest()
    broken = rng.choice([None, None, "no digits", "no spaces", "not a multiple", "over 32 bits",
                         "key1 alone", "key3 short"])
    if broken == "no digits":
        key1 = "abc def"
    elif broken == "no spaces":
        key1 = key1.replace(" ", "")
    elif broken == "not a multiple":
        key1 = "1 1 1"  # 111 is not a multiple of 2 spaces
    elif broken == "over 32 bits":
        key1 = "9" * rng.choice([11, 20, 2000]) + " "
    headers = base + [("Sec-WebSocket-Key1", key1)]
    if broken != "key1 alone":
        headers.append(("Sec-WebSocket-Key2", key2))
    if broken == "key3 short":  # then FIN: the request never ends
        return "hixie-76 key3 short", render(headers) + key3[:rng.randrange(8)], frozenset([EOF])
    if broken is not None:
        return "hixie-76 %s" % broken, render(headers) + key3, frozenset([400])
    return "hixie-76", render(headers) + key3, frozenset([HixieAnswer(answer)])


@dataclass(frozen=True)
class HixieAnswer:
    """The only good answer to a hixie-76 request: 101 and this 16-byte challenge answer."""

    answer: bytes

    def __str__(self) -> str:
        return "101+%s" % self.answer.hex()


def _lf_only(rng, key, headers):
    # Bare LF line ends: the head never ends the way the proxy reads it.
    return "bare LF lines", render(headers, line_end="\n"), frozenset([400, EOF])


MUTATIONS = [
    (_harmless, 14), (_bad_key, 8), (_missing_key, 2), (_bad_version, 8), (_duplicated, 8),
    (_folded, 6), (_bad_request_line, 8), (_bad_header_line, 8), (_missing_header, 5),
    (_oversized, 4), (_binary_junk, 10), (_lf_only, 2), ("truncated", 12), (_hixie, 8),
]


def handshake_case(index: int, seed: int = HANDSHAKE_SEED) -> HandshakeCase:
    """Rebuild handshake case ``index`` of ``seed``."""
    rng = random.Random(seed * 1000003 + index)
    key = good_key(rng)
    headers = base_headers(key)
    mutations, weights = zip(*MUTATIONS)
    mutation = rng.choices(mutations, weights)[0]
    if mutation == "truncated":
        whole = render(headers)
        cut = rng.randrange(len(whole) - 1)  # never the whole blank line
        data = whole[:cut]
        pieces = random_pieces(rng, data) if data else []
        return HandshakeCase(index, "truncated at %d" % cut, pieces, "fin", frozenset([EOF]))
    name, data, allowed = mutation(rng, key, headers)
    opens = 101 in allowed or any(isinstance(item, HixieAnswer) for item in allowed)
    # A request that never ends is followed by FIN (silence is tried apart).
    ended = b"\r\n\r\n" in data and EOF not in allowed or len(data) >= MAX_HEADER_SIZE
    then = "wait" if opens or ended and rng.random() < 0.5 else "fin"
    return HandshakeCase(index, name, random_pieces(rng, data), then, allowed,
                         key if 101 in allowed and not name.startswith("hixie") else None)


def check_handshake(port: int, case: HandshakeCase) -> None:
    with WSClient(port, timeout=CASE_DEADLINE) as ws:
        sent_all = True
        for piece in case.pieces:
            if not ws.send_raw(piece, tolerate_close=True):
                sent_all = False
                break
        if case.then == "fin" and sent_all:
            try:
                ws.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        try:
            response = ws.read_response()
        except ConnectionClosed as exc:
            if exc.partial:
                raise CaseFailure("connection ended inside a response: %r" % exc.partial[:200])
            if EOF not in case.allowed:
                raise CaseFailure("connection ended without an answer%s"
                                  % (" (reset)" if ws.reset_seen else ""))
            return
        hixie = [item for item in case.allowed if isinstance(item, HixieAnswer)]
        if hixie and response.status == 101:
            # hixie-76 §5.2: the 16-byte answer follows the blank line.
            ws._fill(16, time.monotonic() + CASE_DEADLINE, "the hixie-76 answer")
            answer = bytes(ws._buffer[:16])
            del ws._buffer[:16]
            if answer != hixie[0].answer:
                raise CaseFailure("hixie-76 answer %s, expected %s" % (answer.hex(), hixie[0]))
            ws.send_raw(b"\xff\x00", tolerate_close=True)  # the drafts' closing handshake
            ws.expect_closed()
            return
        if response.status not in case.allowed:
            raise CaseFailure("answered %d: %r" % (response.status, response.raw[:300]))
        if response.status != 101:
            extra = ws.expect_closed()
            if extra:
                raise CaseFailure("bytes after the %d answer: %r" % (response.status, extra[:100]))
            return
        if case.mutation == "hixie-75":
            if response.header("WebSocket-Location") != "ws://127.0.0.1/":
                raise CaseFailure("hixie-75 answer without the location: %r" % response.raw)
            ws.send_raw(b"\xff\x00", tolerate_close=True)
            ws.expect_closed()
            return
        if case.key is not None and response.header("Sec-WebSocket-Accept") != accept_for(case.key):
            raise CaseFailure("101 with a wrong accept value: %r" % response.raw)
        ws.send_close(1000)
        code, _ = ws.recv_close()
        if code != 1000:
            raise CaseFailure("close 1000 answered with %s" % code)
        ws.expect_closed()


def start_silent_clients(port: int, count: int, seed: int) -> List[Tuple[socket.socket, bytes]]:
    """Connections that send part of a request and then say nothing more."""
    rng = random.Random(seed)
    silent = []
    for _ in range(count):
        whole = render(base_headers(good_key(rng)))
        prefix = whole[:rng.randrange(len(whole) - 2)]
        sock = socket.create_connection(("127.0.0.1", port), timeout=CASE_DEADLINE)
        if prefix:
            sock.sendall(prefix)
        silent.append((sock, prefix))
    return silent


def check_silent_clients(silent: List[Tuple[socket.socket, bytes]]) -> List[Tuple[str, str]]:
    """Each must have been closed (handshake timeout), with nothing or an HTTP error sent."""
    failures = []
    deadline = time.monotonic() + HANDSHAKE_TIMEOUT + CASE_DEADLINE
    for sock, prefix in silent:
        received = b""
        try:
            while True:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except socket.timeout:
            failures.append(("silent", "silent client after %r: still open past the "
                                       "handshake timeout" % prefix[-40:]))
        except ConnectionResetError:
            pass
        finally:
            sock.close()
        if received and not (received.startswith(b"HTTP/1.1 4")):
            failures.append(("silent", "silent client after %r got %r"
                                       % (prefix[-40:], received[:200])))
    return failures


def test_fuzzed_handshakes(proxy, wsproxy_log):
    running = proxy(handshake_timeout=HANDSHAKE_TIMEOUT, max_header_size=MAX_HEADER_SIZE,
                    max_message_size=MAX_MESSAGE_SIZE)
    echo_round_trip(running.port)
    threads, fds = threading.active_count(), open_fds()
    cases = [handshake_case(index) for index in range(HANDSHAKE_CASES)]
    silent = start_silent_clients(running.port, SILENT_CASES, HANDSHAKE_SEED)
    failures = run_cases(cases, lambda case: check_handshake(running.port, case))
    failures += check_silent_clients(silent)
    assert not failures, report("handshake", len(cases) + SILENT_CASES, failures)
    wsproxy_log.assert_no_traceback()
    echo_round_trip(running.port)
    wait_for_baseline(threads, fds)


# -- mutated frame streams --------------------------------------------------------------

_TEXT, _BINARY, _CONT = 0x1, 0x2, 0x0
_CLOSE, _PING, _PONG = 0x8, 0x9, 0xA
_KNOWN = (_CONT, _TEXT, _BINARY, _CLOSE, _PING, _PONG)
#: Close codes a client may send (RFC 6455 §7.4.1, §7.4.2).
VALID_CLOSE_CODES = (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999)
#: Registered after RFC 6455 (IANA): a server may accept or refuse them.
LATER_CLOSE_CODES = (1012, 1013, 1014)
INVALID_CLOSE_CODES = (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535)
#: Byte sequences that are not UTF-8 (RFC 3629): stray, overlong, surrogate, too large.
BAD_UTF8 = (b"\xff", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xfe",
            b"\xe2\x28\xa1", b"\xf8\x88\x80\x80\x80")
TEXT_CHARS = "aZ09 ~\xe9\xdf\u20ac\ud55c\U0001f600\u0800\uffff\U0010ffff"
PAYLOAD_SIZES = (0, 1, 2, 3, 4, 5, 7, 16, 100, 124, 125, 126, 127, 128, 200, 1000, 4095, 65535,
                 65536, 70000)
PAYLOAD_WEIGHTS = (6, 6, 3, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 3, 2, 2, 1, 0.3, 0.3, 0.3)
_Utf8Decoder = codecs.getincrementaldecoder("utf-8")


@dataclass
class FrameSpec:
    """One frame as the proxy will see it.

    ``payload`` is what unmasking with the declared key gives (so a "wrong
    mask" is just a payload the sender did not mean); ``length`` is the
    declared length, which may exceed ``len(payload)`` for a frame cut short.
    ``wire`` is filled by :func:`build_wire`; ``sent`` is how much of it goes out.
    """

    fin: bool
    rsv: int
    opcode: int
    masked: bool
    length: int
    payload: bytes
    mask_key: bytes = b"\x00\x00\x00\x00"
    label: str = ""
    wire: bytes = b""
    header_size: int = 0
    sent: int = -1

    @property
    def header_complete(self) -> bool:
        return self.sent >= self.header_size

    @property
    def payload_seen(self) -> bytes:
        """The payload bytes that actually go out."""
        return self.payload[:max(0, self.sent - self.header_size)]

    @property
    def complete(self) -> bool:
        return self.sent >= self.header_size + self.length


def build_wire(spec: FrameSpec) -> FrameSpec:
    first = (0x80 if spec.fin else 0) | (spec.rsv << 4) | spec.opcode
    mask_bit = 0x80 if spec.masked else 0
    if spec.length < 126:
        header = struct.pack("!BB", first, mask_bit | spec.length)
    elif spec.length < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, spec.length)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, spec.length)
    body = spec.payload
    if spec.masked:
        header += spec.mask_key
        body = mask_bytes(body, spec.mask_key)
    spec.wire = header + body
    spec.header_size = len(header)
    spec.sent = len(spec.wire)
    return spec


def random_bytes(rng: random.Random, count: int) -> bytes:
    return rng.getrandbits(8 * count).to_bytes(count, "little") if count else b""


def random_text(rng: random.Random, size: int) -> bytes:
    """Valid UTF-8 of about ``size`` bytes, with 1- to 4-byte characters."""
    out = bytearray()
    while len(out) < size:
        out += rng.choice(TEXT_CHARS).encode("utf-8")
    return bytes(out)


def spoil_utf8(rng: random.Random, text: bytes) -> bytes:
    at = rng.randrange(len(text) + 1)
    return text[:at] + rng.choice(BAD_UTF8) + text[at:]


def frame(rng: random.Random, opcode: int, payload: bytes, fin: bool = True, rsv: int = 0,
          masked: bool = True, label: str = "") -> FrameSpec:
    return FrameSpec(fin, rsv, opcode, masked, len(payload), payload,
                     random_bytes(rng, 4), label or "op%d" % opcode)


def payload_size(rng: random.Random) -> int:
    return rng.choices(PAYLOAD_SIZES, PAYLOAD_WEIGHTS)[0]


def close_body(rng: random.Random) -> Tuple[bytes, str]:
    """A close frame body: valid, or broken in one of the ways §5.5.1/§7.4 forbid."""
    kind = rng.choices(["valid", "empty", "later", "one byte", "bad code", "bad reason"],
                       [8, 2, 1, 2, 3, 2])[0]
    reason = random_text(rng, rng.randrange(0, 60))
    if kind == "empty":
        return b"", "close (empty)"
    if kind == "one byte":
        return random_bytes(rng, 1), "close (1 byte)"
    if kind == "bad code":
        return close_payload(rng.choice(INVALID_CLOSE_CODES), reason), "close (bad code)"
    if kind == "bad reason":
        return close_payload(rng.choice(VALID_CLOSE_CODES), spoil_utf8(rng, reason)[:123]), \
            "close (bad reason)"
    if kind == "later":
        return close_payload(rng.choice(LATER_CLOSE_CODES), reason), "close (1012-1014)"
    return close_payload(rng.choice(VALID_CLOSE_CODES), reason), "close"


def random_frames(rng: random.Random) -> List[FrameSpec]:
    """One to a few frames of a randomly chosen kind (most valid, some not)."""
    kind = rng.choices(
        ["binary", "text", "text split", "bad text", "continuation", "ping", "pong", "close",
         "rsv", "reserved opcode", "unmasked", "fragmented control", "long control", "top bit",
         "wrong mask", "random header", "huge text", "huge binary"],
        [12, 8, 4, 3, 4, 6, 3, 3, 2, 2, 2, 2, 2, 2, 3, 5, 1, 2])[0]
    fin = rng.random() < 0.75
    if kind == "binary":
        return [frame(rng, _BINARY, random_bytes(rng, payload_size(rng)), fin, label=kind)]
    if kind == "text":
        size = rng.choice([0, 1, 10, 100, 125, 126, 1000, 3000, MAX_MESSAGE_SIZE + 10])
        return [frame(rng, _TEXT, random_text(rng, size), fin, label=kind)]
    if kind == "text split":  # one message in two fragments, cut anywhere (even in a character)
        text = random_text(rng, rng.randint(1, 300))
        cut = rng.randrange(len(text) + 1)
        return [frame(rng, _TEXT, text[:cut], False, label=kind),
                frame(rng, _CONT, text[cut:], True, label=kind + " (rest)")]
    if kind == "bad text":
        text = spoil_utf8(rng, random_text(rng, rng.randint(0, 200)))
        return [frame(rng, rng.choice([_TEXT, _CONT]), text, fin, label=kind)]
    if kind == "continuation":
        payload = random_text(rng, payload_size(rng) % 300) if rng.random() < 0.5 else \
            random_bytes(rng, payload_size(rng))
        return [frame(rng, _CONT, payload, fin, label=kind)]
    if kind == "ping":
        return [frame(rng, _PING, random_bytes(rng, rng.choice([0, 1, 4, 60, 125])), label=kind)]
    if kind == "pong":
        return [frame(rng, _PONG, random_bytes(rng, rng.choice([0, 3, 125])), label=kind)]
    if kind == "close":
        body, label = close_body(rng)
        return [frame(rng, _CLOSE, body, label=label)]
    if kind == "rsv":
        opcode = rng.choice(_KNOWN)
        return [frame(rng, opcode, random_bytes(rng, rng.randrange(20)), opcode >= 8 or fin,
                      rsv=rng.randint(1, 7), label=kind)]
    if kind == "reserved opcode":
        opcode = rng.choice([3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
        return [frame(rng, opcode, random_bytes(rng, rng.randrange(130)), fin, label=kind)]
    if kind == "unmasked":
        return [frame(rng, rng.choice(_KNOWN), random_bytes(rng, rng.randrange(130)), True,
                      masked=False, label=kind)]
    if kind == "fragmented control":
        return [frame(rng, rng.choice([_CLOSE, _PING, _PONG]), random_bytes(rng, rng.randrange(10)),
                      False, label=kind)]
    if kind == "long control":
        return [frame(rng, rng.choice([_CLOSE, _PING, _PONG]),
                      random_bytes(rng, rng.choice([126, 127, 200, 65536])), label=kind)]
    if kind == "top bit":  # §5.2: the most significant bit of a 64-bit length MUST be 0
        spec = frame(rng, rng.choice([_BINARY, _TEXT, _CONT]), random_bytes(rng, 16), fin,
                     label=kind)
        spec.length = (1 << 63) | rng.getrandbits(63)
        return [spec]
    if kind == "wrong mask":  # meant for one key, sent with another
        meant = rng.choice([random_text(rng, rng.randint(1, 100)),
                            close_body(rng)[0] or b"\x03\xe8"])
        opcode = rng.choice([_TEXT, _CLOSE, _PING]) if len(meant) <= 125 else _TEXT
        return [frame(rng, opcode, mask_bytes(meant, random_bytes(rng, 4)), label=kind)]
    if kind == "random header":
        length = rng.choice([rng.randrange(126), rng.randrange(126, 1 << 16),
                             rng.getrandbits(64), rng.randrange(1 << 16, 1 << 20)])
        spec = FrameSpec(bool(rng.getrandbits(1)), rng.choice([0, 0, 0, rng.randint(1, 7)]),
                         rng.randrange(16), rng.random() < 0.8, length,
                         random_bytes(rng, min(length, 3000)), random_bytes(rng, 4), kind)
        return [spec]
    if kind == "huge text":  # §10.4: the proxy's message limit (1009)
        spec = frame(rng, _TEXT, random_text(rng, 50), fin, label=kind)
        spec.length = rng.choice([MAX_MESSAGE_SIZE + 1, 1 << 20, 1 << 40])
        return [spec]
    spec = frame(rng, _BINARY, random_bytes(rng, 2000), fin, label=kind)  # huge binary
    spec.length = rng.choice([1 << 20, 1 << 33, (1 << 63) - 1])
    return [spec]


def valid_frame(rng: random.Random, state: dict) -> FrameSpec:
    """A frame that is legal after those before it.

    ``state`` carries the open message's opcode (``"open"``), the size of
    the open text message and the bytes of a character cut at the end of
    the last text fragment, which start the next one.
    """
    if rng.random() < 0.25:
        opcode = rng.choice([_PING, _PING, _PONG])
        return frame(rng, opcode, random_bytes(rng, rng.choice([0, 1, 8, 125])),
                     label="valid ping/pong")
    message = state.get("open") or rng.choice([_BINARY, _TEXT])
    opcode = _CONT if state.get("open") else message
    fin = rng.random() < 0.5
    if message == _BINARY:
        payload = random_bytes(rng, payload_size(rng))
    else:
        text = random_text(rng, rng.choice([0, 1, 3, 50, 125, 126, 300]))
        if state.get("size", 0) + len(text) + 8 > MAX_MESSAGE_SIZE:
            fin = True
            text = b""
        cut = len(text) if fin else rng.randrange(len(text) + 1)
        payload = state.get("carry", b"") + text[:cut]
        state["carry"] = text[cut:]
        state["size"] = state.get("size", 0) + len(payload)
    state["open"] = None if fin else message
    if fin:
        state["size"], state["carry"] = 0, b""
    return frame(rng, opcode, payload, fin, label="valid %s%s" % (
        "continuation" if opcode == _CONT else "text" if message == _TEXT else "binary",
        "" if fin else " (more to come)"))


#: What may not appear in base64 text (RFC 4648 §4): outside the alphabet,
#: padding where it cannot be, the URL-safe alphabet, whitespace.
BASE64_SPOILERS = (b"!", b"=", b"A=", b"AB=C", b"====", b" ", b"\n", b"\r\n", b"-", b"_",
                   b"\xff", b"\x00", b"A===", b"AAA==")


def valid_base64_frame(rng: random.Random, state: dict) -> FrameSpec:
    """A legal frame for base64 mode: base64 text cut anywhere across fragments.

    ``state`` holds the open message's opcode and the part of its text not
    sent yet.  Each message is the base64 of some bytes, padded on its own.
    """
    if rng.random() < 0.2:
        return frame(rng, rng.choice([_PING, _PONG]), random_bytes(rng, rng.choice([0, 5, 125])),
                     label="valid ping/pong")
    if not state.get("open"):
        if rng.random() < 0.1:
            return frame(rng, _BINARY, random_bytes(rng, payload_size(rng)), rng.random() < 0.7,
                         label="binary in base64 mode")
        state["open"] = _TEXT
        state["text"] = base64.b64encode(random_bytes(rng, payload_size(rng) % 5000))
        opcode = _TEXT
    else:
        opcode = _CONT
    text = state["text"]
    take = rng.choice([len(text), rng.randrange(len(text) + 1), rng.randrange(5)])
    piece, state["text"] = text[:take], text[take:]
    fin = not state["text"]
    if fin:
        state["open"] = None
    return frame(rng, opcode, piece, fin, label="base64 %s%s" % (
        "continuation" if opcode == _CONT else "text", "" if fin else " (more to come)"))


@dataclass
class FrameCase:
    """A frame stream to send after a good handshake, and how it ends.

    ``ending`` is ``"close"`` (the last frame is a valid close), ``"fin"``
    (our write side is shut down after the frames) or ``"cut"`` (the last
    frame is cut short, then FIN).
    """

    index: int
    seed: int
    mode: str
    frames: List[FrameSpec]
    ending: str

    @property
    def stream(self) -> bytes:
        return b"".join(spec.wire[:spec.sent] for spec in self.frames)

    @property
    def kind(self) -> str:
        return expected_outcome(self.frames, self.mode == "base64").why

    def describe(self) -> str:
        labels = ", ".join(spec.label + ("" if spec.complete else " (cut at %d)" % spec.sent)
                           for spec in self.frames)
        return "%s frame case %d/%d [%s] ending %s, stream %r" % (
            self.mode, self.seed, self.index, labels, self.ending, self.stream[:120])


def frame_case(index: int, seed: int = FRAME_SEED, mode: str = "binary") -> FrameCase:
    """Rebuild frame case ``index`` of ``seed`` for subprotocol ``mode``."""
    rng = random.Random(seed * 1000003 + index)
    frames = []  # type: List[FrameSpec]
    valid_only = rng.random() < 0.4
    state = {}  # type: dict
    for _ in range(rng.randint(1, 8)):
        if mode == "base64":
            if valid_only or rng.random() < 0.7:
                frames.append(build_wire(valid_base64_frame(rng, state)))
                continue
            if rng.random() < 0.5:  # one bad piece of base64 inside a message
                spec = valid_base64_frame(rng, state)
                at = rng.randrange(len(spec.payload) + 1)
                spec.payload = spec.payload[:at] + rng.choice(BASE64_SPOILERS) + spec.payload[at:]
                spec.length = len(spec.payload)
                spec.label += " (spoilt)"
                frames.append(build_wire(spec))
                continue
        elif valid_only or rng.random() < 0.3:
            frames.append(build_wire(valid_frame(rng, state)))
            continue
        frames.extend(build_wire(spec) for spec in random_frames(rng))
        if not frames[-1].complete or len(frames[-1].payload) < frames[-1].length:
            break
    last = frames[-1]
    if len(last.payload) < last.length:  # declared more than we have: cut short
        last.sent = len(last.wire)
        return FrameCase(index, seed, mode, frames, "cut")
    ending = rng.choices(["close", "fin", "cut"], [5, 3, 3])[0]
    if ending == "close":
        frames.append(build_wire(frame(rng, _CLOSE, close_payload(rng.choice(VALID_CLOSE_CODES),
                                                                  "bye"), label="final close")))
    elif ending == "cut":
        extra = [build_wire(spec) for spec in random_frames(rng)][0]
        extra.sent = rng.randrange(len(extra.wire))
        frames.append(extra)
    return FrameCase(index, seed, mode, frames, ending)


@dataclass
class Expected:
    """What the client must see: see :func:`expected_outcome`."""

    codes: FrozenSet[object] = frozenset()
    eof_ok: bool = False
    pongs: List[bytes] = field(default_factory=list)
    data: bytes = b""
    why: str = ""


def header_violation(spec: FrameSpec, message: Optional[int], text_size: int,
                     base64_mode: bool = False) -> Optional[int]:
    """The close code a server must send for ``spec``'s header, or None (RFC 6455 §5).

    In base64 mode text is decoded as it streams, so no message is too big.
    """
    opcode = spec.opcode
    if spec.rsv:
        return 1002  # §5.2: RSV bits MUST be 0 without an extension
    if opcode not in _KNOWN:
        return 1002  # §5.2: reserved opcodes fail the connection
    if not spec.masked:
        return 1002  # §5.1: the server MUST close on an unmasked client frame
    if opcode >= 8 and (not spec.fin or spec.length > 125):
        return 1002  # §5.5: control frames are not fragmented, at most 125 bytes
    if spec.length >> 63:
        return 1002  # §5.2: the top bit of a 64-bit length MUST be 0
    if opcode == _CONT and message is None:
        return 1002  # §5.4: nothing to continue
    if opcode in (_TEXT, _BINARY) and message is not None:
        return 1002  # §5.4: a new message inside a fragmented one
    if opcode in (_TEXT, _CONT) and (message if opcode == _CONT else _TEXT) == _TEXT \
            and not base64_mode:
        size = (text_size if opcode == _CONT else 0) + spec.length
        if size > MAX_MESSAGE_SIZE:
            return 1009  # §7.4.1: too big to process (the proxy holds text to check it)
    return None


_BASE64_GROUP = re.compile(rb"[A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=")
_BASE64_START = re.compile(rb"[A-Za-z0-9+/]{0,3}|[A-Za-z0-9+/]{2}=")


class Base64Text:
    """The base64 text of the client's messages, read group by group (RFC 4648 §4).

    Each message is base64 on its own: a group may be split across the
    frames of one message, never across messages, and a padded group ends
    its message.
    """

    def __init__(self) -> None:
        self.pending = b""
        self.padded = False

    def feed(self, text: bytes) -> Tuple[bytes, bool]:
        """Decode the whole groups of ``text``; return ``(decoded, still_valid)``.

        Once invalid, ``decoded`` holds what the groups before the fault gave.
        """
        data = self.pending + text
        out = bytearray()
        at = 0
        while len(data) - at >= 4:
            group = data[at:at + 4]
            if self.padded or not _BASE64_GROUP.fullmatch(group):
                return bytes(out), False
            out += base64.b64decode(group)
            self.padded = group.endswith(b"=")
            at += 4
        self.pending = data[at:]
        valid = _BASE64_START.fullmatch(self.pending) is not None
        return bytes(out), valid and not (self.padded and self.pending)

    def end_message(self) -> bool:
        """End a message; True if it ended on a whole group."""
        whole = not self.pending
        self.pending, self.padded = b"", False
        return whole


def expected_outcome(frames: Sequence[FrameSpec], base64_mode: bool = False) -> Expected:
    """How a server that follows RFC 6455 answers these frames (echo target).

    Data frames are relayed: binary payload at once; in binary mode text
    once its message is complete and valid UTF-8, in base64 mode the
    decoded text as it arrives.  The first violation fails the connection
    with its code; a valid close is echoed; a stream that just stops (EOF)
    ends the connection without a close frame.
    """
    message = None  # type: Optional[int]
    decoder = None
    text_parts = []  # type: List[bytes]
    text_size = 0
    base64_text = Base64Text()
    data = bytearray()
    pongs = []  # type: List[bytes]
    for spec in frames:
        violation = header_violation(spec, message, text_size, base64_mode)
        if not spec.header_complete:
            # Cut inside the header: the proxy may or may not have seen enough of it.
            return Expected(frozenset([violation]) if violation else frozenset(), True, pongs,
                            bytes(data), "cut in a header")
        if violation:
            return Expected(frozenset([violation]), False, pongs, bytes(data),
                            "%s: header violation" % spec.label)
        payload = spec.payload_seen
        if spec.opcode < 8:
            if spec.opcode != _CONT:
                message = spec.opcode
                if message == _TEXT:
                    decoder, text_parts, text_size = _Utf8Decoder(), [], 0
            if message == _BINARY:
                data += payload
            elif base64_mode:
                decoded, valid = base64_text.feed(payload)
                data += decoded
                if not valid:
                    return Expected(frozenset([1007]), False, pongs, bytes(data),
                                    "%s: not base64" % spec.label)
            else:
                try:
                    decoder.decode(payload, spec.complete and spec.fin)
                except UnicodeDecodeError:
                    return Expected(frozenset([1007]), False, pongs, bytes(data),
                                    "%s: not UTF-8" % spec.label)
                text_parts.append(payload)
                text_size += len(payload)
            if not spec.complete:
                return Expected(frozenset(), True, pongs, bytes(data), "cut in a payload")
            if spec.fin:
                if message == _TEXT and not base64_mode:
                    data += b"".join(text_parts)
                if message == _TEXT and base64_mode and not base64_text.end_message():
                    return Expected(frozenset([1007]), False, pongs, bytes(data),
                                    "%s: message not whole base64" % spec.label)
                message = None
            continue
        if not spec.complete:
            return Expected(frozenset(), True, pongs, bytes(data), "cut in a control frame")
        if spec.opcode == _PING:
            pongs.append(payload)  # §5.5.2: a pong with the same payload
        elif spec.opcode == _CLOSE:
            return _close_answer(payload, pongs, bytes(data))
    return Expected(frozenset(), True, pongs, bytes(data), "EOF after the frames")


def _close_answer(body: bytes, pongs: List[bytes], data: bytes) -> Expected:
    """§5.5.1 / §7.4: the answer to a client's close frame with ``body``."""
    if not body:
        return Expected(frozenset([None, 1000]), False, pongs, data, "close without code")
    if len(body) == 1:
        return Expected(frozenset([1002]), False, pongs, data, "1-byte close body")
    code = struct.unpack("!H", body[:2])[0]
    try:
        body[2:].decode("utf-8")
        reason_ok = True
    except UnicodeDecodeError:
        reason_ok = False
    if code in LATER_CLOSE_CODES:
        codes = frozenset([code, 1000, 1002] + ([] if reason_ok else [1007]))
        return Expected(codes, False, pongs, data, "close %d" % code)
    if code not in VALID_CLOSE_CODES and not 3000 <= code <= 4999:
        return Expected(frozenset([1002]), False, pongs, data, "invalid close code %d" % code)
    if not reason_ok:
        return Expected(frozenset([1007]), False, pongs, data, "close reason not UTF-8")
    return Expected(frozenset([code, 1000]), False, pongs, data, "close %d" % code)


def check_frames(port: int, case: FrameCase) -> None:
    expected = expected_outcome(case.frames, case.mode == "base64")
    with open_session(port, protocols=[case.mode], timeout=CASE_DEADLINE) as ws:
        if ws.send_raw(case.stream, tolerate_close=True) and case.ending != "close":
            try:
                ws.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        data, pongs = bytearray(), []
        close = None  # type: Optional[Tuple[Optional[int], str]]
        while close is None:
            try:
                received = ws.recv_frame()
            except ConnectionClosed as exc:
                if exc.partial:
                    raise CaseFailure("connection ended inside a frame: %r" % exc.partial[:60])
                break
            if received.opcode == OP_BINARY and case.mode == "binary":
                data += received.payload
            elif received.opcode == OP_TEXT and case.mode == "base64":
                try:  # each message is base64 on its own
                    data += base64.b64decode(received.payload, validate=True)
                except ValueError:
                    raise CaseFailure("a text message that is not base64: %r"
                                      % received.payload[:60]) from None
            elif received.opcode == OP_PONG:
                pongs.append(received.payload)
            elif received.opcode == OP_CLOSE:
                close = parse_close(received.payload)
            else:
                raise CaseFailure("unexpected frame opcode %d from the proxy" % received.opcode)
        if close is not None:
            extra = ws.expect_closed()
            if extra:
                raise CaseFailure("bytes after the close frame: %r" % extra[:100])
            if close[0] not in expected.codes:
                raise CaseFailure("close %s %r, expected one of %s (%s)"
                                  % (close[0], close[1], sorted(map(str, expected.codes)),
                                     expected.why))
        elif not expected.eof_ok:
            raise CaseFailure("connection ended without a close frame, expected close %s (%s)%s"
                              % (sorted(map(str, expected.codes)), expected.why,
                                 " (reset)" if ws.reset_seen else ""))
        if pongs != expected.pongs:
            raise CaseFailure("pongs %r, expected %r" % ([p[:20] for p in pongs],
                                                          [p[:20] for p in expected.pongs]))
        # The echo of what was relayed may be cut short by the close (no data
        # after a close frame, §5.5.1) or by our EOF (the session just ends).
        if not expected.data.startswith(bytes(data)):
            raise CaseFailure("echo of %d bytes is not a prefix of the %d bytes relayed (%s)"
                              % (len(data), len(expected.data), expected.why))


def test_fuzzed_frame_streams(proxy, wsproxy_log):
    running = proxy(max_message_size=MAX_MESSAGE_SIZE)
    echo_round_trip(running.port)
    threads, fds = threading.active_count(), open_fds()
    cases = [frame_case(index) for index in range(FRAME_CASES)]
    failures = run_cases(cases, lambda case: check_frames(running.port, case))
    assert not failures, report("frame", len(cases), failures)
    wsproxy_log.assert_no_traceback()
    echo_round_trip(running.port)
    wait_for_baseline(threads, fds)


def test_fuzzed_base64_frame_streams(proxy, wsproxy_log):
    running = proxy(max_message_size=MAX_MESSAGE_SIZE)
    echo_round_trip(running.port)
    threads, fds = threading.active_count(), open_fds()
    cases = [frame_case(index, BASE64_SEED, "base64") for index in range(BASE64_CASES)]
    failures = run_cases(cases, lambda case: check_frames(running.port, case))
    assert not failures, report("base64 frame", len(cases), failures)
    wsproxy_log.assert_no_traceback()
    echo_round_trip(running.port)
    wait_for_baseline(threads, fds)


def test_the_oracle_knows_the_basic_answers():
    """The expectations themselves, on hand-made streams (so a wrong oracle cannot pass)."""
    rng = random.Random(1)
    ping = build_wire(frame(rng, _PING, b"p"))
    good = build_wire(frame(rng, _BINARY, b"data"))
    text = build_wire(frame(rng, _TEXT, "\u20ac".encode("utf-8")[:2], True))
    rsv = build_wire(frame(rng, _BINARY, b"x", rsv=4))
    close = build_wire(frame(rng, _CLOSE, close_payload(4000, "ok")))
    assert expected_outcome([ping, good, close]).codes == frozenset([4000, 1000])
    assert expected_outcome([ping, good, close]).pongs == [b"p"]
    assert expected_outcome([good, text]).codes == frozenset([1007])
    assert expected_outcome([good, rsv, close]).codes == frozenset([1002])
    assert expected_outcome([good]).eof_ok and expected_outcome([good]).data == b"data"
    big = build_wire(frame(rng, _TEXT, b"a" * (MAX_MESSAGE_SIZE + 1)))
    assert expected_outcome([big]).codes == frozenset([1009])
    pieces = [build_wire(frame(rng, _TEXT, b"QUJ", False)), ping,
              build_wire(frame(rng, _CONT, b"DQQ==")), build_wire(frame(rng, _TEXT, b"QQ=A"))]
    base64_answer = expected_outcome(pieces, base64_mode=True)
    assert base64_answer.data == b"ABCA" and base64_answer.codes == frozenset([1007])
    assert expected_outcome(pieces[:3], base64_mode=True).eof_ok
    assert handshake_case(5) == handshake_case(5), "cases must be reproducible"
    assert frame_case(7).stream == frame_case(7).stream
