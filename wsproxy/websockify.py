"""The second front door: websockify 0.13's command line, read into :class:`Settings`.

``wsproxy-websockify`` (or ``python3 -m wsproxy.websockify``) takes every
option and usage form websockify 0.13 takes, with websockify's meaning and
defaults, and runs the same server as ``wsproxy``::

    wsproxy-websockify [options] [SOURCE_ADDR:]SOURCE_PORT TARGET_ADDR:TARGET_PORT
    wsproxy-websockify [options] --token-plugin CLASS [SOURCE_ADDR:]SOURCE_PORT
    wsproxy-websockify [options] --unix-target FILE [SOURCE_ADDR:]SOURCE_PORT
    wsproxy-websockify [options] [SOURCE_ADDR:]SOURCE_PORT -- COMMAND [ARG...]

Where websockify's defaults differ from ``wsproxy``'s, this door uses
websockify's: it stays in the foreground unless ``-D``; ``--web`` lists
directories unless ``--file-only``; ``--cert`` defaults to ``self.pem`` and
TLS is on when that file exists; an unreachable target gets 101 and then
close 1011 with a reason; the start-up log says ``proxying from HOST:PORT
to TARGET``.  Addresses follow websockify's reading: the port is after the
last colon, so IPv6 needs no brackets (``::1:6080``).

Only parsing lives here: the result is a :class:`Settings` handed to
:func:`wsproxy.cli.run`, and nothing below knows which door was used.
"""

import argparse
import logging
import os
import ssl
import sys
from typing import Any, Dict, List, Optional, Tuple

from . import __version__, cli, config
from .server import ProxyServer
from .settings import ConfigError, Settings

logger = logging.getLogger("wsproxy")

PROG = "wsproxy-websockify"

#: websockify's ``--ssl-version`` words; "default" leaves wsproxy's minimum (TLS 1.2).
SSL_VERSIONS = ("default",) + config.TLS_VERSIONS

#: The certificate websockify looks for when ``--cert`` is not given.
DEFAULT_CERT = "self.pem"

#: websockify's checks between options: (option given, option it needs, message).
REQUIRES = (
    ("token_source", "token_plugin", "--token-source needs --token-plugin"),
    ("host_token", "token_plugin", "--host-token needs --token-plugin"),
    ("auth_source", "auth_plugin", "--auth-source needs --auth-plugin"),
    ("web_auth", "auth_plugin", "--web-auth needs --auth-plugin"),
    ("web_auth", "web", "--web-auth needs --web"),
    ("legacy_syslog", "syslog", "--legacy-syslog needs --syslog"),
)

USAGE = """%(prog)s [options] [SOURCE_ADDR:]SOURCE_PORT TARGET_ADDR:TARGET_PORT
       %(prog)s [options] --token-plugin CLASS [SOURCE_ADDR:]SOURCE_PORT
       %(prog)s [options] --unix-target FILE [SOURCE_ADDR:]SOURCE_PORT
       %(prog)s [options] [SOURCE_ADDR:]SOURCE_PORT -- COMMAND [ARG...]"""


def build_parser() -> argparse.ArgumentParser:
    """websockify's options, each stored raw (None = not given) for :func:`settings_from_args`."""
    parser = argparse.ArgumentParser(
        prog=PROG, usage=USAGE,
        description="wsproxy with websockify's command line: the same options, meanings and "
                    "defaults (foreground unless -D; TLS when --cert, default self.pem, exists).")
    add = parser.add_argument
    flag = {"action": "store_true", "default": False}
    add("positionals", nargs="*", metavar="ARG", help=argparse.SUPPRESS)
    add("-v", "--verbose", help="log more (debug level)", **flag)
    add("--traffic", help="log one line per chunk relayed", **flag)
    add("--record", metavar="FILE", help="record each session to FILE.N")
    add("-D", "--daemon", help="run in the background", **flag)
    add("--run-once", help="handle one WebSocket session, then exit", **flag)
    add("--timeout", metavar="SECONDS",
        help="stop accepting after SECONDS, exit once no session is open")
    add("--idle-timeout", metavar="SECONDS", help="exit after SECONDS with no session open")
    add("--cert", default=None, metavar="FILE",
        help="TLS certificate (PEM); TLS is on when it exists (default: %s)" % DEFAULT_CERT)
    add("--key", metavar="FILE", help="TLS private key, if not in --cert")
    add("--key-password", metavar="PASSWORD", help="password of an encrypted --key")
    add("--ssl-only", help="refuse plain connections (needs the certificate)", **flag)
    add("--ssl-target", help="connect to the target with TLS", **flag)
    add("--verify-client", help="require a client certificate signed by --cafile", **flag)
    add("--cafile", metavar="FILE", help="CA bundle for --verify-client")
    add("--ssl-version", choices=SSL_VERSIONS, metavar="VERSION",
        help="minimum TLS version: " + ", ".join(SSL_VERSIONS))
    add("--ssl-ciphers", metavar="LIST", help="OpenSSL cipher list for TLS 1.2 and older")
    add("--unix-listen", metavar="FILE", help="listen on a Unix socket instead of TCP")
    add("--unix-listen-mode", metavar="MODE", help="octal mode of --unix-listen (default 0600)")
    add("--unix-target", metavar="FILE", help="relay to a Unix socket")
    add("--inetd", help="the listening socket is standard input", **flag)
    add("--web", metavar="DIR", help="serve files from DIR on the same port")
    add("--web-auth", help="require authentication for --web files too", **flag)
    add("--wrap-mode", choices=config.WRAP_MODES, metavar="MODE",
        help="when the wrapped command exits: exit (default), ignore, respawn")
    add("--prefer-ipv6", help="prefer IPv6 for SOURCE_ADDR (also -6)", **flag)
    add("--libserver", help="accepted; wsproxy has a single server engine", **flag)
    add("--target-config", metavar="FILE",
        help="'token: host:port' lines in FILE or a directory (as --token-plugin TokenFile)")
    add("--token-plugin", metavar="CLASS", help="token plugin: a built-in name or a dotted path")
    add("--token-source", metavar="ARG", help="the argument given to the token plugin")
    add("--host-token", help="take the token from the Host header", **flag)
    add("--auth-plugin", metavar="CLASS", help="auth plugin: a built-in name or a dotted path")
    add("--auth-source", metavar="ARG", help="the argument given to the auth plugin")
    add("--heartbeat", metavar="SECONDS", help="ping each client every SECONDS")
    add("--log-file", metavar="FILE", help="log to FILE")
    add("--syslog", metavar="SERVER", help="log to syslog: a socket path or a UDP host:port")
    add("--legacy-syslog", help="accepted; syslog lines are always the traditional kind", **flag)
    add("--file-only", help="do not list directories under --web", **flag)
    add("--print-config", help="print the equivalent wsproxy config file and exit", **flag)
    add("--version", action="version", version="wsproxy " + __version__)
    return parser


def parse_command_line(argv: Optional[List[str]] = None) -> Tuple[Settings, List[str], bool]:
    """Read websockify's ``argv`` into ``(Settings, notes, print_config)``.

    ``notes`` are lines to log once logging is set up (options accepted
    but without effect).  Raises :class:`ConfigError` with a one-line
    message naming the option; argparse exits 2 on malformed syntax.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    before, command = cli.split_wrap_command(argv)
    wrapping = len(before) < len(argv)
    # "-6" as an option would make argparse take every negative number
    # for an option; websockify's short spelling is translated instead.
    before = ["--prefer-ipv6" if word == "-6" else word for word in before]
    args = build_parser().parse_intermixed_args(before)
    notes: List[str] = []
    values = _option_values(args, notes)
    for given, needed, message in REQUIRES:
        if values.get(given) and not values.get(needed):
            raise ConfigError(message)
    positionals = list(args.positionals)
    if wrapping:
        # websockify reads everything after the listen address as the command.
        tcp_listen = not (values.get("unix_listen") or values.get("inetd"))
        if tcp_listen and positionals:
            command = positionals[1:] + command
            positionals = positionals[:1]
        elif tcp_listen and command:
            positionals, command = command[:1], command[1:]
    if command:
        values["wrap_command"] = command
    values.update(_positional_values(positionals, values))
    return Settings(**values), notes, args.print_config


def _option_values(args: argparse.Namespace, notes: List[str]) -> Dict[str, Any]:
    """Settings fields from websockify's options, with websockify's defaults."""
    values: Dict[str, Any] = {
        "foreground": not args.daemon,
        "web_listing": not args.file_only,
        "close_unreachable": True,
        # websockify 0.13 no longer answers Flash policy requests.
        "flash_policy": False,
    }
    for name in ("verbose", "traffic", "run_once", "ssl_only", "ssl_target", "verify_client",
                 "inetd", "web_auth", "prefer_ipv6", "host_token", "legacy_syslog"):
        if getattr(args, name):
            values[name] = True
    for name in ("timeout", "idle_timeout", "heartbeat", "unix_listen_mode", "ssl_ciphers",
                 "key_password", "token_plugin", "auth_plugin", "auth_source", "wrap_mode"):
        raw = getattr(args, name)
        if raw is not None:
            values[name] = _convert(name, raw)
    for name in ("record", "cafile", "unix_listen", "unix_target", "web", "log_file"):
        raw = getattr(args, name)
        if raw:
            values[name] = os.path.abspath(raw)
    if args.ssl_version not in (None, "default"):
        values["ssl_version"] = args.ssl_version
    if args.syslog:
        values["syslog"] = _syslog_address(args.syslog)
    if args.token_source is not None:
        # A plugin's argument as given; a path is made absolute (-D leaves
        # the directory) only when it names something that exists.
        source = args.token_source
        values["token_source"] = os.path.abspath(source) if os.path.exists(source) else source
    if args.target_config:
        values["token_plugin"] = "TokenFile"
        values["token_source"] = os.path.abspath(args.target_config)
    values.update(_tls_values(args, notes))
    if args.libserver:
        notes.append("--libserver: ignored; wsproxy has a single server engine")
    return values


def _convert(field: str, raw: str) -> Any:
    option = config.OPTION_FOR_FIELD[field]
    try:
        return config.option_value(option, raw)
    except ConfigError as exc:
        raise ConfigError("--%s: %s" % (field.replace("_", "-"), exc)) from None


def _tls_values(args: argparse.Namespace, notes: List[str]) -> Dict[str, Any]:
    """``--cert`` (default self.pem): TLS when the file exists, as in websockify."""
    cert = os.path.abspath(args.cert or DEFAULT_CERT)
    if not os.path.isfile(cert):
        if args.ssl_only:
            raise ConfigError("--ssl-only: no certificate: %s not found (--cert)" % cert)
        if args.cert:
            notes.append("no TLS: the certificate %s does not exist" % cert)
        return {}
    values = {"cert": cert}
    if args.key:
        values["key"] = os.path.abspath(args.key)
    if args.verify_client and not args.cafile:
        # websockify checks client certificates against the system's CAs then.
        paths = ssl.get_default_verify_paths()
        bundle = next((path for path in (paths.cafile, paths.openssl_cafile)
                       if path and os.path.isfile(path)), None)
        if bundle is None:
            raise ConfigError("--verify-client: give --cafile (no system CA bundle found)")
        values["cafile"] = bundle
    return values


def _syslog_address(text: str) -> str:
    """websockify's ``--syslog``: ``host:port`` (port after the last colon) or a socket path."""
    if ":" not in text:
        return os.path.abspath(text)
    host, port = text.rsplit(":", 1)
    host = host.strip("[]")
    return ("[%s]:%s" if ":" in host else "%s:%s") % (host, port)


def split_address(text: str, what: str) -> Tuple[str, int]:
    """websockify's ``[host:]port``: the port follows the last colon; brackets are optional.

    ``"6080"`` -> ``("", 6080)``; ``"::1:6080"`` and ``"[::1]:6080"`` ->
    ``("::1", 6080)``.  Raises :class:`ConfigError` naming ``what``.
    """
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        number = int(port, 10)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise ConfigError("%s: expected [HOST:]PORT with a port 0-65535, got %r" % (what, text))
    return host, number


def _positional_values(positionals: List[str], values: Dict[str, Any]) -> Dict[str, Any]:
    found: Dict[str, Any] = {}
    if not (values.get("unix_listen") or values.get("inetd")):
        if not positionals:
            raise ConfigError("missing [SOURCE_ADDR:]SOURCE_PORT")
        found["listen_host"], found["listen_port"] = split_address(
            positionals.pop(0), "source")
    if not (values.get("wrap_command") or values.get("unix_target") or values.get("token_plugin")):
        if not positionals:
            raise ConfigError("missing TARGET_ADDR:TARGET_PORT (or --token-plugin, "
                              "--unix-target, or -- COMMAND)")
        text = positionals.pop(0)
        if ":" not in text:
            raise ConfigError("target: expected TARGET_ADDR:TARGET_PORT, got %r" % text)
        host, port = split_address(text, "target")
        if not host or not port:
            raise ConfigError("target: expected TARGET_ADDR:TARGET_PORT, got %r" % text)
        found["target_host"], found["target_port"] = host, port
    if positionals:
        raise ConfigError("too many arguments: %s" % " ".join(positionals))
    return found


# -- the start-up lines ----------------------------------------------------------------


def announcer(notes: List[str]):
    """The start-up lines of this door: notes, then ``proxying from SOURCE to TARGET``."""

    def announce(settings: Settings, server: ProxyServer) -> None:
        for note in notes:
            logger.info("%s", note)
        tls = "TLS and plain" if settings.cert else "plain only (no certificate)"
        if settings.cert and settings.ssl_only:
            tls = "TLS only"
        logger.info("connections: %s%s%s", tls,
                    "; web root %s%s" % (settings.web, "" if settings.web_listing
                                         else " (no listings)") if settings.web else "",
                    "; recording to %s.*" % settings.record if settings.record else "")
        logger.info("proxying from %s to %s%s", source_text(settings, server),
                    target_text(settings), " over TLS" if settings.ssl_target else "")

    return announce


def source_text(settings: Settings, server: Optional[ProxyServer] = None) -> str:
    """``HOST:PORT`` as websockify writes it (no brackets; empty HOST for every address)."""
    if settings.inetd:
        return "inetd"
    if settings.unix_listen:
        return "unix:%s" % settings.unix_listen
    port = settings.listen_port
    if server is not None and isinstance(server.server_address, tuple):
        port = server.server_address[1]
    return "%s:%d" % (settings.listen_host, port)


def target_text(settings: Settings) -> str:
    if settings.wrap_command:
        return "'%s' (port %s)" % (" ".join(settings.wrap_command), settings.target_port)
    if settings.token_plugin:
        return "targets generated by %s" % settings.token_plugin
    if settings.unix_target:
        return settings.unix_target
    return "%s:%s" % (settings.target_host, settings.target_port)


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``wsproxy-websockify``; returns the exit status (2 for a bad command line)."""
    try:
        try:
            settings, notes, print_config = parse_command_line(argv)
        except ConfigError as exc:
            print("%s: %s" % (PROG, exc), file=sys.stderr)
            return 2
        if print_config:
            sys.stdout.write(config.format_config(settings))
            return 0
        return cli.run(settings, announcer(notes))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
