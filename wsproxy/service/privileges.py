"""``--user`` / ``--group``: give up root once the privileged work is done.

The CLI binds the port (below 1024 needs root or ``CAP_NET_BIND_SERVICE``),
reads the certificate and key, opens the log file and writes the pid file
as the starting user, then calls :func:`drop_privileges` before the accept
loop starts, so no client byte is read with root's rights.

After the switch the process may no longer read files only root can read,
which can include the Python installation itself (an interpreter under
``/root``): a module imported for the first time then fails.
:func:`preload` imports, before the switch, what a session may still need
(the IDNA codec that resolving a host name loads, the recorder, MIME types).
"""

import codecs
import grp
import importlib
import logging
import mimetypes
import os
import pwd
from typing import NamedTuple, Optional

from ..settings import ConfigError, Settings

logger = logging.getLogger("wsproxy")

#: Modules a session may import lazily, loaded before the switch.
PRELOAD_MODULES = (
    "stringprep",
    "unicodedata",
    "wsproxy.record",      # --record's Recorder, imported when a session starts
)
#: Codecs looked up by name at run time (each is an ``encodings`` module
#: imported on first use): "idna" by socket.create_connection("host.name"),
#: "unicode_escape" by the session log line and the recorder.
PRELOAD_CODECS = ("idna", "punycode", "unicode_escape", "raw_unicode_escape", "ascii",
                  "latin-1", "utf-8", "utf-16", "utf-32", "charmap")


class PrivilegeError(RuntimeError):
    """The switch to ``--user``/``--group`` failed; the message names the option."""


class Identity(NamedTuple):
    """The user and group to become (None = keep), with their names for messages."""

    uid: Optional[int]
    gid: Optional[int]
    user: Optional[str]
    group: Optional[str]


def resolve(settings: Settings) -> Optional[Identity]:
    """Look up ``--user`` and ``--group`` (names or numbers); None when neither is set.

    ``--user`` alone also takes that user's primary group.  Raises
    :class:`ConfigError` naming the option for an unknown name.
    """
    if not settings.user and not settings.group:
        return None
    uid = gid = None
    if settings.user:
        try:
            entry = (pwd.getpwuid(int(settings.user)) if settings.user.isdigit()
                     else pwd.getpwnam(settings.user))
        except (KeyError, OverflowError):
            raise ConfigError("--user: no such user: %s" % settings.user) from None
        uid, gid = entry.pw_uid, entry.pw_gid
    if settings.group:
        try:
            gid = (grp.getgrgid(int(settings.group)).gr_gid if settings.group.isdigit()
                   else grp.getgrnam(settings.group).gr_gid)
        except (KeyError, OverflowError):
            raise ConfigError("--group: no such group: %s" % settings.group) from None
    return Identity(uid, gid, settings.user, settings.group)


def preload(settings: Settings) -> None:
    """Load, as the starting user, what serving will need after the switch."""
    for name in PRELOAD_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:  # a trimmed Python: nothing to preload then
            pass
    for codec in PRELOAD_CODECS:
        codecs.lookup(codec)
    "localhost".encode("idna")
    if settings.web:
        mimetypes.init()


def drop_privileges(identity: Identity) -> None:
    """Become ``identity``: supplementary groups cleared, then the group, then the user.

    Order matters: once the user id is no longer 0, the group can no longer
    change.  Raises :class:`PrivilegeError` (naming ``--user`` or
    ``--group``) if a step fails, or if root could be regained afterwards.
    """
    if _already(identity):
        return
    option = "--group" if identity.uid is None else "--user"
    who = identity.user if identity.uid is not None else identity.group
    try:
        if identity.gid is not None:
            os.setgroups([])
            os.setgid(identity.gid)
        if identity.uid is not None:
            os.setuid(identity.uid)
    except OSError as exc:
        raise PrivilegeError("%s: cannot switch to %s: %s (start wsproxy as root to use it)"
                             % (option, who, exc.strerror or exc)) from None
    if identity.uid not in (None, 0):
        try:
            os.setuid(0)
        except OSError:
            pass
        else:
            raise PrivilegeError("--user: still able to become root after switching to %s"
                                 % identity.user)
    logger.info("running as user %s, group %s",
                _user_name(os.getuid()), _group_name(os.getgid()))


def _already(identity: Identity) -> bool:
    """Nothing to do: already that user and group, with no other groups."""
    if identity.uid is not None and (os.getuid(), os.geteuid()) != (identity.uid, identity.uid):
        return False
    if identity.gid is not None:
        if (os.getgid(), os.getegid()) != (identity.gid, identity.gid):
            return False
        if set(os.getgroups()) - {identity.gid}:
            return False
    return True


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def check_writable(settings: Settings) -> None:
    """After the switch: warn (once, at start) about paths the new user cannot write."""
    if settings.record:
        directory = os.path.dirname(os.path.abspath(settings.record))
        if not os.access(directory, os.W_OK | os.X_OK):
            logger.warning("--record: %s is not writable by this user; sessions will not "
                           "be recorded", directory)
