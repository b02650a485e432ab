"""Tests for wsproxy/tokens.py: the token table and picking a token from a request."""

import logging
import os
import threading

import pytest

from wsproxy.settings import ConfigError
from wsproxy.targets import Target
from wsproxy.tokens import TokenTable, parse_token_line, token_from_request

NEVER = 3600.0  # a recheck interval no test outlives


def write(path, text, mtime_ns=None):
    with open(path, "w", encoding="utf-8") as stream:
        stream.write(text)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def warnings_from(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == "wsproxy" and r.levelno == logging.WARNING]


# -- parsing -------------------------------------------------------------------

def test_file_source_reads_every_target_form(tmp_path):
    source = tmp_path / "tokens"
    write(source, "# operator's table\n"
                  "\n"
                  "vnc1: 10.0.0.5:5901\n"
                  "  vnc2 :host.example:5902  \n"
                  "six: [2001:db8::7]:5900\n"
                  "sock: unix:/run/vnc.sock\n"
                  "   # indented comment\n")
    table = TokenTable(str(source), recheck_interval=NEVER)
    assert table.lookup("vnc1") == Target(host="10.0.0.5", port=5901)
    assert table.lookup("vnc2") == Target(host="host.example", port=5902)
    assert table.lookup("six") == Target(host="2001:db8::7", port=5900)
    assert table.lookup("sock") == Target(unix="/run/vnc.sock")
    assert len(table) == 4
    assert table.lookup("nope") is None
    assert table.lookup("") is None
    assert table.lookup("# operator's table") is None


def test_malformed_lines_are_logged_with_file_and_line_and_skipped(tmp_path, caplog):
    source = tmp_path / "tokens"
    write(source, "good: 127.0.0.1:1\n"
                  "no colon here\n"
                  ": 127.0.0.1:2\n"
                  "bad port: 127.0.0.1:99999\n"
                  "noport: 127.0.0.1\n"
                  "zero: 127.0.0.1:0\n"
                  "bare6: ::1:5900\n"
                  "also good: [::1]:3\n")
    with caplog.at_level(logging.WARNING, logger="wsproxy"):
        table = TokenTable(str(source), recheck_interval=NEVER)
    assert table.lookup("good") == Target(host="127.0.0.1", port=1)
    assert len(table) == 1  # "also good" holds a space: malformed too
    messages = warnings_from(caplog)
    assert len(messages) == 7
    for line_number, message in zip([2, 3, 4, 5, 6, 7, 8], messages):
        assert str(source) in message
        assert "line %d:" % line_number in message


def test_non_utf8_line_is_skipped_and_the_rest_read(tmp_path, caplog):
    source = tmp_path / "tokens"
    source.write_bytes(b"a: 127.0.0.1:1\nb\xff: 127.0.0.1:2\nc: 127.0.0.1:3\n")
    with caplog.at_level(logging.WARNING, logger="wsproxy"):
        table = TokenTable(str(source), recheck_interval=NEVER)
    assert len(table) == 2 and table.lookup("c") == Target(host="127.0.0.1", port=3)
    assert any("line 2" in m and "UTF-8" in m for m in warnings_from(caplog))


def test_parse_token_line():
    assert parse_token_line("t: unix:/x") == ("t", Target(unix="/x"))
    for bad in ("t:", "t: unix:", "t x: h:1", "t h:1", ":h:1"):
        with pytest.raises(ValueError):
            parse_token_line(bad)


def test_missing_source_at_start_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="token-source"):
        TokenTable(str(tmp_path / "absent"))


def test_duplicate_token_later_line_wins_with_a_warning(tmp_path, caplog):
    source = tmp_path / "tokens"
    write(source, "t: h:1\nt: h:2\n")
    with caplog.at_level(logging.WARNING, logger="wsproxy"):
        table = TokenTable(str(source), recheck_interval=NEVER)
    assert table.lookup("t") == Target(host="h", port=2)
    assert any("line 2" in m and "line 1" in m for m in warnings_from(caplog))


# -- directories -----------------------------------------------------------------

def test_directory_reads_regular_files_in_sorted_order_skipping_hidden(tmp_path):
    write(tmp_path / "b.conf", "shared: b:2\nonly_b: b:20\n")
    write(tmp_path / "a.conf", "shared: a:1\nonly_a: a:10\n")
    write(tmp_path / ".hidden", "secret: x:1\n")
    (tmp_path / "subdir").mkdir()
    write(tmp_path / "subdir" / "inner", "inner: x:2\n")
    os.symlink(str(tmp_path / "nowhere"), str(tmp_path / "dangling"))
    table = TokenTable(str(tmp_path), recheck_interval=NEVER)
    assert table.lookup("shared") == Target(host="b", port=2)  # b.conf read last
    assert table.lookup("only_a") == Target(host="a", port=10)
    assert table.lookup("only_b") == Target(host="b", port=20)
    assert table.lookup("secret") is None
    assert table.lookup("inner") is None
    assert len(table) == 3


def test_empty_directory_gives_empty_table(tmp_path):
    table = TokenTable(str(tmp_path), recheck_interval=NEVER)
    assert len(table) == 0 and table.lookup("x") is None


# -- reloading -------------------------------------------------------------------

def test_changed_file_is_reread(tmp_path):
    source = tmp_path / "tokens"
    write(source, "t: old:1\n", mtime_ns=1_000_000_000)
    table = TokenTable(str(source), recheck_interval=0)
    assert table.lookup("t") == Target(host="old", port=1)
    write(source, "t: new:2\n", mtime_ns=2_000_000_000)  # same size, new mtime
    assert table.lookup("t") == Target(host="new", port=2)
    write(source, "t: new:2\nu: grown:3\n", mtime_ns=2_000_000_000)  # same mtime, new size
    assert table.lookup("u") == Target(host="grown", port=3)


def test_directory_gaining_and_losing_files_is_reread(tmp_path):
    write(tmp_path / "a", "a: a:1\n")
    table = TokenTable(str(tmp_path), recheck_interval=0)
    assert table.lookup("b") is None
    write(tmp_path / "b", "b: b:2\n")
    assert table.lookup("b") == Target(host="b", port=2)
    os.unlink(str(tmp_path / "a"))
    assert table.lookup("a") is None
    assert table.lookup("b") == Target(host="b", port=2)


def test_checks_are_throttled_and_reload_forces_a_reread(tmp_path):
    source = tmp_path / "tokens"
    write(source, "t: old:1\n", mtime_ns=1_000_000_000)
    table = TokenTable(str(source), recheck_interval=NEVER)
    write(source, "t: new:2\n", mtime_ns=2_000_000_000)
    assert table.lookup("t") == Target(host="old", port=1)  # not looked at yet
    table.reload()
    assert table.lookup("t") == Target(host="new", port=2)


def test_vanished_source_gives_empty_table_then_recovers(tmp_path, caplog):
    source = tmp_path / "tokens"
    write(source, "t: h:1\n")
    table = TokenTable(str(source), recheck_interval=0)
    os.unlink(str(source))
    with caplog.at_level(logging.WARNING, logger="wsproxy"):
        for _ in range(5):
            assert table.lookup("t") is None
        table.reload()
        assert table.lookup("t") is None
    vanished = [m for m in warnings_from(caplog) if str(source) in m]
    assert len(vanished) == 1  # logged once, not on every lookup
    write(source, "t: back:2\n")
    assert table.lookup("t") == Target(host="back", port=2)


def test_vanished_directory_gives_empty_table(tmp_path):
    directory = tmp_path / "tokens.d"
    directory.mkdir()
    write(directory / "a", "a: a:1\n")
    table = TokenTable(str(directory), recheck_interval=0)
    os.unlink(str(directory / "a"))
    os.rmdir(str(directory))
    assert table.lookup("a") is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_logged_and_skipped(tmp_path, caplog):
    write(tmp_path / "a", "a: a:1\n")
    write(tmp_path / "b", "b: b:2\n")
    os.chmod(str(tmp_path / "a"), 0)
    with caplog.at_level(logging.WARNING, logger="wsproxy"):
        table = TokenTable(str(tmp_path), recheck_interval=NEVER)
    assert table.lookup("a") is None and table.lookup("b") == Target(host="b", port=2)
    assert any("cannot read" in m for m in warnings_from(caplog))


def test_lookups_from_many_threads_while_the_file_changes(tmp_path):
    source = tmp_path / "tokens"
    write(source, "t: h:1\n")
    table = TokenTable(str(source), recheck_interval=0)
    seen, failures = set(), []
    stop = threading.Event()

    def look():
        try:
            while not stop.is_set():
                seen.add(table.lookup("t"))
        except Exception as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=look) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for round_number in range(200):
            port = 1 + round_number % 2
            temporary = tmp_path / "tokens.tmp"
            write(temporary, "t: h:%d\n" % port, mtime_ns=(round_number + 10) * 10 ** 9)
            os.replace(str(temporary), str(source))  # atomic, as operators should
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert not failures
    assert seen <= {Target(host="h", port=1), Target(host="h", port=2)}
    assert table.lookup("t") == Target(host="h", port=2)


# -- token_from_request ----------------------------------------------------------

@pytest.mark.parametrize("path, headers, expected", [
    ("/websockify?token=abc", {}, "abc"),
    ("/?a=1&token=abc&b=2", {}, "abc"),
    ("/?token=a%20b%2Bc", {}, "a b+c"),
    ("/?token=first&token=second", {}, "first"),
    ("/?token=", {"cookie": "token=fromcookie"}, "fromcookie"),
    ("/?token=q", {"cookie": "token=c"}, "q"),
    ("/", {"cookie": "token=abc"}, "abc"),
    ("/", {"cookie": "session=1; token=abc; theme=dark"}, "abc"),
    ("/", {"cookie": "a=\"unterminated; token=\"abc\""}, "abc"),
    ("/", {"cookie": "mytoken=x; token_x=y"}, None),
    ("/", {"cookie": "garbage;;=;token"}, None),
    ("/", {"cookie": ""}, None),
    ("/", {}, None),
    ("/token=abc", {}, None),
    ("/?tok=abc", {"host": "abc"}, None),
])
def test_token_from_query_or_cookie(path, headers, expected):
    assert token_from_request(path, headers, host_token=False) == expected


@pytest.mark.parametrize("host, expected", [
    ("vnc1.example.com", "vnc1.example.com"),
    ("vnc1.example.com:6080", "vnc1.example.com"),
    ("  vnc1:6080 ", "vnc1"),
    ("10.0.0.1:80", "10.0.0.1"),
    ("[::1]:6080", None),
    (":6080", None),
    ("", None),
])
def test_token_from_host_header(host, expected):
    headers = {"host": host, "cookie": "token=ignored"}
    assert token_from_request("/?token=ignored", headers, host_token=True) == expected


def test_host_token_without_host_header():
    assert token_from_request("/?token=x", {}, host_token=True) is None
