"""Write one ``--auth-file`` line: ``python3 -m wsproxy.passwd USER [--iterations N]``.

On a terminal the password is read twice without echo and must match; when
standard input is not a terminal one line is read from it (for scripts).  The
line ``USER:pbkdf2_sha256$...`` goes to standard output, messages to standard
error.  Exit status: 0 written, 1 no usable password, 2 bad usage.
"""

import argparse
import getpass
import sys
from typing import List, Optional

from wsproxy.auth import DEFAULT_ITERATIONS, MAX_ITERATIONS, hash_password

EXIT_OK = 0
EXIT_NO_PASSWORD = 1
EXIT_USAGE = 2


class _NoPassword(Exception):
    """No usable password was given; the message says why."""


def user_name_problem(user: str) -> Optional[str]:
    """Say what is wrong with ``user`` as an auth-file user name, or ``None``.

    RFC 7617 §2: a user-id cannot contain a colon; white space or control
    characters would not survive the auth file's line format.
    """
    if not user:
        return "the user name is empty"
    if ":" in user:
        return "a user name cannot contain ':'"
    if any(ch.isspace() or not ch.isprintable() for ch in user):
        return "a user name cannot contain white space or control characters"
    return None


def _iterations(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a whole number, got %r" % text) from None
    if not 1 <= value <= MAX_ITERATIONS:
        raise argparse.ArgumentTypeError("expected 1-%d, got %d" % (MAX_ITERATIONS, value))
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m wsproxy.passwd",
        description="Print an --auth-file line for USER; the password is read "
                    "without echo (or one line from standard input when it is "
                    "not a terminal).")
    parser.add_argument("user", metavar="USER", help="the user name (no ':' or white space)")
    parser.add_argument("--iterations", type=_iterations, default=DEFAULT_ITERATIONS,
                        metavar="N", help="PBKDF2 iterations (default %d)" % DEFAULT_ITERATIONS)
    return parser


def _read_from_terminal(user: str) -> str:
    try:
        first = getpass.getpass("Password for %s: " % user)
        second = getpass.getpass("Repeat password: ")
    except (EOFError, KeyboardInterrupt):
        raise _NoPassword("no password entered") from None
    if first != second:
        raise _NoPassword("the passwords do not match")
    return first


def _read_from_pipe() -> str:
    line = sys.stdin.buffer.readline()
    if not line:
        raise _NoPassword("no password on standard input")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise _NoPassword("the password is not UTF-8") from None
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    return text


def main(argv: Optional[List[str]] = None) -> int:
    """Run the tool; return the exit status."""
    args = _parser().parse_args(argv)
    problem = user_name_problem(args.user)
    if problem is not None:
        print("wsproxy.passwd: %s" % problem, file=sys.stderr)
        return EXIT_USAGE
    try:
        if sys.stdin is None:
            raise _NoPassword("standard input is closed")
        password = _read_from_terminal(args.user) if sys.stdin.isatty() else _read_from_pipe()
        if not password:
            raise _NoPassword("the password is empty")
    except _NoPassword as exc:
        print("wsproxy.passwd: %s" % exc, file=sys.stderr)
        return EXIT_NO_PASSWORD
    print("%s:%s" % (args.user, hash_password(password, args.iterations)))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
