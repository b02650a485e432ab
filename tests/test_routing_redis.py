"""Tests for wsproxy/routing/redis.py: TokenRedis against a real redis-server.

The server is started by the ``redis_server`` fixture on a free port (no
persistence) and stopped after; the tests skip where redis-server is not
installed.
"""

import socket

import pytest

from conftest import free_port
from wsclient import OP_BINARY, open_session

from wsproxy import ConfigError, Target
from wsproxy.routing import PluginTokens, TokenLookupError


def test_plain_and_json_values(redis_server):
    redis = redis_server()
    redis.set("plain", "10.0.0.1:5900")
    redis.set("json", '{"host": "vnc.example:5901"}')
    redis.set("spaced", "  10.0.0.2:5902 \n")
    tokens = PluginTokens("TokenRedis", "127.0.0.1:%d" % redis.port)
    assert tokens.lookup("plain") == Target(host="10.0.0.1", port=5900)
    assert tokens.lookup("json") == Target(host="vnc.example", port=5901)
    assert tokens.lookup("spaced") == Target(host="10.0.0.2", port=5902)
    assert tokens.lookup("nosuch") is None


@pytest.mark.parametrize("value", ["no-port", '{"port": 1}', '{"host": "h"}', "{not json",
                                   "a:b:c"])
def test_unusable_values_give_503_with_a_reason(redis_server, value):
    redis = redis_server()
    redis.set("bad", value)
    tokens = PluginTokens("TokenRedis", "127.0.0.1:%d" % redis.port)
    with pytest.raises(TokenLookupError, match="expected host:port"):
        tokens.lookup("bad")


def test_database_password_and_namespace(redis_server):
    redis = redis_server(password="s3cret:pw")
    redis.set("app:ns:desk", "10.0.0.3:5903", db=2)
    redis.set("desk", "10.0.0.4:5904", db=2)
    source = '127.0.0.1:%d:2:"s3cret:pw":"app:ns"' % redis.port
    tokens = PluginTokens("TokenRedis", source)
    assert tokens.lookup("desk") == Target(host="10.0.0.3", port=5903)
    assert tokens.lookup("nosuch") is None
    without_namespace = PluginTokens("TokenRedis", '127.0.0.1:%d:2:"s3cret:pw"' % redis.port)
    assert without_namespace.lookup("desk") == Target(host="10.0.0.4", port=5904)
    wrong = PluginTokens("TokenRedis", "127.0.0.1:%d:2:wrong" % redis.port)
    with pytest.raises(TokenLookupError) as caught:
        wrong.lookup("desk")
    assert "wrong" not in str(caught.value) and "error" in str(caught.value)
    missing = PluginTokens("TokenRedis", "127.0.0.1:%d" % redis.port)
    with pytest.raises(TokenLookupError, match="NOAUTH"):
        missing.lookup("desk")


def test_empty_fields_keep_their_defaults(redis_server):
    redis = redis_server()
    redis.set("ns:t", "h:1")
    tokens = PluginTokens("TokenRedis", "127.0.0.1:%d:::ns" % redis.port)
    assert (tokens.plugin.db, tokens.plugin.password, tokens.plugin.namespace) == (0, None, "ns:")
    assert tokens.lookup("t") == Target(host="h", port=1)
    default = PluginTokens("TokenRedis", "redis.example")
    assert (default.plugin.host, default.plugin.port, default.plugin.db) == ("redis.example",
                                                                             6379, 0)


@pytest.mark.parametrize("source", ["", ":6379", "h:port", "h:1:db", "h:1:0:p:n:extra", "h:0"])
def test_malformed_sources_are_config_errors(source):
    with pytest.raises(ConfigError, match="token-source: TokenRedis"):
        PluginTokens("TokenRedis", source)


def test_redis_down_or_silent_gives_503_in_time():
    port = free_port()
    with pytest.raises(TokenLookupError, match="unreachable"):
        PluginTokens("TokenRedis", "127.0.0.1:%d" % port).lookup("t")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        tokens = PluginTokens("TokenRedis", "127.0.0.1:%d" % silent.getsockname()[1])
        tokens.plugin.timeout = 0.3
        with pytest.raises(TokenLookupError, match="no answer in 0.3 s"):
            tokens.lookup("t")


def test_redis_routes_through_the_proxy(proxy, make_target, redis_server, wsproxy_log):
    redis = redis_server()
    target = make_target(send_on_connect=b"R")
    redis.set("desk", '{"host": "127.0.0.1:%d"}' % target.port)
    running = proxy(target_port=1, token_plugin="TokenRedis",
                    token_source="127.0.0.1:%d" % redis.port)
    with open_session(running.port, protocols=["binary"], path="/?token=desk") as ws:
        assert ws.recv_stream(1, opcode=OP_BINARY) == b"R"
        ws.send_close(1000)
        ws.recv_close()
    with running.client() as ws:
        ws.handshake(expect_status=404, path="/?token=other")
    redis.stop()
    with running.client() as ws:
        ws.handshake(expect_status=503, path="/?token=desk")
    wsproxy_log.wait_for(lambda text: "redis 127.0.0.1:%d" % redis.port in text
                         and "unreachable" in text, what="one log line naming the Redis server")
    assert len(target.connections) == 1
