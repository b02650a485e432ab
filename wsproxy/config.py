"""Options as text: the option table, config files, and printing a configuration.

:data:`OPTIONS` describes every option once: its command-line flags, the
:class:`Settings` field it sets, how its text is read and written, its help
and the group it is listed under.  The command line builds its parser from
this table; :func:`read_config_file` reads a ``-c FILE`` with it and
:func:`format_config` writes a :class:`Settings` back as a file that
:func:`read_config_file` loads to the same values (``--print-config``).

A config file is INI (``configparser``) with one section, ``[wsproxy]``::

    [wsproxy]
    listen = 8080
    target = localhost:5900
    handshake-timeout = 5
    origin = https://example.com
        https://www.example.com

Keys are the long option names (``-`` or ``_``), plus ``listen`` and
``target`` for the two positional arguments.  Lists take several lines or a
comma/space separated list; booleans take true/false, yes/no, on/off, 1/0;
an empty value leaves an option unset.  Comments are whole lines starting
with ``#`` or ``;``.  Relative paths are relative to the file's directory.

Everything here is pure text handling: no sockets, and the only file read is
the config file in :func:`read_config_file`.
"""

import configparser
import dataclasses
import difflib
import ipaddress
import math
import os
import re
import shlex
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from .settings import ConfigError, Settings
from .targets import parse_host_port, parse_target

#: The one section a config file holds.
SECTION = "wsproxy"

#: Keys for the two positional arguments.
LISTEN_KEY = "listen"
TARGET_KEY = "target"

#: The groups options are listed under, in order (``--help``, the example file).
GROUPS = (
    "Listening",
    "Target",
    "Tokens",
    "TLS",
    "Seed features",
    "Web and access control",
    "Limits and timeouts",
    "Compression",
    "Logging and process",
)

#: ``--ssl-version`` values (the minimum TLS version accepted from clients).
TLS_VERSIONS = ("tlsv1_1", "tlsv1_2", "tlsv1_3")

#: Settings fields set by the positional arguments rather than by an option.
POSITIONAL_FIELDS = ("listen_host", "listen_port", "target_host", "target_port")

_TRUE_WORDS = ("1", "yes", "true", "on")
_FALSE_WORDS = ("0", "no", "false", "off")


class Option(NamedTuple):
    """One command-line option and the :class:`Settings` field it sets.

    ``flags`` are its spellings (the first long one is its config key and
    the name error messages use); ``kind`` names an entry of :data:`KINDS`;
    ``negates`` marks a flag that sets a boolean field to False (``-D``).
    """

    flags: Tuple[str, ...]
    field: str
    kind: str
    metavar: Optional[str]
    help: str
    group: str
    negates: bool = False

    @property
    def key(self) -> str:
        """The config-file key and the name used in messages (``handshake-timeout``)."""
        return next(flag[2:] for flag in self.flags if flag.startswith("--"))


# -- reading and writing each kind of value -----------------------------------------
#
# A reader takes the stripped text and the directory relative paths start
# from, and returns the field's value or raises ValueError("expected ...").


def _read_text(text: str, base_dir: str) -> str:
    return text


def _read_path(text: str, base_dir: str) -> str:
    return os.path.abspath(os.path.join(base_dir, os.path.expanduser(text)))


def _read_token_source(text: str, base_dir: str) -> str:
    """A token file or directory (made absolute), or an http(s):// service URL as given."""
    if text.lower().startswith(("http://", "https://")):
        return text
    return _read_path(text, base_dir)


#: The built-in token plugins whose ``--token-source`` is a path (made absolute like
#: any path option); any other plugin gets the text as given, as websockify passes it.
PATH_TOKEN_PLUGINS = ("TokenFile", "ReadOnlyTokenFile", "TokenFileName",
                      "UnixDomainSocketDirectory", "JWTTokenApi")


def token_source_for(text: str, base_dir: str, token_plugin: Optional[str]) -> Optional[str]:
    """The ``token_source`` value for ``text``, given the ``token_plugin`` in effect.

    Without a plugin: wsproxy's own FILE|DIR|URL.  With one: a path made
    absolute for the built-ins that read files, else the plugin's argument
    as given (TokenRedis's ``host:port``, an API URL, a custom plugin's text).
    """
    text = text.strip()
    if not text:
        return None
    if not token_plugin:
        return _read_token_source(text, base_dir or os.getcwd())
    name = token_plugin.strip()
    if name.startswith("websockify.token_plugins."):
        name = name.rpartition(".")[2]
    if name in PATH_TOKEN_PLUGINS:
        return _read_path(text, base_dir or os.getcwd())
    return text


def _integer_range(text: str, low: int, high: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ValueError("expected %s, got %r" % (what, text))
    return value


def _read_http_path(text: str, base_dir: str) -> str:
    if not text.startswith("/") or any(ord(char) <= 32 for char in text):
        raise ValueError("expected a URL path starting with /, got %r" % text)
    return text


#: ``--wrap-mode`` values: what to do when the wrapped program exits.
WRAP_MODES = ("exit", "ignore", "respawn")


def _read_wrap_mode(text: str, base_dir: str) -> str:
    if text.lower() not in WRAP_MODES:
        raise ValueError("expected one of %s, got %r" % (", ".join(WRAP_MODES), text))
    return text.lower()


def _read_command(text: str, base_dir: str) -> List[str]:
    """A command line in shell quoting (``prog --port {port}``) -> its words."""
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise ValueError("expected a command line in shell quoting: %s" % exc) from None


def _read_tls_version(text: str, base_dir: str) -> str:
    if text.lower() not in TLS_VERSIONS:
        raise ValueError("expected one of %s, got %r" % (", ".join(TLS_VERSIONS), text))
    return text.lower()


#: ``--target-proxy-protocol`` values: the PROXY protocol version sent to the target.
TARGET_PROXY_PROTOCOL_VERSIONS = ("v1", "v2")


def _read_proxy_protocol_version(text: str, base_dir: str) -> str:
    word = text.lower()
    if word in ("1", "2"):
        word = "v" + word
    if word not in TARGET_PROXY_PROTOCOL_VERSIONS:
        raise ValueError("expected v1 or v2, got %r" % text)
    return word


def read_bool(text: str) -> bool:
    """``yes``/``no``, ``true``/``false``, ``on``/``off``, ``1``/``0`` (any case)."""
    word = text.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ValueError("expected yes/no, true/false, on/off or 1/0, got %r" % text)


def _integer(text: str, minimum: int, what: str) -> int:
    try:
        number = int(text, 10)
    except ValueError:
        number = None
    if number is None or number < minimum:
        raise ValueError("expected %s, got %r" % (what, text))
    return number


def _seconds(text: str, positive: bool) -> float:
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise ValueError("expected a number of seconds %s, got %r"
                         % ("greater than 0" if positive else "(0 = off)", text))
    return number


def _read_mode(text: str, base_dir: str) -> int:
    digits = text[2:] if text.lower().startswith("0o") else text
    if not digits or any(char not in "01234567" for char in digits) or int(digits, 8) > 0o777:
        raise ValueError("expected an octal file mode such as 0600, got %r" % text)
    return int(digits, 8)


def _read_workers(text: str, base_dir: str) -> int:
    if text.lower() == "auto":
        try:
            return len(os.sched_getaffinity(0))  # the CPUs this process may use
        except (AttributeError, OSError):
            return os.cpu_count() or 1
    return _integer(text, 1, "a number of workers (1 or more) or auto")


def _read_syslog(text: str, base_dir: str) -> Optional[str]:
    """``yes`` = the local syslog (stored as ""), ``no`` = off, else an address."""
    word = text.lower()
    if word in _TRUE_WORDS:
        return ""
    if word in _FALSE_WORDS:
        return None
    parse_syslog_address(text)
    return text


def parse_syslog_address(text: str) -> Any:
    """A ``--syslog`` address: a Unix socket path, or ``(host, port)`` for UDP.

    ``/path`` is a socket path; ``host:port``, ``[v6]:port`` and a bare
    ``host`` (port 514) are UDP.  Raises ValueError saying what was expected.
    """
    if text.startswith("/"):
        return text
    if not text or any(char.isspace() for char in text):
        raise ValueError("expected /PATH, HOST or HOST:PORT, got %r" % text)
    if text.startswith("[") or text.count(":") == 1:
        host, port = parse_host_port(text)
        if port == 0:
            raise ValueError("expected a syslog port 1-65535, got %r" % text)
        return host, port
    if ":" in text:
        raise ValueError("write an IPv6 syslog address as [ADDRESS]:PORT, got %r" % text)
    if text.isdigit():
        # Most likely the LISTEN argument taken by a bare --syslog before it.
        raise ValueError("expected /PATH, HOST or HOST:PORT, got %r (without an address, "
                         "put --syslog after the positional arguments)" % text)
    return text, 514


def _read_ip_address(text: str, base_dir: str) -> str:
    try:
        if "/" in text:
            return str(ipaddress.ip_network(text, strict=False))
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError("expected an IP address or network (10.0.0.0/8), got %r" % text) from None


def _format_text(value: Any) -> str:
    return "" if value is None else str(value)


def _format_bool(value: bool) -> str:
    return "yes" if value else "no"


def format_number(value: float) -> str:
    """``10`` for 10.0, ``0.25`` for 0.25: the shortest text that reads back equal."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _format_syslog(value: Optional[str]) -> str:
    return "" if value is None else (value or "yes")


class Kind(NamedTuple):
    """How one kind of option is read from text and written back.

    ``read(text, base_dir)`` returns the value (raises ValueError); a
    ``many`` kind holds a list, each item read by ``read``.
    """

    read: Callable[[str, str], Any]
    write: Callable[[Any], str]
    many: bool = False


KINDS: Dict[str, Kind] = {
    "text": Kind(_read_text, _format_text),
    "path": Kind(_read_path, _format_text),
    "token-source": Kind(_read_token_source, _format_text),
    "compress-level": Kind(lambda text, base_dir: _integer_range(text, 0, 9, "a zlib level 0-9"), str),
    "window-bits": Kind(lambda text, base_dir: _integer_range(text, 9, 15, "window bits 9-15"), str),
    "http-path": Kind(_read_http_path, _format_text),
    "tls-version": Kind(_read_tls_version, _format_text),
    "proxy-protocol-version": Kind(_read_proxy_protocol_version, _format_text),
    "bool": Kind(lambda text, base_dir: read_bool(text), _format_bool),
    "count": Kind(lambda text, base_dir: _integer(text, 0, "a whole number (0 = no limit)"), str),
    "size": Kind(lambda text, base_dir: _integer(text, 1, "a number of bytes (1 or more)"), str),
    "seconds": Kind(lambda text, base_dir: _seconds(text, positive=False), format_number),
    "positive-seconds": Kind(lambda text, base_dir: _seconds(text, positive=True), format_number),
    "mode": Kind(_read_mode, lambda value: "%04o" % value),
    "workers": Kind(_read_workers, str),
    "syslog": Kind(_read_syslog, _format_syslog),
    "text-list": Kind(_read_text, lambda values: ", ".join(values), many=True),
    "address-list": Kind(_read_ip_address, lambda values: ", ".join(values), many=True),
    "wrap-mode": Kind(_read_wrap_mode, _format_text),
    "command": Kind(_read_command, lambda words: " ".join(shlex.quote(word) for word in words)),
    "path-or-dash": Kind(lambda text, base_dir: text if text == "-" else _read_path(text, base_dir),
                         _format_text),
}


# -- the table ----------------------------------------------------------------------

_L, _T, _K, _S, _F, _W, _M, _C, _P = GROUPS

OPTIONS: Tuple[Option, ...] = (
    # Listening (the LISTEN positional is the ``listen`` key)
    Option(("--unix-listen",), "unix_listen", "path", "PATH",
           "listen on a Unix socket at PATH instead of TCP (then give only TARGET)", _L),
    Option(("--unix-listen-mode",), "unix_listen_mode", "mode", "MODE",
           "file mode of the --unix-listen socket, octal", _L),
    Option(("--proxy-protocol",), "proxy_protocol", "bool", None,
           "expect a PROXY protocol v1/v2 header first on every connection, "
           "from a --trusted-proxy only (HAProxy send-proxy)", _L),
    Option(("--inetd",), "inetd", "bool", None,
           "the listening socket is standard input (inetd wait mode); give only TARGET", _L),
    # Target (the TARGET positional is the ``target`` key)
    Option(("--unix-target",), "unix_target", "path", "PATH",
           "relay to a Unix socket instead of TARGET_HOST:TARGET_PORT", _T),
    Option(("--ssl-target",), "ssl_target", "bool", None, "connect to the target with TLS", _T),
    Option(("--target-cafile",), "target_cafile", "path", "FILE",
           "CA bundle that verifies a TLS target (default: the system's)", _T),
    Option(("--target-insecure",), "target_insecure", "bool", None,
           "do not verify a TLS target's certificate (unsafe; logged as a warning)", _T),
    Option(("--target-proxy-protocol",), "target_proxy_protocol", "proxy-protocol-version",
           "VERSION", "send the target a PROXY protocol header (v1 or v2) naming the client "
           "first (before TLS with --ssl-target)", _T),
    # Tokens
    Option(("--token-source", "--target-config"), "token_source", "token-source", "SOURCE",
           "choose the target by ?token=NAME from 'NAME: host:port' lines in a FILE, "
           "in every file of a DIR, or from an http(s):// token service", _K),
    Option(("--host-token",), "host_token", "bool", None,
           "take the token from the Host header (its host name) instead of ?token=", _K),
    Option(("--token-plugin",), "token_plugin", "text", "NAME",
           "look tokens up with a websockify token plugin: TokenFile, ReadOnlyTokenFile, "
           "TokenFileName, BaseTokenAPI, JSONTokenApi, JWTTokenApi, TokenRedis, "
           "UnixDomainSocketDirectory, or a dotted path module.Class; --token-source is "
           "then its argument, as websockify reads it", _K),
    # TLS
    Option(("--cert",), "cert", "path", "FILE", "TLS certificate (PEM; may hold the key too)", _S),
    Option(("--key",), "key", "path", "FILE", "TLS private key (PEM), if not in --cert", _S),
    Option(("--ssl-only",), "ssl_only", "bool", None, "refuse plain (non-TLS) connections", _S),
    Option(("--ssl-ciphers",), "ssl_ciphers", "text", "LIST",
           "OpenSSL cipher list for TLS 1.2 and older", _S),
    Option(("--ssl-version",), "ssl_version", "tls-version", "VERSION",
           "minimum TLS version: " + ", ".join(TLS_VERSIONS), _S),
    Option(("--verify-client",), "verify_client", "bool", None,
           "require a TLS client certificate signed by --cafile", _S),
    Option(("--cafile",), "cafile", "path", "FILE", "CA bundle for --verify-client", _S),
    # Seed features
    Option(("--flash-policy",), "flash_policy", "bool", None,
           "answer Flash socket policy requests on the same port", _F),
    Option(("--flash-policy-domain",), "flash_policy_domain", "text", "DOMAIN",
           "domain the Flash policy allows", _F),
    Option(("--flash-policy-ports",), "flash_policy_ports", "text", "PORTS",
           "ports the Flash policy allows", _F),
    Option(("--record",), "record", "path", "FILE", "record each session to FILE.N", _F),
    # Web and access control
    Option(("--web",), "web", "path", "DIR",
           "serve plain HTTP GET/HEAD requests from files in DIR", _W),
    Option(("--web-listing",), "web_listing", "bool", None,
           "list directories without an index.html under --web", _W),
    Option(("--origin",), "origin", "text-list", "ORIGIN",
           "allowed Origin (repeatable); other origins get 403", _W),
    Option(("--auth-file",), "auth_file", "path", "FILE",
           "require HTTP Basic authentication against FILE (python3 -m wsproxy.passwd)", _W),
    Option(("--auth-plugin",), "auth_plugin", "text", "NAME",
           "check each WebSocket request with a websockify auth plugin: BasicHTTPAuth, "
           "ExpectOrigin, ClientCertCNAuth, or a dotted path module.Class", _W),
    Option(("--auth-source",), "auth_source", "text", "ARG",
           "the --auth-plugin's argument (BasicHTTPAuth: USER:PASSWORD; ExpectOrigin: "
           "origins; ClientCertCNAuth: common names)", _W),
    Option(("--web-auth",), "web_auth", "bool", None,
           "with --auth-file or --auth-plugin, authenticate plain HTTP requests too "
           "(--web files, --status)", _W),
    Option(("--trusted-proxy",), "trusted_proxy", "address-list", "ADDR",
           "a reverse proxy's IP address or network whose X-Forwarded-For "
           "is believed (repeatable)", _W),
    Option(("--status",), "status", "http-path", "PATH",
           "answer a GET of PATH with JSON counters (uptime, sessions, bytes)", _W),
    Option(("--metrics",), "metrics", "http-path", "PATH",
           "answer a GET of PATH with Prometheus metrics (text format 0.0.4)", _W),
    Option(("--metrics-allow",), "metrics_allow", "address-list", "NET",
           "an address or network allowed to read --metrics (repeatable; none = anyone)", _W),
    # Limits and timeouts
    Option(("--handshake-timeout",), "handshake_timeout", "positive-seconds", "S",
           "seconds allowed for the TLS and HTTP handshakes", _M),
    Option(("--session-timeout",), "session_timeout", "seconds", "S",
           "close a session with no traffic either way for S seconds (0 = off)", _M),
    Option(("--heartbeat",), "heartbeat", "seconds", "S",
           "ping each client every S seconds; close it when it stops answering (0 = off)", _M),
    Option(("--max-connections",), "max_connections", "count", "N",
           "open sessions allowed; more get 503 (0 = no limit)", _M),
    Option(("--max-connections-per-ip",), "max_connections_per_ip", "count", "N",
           "open sessions allowed per client address; more get 503 (0 = no limit)", _M),
    Option(("--write-timeout",), "write_timeout", "seconds", "S",
           "end a session whose client or target has accepted no byte for S seconds "
           "(0 = never)", _M),
    Option(("--max-header-size",), "max_header_size", "size", "BYTES",
           "largest request header block", _M),
    Option(("--max-message-size",), "max_message_size", "size", "BYTES",
           "largest message held in memory", _M),
    Option(("--timeout",), "timeout", "seconds", "S",
           "stop accepting S seconds after start and exit once no session is open (0 = off)", _M),
    Option(("--idle-timeout",), "idle_timeout", "seconds", "S",
           "exit after S seconds with no session open (0 = off)", _M),
    # Compression
    Option(("--compress",), "compress", "bool", None,
           "offer RFC 7692 permessage-deflate to clients that ask for it", _C),
    Option(("--compress-level",), "compress_level", "compress-level", "N",
           "zlib compression level 0-9 for --compress", _C),
    Option(("--compress-window-bits",), "compress_window_bits", "window-bits", "BITS",
           "largest LZ77 window (9-15) wsproxy compresses with; smaller saves memory", _C),
    # Logging and process
    Option(("-f", "--foreground"), "foreground", "bool", None,
           "stay in the foreground (default: run as a daemon)", _P),
    Option(("-D", "--daemon"), "foreground", "bool", None,
           "run as a daemon (the default; websockify's spelling)", _P, negates=True),
    Option(("--pid-file",), "pid_file", "path", "FILE", "write the process id to FILE", _P),
    Option(("-v", "--verbose"), "verbose", "bool", None, "log more (debug level)", _P),
    Option(("-q", "--quiet"), "quiet", "bool", None, "log warnings and errors only", _P),
    Option(("--log-file",), "log_file", "path", "FILE",
           "log to FILE instead of standard error (reopened on SIGHUP)", _P),
    Option(("--syslog",), "syslog", "syslog", "ADDRESS",
           "log to syslog: /dev/log (or localhost:514) without ADDRESS, "
           "else a socket /PATH or a UDP HOST[:PORT]", _P),
    Option(("--workers",), "workers", "workers", "N",
           "worker processes sharing the listening socket, or auto (one per CPU)", _P),
    # websockify's options (wsproxy-websockify sets them; the main command takes them too)
    Option(("--prefer-ipv6",), "prefer_ipv6", "bool", None,
           "listen on IPv6 when LISTEN_HOST is a name with both kinds of address "
           "(and on :: when there is no LISTEN_HOST)", _L),
    Option(("--close-unreachable",), "close_unreachable", "bool", None,
           "when the target cannot be reached, accept the WebSocket and close it "
           "with 1011 and a reason (websockify's way) instead of answering 502", _T),
    Option(("--wrap-command",), "wrap_command", "command", "COMMAND",
           "run COMMAND (after -- on the command line) on a free loopback port, "
           "given as {port} in its arguments and $WSPROXY_WRAP_PORT, and relay to it", _T),
    Option(("--wrap-mode",), "wrap_mode", "wrap-mode", "MODE",
           "when the wrapped command exits: " + ", ".join(WRAP_MODES), _T),
    Option(("--key-password",), "key_password", "text", "PASSWORD",
           "password of an encrypted --key (never logged)", _S),
    Option(("--run-once",), "run_once", "bool", None,
           "handle a single WebSocket session, then exit", _M),
    Option(("--traffic",), "traffic", "bool", None,
           "log one line per chunk relayed (websockify's --traffic)", _P),
    Option(("--legacy-syslog",), "legacy_syslog", "bool", None,
           "accepted for websockify; wsproxy's syslog lines are always the "
           "traditional (RFC 3164) kind", _P),
    Option(("--audit-log",), "audit_log", "path-or-dash", "FILE",
           "append one JSON line per session start, end and refused handshake to FILE "
           "(- = standard output; reopened on SIGHUP)", _P),
    Option(("--audit-hash-tokens",), "audit_hash_tokens", "bool", None,
           "write the SHA-256 of each token to the audit log instead of the token", _P),
    Option(("--user",), "user", "text", "NAME",
           "after binding and reading the certificate, run as this user (and its group)", _P),
    Option(("--group",), "group", "text", "NAME",
           "after binding, run as this group (default: --user's own group)", _P),
)

#: The option that sets each field (not counting negating flags such as -D).
OPTION_FOR_FIELD: Dict[str, Option] = {
    option.field: option for option in OPTIONS if not option.negates}


def _config_keys() -> Dict[str, Tuple[Optional[Option], bool]]:
    """Every accepted key -> (option, inverted); option None for a positional."""
    keys: Dict[str, Tuple[Optional[Option], bool]] = {LISTEN_KEY: (None, False),
                                                      TARGET_KEY: (None, False)}
    for option in OPTIONS:
        for flag in option.flags:
            if flag.startswith("--"):
                keys[flag[2:]] = (option, option.negates)
                if option.kind == "bool" and not option.negates:
                    keys["no-" + flag[2:]] = (option, True)
    for option in OPTION_FOR_FIELD.values():
        keys.setdefault(option.field.replace("_", "-"), (option, False))
    return keys


CONFIG_KEYS = _config_keys()


# -- values from text ---------------------------------------------------------------


def _field_default(field_name: str) -> Any:
    for field in dataclasses.fields(Settings):
        if field.name == field_name:
            if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                return field.default_factory()  # type: ignore[misc]
            return field.default
    raise KeyError(field_name)


def option_value(option: Option, raw: Any, base_dir: str = "") -> Any:
    """The field value for ``option`` given ``raw`` text (or a list of texts).

    A ``bool`` passes through (argparse already made it one; ``negates`` is
    the caller's business).  An empty text means "unset": None where the
    field's default is None, [] for a list, an error otherwise.  Raises
    :class:`ConfigError` saying what was expected, without the option's
    name (the caller knows where the value came from).
    """
    kind = KINDS[option.kind]
    base_dir = base_dir or os.getcwd()
    try:
        if isinstance(raw, bool):
            value: Any = raw
        elif kind.many:
            texts = raw if isinstance(raw, list) else [raw]
            items = [item for text in texts for item in re.split(r"[\s,]+", text) if item]
            value = [kind.read(item, base_dir) for item in items]
        else:
            text = raw.strip()
            if not text:
                if _field_default(option.field) in (None, []):
                    return _field_default(option.field)
                raise ValueError("expected a value, got nothing")
            value = kind.read(text, base_dir)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return value


def listen_values(text: str) -> Dict[str, Any]:
    """``[HOST:]PORT`` -> ``listen_host``/``listen_port``; ConfigError if malformed."""
    try:
        host, port = parse_host_port(text, default_host="")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return {"listen_host": host, "listen_port": port}


def target_values(text: str, base_dir: str = "") -> Dict[str, Any]:
    """``HOST:PORT`` or ``unix:/PATH`` -> the target fields; ConfigError if malformed."""
    try:
        target = parse_target(text)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if target.unix is not None:
        return {"unix_target": _read_path(target.unix, base_dir or os.getcwd())}
    return {"target_host": target.host, "target_port": target.port}


def parse_config(text: str, source: str = "<config>", base_dir: str = "") -> Dict[str, Any]:
    """Read config-file ``text`` into Settings field values (only the keys it sets).

    ``source`` names the file in messages; relative paths start from
    ``base_dir``.  Raises :class:`ConfigError` with a one-line message
    ``SOURCE:LINE: what was wrong`` (or ``SOURCE: ...`` without a line).
    """
    # No interpolation ("%" is literal); a blank line ends a multi-line value;
    # [DEFAULT] gets no special meaning (it is just an unknown section).
    parser = configparser.ConfigParser(interpolation=None, strict=True,
                                       empty_lines_in_values=False,
                                       default_section="\0none")
    try:
        parser.read_string(text, source=source)
    except configparser.Error as exc:
        raise ConfigError(_describe_parse_error(exc, source, text)) from None
    sections = parser.sections()
    if SECTION not in sections:
        raise ConfigError("%s: no [%s] section" % (source, SECTION))
    for name in sections:
        if name != SECTION:
            raise ConfigError("%s:%s: unknown section [%s]; expected only [%s]"
                              % (source, _line_of(text, r"\[" + re.escape(name) + r"\]"),
                                 name, SECTION))
    values: Dict[str, Any] = {}
    set_by: Dict[str, str] = {}
    raw_token_source = ""
    for raw_key, raw_value in parser.items(SECTION, raw=True):
        key = raw_key.replace("_", "-")
        where = "%s:%s" % (source, _line_of(text, re.escape(raw_key)))
        if key not in CONFIG_KEYS:
            raise ConfigError("%s: unknown key %r; %s" % (where, raw_key, _suggest(key)))
        option, inverted = CONFIG_KEYS[key]
        field_key = option.field if option is not None else key
        if field_key in set_by:
            raise ConfigError("%s: %r sets the same option as %r; give it once"
                              % (where, raw_key, set_by[field_key]))
        set_by[field_key] = raw_key
        try:
            if option is None:
                if raw_value.strip():
                    values.update(listen_values(raw_value) if key == LISTEN_KEY
                                  else target_values(raw_value, base_dir))
                continue
            value = option_value(option, raw_value, base_dir)
            if inverted:
                value = not value
        except ConfigError as exc:
            raise ConfigError("%s: %s: %s" % (where, raw_key, exc)) from None
        values[option.field] = value
        if option.field == "token_source":
            raw_token_source = raw_value
    if "token_source" in values and values.get("token_plugin"):
        # A plugin's argument is read as that plugin reads it.
        values["token_source"] = token_source_for(raw_token_source, base_dir,
                                                  values["token_plugin"])
    return values


def read_config_file(path: str) -> Dict[str, Any]:
    """Read the config file at ``path``: Settings field values, see :func:`parse_config`.

    Raises :class:`ConfigError` naming the file when it is missing,
    unreadable, not UTF-8 or malformed.
    """
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except OSError as exc:
        raise ConfigError("%s: cannot read the config file: %s"
                          % (path, exc.strerror or exc)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError("%s:%d: not UTF-8 text" % (path, line)) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return parse_config(text, source=path, base_dir=os.path.dirname(os.path.abspath(path)))


def _describe_parse_error(exc: configparser.Error, source: str, text: str) -> str:
    """One line for a configparser error (whose own text may span lines)."""
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return "%s:%d: expected a [%s] section header before %r" % (
            source, exc.lineno, SECTION, exc.line.strip())
    if isinstance(exc, configparser.DuplicateOptionError):
        option = CONFIG_KEYS.get(exc.option.replace("_", "-"), (None, False))[0]
        hint = ""
        if option is not None and KINDS[option.kind].many:
            hint = "; for several values give one key with several lines or a comma list"
        return "%s:%d: key %r given twice%s" % (source, exc.lineno, exc.option, hint)
    if isinstance(exc, configparser.DuplicateSectionError):
        return "%s:%d: section [%s] given twice" % (source, exc.lineno, exc.section)
    if isinstance(exc, configparser.ParsingError) and exc.errors:
        lineno = exc.errors[0][0]
        lines = text.splitlines()
        line = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""
        return "%s:%d: expected 'key = value', got %r" % (source, lineno, line)
    return "%s: %s" % (source, " ".join(str(exc).split()))


def _line_of(text: str, key_pattern: str) -> str:
    """The number of the first line where ``key_pattern`` starts an entry, or "?"."""
    pattern = re.compile(r"^[ \t]*" + key_pattern + r"[ \t]*(?:[=:]|$)", re.IGNORECASE)
    for number, line in enumerate(text.splitlines(), 1):
        if pattern.match(line):
            return str(number)
    return "?"


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, list(CONFIG_KEYS), n=1)
    if close:
        return "did you mean %r?" % close[0]
    return "expected a long option name (see wsproxy --help) or listen/target"


# -- text from values ---------------------------------------------------------------


def format_value(option: Option, value: Any) -> str:
    """The config-file text for ``value`` of ``option`` (reads back equal)."""
    return KINDS[option.kind].write(value)


def format_listen(settings: Settings) -> str:
    """The LISTEN positional for ``settings`` (``8080``, ``127.0.0.1:8080``, ``[::]:8080``)."""
    host = settings.listen_host
    if not host:
        return str(settings.listen_port)
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, settings.listen_port)


def format_target(settings: Settings) -> str:
    """The TARGET positional for ``settings``, or "" when there is none."""
    if settings.target_host is None or not settings.target_port:
        return ""
    host = settings.target_host
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, settings.target_port)


def format_config(settings: Settings) -> str:
    """``settings`` as a config file: every option, grouped, loadable by :func:`parse_config`."""
    lines = ["# wsproxy configuration (wsproxy --print-config); load it with -c FILE.",
             "[%s]" % SECTION]
    for group in GROUPS:
        lines.append("")
        lines.append("# -- %s" % group)
        if group == GROUPS[0]:
            if settings.unix_listen and not settings.listen_host and not settings.listen_port:
                lines.append("%s =" % LISTEN_KEY)
            else:
                lines.append("%s = %s" % (LISTEN_KEY, format_listen(settings)))
        elif group == GROUPS[1]:
            lines.append(("%s = %s" % (TARGET_KEY, format_target(settings))).rstrip())
        for option in OPTION_FOR_FIELD.values():
            if option.group == group:
                text = format_value(option, getattr(settings, option.field))
                lines.append(("%s = %s" % (option.key, text)).rstrip())
    return "\n".join(lines) + "\n"


def fields_without_option() -> List[str]:
    """Settings fields that neither an option nor a positional sets (should be none)."""
    return [field.name for field in dataclasses.fields(Settings)
            if field.name not in OPTION_FOR_FIELD and field.name not in POSITIONAL_FIELDS]
