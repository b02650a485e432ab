"""A program for wrap mode tests: a TCP echo server on the port wsproxy gives it.

``python3 wrapped_echo.py [PORT] [--log FILE] [--exit-after N] [--status S] [--never-listen]``

The port is the argument (``{port}`` on wsproxy's command line) or, without
one, ``$WSPROXY_WRAP_PORT``.  ``--log FILE`` appends "start PID PORT" when it
starts, "listen PID" once it listens and "stop PID" when SIGTERM ends it.  ``--exit-after N`` exits with
``--status`` (default 0) after N connections ended; ``--never-listen`` exits
at once with that status.
"""

import argparse
import os
import signal
import socket
import sys


def log(path, line):
    if path:
        with open(path, "a") as stream:
            stream.write(line + "\n")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("port", nargs="?")
    parser.add_argument("--log")
    parser.add_argument("--exit-after", type=int, default=0)
    parser.add_argument("--status", type=int, default=0)
    parser.add_argument("--never-listen", action="store_true")
    args = parser.parse_args()
    port = int(args.port or os.environ["WSPROXY_WRAP_PORT"])
    log(args.log, "start %d %d" % (os.getpid(), port))
    if args.never_listen:
        return args.status

    def stop(_signum, _frame):
        log(args.log, "stop %d" % os.getpid())
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(8)
    log(args.log, "listen %d" % os.getpid())
    served = 0
    while True:
        connection, _ = listener.accept()
        with connection:
            while True:
                data = connection.recv(65536)
                if not data:
                    break
                connection.sendall(data)
        served += 1
        if args.exit_after and served >= args.exit_after:
            return args.status


if __name__ == "__main__":
    sys.exit(main())
