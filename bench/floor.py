#!/usr/bin/env python3
"""The floor of wsproxy's shape: the least a thread-per-connection Python proxy can do.

A ``socketserver.ThreadingTCPServer``, one thread per connection that does
the handshake and then pumps client to target, one more thread pumping
target to client: the shape wsproxy keeps.  It does only what the sessions
benchmark needs (RFC 6455 binary frames, unmasked with a loop, no
fragmentation, no control frames but close) and nothing a real proxy must:
no limits, no timeouts, no logs, no validation.  Not a proxy to use: a
yardstick.  Where wsproxy is near it, the remaining gap to websocat is the
cost of the shape (threads sharing one GIL), not of wsproxy's own work.

Usage (as the benchmark starts every proxy): ``floor.py LISTEN TARGET``.
"""

import base64
import hashlib
import socket
import socketserver
import struct
import sys
import threading

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        client = self.request
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = client.recv(4096)
            if not chunk:
                return
            data += chunk
        head, data = data.split(b"\r\n\r\n", 1)
        key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        target = socket.create_connection(self.server.target)
        target.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                       b"Connection: Upgrade\r\nSec-WebSocket-Protocol: binary\r\n"
                       b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        threading.Thread(target=downstream, args=(target, client), daemon=True).start()
        try:
            while True:
                while len(data) >= 6:
                    length, start = data[1] & 0x7F, 2
                    if length == 126:
                        length, start = struct.unpack_from("!H", data, 2)[0], 4
                    elif length == 127:
                        length, start = struct.unpack_from("!Q", data, 2)[0], 10
                    end = start + 4 + length
                    if len(data) < end:
                        break
                    mask = data[start:start + 4]
                    payload = bytes(b ^ mask[i & 3] for i, b in enumerate(data[start + 4:end]))
                    opcode, data = data[0] & 0x0F, data[end:]
                    if opcode == 8:
                        client.sendall(b"\x88\x02\x03\xe8")
                        return
                    target.sendall(payload)
                chunk = client.recv(65536)
                if not chunk:
                    return
                data += chunk
        finally:
            try:
                target.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def downstream(target: socket.socket, client: socket.socket) -> None:
    try:
        while True:
            data = target.recv(65536)
            if not data:
                return
            size = len(data)
            header = bytes((0x82, size)) if size < 126 else struct.pack("!BBH", 0x82, 126, size)
            client.sendall(header + data)
    except OSError:
        pass
    finally:
        target.close()


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 4096


def main() -> None:
    listen, target = sys.argv[-2], sys.argv[-1]
    host, port = listen.rsplit(":", 1)
    server = Server((host, int(port)), Handler)
    target_host, target_port = target.rsplit(":", 1)
    server.target = (target_host, int(target_port))
    sys.setswitchinterval(0.5)  # as wsproxy's command line sets it
    server.serve_forever()


if __name__ == "__main__":
    main()
