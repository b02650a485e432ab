"""Per-user targets: ws://HOST:PORT/user/NAME is relayed to NAME's own target.

The handler overrides ``select_target``; an unknown user (or any other path)
is refused with 404 before any target is contacted.  Run it from the
checkout (or anywhere after ``pip install .``)::

    PYTHONPATH=. python3 examples/per_user_targets.py --port 8080 \\
        --user alice=127.0.0.1:5901 --user bob=127.0.0.1:5902

Port 0 picks a free port (printed at start).  In a real program the table
would come from your user database and ``check_request`` would first check
who is asking.  Ctrl-C stops it.
"""

import argparse
from typing import Dict

from wsproxy import HandshakeError, ProxyRequestHandler, ProxyServer, Request, Target


class PerUserHandler(ProxyRequestHandler):
    """Chooses the target from the request path ``/user/NAME``."""

    #: User name -> where that user's sessions go.
    targets: Dict[str, Target] = {}

    def select_target(self, request: Request) -> Target:
        parts = request.path.split("/")  # "/user/alice" -> ["", "user", "alice"]
        if len(parts) == 3 and parts[1] == "user" and parts[2] in self.targets:
            return self.targets[parts[2]]
        raise HandshakeError(404, "no such user")


def user_target(text: str):
    """``NAME=HOST:PORT`` -> ``(NAME, Target)``; argparse reports a ValueError."""
    name, _, address = text.partition("=")
    host, _, port = address.rpartition(":")
    if not name or not host:
        raise ValueError(text)
    return name, Target(host=host, port=int(port))


def main() -> None:
    parser = argparse.ArgumentParser(description="wsproxy with a target per user")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--user", type=user_target, action="append", default=[],
                        metavar="NAME=HOST:PORT", help="a user and their target (repeatable)")
    args = parser.parse_args()
    PerUserHandler.targets = dict(args.user)
    server = ProxyServer(("127.0.0.1", args.port), handler_class=PerUserHandler)
    print("listening on 127.0.0.1:%d" % server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()  # closes open sessions with 1001
        server.server_close()


if __name__ == "__main__":
    main()
