"""wsproxy: a WebSockets-to-TCP proxy in pure Python.

Start one in a few lines::

    import threading
    from wsproxy import ProxyServer, Settings

    settings = Settings(target_host="127.0.0.1", target_port=5900)
    server = ProxyServer(("127.0.0.1", 8080), settings)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ...
    server.shutdown()        # closes every session with 1001
    server.server_close()

Subclass :class:`ProxyRequestHandler` and override its hooks to choose
targets, refuse requests, observe sessions or transform payload.
Importing wsproxy touches no signal, logging handler, working directory or
``sys.argv``; the command line (``python3 -m wsproxy``) does those.
"""

from .handler import ProxyRequestHandler
from .plugins import AuthenticationError, BasePlugin
from .protocol.errors import HandshakeError, ProtocolError
from .protocol.frames import CloseCode
from .protocol.handshake import Request
from .server import ProxyServer
from .session import SessionInfo
from .settings import ConfigError, Settings
from .targets import Target

__version__ = "1.0.0"

__all__ = [
    "AuthenticationError",
    "BasePlugin",
    "CloseCode",
    "ConfigError",
    "HandshakeError",
    "ProtocolError",
    "ProxyRequestHandler",
    "ProxyServer",
    "Request",
    "SessionInfo",
    "Settings",
    "Target",
    "__version__",
]
