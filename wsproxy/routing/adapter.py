"""``--token-plugin NAME``: the plugin table, and the adapter the server looks tokens up through.

:data:`TOKEN_PLUGINS` maps websockify's built-in names to wsproxy's
classes; any other dotted path is imported (:func:`wsproxy.plugins.load_plugin`).
:class:`PluginTokens` gives the server the one interface every token source
has: ``lookup(token) -> Target | None``, raising
:class:`~wsproxy.routing.base.TokenLookupError` (503) when the source
fails.  A built-in bounds its own lookups; a plugin from elsewhere runs on
a helper thread and is given up on after the lookup deadline (at most
:data:`MAX_STUCK` such calls may still be running at once).
"""

import logging
from typing import Any, Dict, Optional

from wsproxy.plugins import MAX_STUCK  # noqa: F401  (public here too)
from wsproxy.plugins import PluginBusy, PluginRunner, PluginTimeout, build_plugin
from wsproxy.protocol.errors import HandshakeError
from wsproxy.targets import Target

from .base import LOOKUP_TIMEOUT, TokenLookupError, TokenRejected, answer_to_target

logger = logging.getLogger("wsproxy")

#: websockify's built-in token plugins by name: ``module:Class`` inside wsproxy.
TOKEN_PLUGINS: Dict[str, str] = {
    "TokenFile": "wsproxy.routing.files:TokenFile",
    "ReadOnlyTokenFile": "wsproxy.routing.files:ReadOnlyTokenFile",
    "TokenFileName": "wsproxy.routing.files:TokenFileName",
    "BaseTokenAPI": "wsproxy.routing.api:BaseTokenAPI",
    "JSONTokenApi": "wsproxy.routing.api:JSONTokenApi",
    "JWTTokenApi": "wsproxy.routing.jwt:JWTTokenApi",
    "TokenRedis": "wsproxy.routing.redis:TokenRedis",
    "UnixDomainSocketDirectory": "wsproxy.routing.files:UnixDomainSocketDirectory",
}

#: Longest token handed to a plugin; a longer one is unknown without asking.
MAX_TOKEN = 16 * 1024


class PluginTokens:
    """Token lookups through a websockify-style plugin named ``name``, built with ``source``.

    Raises :class:`ConfigError` naming ``token-plugin`` or ``token-source``
    when the plugin cannot be loaded or refuses its source.
    """

    def __init__(self, name: str, source: Optional[str], timeout: float = LOOKUP_TIMEOUT) -> None:
        self.name = name
        self.timeout = timeout
        self.plugin = build_plugin(name, TOKEN_PLUGINS, "token-plugin", "token-source", source)
        self.runner = PluginRunner(self.plugin, "wsproxy-token-plugin", timeout)
        self.bounded = self.runner.bounded

    def lookup(self, token: str) -> Optional[Target]:
        """The target for ``token``, or None when the plugin does not know it.

        Raises :class:`TokenLookupError` (503) when the plugin fails, is
        too slow or answers something that names no target, and
        ``HandshakeError(404)`` with the reason when it rejects the token.
        """
        if not token or len(token) > MAX_TOKEN:
            return None
        try:
            answer = self._ask(token)
        except TokenRejected as exc:
            raise HandshakeError(404, "token rejected: %s" % exc) from None
        try:
            return answer_to_target(answer)
        except ValueError as exc:
            raise TokenLookupError("token plugin %s answered no target: %s" % (self.name, exc)) \
                from None

    def reload(self) -> None:
        """SIGHUP: let a plugin that can re-read its source do so."""
        reload = getattr(self.plugin, "reload", None)
        if callable(reload):
            reload()

    def _ask(self, token: str) -> Any:
        try:
            return self.runner.run(lambda: self._call(token))
        except PluginBusy as exc:
            raise TokenLookupError("token plugin %s: %d lookups still running past their "
                                   "deadline" % (self.name, exc.running)) from None
        except PluginTimeout:
            raise TokenLookupError("token plugin %s gave no answer in %g s"
                                   % (self.name, self.timeout)) from None

    def _call(self, token: str) -> Any:
        try:
            return self.plugin.lookup(token)
        except (TokenLookupError, TokenRejected):
            raise
        except (Exception, SystemExit) as exc:
            raise TokenLookupError("token plugin %s failed: %s: %s"
                                   % (self.name, type(exc).__name__, exc)) from None
