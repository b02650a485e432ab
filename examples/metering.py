"""Metering: count each session's bytes through the payload hooks.

``client_data`` and ``target_data`` see every chunk of payload (returning
None forwards it unchanged); ``session_ended`` prints one line per session::

    session 1 127.0.0.1:50312 -> 127.0.0.1:5900: 5 bytes up, 12 bytes down, close 1000

Run it from the checkout (or anywhere after ``pip install .``)::

    PYTHONPATH=. python3 examples/metering.py --port 8080 --target 127.0.0.1:5900

Port 0 picks a free port (printed at start).  Ctrl-C stops it.
"""

import argparse

from wsproxy import ProxyRequestHandler, ProxyServer, SessionInfo, Settings


class MeteringHandler(ProxyRequestHandler):
    """Counts payload bytes each way; one handler object serves one session."""

    def session_started(self, session: SessionInfo) -> None:
        self.up = self.down = 0  # runs before any payload moves

    def client_data(self, data: memoryview) -> None:
        self.up += len(data)  # the session's own thread
        return None

    def target_data(self, data: memoryview) -> None:
        self.down += len(data)  # the session's target-to-client thread
        return None

    def session_ended(self, session: SessionInfo) -> None:
        print("session %d %s -> %s: %d bytes up, %d bytes down, close %s"
              % (session.number, session.client_text, session.target,
                 self.up, self.down, session.close_code), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="wsproxy printing per-session byte counts")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--target", default="127.0.0.1:5900", help="HOST:PORT to proxy to")
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    if not host or not port.isdigit():
        parser.error("--target: expected HOST:PORT, got %r" % args.target)
    settings = Settings(target_host=host, target_port=int(port))
    server = ProxyServer(("127.0.0.1", args.port), settings, MeteringHandler)
    print("listening on 127.0.0.1:%d" % server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()  # closes open sessions with 1001: their lines print too
        server.server_close()


if __name__ == "__main__":
    main()
