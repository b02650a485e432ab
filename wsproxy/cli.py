"""The command line: ``wsproxy [options] [HOST:]PORT TARGET_HOST:TARGET_PORT``.

The only module that reads ``sys.argv``, installs signal handlers and
configures logging.  It builds a :class:`Settings` and runs a
:class:`ProxyServer`, exactly as an embedder would.
"""

import argparse
import logging
import os
import signal
import sys
import threading
from typing import List, Optional

from . import daemon
from .server import ProxyServer
from .settings import ConfigError, Settings
from .targets import parse_host_port, parse_target

logger = logging.getLogger("wsproxy")

#: Two threads per session: keep their stacks small (RSS grows with use only).
THREAD_STACK_SIZE = 512 * 1024

# (flags, Settings field, kind, metavar, help).  kind: str int float flag
# list nflag (a --no-x flag that sets the field False).
OPTIONS = [
    (("-f", "--foreground"), "foreground", "flag", None, "stay in the foreground (default: run as a daemon)"),
    (("-D", "--daemon"), "daemon", "flag", None, "run as a daemon (the default; websockify's spelling)"),
    (("--pid-file",), "pid_file", "str", "FILE", "write the process id to FILE"),
    (("-v", "--verbose"), "verbose", "flag", None, "log more (debug level)"),
    (("-q", "--quiet"), "quiet", "flag", None, "log warnings and errors only"),
    (("--log-file",), "log_file", "str", "FILE", "log to FILE instead of standard error"),
    (("--unix-target",), "unix_target", "str", "PATH", "relay to a Unix socket instead of HOST:PORT"),
    (("--ssl-target",), "ssl_target", "flag", None, "connect to the target with TLS"),
    (("--target-cafile",), "target_cafile", "str", "FILE", "CA bundle to verify the TLS target"),
    (("--target-insecure",), "target_insecure", "flag", None, "do not verify the TLS target (unsafe)"),
    (("--cert",), "cert", "str", "FILE", "TLS certificate (PEM; may hold the key too)"),
    (("--key",), "key", "str", "FILE", "TLS private key (PEM), if not in --cert"),
    (("--ssl-only",), "ssl_only", "flag", None, "refuse plain (non-TLS) connections"),
    (("--ssl-ciphers",), "ssl_ciphers", "str", "LIST", "OpenSSL cipher list for TLS 1.2 and older"),
    (("--ssl-version",), "ssl_version", "str", "VERSION",
     "minimum TLS version: tlsv1_1, tlsv1_2 (default) or tlsv1_3"),
    (("--verify-client",), "verify_client", "flag", None, "require a TLS client certificate signed by --cafile"),
    (("--cafile",), "cafile", "str", "FILE", "CA bundle for --verify-client"),
    (("--no-flash-policy",), "flash_policy", "nflag", None, "do not answer Flash policy requests"),
    (("--flash-policy-domain",), "flash_policy_domain", "str", "DOMAIN", "domain allowed by the Flash policy (default *)"),
    (("--flash-policy-ports",), "flash_policy_ports", "str", "PORTS", "ports allowed by the Flash policy (default *)"),
    (("--record",), "record", "str", "FILE", "record each session to FILE.N"),
    (("--origin",), "origin", "list", "ORIGIN", "allowed Origin (repeatable); others get 403"),
    (("--handshake-timeout",), "handshake_timeout", "float", "S", "seconds allowed for TLS and HTTP handshakes (default 10)"),
    (("--max-connections",), "max_connections", "int", "N", "open sessions allowed; more get 503 (default: no limit)"),
    (("--max-header-size",), "max_header_size", "int", "BYTES", "largest request header block (default 16384)"),
    (("--max-message-size",), "max_message_size", "int", "BYTES", "largest buffered message (default 1048576)"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsproxy",
        description="Relay WebSocket clients to a TCP service.",
        usage="%(prog)s [options] [LISTEN_HOST:]LISTEN_PORT TARGET_HOST:TARGET_PORT")
    parser.add_argument("listen", metavar="[LISTEN_HOST:]LISTEN_PORT", nargs="?")
    parser.add_argument("target", metavar="TARGET_HOST:TARGET_PORT", nargs="?")
    for flags, field, kind, metavar, text in OPTIONS:
        dest = field
        if kind == "flag":
            parser.add_argument(*flags, dest=dest, action="store_true", default=None, help=text)
        elif kind == "nflag":
            parser.add_argument(*flags, dest=dest, action="store_false", default=None, help=text)
        elif kind == "list":
            parser.add_argument(*flags, dest=dest, action="append", metavar=metavar, help=text)
        else:
            parser.add_argument(*flags, dest=dest, metavar=metavar, help=text)
    return parser


def _convert(field: str, kind: str, value):
    """Turn an option's text into the field's type; ConfigError names the option."""
    name = field.replace("_", "-")
    try:
        if kind == "int":
            number = int(value)
            if number < 0:
                raise ValueError
            return number
        if kind == "float":
            number = float(value)
            if number < 0 or number != number:
                raise ValueError
            return number
    except (TypeError, ValueError):
        raise ConfigError("%s: expected a non-negative %s, got %r"
                          % (name, "integer" if kind == "int" else "number", value)) from None
    return value


def settings_from_args(argv: Optional[List[str]] = None) -> Settings:
    """Parse the command line into :class:`Settings`; ConfigError on bad values."""
    args = build_parser().parse_args(argv)
    values = {}
    for _flags, field, kind, _metavar, _text in OPTIONS:
        value = getattr(args, field)
        if value is None or field == "daemon":
            continue
        values[field] = _convert(field, kind, value)
    if args.listen is None:
        raise ConfigError("listen: missing [LISTEN_HOST:]LISTEN_PORT")
    try:
        host, port = parse_host_port(args.listen, default_host="")
    except ValueError as exc:
        raise ConfigError("listen: %s" % exc) from None
    values["listen_host"], values["listen_port"] = host, port
    if args.target is not None:
        try:
            target = parse_target(args.target)
        except ValueError as exc:
            raise ConfigError("target: %s" % exc) from None
        if target.unix is not None:
            values["unix_target"] = target.unix
        else:
            values["target_host"], values["target_port"] = target.host, target.port
    elif not values.get("unix_target"):
        raise ConfigError("target: missing TARGET_HOST:TARGET_PORT")
    return Settings(**values)


def configure_logging(settings: Settings) -> None:
    """Send the ``wsproxy`` logger to standard error or ``--log-file``."""
    level = logging.DEBUG if settings.verbose else logging.WARNING if settings.quiet else logging.INFO
    if settings.log_file:
        handler: logging.Handler = logging.FileHandler(settings.log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s wsproxy[%(process)d] %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def main(argv: Optional[List[str]] = None) -> int:
    """Run wsproxy from the command line; returns the exit status."""
    try:
        settings = settings_from_args(argv)
    except ConfigError as exc:
        print("wsproxy: %s" % exc, file=sys.stderr)
        return 2
    for name in ("pid_file", "log_file", "record", "cert", "key", "cafile", "target_cafile"):
        value = getattr(settings, name)
        if value:
            setattr(settings, name, os.path.abspath(value))
    threading.stack_size(THREAD_STACK_SIZE)
    address = (settings.listen_host, settings.listen_port)
    try:
        server = ProxyServer(address, settings)
    except ConfigError as exc:
        print("wsproxy: %s" % exc, file=sys.stderr)
        return 2
    except OSError as exc:
        print("wsproxy: cannot listen on %s:%d: %s"
              % (settings.listen_host or "*", settings.listen_port, exc.strerror or exc),
              file=sys.stderr)
        return 1
    ready_pipe = None
    if not settings.foreground:
        ready_pipe = daemon.detach(settings.log_file)
    configure_logging(settings)
    try:
        if settings.pid_file:
            daemon.write_pid_file(settings.pid_file)
    except daemon.DaemonError as exc:
        if ready_pipe is not None:
            daemon.report_ready(ready_pipe, str(exc))
        else:
            print("wsproxy: %s" % exc, file=sys.stderr)
        return 1
    try:
        return _serve(server, settings, ready_pipe)
    finally:
        if settings.pid_file:
            daemon.remove_pid_file(settings.pid_file)


def _serve(server: ProxyServer, settings: Settings, ready_pipe: Optional[int]) -> int:
    """Serve until SIGTERM/SIGINT; then close sessions with 1001 and return 0."""
    stop = threading.Event()

    def request_stop(signum, _frame):
        logger.info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    serving = threading.Thread(target=server.serve_forever, name="wsproxy-accept", daemon=True)
    serving.start()
    logger.info("listening on %s:%d, relaying to %s", settings.listen_host or "*",
                server.server_address[1], _target_text(settings))
    if ready_pipe is not None:
        daemon.report_ready(ready_pipe)
    while not stop.wait(3600):
        pass
    server.shutdown()
    server.server_close()
    return 0


def _target_text(settings: Settings) -> str:
    if settings.unix_target:
        return "unix:" + settings.unix_target
    return "%s:%s" % (settings.target_host, settings.target_port)
