"""The process's open-file limit: raise the soft limit to the hard one at start.

Every session holds two descriptors (client and target), every pending
handshake one; the usual soft limit of 1024 would cap a busy proxy near 500
sessions while the hard limit allows far more.  Called by the command line
only: importing wsproxy changes nothing in the process.
"""

import logging
from typing import Optional, Tuple

logger = logging.getLogger("wsproxy")

#: Where the hard limit is "unlimited", raise the soft one to this instead.
_UNLIMITED_CAP = 1 << 20


def raise_open_file_limit() -> Optional[Tuple[int, int]]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; return (before, after), or None.

    Logs the figures at debug level; a platform without ``resource`` or a
    refusal leaves the limit as it was (one debug line says so).
    """
    try:
        import resource
    except ImportError:
        return None
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    infinity = getattr(resource, "RLIM_INFINITY", -1)
    target = _UNLIMITED_CAP if hard == infinity else hard
    if soft != infinity and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            logger.debug("open-file limit stays %d (raising it to %d failed: %s)", soft, target, exc)
            return soft, soft
        logger.debug("open-file limit raised from %d to %d", soft, target)
        return soft, target
    logger.debug("open-file limit is %s", "unlimited" if soft == infinity else soft)
    return soft, soft
