"""The plugin API: what a token or auth plugin class may build on.

A token plugin (``--token-plugin``) is a class built once as ``cls(source)``
with the ``--token-source`` text, whose ``lookup(token)`` returns ``(host,
port)``, ``('unix_socket', path)`` or ``None`` for an unknown token.  An auth
plugin (``--auth-plugin``) is built as ``cls(source)`` with the
``--auth-source`` text; its ``authenticate(headers, target_host,
target_port)`` returns to accept and raises :class:`AuthenticationError` to
refuse.  These are websockify's contracts, so a class written for websockify
loads unchanged by its dotted path; one that imports websockify's base class
or error changes that one import line to ``from wsproxy.plugins import ...``.

:func:`load_plugin` turns a name into a class: a bare name picks a built-in
from a table, a dotted path imports the module; :func:`build_plugin` also
builds it.  :class:`PluginRunner` runs the calls to a plugin from
elsewhere on helper threads under a deadline.  Nothing here opens a socket.
"""

import importlib
import re
import threading
from typing import Any, Callable, List, Mapping, Optional

from .settings import ConfigError

__all__ = ["AuthenticationError", "BasePlugin", "InvalidOriginError", "PluginBusy",
           "PluginRunner", "PluginTimeout", "build_plugin", "load_plugin", "parse_source_args"]

#: Plugin calls past their deadline that may still be running; more are refused at once.
MAX_STUCK = 16


class BasePlugin:
    """A base for token and auth plugins: keeps ``source``; finds nothing, refuses nothing.

    Override :meth:`lookup` (token plugins) or :meth:`authenticate` (auth
    plugins).
    """

    def __init__(self, src: Optional[str] = None) -> None:
        self.source = src

    def lookup(self, token: str):
        """``(host, port)``, ``('unix_socket', path)``, or None when ``token`` is unknown."""
        return None

    def authenticate(self, headers, target_host, target_port) -> None:
        """Return to let the request through; raise :class:`AuthenticationError` to refuse."""


class AuthenticationError(Exception):
    """An auth plugin's refusal: the HTTP answer and a line for the log.

    ``code`` is the HTTP status (default 403), ``headers`` extra response
    headers (e.g. ``WWW-Authenticate`` with a 401), ``msg`` a short text for
    the client; ``log_msg`` (default ``msg``) is what the operator's log
    line says.  The attribute and argument names are websockify's.
    """

    def __init__(self, log_msg: Optional[str] = None, response_code: int = 403,
                 response_headers: Optional[Mapping[str, str]] = None,
                 response_msg: Optional[str] = None) -> None:
        self.code = response_code
        self.headers = dict(response_headers or {})
        self.msg = response_msg
        if log_msg is None:
            log_msg = response_msg
        super().__init__("%s %s" % (self.code, log_msg))


class InvalidOriginError(AuthenticationError):
    """403: the ``Origin`` header is missing or not one of ``expected``."""

    def __init__(self, expected: List[str], actual: Optional[str]) -> None:
        self.expected_origin = expected
        self.actual_origin = actual
        super().__init__(response_msg="Invalid Origin",
                         log_msg="Invalid Origin Header: Expected one of %s, got %r"
                                 % (expected, actual))


# A field is either a whole double-quoted text (which may hold ':') or the
# text up to the next ':'.
_FIELD = re.compile(r'"([^"]+)"(?=:|$)|([^:]*)')


def parse_source_args(src: str) -> List[str]:
    """Split a plugin source at ``:``; a field in double quotes may hold ``:``.

    ``a:b:c`` gives ``['a', 'b', 'c']``; ``a:"b:c":d`` gives ``['a', 'b:c',
    'd']``; an empty field stays ``''``.
    """
    fields = []
    position = 0
    while True:
        match = _FIELD.match(src, position)
        fields.append(match.group(1) if match.group(1) is not None else match.group(2))
        position = match.end()
        if position >= len(src) or src[position] != ":":
            return fields
        position += 1


def load_plugin(name: str, builtins: Mapping[str, str], option: str) -> type:
    """The plugin class ``name`` stands for.

    A bare name (or websockify's own module path to a built-in, e.g.
    ``websockify.token_plugins.TokenFile``) picks ``builtins[name]``, a
    ``module:Class`` path inside wsproxy.  Any other dotted path
    ``package.module.Class`` is imported.  Raises :class:`ConfigError`
    naming ``option`` when the module or class cannot be found.
    """
    name = name.strip()
    short = name.rpartition(".")[2]
    if "." not in name or (name.startswith("websockify.") and short in builtins):
        if short not in builtins:
            raise ConfigError("%s: no built-in plugin %r; expected one of %s, or a dotted "
                              "path module.Class" % (option, name, ", ".join(sorted(builtins))))
        module_name, _, class_name = builtins[short].partition(":")
    else:
        module_name, _, class_name = name.rpartition(".")
    if not module_name or not class_name:
        raise ConfigError("%s: expected a plugin name or a dotted path module.Class, got %r"
                          % (option, name))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an ImportError, or anything the module raises on import
        raise ConfigError("%s: cannot import %s: %s: %s"
                          % (option, module_name, type(exc).__name__, exc)) from None
    plugin = getattr(module, class_name, None)
    if not callable(plugin):
        raise ConfigError("%s: module %s has no class %s" % (option, module_name, class_name))
    return plugin



def build_plugin(name: str, builtins: Mapping[str, str], option: str, source_option: str,
                 source: Optional[str]) -> Any:
    """The plugin ``name`` built as ``cls(source)``.

    Raises :class:`ConfigError` naming ``option`` when the class cannot be
    loaded or its constructor fails (websockify's plugins may even
    ``sys.exit()``); a ConfigError the constructor raises passes as it is.
    """
    plugin_class = load_plugin(name, builtins, option)
    try:
        return plugin_class(source)
    except ConfigError:
        raise
    except (Exception, SystemExit) as exc:
        raise ConfigError("%s: %s refused --%s: %s: %s"
                          % (option, name, source_option, type(exc).__name__, exc)) from None


class PluginBusy(Exception):
    """:data:`MAX_STUCK` calls are still running past their deadline; ``running`` says how many."""

    def __init__(self, running: int) -> None:
        super().__init__(running)
        self.running = running


class PluginTimeout(Exception):
    """The call gave no answer within the deadline (it may still be running)."""


class PluginRunner:
    """Calls into ``plugin``, each bounded by ``timeout`` seconds unless the plugin is ``bounded``.

    A built-in plugin (``bounded = True``) bounds its own calls and is
    called directly.  Any other plugin's call runs on a helper thread named
    ``thread_name``; a call that has not answered within ``timeout`` is
    given up on (the thread cannot be stopped), and while :data:`MAX_STUCK`
    such calls are still running a new one is refused at once, so a hung
    plugin cannot pile up threads.
    """

    def __init__(self, plugin: Any, thread_name: str, timeout: float) -> None:
        self.plugin = plugin
        self.thread_name = thread_name
        self.timeout = timeout
        self.bounded = bool(getattr(plugin, "bounded", False))
        self._lock = threading.Lock()
        self._running = 0

    @property
    def running(self) -> int:
        """Calls on helper threads that have not returned yet."""
        with self._lock:
            return self._running

    def run(self, call: Callable[[], Any]) -> Any:
        """``call()``'s result, or what it raised.

        Raises :class:`PluginBusy` when too many calls are stuck and
        :class:`PluginTimeout` when this one gave no answer in time.
        """
        if self.bounded:
            return call()
        with self._lock:
            if self._running >= MAX_STUCK:
                raise PluginBusy(self._running)
            self._running += 1
        outcome: List[Any] = []
        finished = threading.Event()

        def run() -> None:
            try:
                outcome.append((True, call()))
            except BaseException as exc:  # handed to the caller's thread
                outcome.append((False, exc))
            finally:
                with self._lock:
                    self._running -= 1
                finished.set()

        threading.Thread(target=run, name=self.thread_name, daemon=True).start()
        if not finished.wait(self.timeout):
            raise PluginTimeout()
        returned, value = outcome[0]
        if not returned:
            raise value
        return value
