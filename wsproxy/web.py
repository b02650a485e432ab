"""The static web root (``--web DIR``): answer a plain GET/HEAD from a directory.

:func:`respond` is a pure responder: it takes the request's method, raw
target and lower-case headers, looks at the file system, and returns a
:class:`WebResponse` for the caller to write.  It opens no sockets.

Nothing outside the web root is ever served.  The target is split into
segments *before* percent-decoding, and a segment that decodes to ``.``,
``..`` or anything holding ``/``, ``\\`` or a control byte is refused with
400; hidden names (a leading ``.``) are 404.  The joined path is then
resolved with ``realpath`` and must still lie inside the resolved root, so a
symbolic link leading out gives 404; and no name on the resolved path (below
the root) may be hidden either, so a link such as ``pw.txt -> .htpasswd`` is
neither served nor listed.
"""

import email.utils
import html
import mimetypes
import os
import stat
import threading
import urllib.parse
from dataclasses import dataclass, field
from datetime import timezone
from http import HTTPStatus
from typing import BinaryIO, List, Mapping, Optional, Sequence, Tuple

#: Files up to this size come back in ``body``; larger ones as ``file``.
SMALL_FILE_LIMIT = 64 * 1024

INDEX_NAME = "index.html"

ALLOWED_METHODS = ("GET", "HEAD")

# Types browsers insist on for modules and WebAssembly, fixed here so a
# sparse system mime table (no /etc/mime.types) cannot break noVNC.
_FIXED_TYPES = {
    ".html": "text/html",
    ".htm": "text/html",
    ".css": "text/css",
    ".js": "application/javascript",
    ".mjs": "application/javascript",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
}

# A file such as ``x.tar.gz`` is sent as what it is on disk, not as its
# content type with a Content-Encoding the browser would undo.
_ENCODING_TYPES = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
    "compress": "application/x-compress",
    "br": "application/x-brotli",
}

_DEFAULT_TYPE = "application/octet-stream"

# mimetypes.init() reads the system tables; do it once, not racing threads.
_mimetypes_lock = threading.Lock()


@dataclass
class WebResponse:
    """What to send back for one request.

    ``status``: the HTTP status code.  ``headers``: the response headers to
    write, in order (the caller adds its own ``Date``, ``Server``,
    ``Connection``).  ``body``: bytes to write after the headers.  ``file``:
    when not ``None``, an open binary file whose first ``length`` bytes are
    written after ``body``; the caller closes it.  A HEAD answer and a 304
    carry no body and no file.
    """

    status: int
    headers: List[Tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    file: Optional[BinaryIO] = None
    length: int = 0

    @property
    def reason(self) -> str:
        """The standard reason phrase for ``status``."""
        try:
            return HTTPStatus(self.status).phrase
        except ValueError:
            return ""

    def header(self, name: str) -> Optional[str]:
        """The first value of header ``name`` (any case), or ``None``."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def close(self) -> None:
        """Close ``file`` if there is one (for a caller that gives up early)."""
        if self.file is not None:
            self.file.close()
            self.file = None


class _BadTarget(Exception):
    """The request target is not a path we will even try (answered with 400)."""


def respond(web_root: str, method: str, target: str, headers: Mapping[str, str],
            listing: bool = False) -> WebResponse:
    """Answer a plain (non-upgrade) HTTP request from the directory ``web_root``.

    ``target`` is the raw request target (path and query), ``headers`` maps
    lower-case names to values, ``listing`` allows HTML directory listings.
    Returns 200, 301 (a directory without its trailing slash), 304, 400, 403,
    404 or 405.  Never raises for any input.
    """
    head = method == "HEAD"
    if method not in ALLOWED_METHODS:
        return _error(HTTPStatus.METHOD_NOT_ALLOWED, head, [("Allow", ", ".join(ALLOWED_METHODS))])
    try:
        segments, wants_directory, query = _split_target(target)
    except _BadTarget:
        return _error(HTTPStatus.BAD_REQUEST, head)
    if any(segment.startswith(".") for segment in segments):
        return _error(HTTPStatus.NOT_FOUND, head)

    root = os.path.realpath(web_root)
    path = _resolve_visible(root, os.path.join(root, *segments))
    if path is None:
        return _error(HTTPStatus.NOT_FOUND, head)
    try:
        mode = os.stat(path).st_mode
    except PermissionError:
        return _error(HTTPStatus.FORBIDDEN, head)
    except (OSError, ValueError):
        return _error(HTTPStatus.NOT_FOUND, head)

    if stat.S_ISDIR(mode):
        if not wants_directory:
            return _redirect_to_directory(segments, query, head)
        index = _resolve_visible(root, os.path.join(path, INDEX_NAME))
        if index is not None and os.path.isfile(index):
            return _serve_file(index, head, headers)
        if listing:
            return _listing(root, path, segments, head)
        return _error(HTTPStatus.NOT_FOUND, head)
    if not stat.S_ISREG(mode) or wants_directory:
        return _error(HTTPStatus.NOT_FOUND, head)
    return _serve_file(path, head, headers)


# -- the target ----------------------------------------------------------------

def _split_target(target: str) -> Tuple[List[str], bool, str]:
    """Return the decoded path segments, whether the path ends in ``/``, and the query.

    Raises :class:`_BadTarget` for anything but a clean path.
    """
    # RFC 3986 §2: a URI is printable US-ASCII; white space, controls (NUL
    # among them) and backslashes have no business in a path we serve.
    if not target or any(not 0x21 <= ord(ch) <= 0x7E or ch == "\\" for ch in target):
        raise _BadTarget()
    if target.startswith("/"):
        path, _, query = target.partition("?")
        path = path.partition("#")[0]
    else:
        # RFC 7230 §5.3.2: a server MUST accept the absolute-form.
        parts = urllib.parse.urlsplit(target)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise _BadTarget()
        path, query = parts.path or "/", parts.query
        if not path.startswith("/"):
            raise _BadTarget()
    segments = []
    for raw in path.split("/"):
        if not raw:
            continue  # the leading slash, or "//"
        # Decode each segment on its own so "%2f" can never make a new one.
        decoded = urllib.parse.unquote_to_bytes(raw)
        if any(byte < 0x20 or byte == 0x7F for byte in decoded) or b"/" in decoded \
                or b"\\" in decoded or decoded in (b".", b".."):
            raise _BadTarget()
        segments.append(os.fsdecode(decoded))
    return segments, path.endswith("/"), query


def _resolve_visible(root: str, path: str) -> Optional[str]:
    """``realpath(path)`` if inside ``root`` (already resolved) with no hidden name, else None.

    Hidden names are judged on the resolved path too: a request names only
    visible segments, but a symbolic link among them may lead to a dot-file
    or into a dot-directory (``pw.txt -> .htpasswd``, ``site -> .git``).
    """
    try:
        real = os.path.realpath(path)
        if os.path.commonpath([root, real]) != root:
            return None
        below = os.path.relpath(real, root)
    except (OSError, ValueError):
        return None
    if below != os.curdir and any(part.startswith(".") for part in below.split(os.sep)):
        return None
    return real


def _url_path(segments: Sequence[str]) -> str:
    quoted = [urllib.parse.quote(os.fsencode(segment), safe="!$&'()*+,;=:@~") for segment in segments]
    return "/" + "/".join(quoted)


# -- answers -------------------------------------------------------------------

def _error(status: HTTPStatus, head: bool,
           extra: Sequence[Tuple[str, str]] = ()) -> WebResponse:
    body = ("%d %s\n" % (status.value, status.phrase)).encode("ascii")
    headers = [("Content-Type", "text/plain; charset=utf-8"),
               ("Content-Length", str(len(body)))]
    headers.extend(extra)
    return WebResponse(status.value, headers, b"" if head else body)


def _redirect_to_directory(segments: Sequence[str], query: str, head: bool) -> WebResponse:
    # Built from the checked segments, never echoed from the request, so
    # "//host/dir" cannot turn into a redirect to another site.
    location = _url_path(segments) + "/"
    if query:
        location += "?" + query
    body = ("301 Moved Permanently: %s\n" % location).encode("ascii")
    headers = [("Location", location),
               ("Content-Type", "text/plain; charset=utf-8"),
               ("Content-Length", str(len(body)))]
    return WebResponse(HTTPStatus.MOVED_PERMANENTLY.value, headers, b"" if head else body)


def _serve_file(path: str, head: bool, request_headers: Mapping[str, str]) -> WebResponse:
    try:
        # O_NONBLOCK: should the file have been swapped for a FIFO since the
        # stat, opening it must not hang the session.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except PermissionError:
        return _error(HTTPStatus.FORBIDDEN, head)
    except OSError:
        return _error(HTTPStatus.NOT_FOUND, head)
    stream = os.fdopen(fd, "rb")
    keep_open = False
    try:
        info = os.fstat(stream.fileno())
        if not stat.S_ISREG(info.st_mode):
            return _error(HTTPStatus.NOT_FOUND, head)
        last_modified = email.utils.formatdate(info.st_mtime, usegmt=True)
        if _not_modified(request_headers, info.st_mtime):
            return WebResponse(HTTPStatus.NOT_MODIFIED.value, [("Last-Modified", last_modified)])
        size = info.st_size
        headers = [("Content-Type", content_type(path)),
                   ("Content-Length", str(size)),
                   ("Last-Modified", last_modified),
                   ("X-Content-Type-Options", "nosniff")]
        if head:
            return WebResponse(HTTPStatus.OK.value, headers)
        if size <= SMALL_FILE_LIMIT:
            body = stream.read(size)
            headers[1] = ("Content-Length", str(len(body)))  # it may have shrunk
            return WebResponse(HTTPStatus.OK.value, headers, body)
        keep_open = True
        return WebResponse(HTTPStatus.OK.value, headers, file=stream, length=size)
    except OSError:
        return _error(HTTPStatus.NOT_FOUND, head)
    finally:
        if not keep_open:
            stream.close()


def _not_modified(request_headers: Mapping[str, str], mtime: float) -> bool:
    """True when ``If-Modified-Since`` says the client's copy is current."""
    since = request_headers.get("if-modified-since")
    # RFC 7232 §3.3: ignore If-Modified-Since when If-None-Match is present.
    if not since or "if-none-match" in request_headers:
        return False
    try:
        when = email.utils.parsedate_to_datetime(since)
    except (TypeError, ValueError, IndexError, OverflowError):
        return False  # RFC 7232 §3.3: an invalid date is ignored
    if when is None:
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    # HTTP dates have whole seconds: compare at that precision.
    return int(mtime) <= when.timestamp()


def _listing(root: str, directory: str, segments: Sequence[str], head: bool) -> WebResponse:
    try:
        with os.scandir(directory) as entries:
            names = []
            for entry in entries:
                # Only what a request for it would be given: nothing hidden,
                # by its own name or where it leads, nothing outside the root.
                if entry.name.startswith("."):
                    continue
                if entry.is_symlink() and _resolve_visible(root, entry.path) is None:
                    continue
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    is_dir = False
                names.append((entry.name, is_dir))
    except PermissionError:
        return _error(HTTPStatus.FORBIDDEN, head)
    except OSError:
        return _error(HTTPStatus.NOT_FOUND, head)
    title = html.escape(_display(_url_path(segments).rstrip("/") + "/"))
    lines = ['<!DOCTYPE html>',
             '<html><head><meta charset="utf-8"><title>Index of %s</title></head>' % title,
             '<body><h1>Index of %s</h1><ul>' % title]
    if segments:
        lines.append('<li><a href="../">../</a></li>')
    for name, is_dir in sorted(names):
        # Quote everything, ":" included, so a name such as "javascript:x"
        # can only ever be a relative link.
        suffix = "/" if is_dir else ""
        href = urllib.parse.quote(os.fsencode(name), safe="") + suffix
        text = os.fsencode(name).decode("utf-8", "replace") + suffix
        lines.append('<li><a href="%s">%s</a></li>'
                     % (html.escape(href, quote=True), html.escape(text)))
    lines.append('</ul></body></html>\n')
    body = "\n".join(lines).encode("utf-8")
    headers = [("Content-Type", "text/html; charset=utf-8"),
               ("Content-Length", str(len(body)))]
    return WebResponse(HTTPStatus.OK.value, headers, b"" if head else body)


def _display(url_path: str) -> str:
    return urllib.parse.unquote(url_path, errors="replace")


def content_type(path: str) -> str:
    """The ``Content-Type`` to send for the file at ``path`` (by its name)."""
    _root, extension = os.path.splitext(path)
    fixed = _FIXED_TYPES.get(extension.lower())
    if fixed is not None:
        return fixed
    with _mimetypes_lock:
        if not mimetypes.inited:
            mimetypes.init()
    guessed, encoding = mimetypes.guess_type(path, strict=False)
    if encoding is not None:
        return _ENCODING_TYPES.get(encoding, _DEFAULT_TYPE)
    return guessed or _DEFAULT_TYPE
