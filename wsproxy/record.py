"""Session recording in noVNC's playback format, and its reader.

A recording is a JavaScript file that noVNC's playback page loads with a
``<script>`` tag::

    var VNC_frame_encoding = 'binary';
    var VNC_frame_data = [
    '{120{RFB 003.008\\n',
    '}135}RFB 003.008\\n',
    'EOF'];

Each element is one frame: ``'{MS{DATA'`` for bytes sent to the client,
``'}MS}DATA'`` for bytes received from it, ``MS`` the integer milliseconds
since the recording began.  With the ``binary`` encoding each character of
``DATA`` stands for one byte (its code point is the byte value); we escape
every byte outside printable ASCII, and the backslash and quote, so the file
is plain ASCII and each line is a valid single-quoted string literal.
noVNC's player tells the directions apart by the first character, reads the
time between the first two marks and turns the rest into a ``Uint8Array``
with ``charCodeAt``; the closing ``'EOF'`` element ends the data.

:class:`Recorder` writes one session's file from both pump threads.
:func:`read_recording` parses a file back without evaluating it, and
``python3 -m wsproxy.record FILE.N [--extract client|server OUT]`` prints a
summary or writes one direction's raw bytes.
"""

import argparse
import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, List, NamedTuple, Optional, Sequence, Tuple

logger = logging.getLogger("wsproxy")

#: Direction names: bytes wsproxy sent to the client (they came from the
#: target server) and bytes the client sent.
TO_CLIENT = "server"
FROM_CLIENT = "client"
DIRECTIONS = (TO_CLIENT, FROM_CLIENT)

#: The frame marks noVNC's player reads: ``{`` to the client, ``}`` from it.
_MARKS = {TO_CLIENT: "{", FROM_CLIENT: "}"}
_DIRECTION_OF_MARK = {mark: direction for direction, mark in _MARKS.items()}

_HEADER = b"var VNC_frame_encoding = 'binary';\nvar VNC_frame_data = [\n"
_EOF_LINE = b"'EOF'];\n"

#: The reader refuses a line longer than this rather than grow without bound.
MAX_LINE_LENGTH = 64 * 1024 * 1024


# -- writing ------------------------------------------------------------------

def escape_frame_data(data) -> bytes:
    """Return ``data`` as the ASCII body of a single-quoted JavaScript string.

    ``data`` is any bytes-like object.  Latin-1 maps each byte to the code
    point of the same value; the ``unicode_escape`` codec then writes ``\\\\``,
    ``\\t``, ``\\n``, ``\\r`` and ``\\xHH`` for every other byte outside
    printable ASCII, all of which JavaScript reads back to the same code
    point.  Only the quote is left to escape.  Both steps run in C: measured
    several times faster than ``str.translate`` with a table on binary data.
    """
    return str(data, "latin-1").encode("unicode_escape").replace(b"'", b"\\'")


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``; raises OSError."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class Recorder:
    """One session's recording file, written by both pump threads at once.

    Build one with :meth:`create`.  :meth:`record_to_client` and
    :meth:`record_from_client` append one line per call; a lock keeps every
    line whole and the lines in time order.  The first I/O error is logged
    once on the ``wsproxy`` logger and ends the recording: later calls do
    nothing and the session goes on.  :meth:`close` ends the file.

    Each line goes to the file in one unbuffered write (the page cache, so it
    costs a system call, not a disk wait) and is on disk even if the process
    dies; escaping happens before the lock is taken, so the other direction
    waits for a write at most, never for another thread's escaping.
    """

    def __init__(self, fd: int, path: str, session_number: int) -> None:
        """Take ownership of ``fd``, open for writing on ``path`` with the header written."""
        self.path = path
        self.session_number = session_number
        self._fd: Optional[int] = fd
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._logged = False

    @classmethod
    def create(cls, base_path: str, session_number: int) -> "Recorder":
        """Create ``{base_path}.{session_number}`` (mode 0600) and write the header.

        Never overwrites: raises :class:`FileExistsError` if the file exists
        (pick another number) and :class:`OSError` if it cannot be created or
        written; no file is left behind in the second case.
        """
        path = f"{base_path}.{session_number}"
        # O_EXCL: refuse an existing file, and with O_CREAT also a symlink.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, _HEADER)
        except OSError:
            os.close(fd)
            try:
                os.unlink(path)
            except OSError:
                pass
            raise
        return cls(fd, path, session_number)

    @property
    def active(self) -> bool:
        """True until the recorder is closed or has stopped on an error."""
        return self._fd is not None

    def record_to_client(self, data) -> None:
        """Record ``data`` (bytes-like) as sent to the client; never raises OSError."""
        self._record(_MARKS[TO_CLIENT], data)

    def record_from_client(self, data) -> None:
        """Record ``data`` (bytes-like) as received from the client; never raises OSError."""
        self._record(_MARKS[FROM_CLIENT], data)

    def _record(self, mark: str, data) -> None:
        if self._fd is None or not len(data):
            return
        body = escape_frame_data(data)          # the costly part, outside the lock
        with self._lock:
            if self._fd is None:
                return
            # Time is read under the lock so the file's timestamps never go back.
            ms = int((time.monotonic() - self._start) * 1000)
            line = b"".join(((f"'{mark}{ms}{mark}").encode("ascii"), body, b"',\n"))
            try:
                _write_all(self._fd, line)
            except OSError as exc:
                self._stop(exc)

    def close(self) -> None:
        """Write the closing ``'EOF'];`` line and close the file.

        Idempotent and safe from either thread; an I/O error is logged (once)
        and not raised.
        """
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is None:
                return
            try:
                _write_all(fd, _EOF_LINE)
            except OSError as exc:
                self._log_stop(exc)
            try:
                # Closed once only: after a failed close() the number may
                # already belong to another file.
                os.close(fd)
            except OSError as exc:
                self._log_stop(exc)

    def _stop(self, exc: OSError) -> None:
        """Log ``exc`` and give up the file for good; called with the lock held."""
        fd, self._fd = self._fd, None
        self._log_stop(exc)
        try:
            os.close(fd)
        except OSError:
            pass

    def _log_stop(self, exc: OSError) -> None:
        """Log why the recording stopped, once per recorder."""
        if not self._logged:
            self._logged = True
            logger.warning("session %d: recording to %s stopped: %s",
                           self.session_number, self.path, exc.strerror or exc)

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# -- reading ------------------------------------------------------------------

class RecordingError(ValueError):
    """The file is not a recording this module can read; the message says why."""


class Frame(NamedTuple):
    """One recorded frame: ``direction`` (TO_CLIENT or FROM_CLIENT), ``ms`` since
    the session began, and the raw ``data``."""

    direction: str
    ms: int
    data: bytes


@dataclass
class Recording:
    """A recording read back by :func:`read_recording`.

    ``frames`` are in file order; ``complete`` is False when the closing
    ``'EOF'`` line is missing (the writer died) -- the frames before the
    break are still all there.
    """

    path: str
    frames: List[Frame] = field(default_factory=list)
    complete: bool = False

    def stream(self, direction: str) -> bytes:
        """Return the bytes of one direction, in order, as one string."""
        return b"".join(f.data for f in self.frames if f.direction == direction)

    def frame_count(self, direction: str) -> int:
        """Return the number of frames in ``direction``."""
        return sum(1 for f in self.frames if f.direction == direction)

    def byte_count(self, direction: str) -> int:
        """Return the number of bytes in ``direction``."""
        return sum(len(f.data) for f in self.frames if f.direction == direction)

    @property
    def duration_ms(self) -> int:
        """Milliseconds from the start to the last frame (0 without frames)."""
        return max((f.ms for f in self.frames), default=0)


# A token inside a single-quoted JavaScript string that is not a plain
# character: an escape sequence, or something that may not appear bare
# (ECMA-262 §12.9.4: a quote or line terminator ends the literal, and a
# backslash always starts an escape).  Octal escapes are the legacy ones a
# classic <script> accepts (ECMA-262 Annex B.1.2).
_JS_TOKEN = re.compile(r"""
    \\ (?: x(?P<hex>[0-9A-Fa-f]{2})
         | u(?P<u4>[0-9A-Fa-f]{4})
         | u\{(?P<ub>[0-9A-Fa-f]{1,6})\}
         | (?P<oct>[0-3][0-7]{0,2}|[4-7][0-7]?)
         | (?P<char>[^xu\r\n])
       )
  | (?P<bad>['\\\r\n])
""", re.VERBOSE)

_SINGLE_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def _unescape_token(match: "re.Match") -> str:
    hex_, u4, ub, oct_, char, bad = match.group("hex", "u4", "ub", "oct", "char", "bad")
    if bad is not None:
        raise RecordingError("malformed string: bare %r" % bad)
    if char is not None:
        # Any other escaped character stands for itself (\' \" \\ \a ...).
        return _SINGLE_ESCAPES.get(char, char)
    if oct_ is not None:
        return chr(int(oct_, 8))
    code = int(hex_ or u4 or ub, 16)
    if code > 0xFF:
        raise RecordingError("character U+%04X is not a byte" % code)
    return chr(code)


# The escapes JavaScript and Python's bytes literals read alike: what
# escape_frame_data writes, plus \" \b \f \v and a \0 not followed by a digit.
# One character per step, so a failed match cannot backtrack exponentially.
_COMMON_ESCAPES_ONLY = re.compile(r"""(?:[^\\'\r\n]|\\(?:x[0-9A-Fa-f]{2}|[\\'"nrtbfv]|0(?![0-9])))*""")


def decode_js_string(body: str) -> bytes:
    """Return the bytes a single-quoted JavaScript string body stands for.

    ``body`` is the text between the quotes.  Each resulting character must
    be a byte (code point below 256).  Raises :class:`RecordingError`.
    """
    if body.isascii() and _COMMON_ESCAPES_ONLY.fullmatch(body) is not None:
        # Fast path, done in C: for this subset the two languages agree.
        return body.encode("ascii").decode("unicode_escape").encode("latin-1")
    text = _JS_TOKEN.sub(_unescape_token, body)
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise RecordingError("character above U+00FF in a binary frame") from None


_ENCODING_LINE = re.compile(r"var\s+VNC_frame_encoding\s*=\s*'([^'\\]*)'\s*;?")
_DATA_LINE = re.compile(r"var\s+VNC_frame_data\s*=\s*\[")
_FRAME_HEAD = re.compile(r"([{}])(\d+)\1")


def _parse_frame(body: str) -> Frame:
    """Parse one element's text (between its quotes) into a :class:`Frame`."""
    head = _FRAME_HEAD.match(body)
    if head is None:
        raise RecordingError("frame does not start with {MS{ or }MS}")
    mark, ms = head.group(1), int(head.group(2))
    return Frame(_DIRECTION_OF_MARK[mark], ms, decode_js_string(body[head.end():]))


def _split_element(line: str) -> Tuple[str, str]:
    """Split ``'BODY'SUFFIX`` into BODY and the stripped SUFFIX."""
    end = line.rfind("'")
    if not line.startswith("'") or end == 0:
        raise RecordingError("expected a quoted string")
    return line[1:end], line[end + 1:].strip()


def scan_recording(stream: BinaryIO, on_frame: Callable[[Frame], None]) -> bool:
    """Parse a recording from ``stream``, calling ``on_frame`` for each frame.

    Reads line by line, so memory stays bounded by the longest line.  Returns
    True if the closing ``'EOF'`` line was seen, False if the file stops
    before it (a torn last line, left by a writer that died mid-write, is
    dropped).  Raises :class:`RecordingError` if it is not a recording.
    """
    lineno = 0
    in_data = False
    while True:
        raw = stream.readline(MAX_LINE_LENGTH + 1)
        if not raw:
            break
        lineno += 1
        if len(raw) > MAX_LINE_LENGTH:
            raise RecordingError("line %d: longer than %d bytes" % (lineno, MAX_LINE_LENGTH))
        try:
            line = raw.decode("utf-8").strip()
            if not line:
                continue
            if not in_data:
                encoding = _ENCODING_LINE.fullmatch(line)
                if encoding is not None:
                    if encoding.group(1) != "binary":
                        raise RecordingError("unsupported frame encoding %r" % encoding.group(1))
                    continue
                if _DATA_LINE.fullmatch(line) is None:
                    raise RecordingError("not a recording (no VNC_frame_data header)")
                in_data = True
                continue
            body, suffix = _split_element(line)
            if suffix not in (",", "];"):
                raise RecordingError("unexpected %r after the string" % suffix)
            if body == "EOF" or suffix == "];":
                if body != "EOF":
                    on_frame(_parse_frame(body))
                _expect_nothing_after(stream, lineno)
                return True
            on_frame(_parse_frame(body))
        except (RecordingError, UnicodeDecodeError) as exc:
            if in_data and not raw.endswith(b"\n"):
                # readline() stops short of a newline only at the end of the
                # file: this is the torn last line of a writer that died.
                return False
            reason = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc)
            raise RecordingError("line %d: %s" % (lineno, reason)) from None
    if not in_data:
        raise RecordingError("not a recording (no VNC_frame_data header)")
    return False


def _expect_nothing_after(stream: BinaryIO, lineno: int) -> None:
    """Raise :class:`RecordingError` unless only blank lines follow the end."""
    for raw in iter(lambda: stream.readline(MAX_LINE_LENGTH + 1), b""):
        lineno += 1
        if raw.strip():
            raise RecordingError("line %d: text after the end of the frame list" % lineno)


def read_recording(path: str) -> Recording:
    """Read the recording at ``path`` into memory.

    Raises :class:`OSError` if it cannot be read and :class:`RecordingError`
    if it is not a recording.  A recording without its ``'EOF'`` line is
    read up to where it stops, with ``complete`` False.
    """
    recording = Recording(path)
    with open(path, "rb") as stream:
        recording.complete = scan_recording(stream, recording.frames.append)
    return recording


# -- command line ---------------------------------------------------------------

class _Summary:
    """Frame and byte counts per direction, gathered one frame at a time."""

    def __init__(self) -> None:
        self.frames = {d: 0 for d in DIRECTIONS}
        self.bytes = {d: 0 for d in DIRECTIONS}
        self.duration_ms = 0

    def add(self, frame: Frame) -> None:
        self.frames[frame.direction] += 1
        self.bytes[frame.direction] += len(frame.data)
        self.duration_ms = max(self.duration_ms, frame.ms)


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 -m wsproxy.record",
        description="Summarise a wsproxy session recording, or extract one direction's bytes.")
    parser.add_argument("file", metavar="FILE.N", help="a recording written by --record")
    parser.add_argument("--extract", nargs=2, metavar=("DIRECTION", "OUT"),
                        help="write the raw bytes of one direction to OUT ('-' for stdout): "
                             "'client' = sent by the client, 'server' = sent to the client")
    args = parser.parse_args(argv)
    if args.extract is not None and args.extract[0] not in DIRECTIONS:
        parser.error("DIRECTION must be 'client' or 'server', not %r" % args.extract[0])
    return args


def _print_summary(path: str, summary: _Summary, complete: bool) -> None:
    state = "complete" if complete else "truncated (no 'EOF' line)"
    print("%s: %s" % (path, state))
    print("duration: %.3f s" % (summary.duration_ms / 1000))
    print("to client (server):   %d frames, %d bytes"
          % (summary.frames[TO_CLIENT], summary.bytes[TO_CLIENT]))
    print("from client (client): %d frames, %d bytes"
          % (summary.frames[FROM_CLIENT], summary.bytes[FROM_CLIENT]))


class _OutputError(Exception):
    """Writing the extracted bytes failed; wraps the OSError."""


def _extract(stream: BinaryIO, direction: str, out_path: str) -> bool:
    """Write ``direction``'s bytes to ``out_path``; return the scan's ``complete``.

    Raises :class:`_OutputError` if the output cannot be written and
    :class:`RecordingError` (after removing the partial output file) if the
    input is not a recording.
    """
    to_stdout = out_path == "-"
    try:
        out = sys.stdout.buffer if to_stdout else open(out_path, "wb")
    except OSError as exc:
        raise _OutputError(exc) from None

    def write(frame: Frame) -> None:
        if frame.direction == direction:
            try:
                out.write(frame.data)
            except OSError as exc:
                raise _OutputError(exc) from None

    try:
        complete = scan_recording(stream, write)
        try:
            out.flush()
        except OSError as exc:
            raise _OutputError(exc) from None
    except RecordingError:
        if not to_stdout:
            _close_quietly(out)
            try:
                os.unlink(out_path)
            except OSError:
                pass
        raise
    finally:
        if not to_stdout:
            _close_quietly(out)     # flushed above when it matters
    return complete


def _close_quietly(out: BinaryIO) -> None:
    try:
        out.close()
    except OSError:
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the reader; return 0 on success, 2 for an unreadable or bad
    recording, 1 if the extracted bytes cannot be written."""
    args = _parse_args(argv)
    prog = "wsproxy.record"
    try:
        with open(args.file, "rb") as stream:
            if args.extract is None:
                summary = _Summary()
                complete = scan_recording(stream, summary.add)
                _print_summary(args.file, summary, complete)
            else:
                _extract(stream, args.extract[0], args.extract[1])
    except RecordingError as exc:
        print("%s: %s: %s" % (prog, args.file, exc), file=sys.stderr)
        return 2
    except _OutputError as exc:
        cause = exc.args[0]
        print("%s: cannot write %s: %s" % (prog, args.extract[1], cause.strerror or cause),
              file=sys.stderr)
        return 1
    except OSError as exc:
        print("%s: cannot read %s: %s" % (prog, args.file, exc.strerror or exc), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
