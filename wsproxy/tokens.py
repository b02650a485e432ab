"""Token routing: map a client-supplied token to a configured :class:`Target`.

The token source (``--token-source``) is a file, or a directory whose regular,
non-hidden files are read in sorted name order.  Each line is one of::

    # a comment
    token: host:port
    token: [v6::addr]:port
    token: unix:/path/to/socket

A client only ever names a token; the target it maps to comes from the
operator's files, so a client can never reach a host the operator did not
list.  The table re-reads its source when a file changes and on demand
(``reload``, for SIGHUP).  This module opens no sockets.
"""

import logging
import os
import stat
import threading
import time
import urllib.parse
from typing import Dict, List, Mapping, Optional, Tuple, Union

from wsproxy.settings import ConfigError
from wsproxy.targets import Target, parse_target

logger = logging.getLogger("wsproxy")

#: Seconds between two looks at the source's files for a change.
RECHECK_INTERVAL = 1.0

# What a source looked like when last read: per file its path, mtime, size and
# inode; a plain string saying why for a source that could not be listed.
_Signature = Union[None, str, Tuple[Tuple[str, int, int, int], ...]]


class TokenTable:
    """A thread-safe ``token -> Target`` table read from a file or directory.

    ``source`` is the ``--token-source`` path.  Raises :class:`ConfigError`
    naming ``token-source`` when it does not exist at construction.  Once
    built, the table never raises: a malformed line is logged (one warning
    naming file and line number) and skipped, and a source that vanishes or
    cannot be read is logged and gives an empty table until it comes back.

    ``recheck_interval`` bounds how often :meth:`lookup` stats the files.
    """

    def __init__(self, source: str, recheck_interval: float = RECHECK_INTERVAL) -> None:
        if not os.path.exists(source):
            raise ConfigError("token-source: %s does not exist" % source)
        self.source = source
        self.recheck_interval = recheck_interval
        self._lock = threading.Lock()
        self._table: Dict[str, Target] = {}
        self._signature: _Signature = None
        self._checked_at = 0.0
        self.reload()

    def __len__(self) -> int:
        with self._lock:
            return len(self._table)

    def lookup(self, token: str) -> Optional[Target]:
        """Return the target for ``token``, or ``None`` if it is not listed.

        Re-reads the source first when any file changed since the last read
        (checked at most once per ``recheck_interval``).
        """
        with self._lock:
            now = time.monotonic()
            if now - self._checked_at >= self.recheck_interval:
                self._checked_at = now
                signature = self._current_signature()
                if signature != self._signature:
                    self._load(signature)
            return self._table.get(token)

    def reload(self) -> None:
        """Re-read the source now, whether or not it looks changed."""
        with self._lock:
            self._checked_at = time.monotonic()
            self._load(self._current_signature())

    # -- reading -------------------------------------------------------------

    def _files(self) -> List[str]:
        """The files the source stands for; raises ``OSError`` if unlistable."""
        if not os.path.isdir(self.source):
            os.stat(self.source)  # raises when missing or unreachable
            return [self.source]
        names = sorted(name for name in os.listdir(self.source) if not name.startswith("."))
        files = []
        for name in names:
            path = os.path.join(self.source, name)
            try:
                if stat.S_ISREG(os.stat(path).st_mode):
                    files.append(path)
            except OSError:
                continue  # vanished between listdir and stat, or a dangling link
        return files

    def _current_signature(self) -> _Signature:
        try:
            signature = []
            for path in self._files():
                st = os.stat(path)
                signature.append((path, st.st_mtime_ns, st.st_size, st.st_ino))
            return tuple(signature)
        except OSError as exc:
            return "unreadable: %s" % exc.strerror

    def _load(self, signature: _Signature) -> None:
        """Replace the table with the source's current content (lock held)."""
        previous = self._signature
        self._signature = signature
        if isinstance(signature, str):
            if previous != signature:
                logger.warning("token-source %s: %s; no tokens until it can be read",
                               self.source, signature.split(": ", 1)[1])
            self._table = {}
            return
        table: Dict[str, Target] = {}
        where: Dict[str, Tuple[str, int]] = {}
        for path, _mtime, _size, _ino in signature:
            self._read_file(path, table, where)
        self._table = table
        logger.info("token-source %s: %d token(s) loaded", self.source, len(table))

    @staticmethod
    def _read_file(path: str, table: Dict[str, Target],
                   where: Dict[str, Tuple[str, int]]) -> None:
        try:
            with open(path, "rb") as stream:
                raw_lines = stream.read().splitlines()
        except OSError as exc:
            logger.warning("token-source %s: cannot read: %s; file skipped", path, exc.strerror)
            return
        for number, raw in enumerate(raw_lines, start=1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                logger.warning("token-source %s line %d: not UTF-8; line skipped", path, number)
                continue
            if not line or line.startswith("#"):
                continue
            try:
                token, target = parse_token_line(line)
            except ValueError as exc:
                logger.warning("token-source %s line %d: %s; line skipped", path, number, exc)
                continue
            if token in table:
                first_path, first_number = where[token]
                logger.warning("token-source %s line %d: token already defined at %s line %d; "
                               "the later line wins", path, number, first_path, first_number)
            table[token] = target
            where[token] = (path, number)


def parse_token_line(line: str) -> Tuple[str, Target]:
    """Split one non-comment line ``token: target`` into its token and :class:`Target`.

    The token ends at the first ``:`` and may not be empty or hold white
    space.  Raises ``ValueError`` saying what was expected.
    """
    token, colon, rest = line.partition(":")
    token = token.strip()
    if not colon or not token or any(ch.isspace() for ch in token):
        raise ValueError("expected TOKEN: HOST:PORT, TOKEN: [IPV6]:PORT or TOKEN: unix:/PATH")
    return token, parse_target(rest)


def token_from_request(path: str, headers: Mapping[str, str], host_token: bool) -> Optional[str]:
    """Return the token a request names, or ``None`` when it names none.

    ``path`` is the raw request target, ``headers`` maps lower-case header
    names to values.  By default the token is the first ``token`` query
    parameter, else the ``token`` cookie.  With ``host_token`` it is the host
    name of the ``Host`` header with its port removed (the whole name, as
    websockify's ``--host-token`` takes it); an IPv6 literal host can name no
    token, as a token cannot contain ``:``.
    """
    if host_token:
        return _token_from_host(headers.get("host", ""))
    query = urllib.parse.urlsplit(path).query
    for value in urllib.parse.parse_qs(query).get("token", []):
        value = value.strip()
        if value:
            return value
    return _token_from_cookie(headers.get("cookie", ""))


def _token_from_host(host: str) -> Optional[str]:
    host = host.strip()
    if not host or host.startswith("["):
        return None
    # RFC 7230 §5.4: Host = uri-host [ ":" port ]
    name = host.partition(":")[0]
    return name or None


def _token_from_cookie(cookie_header: str) -> Optional[str]:
    # RFC 6265 §4.2.1: cookie-pair *( ";" SP cookie-pair ).  Split by hand so
    # one malformed cookie from another application does not hide ours.
    for pair in cookie_header.split(";"):
        name, equals, value = pair.partition("=")
        if not equals or name.strip() != "token":
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if value:
            return value
    return None
