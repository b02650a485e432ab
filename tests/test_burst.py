"""A burst of prompt clients from one address is served, not reset.

Thousands of sessions opened at once fill the pending-handshake bound only
because their threads have not all run yet: the accept loop waits for
places to free (the listen backlog holds the rest) instead of resetting
connections whose requests are already waiting.
"""

import time

import wsproxy.server as server_module
from wsclient import WSClient
from wsproxy.handler import ProxyRequestHandler

BURST = 30


def test_a_burst_past_the_handshake_bound_is_served_not_reset(proxy, monkeypatch):
    monkeypatch.setattr(server_module, "MAX_PENDING_HANDSHAKES", 3)
    original = ProxyRequestHandler.select_target

    def slow_select_target(self, request):
        time.sleep(0.02)  # a target lookup that takes a while: handshakes stay pending
        return original(self, request)

    monkeypatch.setattr(ProxyRequestHandler, "select_target", slow_select_target)
    running = proxy()
    clients = [WSClient(running.port) for _ in range(BURST)]
    try:
        for client in clients:  # every request is sent before any answer is read
            client.send_request()
        for index, client in enumerate(clients):
            client.read_response()
            assert client.response.status == 101, "client %d: %s" % (index, client.response.status)
            client.send_binary(b"n%d" % index)
            assert client.recv_stream(len(b"n%d" % index)) == b"n%d" % index
    finally:
        for client in clients:
            client.close()
