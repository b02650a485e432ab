"""Routing: which target a session's token names.

Two families of token source, one interface (``lookup(token) -> Target |
None``, raising :class:`TokenLookupError` for 503):

- wsproxy's own ``--token-source FILE|DIR|URL``
  (:class:`~wsproxy.tokens.TokenTable`, :class:`~wsproxy.tokens.TokenService`);
- ``--token-plugin NAME`` with websockify's built-in names
  (:data:`TOKEN_PLUGINS`) or a websockify-style class by dotted path,
  through :class:`PluginTokens`.

:func:`open_token_lookup` picks the one a :class:`Settings` asks for.
"""

from wsproxy.settings import Settings
from wsproxy.tokens import TokenService, TokenTable, open_token_source, token_from_request

from .adapter import TOKEN_PLUGINS, PluginTokens
from .base import LOOKUP_TIMEOUT, TokenLookupError, TokenRejected

__all__ = ["LOOKUP_TIMEOUT", "PluginTokens", "TOKEN_PLUGINS", "TokenLookupError", "TokenRejected",
           "TokenService", "TokenTable", "open_token_lookup", "open_token_source",
           "token_from_request"]


def open_token_lookup(settings: Settings):
    """The token lookup ``settings`` ask for, or None when they route by no token.

    Raises :class:`~wsproxy.settings.ConfigError` naming the option at fault.
    """
    if settings.token_plugin:
        return PluginTokens(settings.token_plugin, settings.token_source)
    if settings.token_source:
        return open_token_source(settings.token_source)
    return None
