"""Token plugins that read the file system: websockify's ``TokenFile`` family.

``TokenFile`` and ``ReadOnlyTokenFile`` read a file, or every regular file
of a directory, of lines ``token: host:port`` or ``token: unix_socket:/path``
(``#`` starts a comment).  The token is everything before the first ``:``
followed by white space, so it may hold spaces and colons (``a:b: host:1``
names token ``a:b``); the target splits at its last ``:``.  ``TokenFile``
sees a change at the next lookup; ``ReadOnlyTokenFile`` reads once (and
again on SIGHUP).  ``TokenFileName`` takes a directory holding one file per
token, named after it, holding ``host:port``.  ``UnixDomainSocketDirectory``
takes a directory of Unix sockets, one per token, named after it.
"""

import logging
import os
import re
import stat
import threading
from typing import Dict, Optional, Tuple

from wsproxy.settings import ConfigError
from wsproxy.targets import Target
from wsproxy.tokens import files_signature, source_files

from .base import MAX_ANSWER, BuiltinPlugin, TokenLookupError, split_host_port

logger = logging.getLogger("wsproxy")

#: Where a line's token ends: the first ``:`` followed by white space.
_TOKEN_END = re.compile(r":\s")

# What the files looked like when read: (path, mtime, size, inode) per file.
_Signature = Tuple[Tuple[str, int, int, int], ...]


def _need(source: Optional[str], what: str, plugin: str) -> str:
    if not source:
        raise ConfigError("token-source: %s needs %s" % (plugin, what))
    return os.path.abspath(os.path.expanduser(source))


def _need_directory(source: Optional[str], what: str, plugin: str) -> str:
    path = _need(source, what, plugin)
    if not os.path.isdir(path):
        raise ConfigError("token-source: %s needs a directory; %s is not one" % (plugin, path))
    return path


class ReadOnlyTokenFile(BuiltinPlugin):
    """``token: host:port`` lines from a file or a directory's files, read once.

    Raises :class:`ConfigError` naming ``token-source`` when the source does
    not exist.  Malformed lines are logged (file and line) and skipped.
    """

    name = "ReadOnlyTokenFile"

    def __init__(self, src: Optional[str]) -> None:
        super().__init__(src)
        self.path = _need(src, "a token file or directory", self.name)
        if not os.path.exists(self.path):
            raise ConfigError("token-source: %s does not exist" % self.path)
        self._lock = threading.Lock()
        self._targets: Dict[str, Target] = {}
        self._signature: Optional[_Signature] = None
        self.reload()

    def lookup(self, token: str) -> Optional[Target]:
        with self._lock:
            return self._targets.get(token)

    def reload(self) -> None:
        """Read the source again now (SIGHUP)."""
        with self._lock:
            self._load(self._current_signature())

    def _current_signature(self) -> _Signature:
        # websockify reads every file of the directory, hidden ones included.
        try:
            return files_signature(source_files(self.path, hidden=True))
        except OSError as exc:
            raise TokenLookupError("%s %s: cannot read: %s"
                                   % (self.name, self.path, exc.strerror or exc)) from None

    def _load(self, signature: _Signature) -> None:
        targets: Dict[str, Target] = {}
        for path, _mtime, _size, _ino in signature:
            _read_token_file(path, targets, self.name)
        self._targets = targets
        self._signature = signature
        logger.info("%s %s: %d token(s) loaded", self.name, self.path, len(targets))


class TokenFile(ReadOnlyTokenFile):
    """As :class:`ReadOnlyTokenFile`, but every lookup sees the files as they are now.

    The files are re-read only when one changed (path, time, size or inode).
    """

    name = "TokenFile"

    def lookup(self, token: str) -> Optional[Target]:
        with self._lock:
            signature = self._current_signature()
            if signature != self._signature:
                self._load(signature)
            return self._targets.get(token)


def _read_token_file(path: str, targets: Dict[str, Target], plugin: str) -> None:
    try:
        with open(path, "rb") as stream:
            raw_lines = stream.read().splitlines()
    except OSError as exc:
        logger.warning("%s %s: cannot read: %s; file skipped", plugin, path, exc.strerror)
        return
    for number, raw in enumerate(raw_lines, start=1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            logger.warning("%s %s line %d: not UTF-8; line skipped", plugin, path, number)
            continue
        if not line or line.startswith("#"):
            continue
        parts = _TOKEN_END.split(line)
        try:
            if len(parts) != 2:
                raise ValueError("expected 'token: host:port' or 'token: unix_socket:/path'")
            targets[parts[0]] = split_host_port(parts[1])
        except ValueError as exc:
            logger.warning("%s %s line %d: %s; line skipped", plugin, path, number, exc)


class TokenFileName(BuiltinPlugin):
    """One file per token in a directory: the file named after the token holds ``host:port``.

    Only the token's last path component counts (``a/b`` is ``b``).
    Raises :class:`ConfigError` naming ``token-source`` unless the source is
    a directory.
    """

    name = "TokenFileName"

    def __init__(self, src: Optional[str]) -> None:
        super().__init__(src)
        self.path = _need_directory(src, "a directory", self.name)

    def lookup(self, token: str) -> Optional[Target]:
        name = os.path.basename(token)
        if name in ("", ".", ".."):
            return None
        path = os.path.join(self.path, name)
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):
                return None
            with open(path, "rb") as stream:
                content = stream.read(MAX_ANSWER)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TokenLookupError("TokenFileName %s: cannot read: %s"
                                   % (path, exc.strerror or exc)) from None
        try:
            return split_host_port(content.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise TokenLookupError("TokenFileName %s: %s" % (path, exc)) from None


class UnixDomainSocketDirectory(BuiltinPlugin):
    """A directory of Unix sockets: token ``name`` is the socket ``DIR/name``.

    A token that leads outside the directory, or names anything but a
    socket, is unknown.  Raises :class:`ConfigError` naming
    ``token-source`` unless the source is a directory.
    """

    name = "UnixDomainSocketDirectory"

    def __init__(self, src: Optional[str]) -> None:
        super().__init__(src)
        self.path = _need_directory(src, "a directory of Unix sockets", self.name)

    def lookup(self, token: str) -> Optional[Target]:
        if "\x00" in token:
            return None
        path = os.path.abspath(os.path.join(self.path, token))
        if not path.startswith(self.path.rstrip(os.sep) + os.sep):
            return None
        try:
            if not stat.S_ISSOCK(os.stat(path).st_mode):
                return None
        except OSError:
            return None
        return Target(unix=path)
