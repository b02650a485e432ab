"""``--token-plugin``, ``--auth-plugin`` and ``--auth-source`` on the command line and in config files.

Real child processes (``python -m wsproxy``), a real Redis for the token
plugin, and a real WebSocket session through the started proxy.
"""

import base64
import os

import pytest

from conftest import free_port
from test_cli import foreground, run_wsproxy  # noqa: F401  (the fixture is used by name)
from test_config import printed_values
from wsclient import OP_BINARY, open_session

from wsproxy.config import parse_config


def test_redis_and_basic_auth_from_the_command_line(foreground, redis_server, make_target):
    redis = redis_server(password="topsecret")
    target = make_target(send_on_connect=b"C")
    redis.set("desk", "127.0.0.1:%d" % target.port)
    port = free_port()
    child = foreground("-f", "-v", "--token-plugin", "TokenRedis",
                       "--token-source", "127.0.0.1:%d:0:topsecret" % redis.port,
                       "--auth-plugin", "BasicHTTPAuth", "--auth-source", "alice:hunter2",
                       "127.0.0.1:%d" % port)
    child.wait_listening(port)
    credentials = "Basic " + base64.b64encode(b"alice:hunter2").decode()
    with open_session(port, protocols=["binary"], path="/?token=desk",
                      headers={"Authorization": credentials}) as ws:
        assert ws.recv_stream(1, opcode=OP_BINARY) == b"C"
        ws.send_close(1000)
        ws.recv_close()
    output = child.output()
    assert "--token-plugin TokenRedis" in output
    # Neither plugin argument reaches the log, at any verbosity.
    assert "topsecret" not in output and "hunter2" not in output
    assert "Traceback" not in output


@pytest.mark.parametrize("args, message", [
    (["--token-plugin", "NoSuchPlugin"], "token-plugin: no built-in plugin 'NoSuchPlugin'"),
    (["--token-plugin", "nosuchmodule.Plugin"], "token-plugin: cannot import nosuchmodule"),
    (["--token-plugin", "TokenFile", "--token-source", "/nonexistent/tokens"],
     "token-source: /nonexistent/tokens does not exist"),
    (["--token-plugin", "TokenRedis", "--token-source", "h:notaport"], "token-source: TokenRedis"),
    (["--token-plugin", "JWTTokenApi"], "token-source: JWTTokenApi needs a key file"),
    (["--auth-source", "x", "--unix-target", "/nonexistent"], "auth-source: needs --auth-plugin"),
    (["--auth-plugin", "BasicHTTPAuth", "--unix-target", "/x"], "auth-source: BasicHTTPAuth"),
], ids=["unknown", "unimportable", "missing-file", "redis-source", "jwt-no-key", "source-alone",
        "basic-no-source"])
def test_bad_plugin_options_exit_2_naming_the_option(args, message):
    result = run_wsproxy("-f", *(args + [str(free_port())]))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("source", ["redis.example:6379:1", "my-redis-host"])
def test_token_plugin_needs_no_target_and_keeps_its_source_as_given(source):
    # websockify's own example: --token-source my-redis-host (no path, no colon).
    result = run_wsproxy("--print-config", "--token-plugin", "TokenRedis",
                         "--token-source", source, "8080")
    assert result.returncode == 0, result.stderr
    values = printed_values(result.stdout)
    assert values["token-plugin"] == "TokenRedis"
    assert values["token-source"] == source
    # The printed file reads back to the same values.
    assert parse_config(result.stdout)["token_source"] == source


def test_config_file_keys(tmp_path):
    (tmp_path / "tokens").write_text("a: h:1\n")
    values = parse_config("[wsproxy]\ntoken-plugin = ReadOnlyTokenFile\ntoken-source = tokens\n"
                          "auth-plugin = ExpectOrigin\nauth-source = https://a https://b\n",
                          base_dir=str(tmp_path))
    assert values == {"token_plugin": "ReadOnlyTokenFile",
                      "token_source": os.path.join(str(tmp_path), "tokens"),
                      "auth_plugin": "ExpectOrigin", "auth_source": "https://a https://b"}
    # In either order, a plugin that is not file-based gets its argument as written.
    for text in ("token-source = my-redis-host\ntoken-plugin = TokenRedis\n",
                 "token-plugin = TokenRedis\ntoken-source = my-redis-host\n",
                 "token-plugin = mymodule.Plugin\ntoken-source = tokens\n"):
        source = parse_config("[wsproxy]\n" + text, base_dir=str(tmp_path))["token_source"]
        assert source == text.split("token-source = ")[1].split("\n")[0]


def test_plugin_passwords_are_masked_in_every_log_line():
    from wsproxy import Settings
    from wsproxy.redact import SecretFilter, secrets_in
    settings = Settings(auth_plugin="BasicHTTPAuth", auth_source="alice:hunter22",
                        token_plugin="websockify.token_plugins.TokenRedis",
                        token_source='redis:6379:0:"pw:1234":ns')
    secrets = secrets_in(settings)
    assert {"hunter22", "pw:1234"} <= secrets
    import logging
    record = logging.LogRecord("wsproxy", logging.WARNING, __file__, 1,
                               "redis said %s after %s", ("pw:1234", "hunter22"), None)
    SecretFilter(secrets).filter(record)
    assert "pw:1234" not in record.getMessage() and "hunter22" not in record.getMessage()
