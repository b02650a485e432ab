"""HTTP Basic authentication (RFC 7617) against an ``--auth-file``.

Each line of the file is ``user:pbkdf2_sha256$ITERATIONS$SALT$HASH``, where
SALT and HASH are standard base64 (RFC 4648 §4, with padding) and HASH is
PBKDF2-HMAC-SHA256 of the UTF-8 password, 32 bytes.  Blank lines and lines
starting with ``#`` are ignored.  ``python3 -m wsproxy.passwd USER`` writes
such a line.

Nothing here logs, and no password is ever stored: only the PBKDF2 result,
and, for the verification cache, a keyed hash of the credentials.
"""

import base64
import binascii
import collections
import hashlib
import hmac
import os
import threading
import time
from typing import Callable, Dict, NamedTuple, Optional, Tuple

from wsproxy.settings import ConfigError

#: The challenge sent with a 401 (RFC 7617 §2, §2.1 for the charset).
WWW_AUTHENTICATE = 'Basic realm="wsproxy", charset="UTF-8"'

ALGORITHM = "pbkdf2_sha256"
DEFAULT_ITERATIONS = 600_000
MAX_ITERATIONS = 100_000_000
SALT_SIZE = 16
HASH_SIZE = 32  # the SHA-256 digest size, PBKDF2's default output length

#: Longest ``Authorization`` value worth decoding; anything longer fails.
MAX_HEADER_LENGTH = 4096

#: Successful verifications remembered, and for how long (seconds).
DEFAULT_CACHE_SIZE = 256
DEFAULT_CACHE_TTL = 300.0


class PasswordHash(NamedTuple):
    """One parsed ``pbkdf2_sha256$...`` value: ``iterations``, ``salt``, ``digest``."""

    iterations: int
    salt: bytes
    digest: bytes

    def matches(self, password: bytes) -> bool:
        """Hash ``password`` with this salt and count; compare in constant time."""
        candidate = hashlib.pbkdf2_hmac("sha256", password, self.salt, self.iterations)
        return hmac.compare_digest(candidate, self.digest)


def hash_password(password: str, iterations: int = DEFAULT_ITERATIONS,
                  salt: Optional[bytes] = None) -> str:
    """Return ``pbkdf2_sha256$ITERATIONS$SALT$HASH`` for ``password``.

    ``salt`` defaults to 16 fresh random bytes.  Raises ``ValueError`` for an
    iteration count outside 1..100,000,000 or an empty salt.
    """
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise ValueError("iterations must be 1-%d, got %d" % (MAX_ITERATIONS, iterations))
    if salt is None:
        salt = os.urandom(SALT_SIZE)
    if not salt:
        raise ValueError("salt must not be empty")
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return "%s$%d$%s$%s" % (ALGORITHM, iterations, _b64(salt), _b64(digest))


def parse_password_hash(text: str) -> PasswordHash:
    """Parse ``pbkdf2_sha256$ITERATIONS$SALT$HASH``; raises ``ValueError`` saying why."""
    parts = text.split("$")
    if len(parts) != 4 or parts[0] != ALGORITHM:
        raise ValueError("expected %s$ITERATIONS$SALT$HASH" % ALGORITHM)
    _, iterations_text, salt_text, digest_text = parts
    if not iterations_text.isdigit() or not 1 <= int(iterations_text) <= MAX_ITERATIONS:
        raise ValueError("expected an iteration count 1-%d" % MAX_ITERATIONS)
    try:
        salt = base64.b64decode(salt_text, validate=True)
        digest = base64.b64decode(digest_text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("salt and hash must be base64") from None
    if not salt:
        raise ValueError("the salt is empty")
    if len(digest) != HASH_SIZE:
        raise ValueError("the hash must be %d bytes" % HASH_SIZE)
    return PasswordHash(int(iterations_text), salt, digest)


def parse_basic_credentials(authorization_header: Optional[str]) -> Optional[Tuple[str, bytes]]:
    """Return ``(user, password)`` from ``Basic <base64>``, or ``None`` if malformed.

    The password stays bytes (UTF-8, RFC 7617 §2.1) so no text copy of it is
    made.  Never raises.
    """
    if not isinstance(authorization_header, str) or not authorization_header \
            or len(authorization_header) > MAX_HEADER_LENGTH:
        return None
    scheme, _, encoded = authorization_header.strip().partition(" ")
    # RFC 7617 §2: the scheme name is case-insensitive.
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    # RFC 7617 §2: user-pass = user-id ":" password; a user-id has no colon.
    user_bytes, colon, password = decoded.partition(b":")
    if not colon or not user_bytes:
        return None
    try:
        user = user_bytes.decode("utf-8")
        password.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return user, password


class AuthTable:
    """The users of an ``--auth-file`` and a verifier for ``Authorization`` headers.

    Raises :class:`ConfigError` naming ``auth-file`` (and the file and line)
    when the file cannot be read or a line is malformed.

    A verification costs one PBKDF2 run (about 0.3 s at 600,000 iterations),
    paid whether or not the user exists, so timing does not reveal user names.
    Because a browser may open several connections in a row with the same
    header (page, WebSocket, reconnects), successful verifications are kept for
    ``cache_ttl`` seconds in a cache of at most ``cache_size`` entries.  Its
    keys are HMAC-SHA256 of the credentials under a random per-table key, never
    the header or password; only headers that already verified can hit it, so a
    guesser still pays full price for every guess.  ``cache_size=0`` turns it off.
    """

    def __init__(self, path: str, cache_size: int = DEFAULT_CACHE_SIZE,
                 cache_ttl: float = DEFAULT_CACHE_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._users = _read_auth_file(path)
        self._dummy = self._make_dummy()
        self._cache_size = cache_size
        self._cache_ttl = cache_ttl
        self._clock = clock
        self._cache_key = os.urandom(32)
        self._cache: "collections.OrderedDict[bytes, Tuple[str, float]]" = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._users)

    def __contains__(self, user: object) -> bool:
        return user in self._users

    def check(self, authorization_header: Optional[str]) -> Optional[str]:
        """Return the user name if the header carries valid credentials, else ``None``.

        ``authorization_header`` is the raw ``Authorization`` value or ``None``.
        Never raises.
        """
        credentials = parse_basic_credentials(authorization_header)
        if credentials is None:
            return None
        user, password = credentials
        cache_key = hmac.new(self._cache_key, user.encode("utf-8") + b":" + password,
                             hashlib.sha256).digest()
        if self._cached(cache_key) == user:
            return user
        entry = self._users.get(user)
        # Hash even for an unknown user so both cases cost the same time.
        matched = (entry or self._dummy).matches(password)
        if entry is None or not matched:
            return None
        self._remember(cache_key, user)
        return user

    def _make_dummy(self) -> PasswordHash:
        """An entry no password matches, costing what a typical real entry costs."""
        counts = collections.Counter(entry.iterations for entry in self._users.values())
        iterations = counts.most_common(1)[0][0] if counts else DEFAULT_ITERATIONS
        return PasswordHash(iterations, os.urandom(SALT_SIZE), os.urandom(HASH_SIZE))

    def _cached(self, key: bytes) -> Optional[str]:
        if self._cache_size <= 0:
            return None
        with self._lock:
            hit = self._cache.get(key)
            if hit is None:
                return None
            user, expires = hit
            if self._clock() >= expires:
                del self._cache[key]
                return None
            self._cache.move_to_end(key)
            return user

    def _remember(self, key: bytes, user: str) -> None:
        if self._cache_size <= 0:
            return
        with self._lock:
            self._cache[key] = (user, self._clock() + self._cache_ttl)
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)


def _read_auth_file(path: str) -> Dict[str, PasswordHash]:
    try:
        with open(path, "rb") as stream:
            raw_lines = stream.read().splitlines()
    except OSError as exc:
        raise ConfigError("auth-file: cannot read %s: %s" % (path, exc.strerror)) from None
    users: Dict[str, PasswordHash] = {}
    for number, raw in enumerate(raw_lines, start=1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ConfigError("auth-file: %s line %d: not UTF-8" % (path, number)) from None
        if not line or line.startswith("#"):
            continue
        user, colon, hashed = line.partition(":")
        if not colon or not user or any(ch.isspace() for ch in user):
            raise ConfigError("auth-file: %s line %d: expected USER:%s$ITERATIONS$SALT$HASH"
                              % (path, number, ALGORITHM))
        if user in users:
            raise ConfigError("auth-file: %s line %d: user %r is listed twice" % (path, number, user))
        try:
            users[user] = parse_password_hash(hashed)
        except ValueError as exc:
            raise ConfigError("auth-file: %s line %d: %s" % (path, number, exc)) from None
    return users


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
