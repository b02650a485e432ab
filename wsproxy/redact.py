"""Keep secrets in option values out of log lines.

Some option values hold a secret: a token service URL with
``user:password@`` or ``?key=...``, a key password.  The start-up line and
the ``-v`` options dump show option values, and an error message may quote
one, so every value is shown through :func:`redact_value`, and the CLI's
log handlers carry a :class:`SecretFilter` that masks, in every line at
every level, each secret the settings hold, whatever path it took into
the message.

The rules are generic, so an option added later is covered without being
named here: a field whose name says it is a secret (``password``,
``secret``, ``passphrase``, ``credential``) is shown as ``***`` whole; in any
other text value, the password of a URL's user-info and the value of a
query parameter whose name says it is a secret (``key``, ``token``,
``password``, ...) are replaced with ``***``.  ``--print-config`` is not a log
line and prints values as they are (it must read back the same).  Pure:
no sockets, no files.
"""

import dataclasses
import logging
import re
from typing import Any, FrozenSet, Iterable, Optional
from urllib.parse import unquote, unquote_plus

from .logs import escape_controls

#: What a redacted secret is shown as.
MASK = "***"

#: A field whose name holds one of these words is a secret as a whole.
SECRET_FIELD_WORDS = ("password", "passwd", "secret", "passphrase", "credential")

#: A URL query parameter whose name holds one of these words carries a secret.
SECRET_QUERY_WORDS = SECRET_FIELD_WORDS + ("key", "token", "auth", "signature", "sig")

#: Secrets shorter than this are not searched for in whole log lines (a
#: one-letter password would mask every such letter); the option dump still
#: hides them.
MIN_FILTERED_LENGTH = 4

# scheme://user:password@  (RFC 3986 §3.2.1 user-info; "@" ends it, "/" cannot occur in it)
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^/@:\s]*:)(?P<password>[^/@\s]*)@")
# ?name=value or &name=value (also ;name=value)
_QUERY_PAIR = re.compile(r"(?P<head>[?&;](?P<name>[^=&;#\s]+)=)(?P<value>[^&;#\s]*)")


def is_secret_field(name: str) -> bool:
    """True when a Settings field (or option key) named ``name`` holds a secret as a whole."""
    lowered = name.lower()
    return any(word in lowered for word in SECRET_FIELD_WORDS)


def _secret_query_name(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SECRET_QUERY_WORDS)


def redact_text(text: str) -> str:
    """``text`` with URL passwords and secret query values replaced by :data:`MASK`."""
    if "://" in text:
        text = _USERINFO.sub(lambda match: match.group("head") + MASK + "@", text)
    if "=" in text:
        text = _QUERY_PAIR.sub(_mask_secret_query_value, text)
    return text


def _mask_secret_query_value(match) -> str:
    value = match.group("value")
    if value and _secret_query_name(match.group("name")):
        value = MASK
    return match.group("head") + value


def redact_value(name: str, value: Any) -> Any:
    """``value`` of the option or field ``name``, safe to log.

    A secret field's value (when set) becomes :data:`MASK`; text values,
    and the texts in a list, go through :func:`redact_text`; anything else
    is returned as it is.
    """
    if value in (None, "", [], ()):
        return value
    if is_secret_field(name):
        return MASK
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(name, item) for item in value)
    return value


def secrets_in(settings: Any) -> FrozenSet[str]:
    """Every secret string a settings dataclass holds (for :class:`SecretFilter`).

    The whole value of secret fields, the password of each URL's user-info
    (also percent-decoded) and each secret query value, in any text field.
    """
    found = set()
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            if not isinstance(item, str) or not item:
                continue
            if is_secret_field(field.name):
                found.add(item)
                continue
            for match in _USERINFO.finditer(item):
                found.update(_with_decoded(match.group("password")))
            for match in _QUERY_PAIR.finditer(item):
                if _secret_query_name(match.group("name")):
                    found.update(_with_decoded(match.group("value")))
    found.update(_plugin_secrets(settings))
    return frozenset(secret for secret in found if len(secret) >= MIN_FILTERED_LENGTH)


def _plugin_secrets(settings: Any) -> Iterable[str]:
    """The passwords in websockify plugin arguments: BasicHTTPAuth's ``USER:PASSWORD``
    (``--auth-source``) and TokenRedis's ``host:port:db:PASSWORD`` (``--token-source``)."""
    from .plugins import parse_source_args  # pure text, like this module

    found = set()
    auth_plugin = (getattr(settings, "auth_plugin", None) or "").rpartition(".")[2]
    auth_source = getattr(settings, "auth_source", None)
    if auth_plugin == "BasicHTTPAuth" and auth_source and ":" in auth_source:
        found.update((auth_source, auth_source.partition(":")[2]))
    token_plugin = (getattr(settings, "token_plugin", None) or "").rpartition(".")[2]
    token_source = getattr(settings, "token_source", None)
    if token_plugin == "TokenRedis" and token_source:
        fields = parse_source_args(token_source)
        if len(fields) >= 4 and fields[3]:
            found.add(fields[3])
    return found - {""}


def _with_decoded(text: str) -> Iterable[str]:
    return {text, unquote(text), unquote_plus(text)} - {""}


class SecretFilter(logging.Filter):
    """A handler filter: masks secrets in every record's message and traceback.

Masked: each of ``secrets`` (see :func:`secrets_in`) wherever it appears,
and whatever :func:`redact_text` finds (a URL password or ``?token=``
value quoted in a line, e.g. a request target).

    The message is formatted here once (``record.args`` emptied), so the
    handler's formatter writes the masked text.  With ``escape``, control
    characters left in the message are escaped too (a last net behind the
    escaping done where peer text enters a line).
    """

    def __init__(self, secrets: Iterable[str] = (), escape: bool = True) -> None:
        super().__init__()
        # Longest first, so a secret containing another is masked whole.
        self.secrets = sorted(set(secrets), key=len, reverse=True)
        self.escape = escape

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to logging's own handling
            return True
        changed = self._clean(message)
        if self.escape:
            changed = escape_controls(changed)
        if changed != message or record.args:
            record.msg, record.args = changed, ()
        if record.exc_info and self.secrets:
            if not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = self._clean(record.exc_text)
        return True

    def _clean(self, text: str) -> str:
        text = redact_text(text)
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


def redacted_filter(settings: Optional[Any]) -> SecretFilter:
    """The :class:`SecretFilter` for ``settings`` (or an escaping-only one for None)."""
    return SecretFilter(secrets_in(settings) if settings is not None else ())
