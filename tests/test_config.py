"""Config files, every option's spelling, ``--print-config`` and option errors.

The pure reader (:mod:`wsproxy.config`) is tested in-process; everything
the operator types is tested through ``python -m wsproxy`` run as a real
child process (:func:`conftest.run_wsproxy`, the ``wsproxy_process`` fixture).
"""

import dataclasses
import os
import re
from pathlib import Path
from typing import List

import pytest

from conftest import ROOT, echo_round_trip, free_port
# Shared from conftest.py; older test files import them from here.
from conftest import WsproxyProcess, port_listens, run_wsproxy, wsproxy_process  # noqa: F401
from wsproxy import config
from wsproxy.settings import ConfigError, Settings

EXAMPLE = Path(ROOT) / "wsproxy.conf.example"

#: A ``# key = value`` line of the example file (an option shown with its default).
EXAMPLE_OPTION_LINE = re.compile(r"^# ([a-z][a-z0-9-]*) =(?: (.*))?$")


# -- running the command line ---------------------------------------------------------


def write_config(path: Path, body: str) -> str:
    path.write_text(body, encoding="utf-8")
    return str(path)


def printed_values(text: str) -> dict:
    """``key -> value`` of a ``--print-config`` output."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


# -- the option table -----------------------------------------------------------------


def test_every_settings_field_has_an_option():
    assert config.fields_without_option() == []
    for field in dataclasses.fields(Settings):
        if field.name in config.POSITIONAL_FIELDS:
            continue
        option = config.OPTION_FOR_FIELD[field.name]
        assert option.key.replace("-", "_") == field.name, \
            "option --%s does not match the field name %s" % (option.key, field.name)


def test_every_option_is_in_help():
    result = run_wsproxy("--help")
    assert result.returncode == 0, result.stderr
    for option in config.OPTIONS:
        for flag in option.flags:
            assert re.search(r"(^|[\s,])%s\b" % re.escape(flag), result.stdout), \
                "--help does not show %s" % flag
    for flag in ("-c", "--config", "--print-config"):
        assert flag in result.stdout


def test_every_option_has_a_config_key():
    for option in config.OPTIONS:
        for flag in option.flags:
            if flag.startswith("--"):
                assert flag[2:] in config.CONFIG_KEYS
        assert option.field.replace("_", "-") in config.CONFIG_KEYS


# -- the example file -----------------------------------------------------------------


def uncommented_example() -> str:
    """The example file with every ``# key = default`` line made active."""
    lines = []
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = EXAMPLE_OPTION_LINE.match(line)
        lines.append(line[2:] if match else line)
    return "\n".join(lines) + "\n"


def example_keys() -> List[str]:
    return [match.group(1) for match in map(EXAMPLE_OPTION_LINE.match,
                                            EXAMPLE.read_text(encoding="utf-8").splitlines())
            if match]


def test_example_documents_every_option_once():
    keys = example_keys()
    assert len(keys) == len(set(keys)), "an option is listed twice in the example"
    expected = {option.key for option in config.OPTION_FOR_FIELD.values()}
    expected |= {config.LISTEN_KEY, config.TARGET_KEY}
    assert set(keys) == expected


def test_example_lists_every_settings_field():
    text = EXAMPLE.read_text(encoding="utf-8")
    for field in dataclasses.fields(Settings):
        if field.name.startswith("listen_"):
            key = "listen"
        elif field.name in ("target_host", "target_port"):
            key = "target"
        else:
            key = field.name.replace("_", "-")
        assert re.search(r"^# %s =" % re.escape(key), text, re.MULTILINE), \
            "wsproxy.conf.example does not list %s" % key


def test_example_groups_follow_the_option_table():
    text = EXAMPLE.read_text(encoding="utf-8")
    headings = re.findall(r"^# -- (.+?) -+$", text, re.MULTILINE)
    assert headings == list(config.GROUPS)
    current = None
    for line in text.splitlines():
        heading = re.match(r"^# -- (.+?) -+$", line)
        if heading:
            current = heading.group(1)
        match = EXAMPLE_OPTION_LINE.match(line)
        if match and match.group(1) not in (config.LISTEN_KEY, config.TARGET_KEY):
            option = config.OPTION_FOR_FIELD[config.CONFIG_KEYS[match.group(1)][0].field]
            assert option.group == current, "%s is under %s, not %s" % (
                option.key, current, option.group)


def test_example_defaults_are_the_real_defaults(tmp_path):
    path = write_config(tmp_path / "example.conf", uncommented_example())
    values = config.read_config_file(path)
    defaults = Settings()
    for field in dataclasses.fields(Settings):
        if field.name in config.POSITIONAL_FIELDS:
            continue
        loaded = values.get(field.name, getattr(defaults, field.name))
        assert loaded == getattr(defaults, field.name), \
            "wsproxy.conf.example says %s = %r, the default is %r" % (
                field.name, loaded, getattr(defaults, field.name))


def test_uncommented_example_loads_on_the_command_line(tmp_path):
    path = write_config(tmp_path / "example.conf", uncommented_example())
    result = run_wsproxy("-c", path, "--print-config")
    assert result.returncode == 0, result.stderr
    printed = printed_values(result.stdout)
    assert printed["listen"] == "8080"
    assert printed["target"] == "localhost:5900"
    assert printed["handshake-timeout"] == "10"
    assert printed["unix-listen-mode"] == "0600"


# -- the reader, in-process -----------------------------------------------------------


def parse(body: str, base_dir: str = "/etc/wsproxy") -> dict:
    return config.parse_config("[wsproxy]\n" + body, "test.conf", base_dir)


@pytest.mark.parametrize("word,value", [
    ("yes", True), ("no", False), ("true", True), ("false", False), ("on", True),
    ("off", False), ("1", True), ("0", False), ("YES", True), ("Off", False)])
def test_booleans(word, value):
    assert parse("ssl-only = %s\n" % word) == {"ssl_only": value}


def test_keys_take_dashes_or_underscores_and_any_case():
    values = parse("handshake_timeout = 2.5\nMax-Connections = 7\nssl_only = yes\n")
    assert values == {"handshake_timeout": 2.5, "max_connections": 7, "ssl_only": True}


@pytest.mark.parametrize("body", [
    "origin = https://a.example\n    https://b.example\n    https://c.example\n",
    "origin = https://a.example, https://b.example,https://c.example\n",
    "origin = https://a.example https://b.example  https://c.example\n",
])
def test_lists_take_lines_commas_or_spaces(body):
    assert parse(body) == {"origin": ["https://a.example", "https://b.example",
                                      "https://c.example"]}


def test_trusted_proxy_list_holds_ip_addresses():
    assert parse("trusted-proxy = 127.0.0.1\n  ::1\n") == {"trusted_proxy": ["127.0.0.1", "::1"]}
    with pytest.raises(ConfigError, match=r"test.conf:2: trusted-proxy: expected an IP address"):
        parse("trusted-proxy = 127.0.0.1, proxy.example\n")


def test_negative_spellings_of_booleans():
    assert parse("no-flash-policy = yes\n") == {"flash_policy": False}
    assert parse("flash-policy = no\n") == {"flash_policy": False}
    assert parse("daemon = yes\n") == {"foreground": False}
    assert parse("daemon = no\n") == {"foreground": True}


def test_positionals_as_keys():
    assert parse("listen = [::1]:8080\ntarget = example.com:5900\n") == {
        "listen_host": "::1", "listen_port": 8080,
        "target_host": "example.com", "target_port": 5900}
    assert parse("listen = 8080\ntarget = unix:vnc.sock\n") == {
        "listen_host": "", "listen_port": 8080, "unix_target": "/etc/wsproxy/vnc.sock"}


def test_relative_paths_start_at_the_config_files_directory():
    values = parse("cert = tls/server.pem\nlog-file = /var/log/wsproxy.log\nweb = ../www\n")
    assert values == {"cert": "/etc/wsproxy/tls/server.pem",
                      "log_file": "/var/log/wsproxy.log", "web": "/etc/www"}


def test_empty_values_leave_options_unset():
    assert parse("cert =\norigin =\nsyslog =\ntarget =\n") == {
        "cert": None, "origin": [], "syslog": None}


@pytest.mark.parametrize("text,value", [
    ("yes", ""), ("on", ""), ("no", None), ("/dev/log", "/dev/log"),
    ("loghost", "loghost"), ("loghost:5514", "loghost:5514"), ("[::1]:514", "[::1]:514")])
def test_syslog_values(text, value):
    assert parse("syslog = %s\n" % text) == {"syslog": value}


def test_special_values():
    assert parse("unix-listen-mode = 0660\n") == {"unix_listen_mode": 0o660}
    assert parse("unix-listen-mode = 0o600\n") == {"unix_listen_mode": 0o600}
    assert parse("workers = auto\n") == {"workers": os.cpu_count() or 1}
    assert parse("ssl-version = TLSv1_3\n") == {"ssl_version": "tlsv1_3"}
    assert parse("token-source = tokens\n") == {"token_source": "/etc/wsproxy/tokens"}
    assert parse("target-config = tokens\n") == {"token_source": "/etc/wsproxy/tokens"}


def test_percent_signs_are_literal():
    assert parse("ssl-ciphers = HIGH:!aNULL:%x\n") == {"ssl_ciphers": "HIGH:!aNULL:%x"}


@pytest.mark.parametrize("body,message", [
    ("handshake-timeout = soon\n", r"test.conf:2: handshake-timeout: expected a number"),
    ("handshake-timeout = 0\n", r"test.conf:2: handshake-timeout: .*greater than 0"),
    ("session-timeout = -1\n", r"test.conf:2: session-timeout: expected"),
    ("heartbeat = nan\n", r"test.conf:2: heartbeat: expected"),
    ("max-connections = 1.5\n", r"test.conf:2: max-connections: expected a whole number"),
    ("unix-listen-mode = 0999\n", r"test.conf:2: unix-listen-mode: expected an octal"),
    ("unix-listen-mode = 01777\n", r"test.conf:2: unix-listen-mode: expected an octal"),
    ("ssl-version = tlsv9\n", r"test.conf:2: ssl-version: expected one of tlsv1_1"),
    ("ssl-only = maybe\n", r"test.conf:2: ssl-only: expected yes/no"),
    ("status = status\n", r"test.conf:2: status: expected a URL path"),
    ("workers = 0\n", r"test.conf:2: workers: expected"),
    ("syslog = a:b:c\n", r"test.conf:2: syslog: "),
    ("flash-policy-domain =\n", r"test.conf:2: flash-policy-domain: expected a value"),
    ("listen = 99999\n", r"test.conf:2: listen: expected a port number"),
    ("target = nowhere\n", r"test.conf:2: target: expected HOST:PORT"),
    ("\nhandshake-timout = 3\n", r"test.conf:3: unknown key 'handshake-timout'; did you mean "
                                 r"'handshake-timeout'\?"),
    ("colour = blue\n", r"test.conf:2: unknown key 'colour'"),
    ("origin = a\norigin = b\n", r"test.conf:3: key 'origin' given twice"),
    ("flash_policy = no\nflash-policy = yes\n", r"test.conf:3: 'flash-policy' sets the same"),
    ("just words\n", r"test.conf:2: expected 'key = value', got 'just words'"),
    ("[other]\nkey = 1\n", r"test.conf:2: unknown section \[other\]"),
])
def test_bad_config_text_names_line_and_key(body, message):
    with pytest.raises(ConfigError) as caught:
        parse(body)
    assert re.search(message, str(caught.value)), str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_section_header_and_missing_section():
    with pytest.raises(ConfigError, match=r"^x.conf:1: expected a \[wsproxy\] section header"):
        config.parse_config("listen = 1\n", "x.conf")
    with pytest.raises(ConfigError, match=r"^x.conf: no \[wsproxy\] section"):
        config.parse_config("# nothing\n", "x.conf")


def test_format_config_reads_back_equal():
    settings = Settings(listen_host="::", listen_port=8443, target_host="10.0.0.5",
                        target_port=5901, unix_listen_mode=0o660, ssl_only=True,
                        origin=["https://a.example", "https://b.example"],
                        trusted_proxy=["127.0.0.1"], handshake_timeout=2.5, heartbeat=30.0,
                        flash_policy=False, syslog="", workers=3, cert="/etc/ssl/a b.pem",
                        ssl_ciphers="HIGH:!aNULL", status="/status", foreground=True)
    text = config.format_config(settings)
    assert Settings(**config.parse_config(text, "printed")) == settings
    assert Settings(**config.parse_config(config.format_config(Settings()), "printed")) == \
        Settings()


# -- the command line ---------------------------------------------------------------


def test_print_config_round_trips_through_a_file(tmp_path):
    args = ["-f", "--origin", "https://a.example",
            "--origin", "https://b.example,https://c.example",
            "--handshake-timeout", "2.5", "--unix-listen-mode", "660", "--no-flash-policy",
            "--trusted-proxy", "127.0.0.1", "--workers", "2", "--syslog",
            "--ssl-version", "tlsv1_3",
            "--record", "rec/session", "--status", "/status", "-v", "[::1]:8080", "localhost:5900"]
    first = run_wsproxy("--print-config", *args, cwd=str(tmp_path))
    assert first.returncode == 0, first.stderr
    printed = printed_values(first.stdout)
    assert printed["listen"] == "[::1]:8080"
    assert printed["target"] == "localhost:5900"
    assert printed["origin"] == "https://a.example, https://b.example, https://c.example"
    assert printed["handshake-timeout"] == "2.5"
    assert printed["unix-listen-mode"] == "0660"
    assert printed["flash-policy"] == "no"
    assert printed["syslog"] == "yes"
    assert printed["record"] == str(tmp_path / "rec" / "session")
    assert printed["foreground"] == "yes" and printed["verbose"] == "yes"
    path = write_config(tmp_path / "printed.conf", first.stdout)
    second = run_wsproxy("-c", path, "--print-config")
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout


def test_command_line_overrides_the_file(tmp_path):
    path = write_config(tmp_path / "wsproxy.conf", "\n".join([
        "[wsproxy]", "listen = 127.0.0.1:8080", "unix-target = /run/vnc.sock",
        "handshake-timeout = 5", "origin = https://file.example", "quiet = yes",
        "ssl-only = yes", "foreground = yes", ""]))
    result = run_wsproxy("-c", path, "--print-config", "--handshake-timeout", "7",
                         "--origin", "https://cli.example", "-v", "--no-ssl-only", "-D",
                         "9090", "example.com:5900")
    assert result.returncode == 0, result.stderr
    printed = printed_values(result.stdout)
    assert printed["listen"] == "9090"
    assert printed["target"] == "example.com:5900"
    assert printed["unix-target"] == "", "a command-line target replaces the file's"
    assert printed["handshake-timeout"] == "7"
    assert printed["origin"] == "https://cli.example"
    assert printed["verbose"] == "yes" and printed["quiet"] == "no"
    assert printed["ssl-only"] == "no"
    assert printed["foreground"] == "no"


def test_file_alone_supplies_listen_and_target(tmp_path, wsproxy_process, echo_target):
    port = free_port()
    path = write_config(tmp_path / "wsproxy.conf", "\n".join([
        "[wsproxy]", "listen = 127.0.0.1:%d" % port, "target = %s" % echo_target.address,
        "foreground = yes", "handshake_timeout = 3", ""]))
    child = wsproxy_process("-c", path)
    child.wait_listening(port)
    echo_round_trip(port)


def test_token_source_needs_no_target(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("vnc: 127.0.0.1:5900\n")
    result = run_wsproxy("--print-config", "--token-source", str(tokens), "8080")
    assert result.returncode == 0, result.stderr
    assert printed_values(result.stdout)["token-source"] == str(tokens)


def test_one_positional_with_unix_listen_is_the_target(tmp_path):
    result = run_wsproxy("--print-config", "--unix-listen", "ws.sock", "localhost:5900",
                         cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    printed = printed_values(result.stdout)
    assert printed["unix-listen"] == str(tmp_path / "ws.sock")
    assert printed["target"] == "localhost:5900"
    assert printed["listen"] == ""


BAD_FILES = {
    "unknown-key": ("[wsproxy]\nlisten = 1\ntarget = a:1\nbogus = 3\n", ":4:", "bogus"),
    "bad-value": ("[wsproxy]\nlisten = 1\ntarget = a:1\nhandshake-timeout = -1\n", ":4:",
                  "handshake-timeout"),
    "no-section-header": ("listen = 1\n", ":1:", "[wsproxy]"),
    "no-wsproxy-section": ("[proxy]\nlisten = 1\n", "", "no [wsproxy] section"),
    "duplicate-key": ("[wsproxy]\nlisten = 1\nlisten = 2\n", ":3:", "listen"),
    "duplicate-section": ("[wsproxy]\nlisten = 1\n[wsproxy]\n", ":3:", "[wsproxy]"),
    "bad-boolean": ("[wsproxy]\nlisten = 1\ntarget = a:1\nssl_only = sometimes\n", ":4:",
                    "ssl_only"),
    "not-utf8": (b"[wsproxy]\nlisten = \xff\n", ":2:", "UTF-8"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_config_file_exits_2_naming_file_and_line(tmp_path, case):
    body, where, what = BAD_FILES[case]
    path = tmp_path / "broken.conf"
    if isinstance(body, bytes):
        path.write_bytes(body)
    else:
        path.write_text(body)
    result = run_wsproxy("-f", "-c", str(path))
    assert result.returncode == 2, result
    message = result.stderr.strip()
    assert "\n" not in message and "Traceback" not in message, message
    assert message.startswith("wsproxy: %s%s" % (path, where)), message
    assert what in message, message


def test_missing_or_unreadable_config_file_exits_2(tmp_path):
    missing = tmp_path / "missing.conf"
    result = run_wsproxy("-f", "-c", str(missing))
    assert result.returncode == 2
    assert result.stderr.strip() == ("wsproxy: %s: cannot read the config file: "
                                     "No such file or directory" % missing)
    result = run_wsproxy("-f", "-c", str(tmp_path))
    assert result.returncode == 2
    assert str(tmp_path) in result.stderr and "Traceback" not in result.stderr


BAD_OPTIONS = {
    "negative-handshake-timeout": (["--handshake-timeout", "-1"], "--handshake-timeout"),
    "word-session-timeout": (["--session-timeout", "long"], "--session-timeout"),
    "negative-heartbeat": (["--heartbeat", "-5"], "--heartbeat"),
    "float-max-connections": (["--max-connections", "2.5"], "--max-connections"),
    "zero-max-header-size": (["--max-header-size", "0"], "--max-header-size"),
    "negative-max-message-size": (["--max-message-size", "-1"], "--max-message-size"),
    "negative-timeout": (["--timeout", "-1"], "--timeout"),
    "word-idle-timeout": (["--idle-timeout", "soon"], "--idle-timeout"),
    "non-octal-mode": (["--unix-listen-mode", "999"], "--unix-listen-mode"),
    "mode-too-big": (["--unix-listen-mode", "7777"], "--unix-listen-mode"),
    "tls-version": (["--ssl-version", "tlsv9"], "--ssl-version"),
    "missing-cert": (["--cert", "/nonexistent/cert.pem"], "--cert"),
    "missing-key": (["--cert", "CERT", "--key", "/nonexistent/key.pem"], "--key"),
    "missing-cafile": (["--cafile", "/nonexistent/ca.pem"], "--cafile"),
    "missing-auth-file": (["--auth-file", "/nonexistent/users"], "--auth-file"),
    "missing-token-source": (["--token-source", "/nonexistent/tokens"], "--token-source"),
    "web-not-a-directory": (["--web", "CERT"], "--web"),
    "status-not-a-path": (["--status", "status"], "--status"),
    "trusted-proxy-not-an-address": (["--trusted-proxy", "proxy.example"], "--trusted-proxy"),
    "workers-zero": (["--workers", "0"], "--workers"),
    "syslog-swallowed-listen-port": (["--syslog", "8080"], "--syslog"),
    "syslog-missing-socket": (["--syslog", "/nonexistent/log"], "--syslog"),
    "verbose-and-quiet": (["-v", "-q"], "--quiet"),
    "empty-domain": (["--flash-policy-domain", ""], "--flash-policy-domain"),
    "unix-listen-with-two-positionals": (["--unix-listen", "SOCK", "PORT"], "--unix-listen"),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_bad_option_value_exits_2_naming_the_option(tmp_path, case):
    args, name = BAD_OPTIONS[case]
    cert = tmp_path / "cert.pem"
    cert.write_text("not a certificate\n")
    port = free_port()
    substitutions = {"CERT": str(cert), "SOCK": str(tmp_path / "ws.sock"), "PORT": str(port)}
    args = [substitutions.get(arg, arg) for arg in args]
    if "PORT" not in BAD_OPTIONS[case][0]:
        args.append("127.0.0.1:%d" % port)
    result = run_wsproxy("-f", *(args + ["127.0.0.1:5900"]))
    assert result.returncode == 2, (case, result)
    message = result.stderr.strip()
    assert name in message, message
    assert "\n" not in message and "Traceback" not in message, message
    assert not port_listens(port)


def test_unloadable_certificate_exits_2(tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("not a certificate\n")
    result = run_wsproxy("-f", "--cert", str(cert), "127.0.0.1:%d" % free_port(), "127.0.0.1:5900")
    assert result.returncode == 2
    assert "cert" in result.stderr and "Traceback" not in result.stderr
