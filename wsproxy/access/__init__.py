"""Access control beyond ``--origin`` and ``--auth-file``: websockify's auth plugins.

``--auth-plugin NAME --auth-source ARG`` picks a built-in from
:data:`AUTH_PLUGINS` (``BasicHTTPAuth``, ``ExpectOrigin``,
``ClientCertCNAuth``) or imports a websockify-style class by dotted path;
:class:`PluginAuth` runs it for each WebSocket handshake.
"""

from .plugins import (AUTH_PLUGINS, BasicHTTPAuth, ClientCertCNAuth, ExpectOrigin, PluginAuth,
                      open_auth_plugin)

__all__ = ["AUTH_PLUGINS", "BasicHTTPAuth", "ClientCertCNAuth", "ExpectOrigin", "PluginAuth",
           "open_auth_plugin"]
