"""``--audit-log FILE|-``: one JSON object per line for each session start, end and refusal.

Who connected, from where, to which target, and when: an audit trail kept
apart from the operator's log.  The file is opened with ``O_APPEND`` (each
line is one ``write``, so worker processes sharing the file never
interleave inside a line) and ``O_NOFOLLOW`` (a symbolic link planted at
the path is refused), created mode 0600, and reopened on SIGHUP for log
rotation; ``-`` is standard output.

Never a secret: no password and no Authorization header is ever written;
the token is written as given, or only its SHA-256 with
``--audit-hash-tokens``.
"""

import datetime
import hashlib
import json
import logging
import os
import threading
import time
from typing import Any, Dict, Optional

logger = logging.getLogger("wsproxy")

#: Standard output (``--audit-log -``).
STDOUT = "-"
_FLAGS = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
          | getattr(os, "O_CLOEXEC", 0))
_MODE = 0o600
#: At most one "cannot write" log line per this many seconds.
_ERROR_INTERVAL = 60.0


def rfc3339_now() -> str:
    """The current time as RFC 3339 in UTC with milliseconds: ``2024-05-01T12:00:00.123Z``."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (now.microsecond // 1000)


def token_field(token: Optional[str], hash_tokens: bool) -> Optional[str]:
    """The token as the audit log shows it: itself, or ``sha256:HEX`` when hashing."""
    if token is None:
        return None
    if hash_tokens:
        return "sha256:" + hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
    return token


class AuditLog:
    """An append-only JSON-lines file (or standard output).

    ``path`` is a file name or ``-``.  Raises OSError when the file cannot
    be opened (the caller names the option).  :meth:`write` never raises: a
    failed write is one log line (at most one a minute).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd = self._open()
        self._error_logged = 0.0

    def _open(self) -> int:
        if self.path == STDOUT:
            return 1
        return os.open(self.path, _FLAGS, _MODE)

    def write(self, record: Dict[str, Any]) -> None:
        """Append ``record`` as one line of JSON (ASCII, so client text cannot break the line)."""
        line = (json.dumps(record, ensure_ascii=True, separators=(", ", ": ")) + "\n").encode("ascii")
        with self._lock:
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(self._fd, view):]
            except OSError as exc:
                now = time.monotonic()
                if now - self._error_logged >= _ERROR_INTERVAL or not self._error_logged:
                    self._error_logged = now
                    logger.error("cannot write to the audit log %s: %s", self.path,
                                 exc.strerror or exc)

    def reopen(self) -> None:
        """Open the path again (after rotation); on failure keep the old file and log one line."""
        if self.path == STDOUT:
            return
        try:
            fd = self._open()
        except OSError as exc:
            logger.error("cannot reopen the audit log %s: %s; still writing to the old one",
                         self.path, exc.strerror or exc)
            return
        with self._lock:
            old, self._fd = self._fd, fd
        os.close(old)

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, -1
        if fd > 2:
            os.close(fd)
