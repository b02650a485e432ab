"""A proxy embedded in a larger program: a dashboard and the proxy in one process.

The program's own web page (``http.server``, main thread) shows how many
sessions the proxy, serving in a background thread, has open.  Run it from
the checkout (or anywhere after ``pip install .``)::

    PYTHONPATH=. python3 examples/embedded_thread.py --port 8080 \\
        --dashboard-port 8081 --target 127.0.0.1:5900

WebSocket clients connect to ws://127.0.0.1:8080/, the dashboard is at
http://127.0.0.1:8081/ (port 0: any free port; both are printed).  Ctrl-C
stops both, closing open sessions with 1001 (going away).
"""

import argparse
import http.server
import json
import logging
import threading

from wsproxy import ProxyServer, Settings


def main() -> None:
    parser = argparse.ArgumentParser(description="wsproxy inside a program with a dashboard")
    parser.add_argument("--port", type=int, default=8080, help="WebSocket port")
    parser.add_argument("--dashboard-port", type=int, default=8081, help="dashboard port")
    parser.add_argument("--target", default="127.0.0.1:5900", help="HOST:PORT to proxy to")
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    if not host or not port.isdigit():
        parser.error("--target: expected HOST:PORT, got %r" % args.target)
    logging.basicConfig(level=logging.INFO)  # the program, not wsproxy, sets up logging

    proxy = ProxyServer(("127.0.0.1", args.port), Settings(target_host=host, target_port=int(port)))

    class Dashboard(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"open_sessions": proxy.open_sessions}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    dashboard = http.server.ThreadingHTTPServer(("127.0.0.1", args.dashboard_port), Dashboard)
    threading.Thread(target=proxy.serve_forever, name="wsproxy", daemon=True).start()
    print("proxy listening on 127.0.0.1:%d" % proxy.server_address[1], flush=True)
    print("dashboard listening on 127.0.0.1:%d" % dashboard.server_address[1], flush=True)
    try:
        dashboard.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        proxy.shutdown()  # stops accepting, closes every session with 1001
        proxy.server_close()
        dashboard.server_close()
        print("stopped", flush=True)


if __name__ == "__main__":
    main()
