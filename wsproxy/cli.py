"""The command line: ``wsproxy [options] [HOST:]PORT TARGET_HOST:TARGET_PORT``.

The only module that reads ``sys.argv``, installs signal handlers and
configures logging.  It builds a :class:`Settings` (from ``-c FILE``, then
the options, which override the file) and runs a :class:`ProxyServer`, as
an embedder would.  Exit status: 0 after a clean stop, 1 when the server
cannot start (port taken, pid file unwritable), 2 for a bad command line or
configuration.

Signals: SIGTERM and SIGINT stop accepting, close every session with 1001
and exit 0 once they are done (or after a few seconds); SIGHUP reopens the
log file and the audit log and re-reads the token source, the auth file and
the certificate, keeping sessions (and every counter).

Under a service manager: sockets passed by systemd socket activation (or
``--inetd``'s standard input) are served instead of binding, readiness and
the watchdog go to ``NOTIFY_SOCKET``, and ``--user``/``--group`` give up
root after binding (see :mod:`wsproxy.service`).
"""

import argparse
import errno
import logging
import logging.handlers
import os
import select
import signal
import socket
import stat
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import __version__, config, daemon, redact, service, workers, wrap
from .config import OPTIONS, Option
from .server import ProxyServer, UnixProxyServer
from .settings import ConfigError, Settings

logger = logging.getLogger("wsproxy")

#: Two threads per session: keep their stacks small (RSS grows with use only).
THREAD_STACK_SIZE = 512 * 1024
#: The GIL switch interval (Python's default is 0.005 s).  Every thread waiting for the GIL
#: wakes once per interval to ask for it: with thousands of sessions whose threads become
#: runnable at once (a burst of handshakes, 9,000 echoes at once), 5 ms turned those wake-ups
#: into most of the process's CPU (49 s of CPU for a 9,000-session burst, 17 s at 0.5 s).
#: The threads here give the GIL up on their own at every recv/send, so a long interval
#: costs no latency: no thread runs Python for long between two system calls.
SWITCH_INTERVAL = 0.5

LOG_FORMAT = "%(asctime)s wsproxy[%(process)d] %(levelname)s %(message)s"
#: syslog stamps the time itself.
SYSLOG_FORMAT = "wsproxy[%(process)d]: %(levelname)s %(message)s"
#: Where ``--syslog`` without an address logs: this socket, else UDP localhost:514.
LOCAL_SYSLOG_SOCKET = "/dev/log"
LOCAL_SYSLOG_UDP = ("localhost", 514)

#: The longest pause between two looks at ``--idle-timeout``.
IDLE_CHECK_INTERVAL = 0.25

#: Signals the main loop acts on.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RELOAD_SIGNAL = getattr(signal, "SIGHUP", None)

_DEFAULTS = Settings()

#: Files read at start: (field, True = must be a directory, False = a file, None = either).
INPUT_FILES = (
    ("cert", False), ("key", False), ("cafile", False), ("target_cafile", False),
    ("auth_file", False), ("token_source", None), ("web", True),
)


# -- the command line -------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser: the positionals, ``-c``, ``--print-config`` and :data:`OPTIONS`.

    Every option defaults to None ("not given") so that a config file's
    value survives unless the command line names the option.
    """
    parser = argparse.ArgumentParser(
        prog="wsproxy",
        description="Relay WebSocket clients to a TCP service.  With --unix-listen give only "
                    "TARGET; with --token-source (or --unix-target) TARGET may be left out.",
        usage="%(prog)s [options] [LISTEN_HOST:]LISTEN_PORT TARGET_HOST:TARGET_PORT\n"
              "       %(prog)s [options] [LISTEN_HOST:]LISTEN_PORT -- COMMAND [ARG...]")
    parser.add_argument("listen", metavar="[LISTEN_HOST:]LISTEN_PORT", nargs="?",
                        help="where to listen (HOST may be [IPv6]; no HOST = every address)")
    parser.add_argument("target", metavar="TARGET_HOST:TARGET_PORT", nargs="?",
                        help="where to relay: HOST:PORT, [IPv6]:PORT or unix:/PATH")
    general = parser.add_argument_group("Configuration")
    general.add_argument("-c", "--config", metavar="FILE",
                         help="read options from FILE ([wsproxy] section; keys are long "
                              "option names); the command line overrides it")
    general.add_argument("--print-config", action="store_true",
                         help="print the effective configuration as a config file and exit")
    general.add_argument("--version", action="version", version="wsproxy " + __version__)
    groups = {name: parser.add_argument_group(name) for name in config.GROUPS}
    for option in OPTIONS:
        _add_option(groups[option.group], option)
    return parser


def _add_option(group, option: Option) -> None:
    text = _help_text(option)
    if option.negates:
        group.add_argument(*option.flags, dest=option.field, action="store_const",
                           const=False, default=None, help=text)
    elif option.kind == "bool":
        group.add_argument(*option.flags, dest=option.field, default=None, help=text,
                           action=argparse.BooleanOptionalAction)
    elif config.KINDS[option.kind].many:
        group.add_argument(*option.flags, dest=option.field, action="append", default=None,
                           metavar=option.metavar, help=text)
    elif option.kind == "syslog":
        group.add_argument(*option.flags, dest=option.field, nargs="?", const="yes",
                           default=None, metavar=option.metavar, help=text)
    else:
        group.add_argument(*option.flags, dest=option.field, default=None,
                           metavar=option.metavar, help=text)


def _help_text(option: Option) -> str:
    default = getattr(_DEFAULTS, option.field)
    text = option.help
    if not option.negates and default not in (None, False, "", 0, []):
        text += " (default: %s)" % config.format_value(option, default)
    return text.replace("%", "%%")


def parse_command_line(argv: Optional[List[str]] = None) -> Tuple[Settings, bool]:
    """Parse ``argv`` (and its ``-c FILE``) into ``(Settings, print_config)``.

    Raises :class:`ConfigError` with a one-line message naming the option,
    or the file and line; argparse itself exits 2 on malformed syntax.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, command = split_wrap_command(argv)
    # Intermixed: options may stand between and after the positionals
    # (``wsproxy 6080 --heartbeat 30 host:5900``), as websockify allows.
    args = build_parser().parse_intermixed_args(argv)
    values: Dict[str, Any] = {}
    if args.config:
        values = config.read_config_file(args.config)
    options = _option_values(args)
    if command:
        options["wrap_command"] = command
    options.update(_positional_values(args.listen, args.target, dict(values, **options)))
    # The command line replaces what the file said about the same thing.
    if {"target_host", "unix_target"} & set(options):
        for name in ("target_host", "target_port", "unix_target"):
            values.pop(name, None)
    if {"verbose", "quiet"} & set(options):
        values.pop("verbose", None)
        values.pop("quiet", None)
    values.update(options)
    if args.token_source is not None and values.get("token_plugin"):
        # A plugin's argument is read as that plugin reads it (TokenRedis's host:port).
        values["token_source"] = config.token_source_for(args.token_source, "",
                                                         values["token_plugin"])
    _check_complete(values)
    return Settings(**values), args.print_config


def split_wrap_command(argv: List[str]) -> Tuple[List[str], List[str]]:
    """``[..., "--", COMMAND, ...]`` -> (the arguments before, the command after)."""
    if "--" not in argv:
        return argv, []
    index = argv.index("--")
    return argv[:index], argv[index + 1:]


def settings_from_args(argv: Optional[List[str]] = None) -> Settings:
    """Parse the command line into :class:`Settings`; ConfigError on bad values."""
    return parse_command_line(argv)[0]


def _option_values(args: argparse.Namespace) -> Dict[str, Any]:
    """The fields the command line's options set, converted; ConfigError names the flag."""
    values: Dict[str, Any] = {}
    for option in OPTIONS:
        raw = getattr(args, option.field)
        if raw is None or option.field in values:
            continue
        try:
            values[option.field] = config.option_value(option, raw)
        except ConfigError as exc:
            raise ConfigError("--%s: %s" % (option.key, exc)) from None
    return values


def _positional_values(listen: Optional[str], target: Optional[str],
                       values: Dict[str, Any]) -> Dict[str, Any]:
    if _inherits_listener(values) and listen is not None and target is None:
        listen, target = None, listen  # only TARGET: the socket is given to us
    elif _inherits_listener(values) and listen is not None:
        listen = None  # LISTEN is ignored: the inherited socket is served
    if values.get("unix_listen") and listen is not None:
        if target is not None:
            raise ConfigError("--unix-listen takes the place of LISTEN: give only "
                              "TARGET_HOST:TARGET_PORT")
        listen, target = None, listen
    found: Dict[str, Any] = {}
    if listen is not None:
        try:
            found.update(config.listen_values(listen))
        except ConfigError as exc:
            raise ConfigError("listen: %s" % exc) from None
    if target is not None:
        try:
            found.update(config.target_values(target))
        except ConfigError as exc:
            raise ConfigError("target: %s" % exc) from None
    return found


def _inherits_listener(values: Dict[str, Any]) -> bool:
    """Whether the listening socket comes from ``--inetd`` or socket activation."""
    return bool(values.get("inetd")) or service.activation.activation_requested(os.environ)


def _check_complete(values: Dict[str, Any]) -> None:
    if values.get("inetd") and values.get("unix_listen"):
        raise ConfigError("--inetd and --unix-listen exclude each other")
    if (not values.get("unix_listen") and "listen_port" not in values
            and not _inherits_listener(values)):
        raise ConfigError("listen: missing [LISTEN_HOST:]LISTEN_PORT (or --unix-listen PATH)")
    if values.get("wrap_command"):
        if values.get("target_host") or values.get("unix_target"):
            raise ConfigError("target: give either TARGET_HOST:TARGET_PORT or -- COMMAND, not both")
    elif not (values.get("target_host") or values.get("unix_target") or values.get("token_source")
              or values.get("token_plugin")):
        raise ConfigError("target: missing TARGET_HOST:TARGET_PORT "
                          "(or --unix-target PATH, or --token-source)")
    if values.get("verbose") and values.get("quiet"):
        raise ConfigError("--verbose and --quiet exclude each other")


# -- logging --------------------------------------------------------------------------


class _OneLineErrors:
    """A handler mixin: a failed write is reported as one line on standard
    error (once per run of failures), never as logging's traceback."""

    #: Where the lines go, for the error message.
    destination = "the log"
    _failed = False
    _reported = False

    def emit(self, record: logging.LogRecord) -> None:
        self._failed = False
        super().emit(record)  # type: ignore[misc]
        if not self._failed:
            self._reported = False

    def handleError(self, record: logging.LogRecord) -> None:
        self._failed = True
        if self._reported:
            return
        self._reported = True
        problem = sys.exc_info()[1]
        try:
            sys.stderr.write("wsproxy: cannot write a log line to %s: %s\n"
                             % (self.destination, problem))
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


class _StderrHandler(_OneLineErrors, logging.StreamHandler):
    """Log lines on standard error."""


class _SysLogHandler(_OneLineErrors, logging.handlers.SysLogHandler):
    """Log lines to syslog; an unreachable syslog is reported once, in one line."""


#: Mode of a log file wsproxy creates (before the umask).
LOG_FILE_MODE = 0o640


class ReopeningFileHandler(_OneLineErrors, logging.FileHandler):
    """A log file that :meth:`reopen` opens again at the same path (log rotation).

    Opened for appending with ``O_NOFOLLOW``, as the pid file: a symbolic
    link planted at the path (say in a world-writable directory) must not
    make a root daemon append to the file it points to.  Created with
    :data:`LOG_FILE_MODE`.
    """

    def _open(self):
        flags = (os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
                 | getattr(os, "O_CLOEXEC", 0))
        fd = os.open(self.baseFilename, flags, LOG_FILE_MODE)
        try:
            return os.fdopen(fd, "a", encoding=self.encoding or "utf-8",
                             errors=getattr(self, "errors", None) or "backslashreplace")
        except BaseException:
            os.close(fd)
            raise

    def reopen(self) -> None:
        """Switch to a fresh file at the path; raises OSError and keeps the old one on failure."""
        stream = self._open()
        self.acquire()
        try:
            old, self.stream = self.stream, stream
        finally:
            self.release()
        if old is not None:
            old.close()


def build_log_handlers(settings: Settings) -> List[logging.Handler]:
    """The handlers ``settings`` ask for: ``--log-file``, ``--syslog``, else standard error.

    Raises :class:`ConfigError` naming the option when a file cannot be
    opened or a syslog address cannot be used.
    """
    handlers: List[logging.Handler] = []
    if settings.log_file:
        try:
            handler: logging.Handler = ReopeningFileHandler(
                settings.log_file, encoding="utf-8", errors="backslashreplace")
        except OSError as exc:
            raise ConfigError("--log-file: cannot open %s: %s"
                              % (settings.log_file, _open_problem(exc))) from None
        handler.destination = settings.log_file
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handlers.append(handler)
    if settings.syslog is not None:
        handlers.append(_syslog_handler(settings.syslog))
    if not handlers:
        handler = _StderrHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handlers.append(handler)
    # Every line, at every level, with the settings' secrets masked.
    secret_filter = redact.redacted_filter(settings)
    for handler in handlers:
        handler.addFilter(secret_filter)
    return handlers


def _open_problem(exc: OSError) -> str:
    """Why a log file did not open; a refused symbolic link says so."""
    if exc.errno == errno.ELOOP:
        return "it is a symbolic link (refused, as a planted link could point anywhere)"
    return exc.strerror or str(exc)


def _syslog_handler(address_text: str) -> logging.Handler:
    if address_text:
        address = config.parse_syslog_address(address_text)
    elif _is_socket(LOCAL_SYSLOG_SOCKET):
        address = LOCAL_SYSLOG_SOCKET
    else:
        address = LOCAL_SYSLOG_UDP
    where = address if isinstance(address, str) else "%s:%d" % address
    if isinstance(address, str) and not os.path.exists(address):
        # SysLogHandler would wait quietly for the socket to appear; a path
        # that does not exist at start is far more likely a typo.
        raise ConfigError("--syslog: no such socket: %s" % address)
    try:
        handler = _SysLogHandler(address, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
    except OSError as exc:
        raise ConfigError("--syslog: cannot log to %s: %s" % (where, exc.strerror or exc)) from None
    handler.destination = "syslog at %s" % where
    handler.setFormatter(logging.Formatter(SYSLOG_FORMAT))
    return handler


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def configure_logging(settings: Settings, handlers: List[logging.Handler]) -> None:
    """Send the ``wsproxy`` logger to ``handlers`` at the level -v/-q ask for."""
    level = logging.INFO
    if settings.verbose:
        level = logging.DEBUG
    elif settings.quiet:
        level = logging.WARNING
    for handler in handlers:
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def reopen_logs(settings: Settings, handlers: List[logging.Handler]) -> None:
    """Reopen ``--log-file`` (and, as a daemon, the standard streams sent to it)."""
    for handler in handlers:
        if isinstance(handler, ReopeningFileHandler):
            try:
                handler.reopen()
            except OSError as exc:
                logger.error("cannot reopen the log file %s: %s; still writing to the old one",
                             handler.baseFilename, _open_problem(exc))
    if settings.log_file and not settings.foreground:
        try:
            daemon.redirect_output(settings.log_file)
        except OSError:
            pass  # already reported just above


# -- signals --------------------------------------------------------------------------


class SignalInbox:
    """SIGTERM, SIGINT and SIGHUP, collected for the main thread to act on.

    The handlers do nothing themselves; Python's wakeup fd carries each
    signal's number into a pipe that :meth:`wait` reads, so no lock or log
    call ever runs inside a signal handler.  Create it in the main thread.
    """

    def __init__(self) -> None:
        self._read_end, self._write_end = os.pipe()
        for end in (self._read_end, self._write_end):
            os.set_blocking(end, False)
        self._previous_fd = signal.set_wakeup_fd(self._write_end, warn_on_full_buffer=False)
        self._previous = {}
        for signum in self.signals():
            self._previous[signum] = signal.signal(signum, _ignore_signal)

    @staticmethod
    def signals() -> List[int]:
        return [signum for signum in STOP_SIGNALS + (RELOAD_SIGNAL,) if signum is not None]

    def wait(self, timeout: Optional[float]) -> List[int]:
        """Wait up to ``timeout`` seconds (None = forever) for signals; return their numbers."""
        select.select([self._read_end], [], [], timeout)
        received: List[int] = []
        while True:
            try:
                data = os.read(self._read_end, 512)
            except BlockingIOError:
                break
            if not data:
                break
            received.extend(data)
        return [signum for signum in received if signum in self._previous]

    def close(self) -> None:
        """Put the previous handlers back and close the pipe."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._read_end)
        os.close(self._write_end)


def _ignore_signal(_signum, _frame) -> None:
    """The Python-level handler: the wakeup fd already told the main loop."""


# -- running --------------------------------------------------------------------------


def make_server(settings: Settings) -> ProxyServer:
    """Bind the listening socket ``settings`` describe (TCP, or ``--unix-listen``)."""
    if settings.unix_listen:
        return UnixProxyServer(settings.unix_listen, settings)
    return ProxyServer((listen_host(settings), settings.listen_port), settings)


def listen_host(settings: Settings) -> str:
    """The address to bind: LISTEN_HOST, or with ``--prefer-ipv6`` its IPv6 address.

    As websockify's ``-6``: a name with IPv4 and IPv6 addresses binds the
    IPv6 one, and no LISTEN_HOST binds ``::`` (both kinds, where the
    system allows) instead of every IPv4 address.
    """
    host = settings.listen_host
    if not settings.prefer_ipv6:
        return host
    if not host:
        return "::"
    try:
        found = socket.getaddrinfo(host, settings.listen_port, socket.AF_INET6,
                                   socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except (OSError, UnicodeError):
        return host  # no IPv6 address: bind what the name gives
    return found[0][4][0] if found else host


def open_listener(settings: Settings) -> ProxyServer:
    """The server on ``--inetd``'s standard input, on sockets passed by socket
    activation, or else bound as ``settings`` say (:func:`make_server`)."""
    if settings.inetd:
        return service.serve_inherited([service.take_stdin_socket()], settings)
    inherited = service.take_listen_fds(os.environ)
    if inherited:
        return service.serve_inherited(inherited, settings)
    return make_server(settings)


def main(argv: Optional[List[str]] = None) -> int:
    """Run wsproxy from the command line; returns the exit status."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were in place
        return 130


def _main(argv: Optional[List[str]]) -> int:
    try:
        settings, print_config = parse_command_line(argv)
    except ConfigError as exc:
        return _fail(exc, 2)
    if print_config:
        sys.stdout.write(config.format_config(settings))
        return 0
    return run(settings)


#: ``announce(settings, server)``: a front door's start-up lines, logged once serving.
Announce = Callable[[Settings, ProxyServer], None]


def run(settings: Settings, announce: Optional[Announce] = None) -> int:
    """Serve ``settings`` until stopped, as the command line does; returns the exit status.

    Every front door (``wsproxy``, ``wsproxy-websockify``) ends here with
    the :class:`Settings` it built; ``announce`` adds the door's own
    start-up lines (default: "listening on ..., relaying to ...").
    """
    try:
        check_input_files(settings)
        identity = service.resolve(settings)
        handlers = build_log_handlers(settings)
        if settings.wrap_command and settings.workers > 1:
            raise ConfigError("--workers: a wrapped command runs once; use --workers 1")
    except ConfigError as exc:
        return _fail(exc, 2)
    threading.stack_size(THREAD_STACK_SIZE)
    sys.setswitchinterval(SWITCH_INTERVAL)
    notifier = service.take_notifier(os.environ)
    # Handlers first: a SIGHUP or SIGTERM as soon as the port listens must not kill us.
    signals = SignalInbox()
    try:
        return _start(settings, handlers, signals, identity, notifier, announce)
    finally:
        signals.close()
        notifier.close()


def _start(settings: Settings, handlers: List[logging.Handler], signals: SignalInbox,
           identity: Optional[service.Identity] = None,
           notifier: Optional[service.Notifier] = None,
           announce: Optional[Announce] = None) -> int:
    if settings.wrap_command:
        settings = settings.replace(target_host=wrap.HOST, target_port=wrap.pick_port(),
                                    unix_target=None)
    try:
        server = open_listener(settings)
    except ConfigError as exc:
        return _fail(exc, 2)
    except OSError as exc:
        return _fail("cannot listen on %s: %s" % (_listen_text(settings), exc.strerror or exc), 1)
    ready_pipe = None
    if not settings.foreground:
        ready_pipe = daemon.detach(settings.log_file)
    configure_logging(settings, handlers)
    service.raise_open_file_limit()  # before --workers fork: they inherit it

    def refuse(exc: Exception) -> int:
        # A daemon's parent still waits on the pipe: the reason goes there.
        server.server_close()
        if ready_pipe is not None:
            daemon.report_ready(ready_pipe, str(exc))
            return 1
        return _fail(exc, 1)

    try:
        if settings.pid_file:
            daemon.write_pid_file(settings.pid_file)
    except daemon.DaemonError as exc:
        return refuse(exc)
    try:
        if identity is not None:
            _drop_privileges(server, settings, identity)
        if settings.workers > 1:
            return _supervise(server, settings, handlers, ready_pipe, notifier)
        return _serve(server, settings, handlers, signals, ready_pipe, notifier=notifier,
                      announce=announce)
    except service.PrivilegeError as exc:
        return refuse(exc)
    finally:
        if settings.pid_file:
            daemon.remove_pid_file(settings.pid_file)


#: How often a worker checks that its supervisor still lives (seconds).
PARENT_CHECK_INTERVAL = 1.0


def _drop_privileges(server: ProxyServer, settings: Settings,
                     identity: service.Identity) -> None:
    """``--user``/``--group``: load what sessions need, then switch (PrivilegeError if not)."""
    service.preload(settings)
    if settings.ssl_target:
        try:
            server.target_ssl_context()  # reads the CA bundle while still allowed to
        except ConfigError as exc:
            raise service.PrivilegeError(str(exc)) from None
    service.drop_privileges(identity)
    service.privileges.check_writable(settings)


def _supervise(server: ProxyServer, settings: Settings, handlers: List[logging.Handler],
               ready_pipe: Optional[int], notifier: Optional[service.Notifier] = None) -> int:
    """``--workers N``: fork N workers serving the bound socket; restart those that die."""
    numbers = workers.SharedCounter(settings.workers)
    parent_pid = os.getpid()

    def serve_worker(index: int) -> int:
        server.session_number_source = lambda: numbers.next(index)
        server.observer.metrics.use_slot(index)  # this worker's block of the shared counters
        worker_signals = SignalInbox()
        workers.unblock_signals()
        try:
            return _serve(server, settings, handlers, worker_signals, None, parent_pid)
        finally:
            worker_signals.close()

    pool = workers.WorkerPool(settings.workers, serve_worker)
    # The supervisor speaks for its workers: ready once they are forked,
    # watchdog pings while any runs.
    lifecycle = service.Lifecycle(server, notifier, alive=lambda: bool(pool.children))

    def on_stop() -> None:
        lifecycle.stopping("stopping %d workers" % settings.workers)
        server.socket.close()

    pool.on_stop = on_stop
    pool.on_reload = lambda: (lifecycle.reloading(), lifecycle.reloaded())
    lifecycle.status_text = lambda: "%d workers" % len(pool.children)  # type: ignore[assignment]
    logger.info("listening on %s with %d workers", _listen_text(settings, server), settings.workers)
    if ready_pipe is not None:
        daemon.report_ready(ready_pipe)
    pool.on_started = lifecycle.started
    status = pool.run()
    lifecycle.stopping()
    server.server_close()
    logger.info("stopped")
    return status


def check_input_files(settings: Settings) -> None:
    """Fail early, naming the option, when a file wsproxy must read is missing."""
    for field, want_directory in INPUT_FILES:
        path = getattr(settings, field)
        if not path or (field == "token_source" and ("://" in path or settings.token_plugin)):
            continue  # a URL, or a plugin's argument: the plugin checks it at start
        name = config.OPTION_FOR_FIELD[field].key
        if not os.path.exists(path):
            raise ConfigError("--%s: no such file or directory: %s" % (name, path))
        if want_directory is not None and os.path.isdir(path) != want_directory:
            raise ConfigError("--%s: %s is %s" % (
                name, path, "not a directory" if want_directory else "a directory"))


def _fail(message: object, status: int) -> int:
    print("wsproxy: %s" % redact.redact_text(str(message)), file=sys.stderr)
    return status


def _serve(server: ProxyServer, settings: Settings, handlers: List[logging.Handler],
           signals: SignalInbox, ready_pipe: Optional[int],
           parent_pid: Optional[int] = None,
           notifier: Optional[service.Notifier] = None,
           announce: Optional[Announce] = None) -> int:
    """Serve until a stop signal or a lifetime limit; returns the exit status (0).

    A worker passes its supervisor's ``parent_pid``: if the supervisor dies
    without passing a signal on (SIGKILL), the worker stops by itself
    rather than serve on as an orphan nobody can stop with the pid file.
    With ``-- COMMAND`` the wrapped program runs (and is stopped) around
    the serving, and its exit may end it (``--wrap-mode``).
    """
    wrapped = None
    if settings.wrap_command:
        wrapped = wrap.WrappedProgram(settings.wrap_command, settings.target_port,
                                      settings.wrap_mode)
        try:
            wrapped.start()
        except OSError as exc:
            server.server_close()
            message = "cannot run %s: %s" % (settings.wrap_command[0], exc.strerror or exc)
            if ready_pipe is not None:
                daemon.report_ready(ready_pipe, message)
                return 1
            return _fail(message, 1)
    try:
        if wrapped is not None:
            status = _await_wrapped(wrapped, signals)
            if status is not None:
                server.server_close()
                if ready_pipe is not None:
                    daemon.report_ready(ready_pipe, "the wrapped command exited before it listened")
                return status
        return _serve_started(server, settings, handlers, signals, ready_pipe, parent_pid,
                              notifier, announce, wrapped)
    finally:
        if wrapped is not None:
            wrapped.stop()


def _serve_started(server: ProxyServer, settings: Settings, handlers: List[logging.Handler],
                   signals: SignalInbox, ready_pipe: Optional[int], parent_pid: Optional[int],
                   notifier: Optional[service.Notifier], announce: Optional[Announce],
                   wrapped: Optional[wrap.WrappedProgram]) -> int:
    serving = threading.Thread(target=server.serve_forever, name="wsproxy-accept", daemon=True)
    serving.start()
    lifecycle = service.Lifecycle(server, notifier)
    lifecycle.start_followers()
    if announce is not None:
        announce(settings, server)
    else:
        logger.info("listening on %s, relaying to %s", _listen_text(settings, server),
                    _target_text(settings))
    logger.debug("options in effect (besides the defaults): %s", _changed_options(settings))
    if ready_pipe is not None:
        daemon.report_ready(ready_pipe)
    lifecycle.started(serving)
    try:
        return _main_loop(server, settings, handlers, signals, parent_pid, lifecycle, wrapped)
    finally:
        lifecycle.stopping()


def _main_loop(server: ProxyServer, settings: Settings, handlers: List[logging.Handler],
               signals: SignalInbox, parent_pid: Optional[int],
               lifecycle: service.Lifecycle,
               wrapped: Optional[wrap.WrappedProgram] = None) -> int:
    """Wait for signals and lifetime limits; returns the exit status once stopped."""
    lifetime = _Lifetime(settings, time.monotonic())
    while True:
        wait = lifetime.next_wait(time.monotonic())
        if wrapped is not None:
            wait = WRAP_CHECK_INTERVAL if wait is None else min(wait, WRAP_CHECK_INTERVAL)
            status = wrapped.check(time.monotonic())
            if status is not None:
                logger.info("exiting with the wrapped command's status %d", status)
                lifecycle.stopping("the wrapped command exited")
                _stop(server)
                return status
        if parent_pid is not None:
            wait = PARENT_CHECK_INTERVAL if wait is None else min(wait, PARENT_CHECK_INTERVAL)
            if os.getppid() != parent_pid:
                logger.warning("the supervising process is gone; stopping this worker")
                lifecycle.stopping()
                return _stop(server)
        for signum in signals.wait(wait):
            if signum == RELOAD_SIGNAL:
                lifecycle.reloading()
                _reload(server, settings, handlers)
                lifecycle.reloaded()
            else:
                logger.info("%s: shutting down, closing %d open session(s) with 1001",
                            signal.Signals(signum).name, server.open_sessions)
                lifecycle.stopping("%s: closing sessions" % signal.Signals(signum).name)
                return _stop(server)
        verdict = lifetime.check(time.monotonic(), server.open_sessions,
                                 getattr(server, "sessions_started", 0))
        if verdict == "stop accepting":
            if settings.run_once:
                logger.info("--run-once: no longer accepting; exiting once the session ends")
                lifecycle.stopping("--run-once: no longer accepting")
            else:
                logger.info("--timeout %s: no longer accepting; exiting once no session is open",
                            config.format_number(settings.timeout))
                lifecycle.stopping("--timeout: no longer accepting")
            server.stop_accepting()  # leaves open sessions running
        elif verdict:
            logger.info("exiting: %s", verdict)
            lifecycle.stopping(verdict)
            return _stop(server)


#: How often the main loop looks after a wrapped command (seconds).
WRAP_CHECK_INTERVAL = 0.1


def _await_wrapped(wrapped: wrap.WrappedProgram, signals: SignalInbox) -> Optional[int]:
    """Wait until the wrapped program listens (or a while); an exit status to stop with, or None.

    A stop signal while waiting stops wsproxy (status 0).  A program that
    exits first is handled as ``--wrap-mode`` says; one that neither exits
    nor listens within :data:`wrap.READY_TIMEOUT` gets a warning, and
    wsproxy serves anyway (sessions fail until it listens).
    """
    deadline = time.monotonic() + wrap.READY_TIMEOUT
    while not wrapped.listening():
        for signum in signals.wait(0.02):
            if signum != RELOAD_SIGNAL:
                return 0
        status = wrapped.check(time.monotonic())
        if status is not None:
            return status
        if time.monotonic() >= deadline:
            logger.warning("the wrapped command does not listen on port %d after %.0f s; "
                           "serving anyway", wrapped.port, wrap.READY_TIMEOUT)
            return None
    return None


class _Lifetime:
    """``--timeout`` and ``--idle-timeout``: when to stop accepting, when to exit.

    ``--timeout S``: S seconds after start, stop accepting; exit once no
    session is open (websockify's meaning).  ``--idle-timeout S``: exit once
    no session has been open for S seconds (counting from start).
    """

    def __init__(self, settings: Settings, started: float) -> None:
        self.timeout = settings.timeout
        self.idle_timeout = settings.idle_timeout
        self.run_once = settings.run_once
        self.started = started
        self.accepting = True
        self.idle_since: Optional[float] = started

    def next_wait(self, now: float) -> Optional[float]:
        """How long the main loop may sleep before the next :meth:`check` (None = forever)."""
        waits = []
        if self.timeout and self.accepting:
            waits.append(max(0.0, self.started + self.timeout - now))
        if self.idle_timeout or self.run_once or not self.accepting:
            waits.append(min(IDLE_CHECK_INTERVAL, self.idle_timeout or IDLE_CHECK_INTERVAL))
        return min(waits) if waits else None

    def check(self, now: float, open_sessions: int, sessions_started: int = 0) -> str:
        """"" to go on, "stop accepting", or the reason to exit."""
        if self.run_once and sessions_started and self.accepting:
            self.accepting = False
            return "stop accepting"
        if self.run_once and not self.accepting and open_sessions == 0:
            return "--run-once: the session ended"
        if self.accepting and self.timeout and now - self.started >= self.timeout:
            self.accepting = False
            return "stop accepting"
        if not self.accepting and open_sessions == 0:
            return "--timeout %s passed and no session is open" % config.format_number(self.timeout)
        if self.idle_timeout:
            if open_sessions:
                self.idle_since = None
            elif self.idle_since is None:
                self.idle_since = now
            elif now - self.idle_since >= self.idle_timeout:
                return "--idle-timeout %s: no session open for that long" % (
                    config.format_number(self.idle_timeout))
        return ""


def _reload(server: ProxyServer, settings: Settings, handlers: List[logging.Handler]) -> None:
    """SIGHUP: reopen the log file, re-read tokens and credentials; sessions go on."""
    reopen_logs(settings, handlers)
    logger.info("SIGHUP: log reopened; reloading the token source and the auth file")
    try:
        server.reload()
    except (ConfigError, OSError) as exc:
        logger.error("SIGHUP: reload failed, keeping the previous tables: %s", exc)
    except Exception:  # a bug: keep serving, and leave the details in the log
        logger.exception("SIGHUP: reload failed")
    if settings.cert:
        # Apart from the tables: a bad certificate must not stop a token reload.
        try:
            server.reload_tls()
        except ConfigError as exc:
            logger.error("SIGHUP: keeping the previous certificate: %s", exc)
        else:
            logger.info("SIGHUP: certificate reloaded from %s", settings.cert)


def _stop(server: ProxyServer) -> int:
    """Stop accepting, close sessions with 1001 (waiting a few seconds), release the port."""
    server.shutdown()
    server.server_close()
    logger.info("stopped")
    return 0


def _changed_options(settings: Settings) -> str:
    # Shown through redact_value: no secret in the -v dump (see wsproxy.redact).
    changed = ["%s=%s" % (option.key, redact.redact_value(
                   option.field, config.format_value(option, getattr(settings, option.field))))
               for option in config.OPTION_FOR_FIELD.values()
               if getattr(settings, option.field) != getattr(_DEFAULTS, option.field)
               and not _secret(settings, option.field)]
    return ", ".join(changed) or "none"


def _secret(settings: Settings, field: str) -> bool:
    """True for an option whose value may hold a password, never logged: a plugin's
    argument (BasicHTTPAuth's USER:PASSWORD, TokenRedis's host:port:db:password)."""
    return field == "auth_source" or (field == "token_source" and bool(settings.token_plugin))


def _listen_text(settings: Settings, server: Optional[ProxyServer] = None) -> str:
    followers = getattr(server, "followers", None)
    if server is not None and followers is not None:
        addresses = [server.server_address] + [f.server_address for f in followers]
        return "%s %s" % ("--inetd's standard input" if settings.inetd else "inherited socket(s)",
                          ", ".join(_address_text(address) for address in addresses))
    if settings.unix_listen:
        return "unix:%s (mode %04o)" % (settings.unix_listen, settings.unix_listen_mode)
    port = server.server_address[1] if server is not None else settings.listen_port
    host = settings.listen_host or "*"
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)


def _target_text(settings: Settings) -> str:
    if settings.unix_target:
        return "unix:" + settings.unix_target
    if settings.target_host:
        return config.format_target(settings)
    if settings.token_plugin:
        return "the targets of --token-plugin %s" % settings.token_plugin
    return "the targets of --token-source %s" % redact.redact_text(settings.token_source)


def _address_text(address) -> str:
    if isinstance(address, tuple):
        return ("[%s]:%d" if ":" in address[0] else "%s:%d") % address[:2]
    return "unix:%s" % address
