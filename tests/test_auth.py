"""Tests for wsproxy/auth.py: password hashes, the auth file and Basic credentials."""

import base64
import hashlib
import time

import pytest

from wsproxy.auth import (WWW_AUTHENTICATE, AuthTable, hash_password,
                          parse_basic_credentials, parse_password_hash)
from wsproxy.settings import ConfigError

FAST = 1000  # iterations for tests that do not measure time


def basic(user_pass: bytes) -> str:
    return "Basic " + base64.b64encode(user_pass).decode("ascii")


def auth_file(tmp_path, *lines):
    path = tmp_path / "users"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


# -- hashes ----------------------------------------------------------------------

def test_hash_password_matches_the_rfc_7914_pbkdf2_sha256_vector():
    # RFC 7914 §11: PBKDF2-HMAC-SHA256, P="passwd", S="salt", c=1; first 32 bytes.
    expected = bytes.fromhex("55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc")
    text = hash_password("passwd", iterations=1, salt=b"salt")
    assert text == "pbkdf2_sha256$1$%s$%s" % (base64.b64encode(b"salt").decode(),
                                              base64.b64encode(expected).decode())
    assert parse_password_hash(text).digest == expected


def test_hash_password_defaults_and_fresh_salts():
    first = hash_password("pw", iterations=FAST)
    second = hash_password("pw", iterations=FAST)
    assert first != second  # a new random salt each time
    parsed = parse_password_hash(first)
    assert parsed.iterations == FAST and len(parsed.salt) == 16 and len(parsed.digest) == 32
    assert parsed.matches("pw".encode()) and not parsed.matches(b"pW")
    assert hash_password("x", salt=b"s").startswith("pbkdf2_sha256$600000$")


def test_hash_password_utf8():
    text = hash_password("pässwörd ✓", iterations=FAST, salt=b"salt")
    digest = hashlib.pbkdf2_hmac("sha256", "pässwörd ✓".encode("utf-8"), b"salt", FAST)
    assert parse_password_hash(text).digest == digest


@pytest.mark.parametrize("iterations", [0, -1, 100_000_001])
def test_hash_password_rejects_bad_iterations(iterations):
    with pytest.raises(ValueError):
        hash_password("pw", iterations=iterations)


# -- the auth file ---------------------------------------------------------------

def test_check_accepts_listed_users_only(tmp_path):
    path = auth_file(tmp_path,
                     "# wsproxy users",
                     "",
                     "alice:" + hash_password("wonderland", FAST),
                     "  bob:" + hash_password("pa:ss:word", FAST) + "  ",
                     "carol:" + hash_password("", FAST))
    table = AuthTable(path)
    assert len(table) == 3 and "alice" in table
    assert table.check(basic(b"alice:wonderland")) == "alice"
    assert table.check(basic(b"bob:pa:ss:word")) == "bob"  # RFC 7617: colons in passwords
    assert table.check(basic(b"alice:Wonderland")) is None
    assert table.check(basic(b"alice:")) is None
    assert table.check(basic(b"bob:wonderland")) is None
    assert table.check(basic(b"mallory:wonderland")) is None
    assert table.check(basic(b"carol:")) == "carol"


def test_check_scheme_is_case_insensitive_and_whitespace_tolerant(tmp_path):
    table = AuthTable(auth_file(tmp_path, "alice:" + hash_password("pw", FAST)))
    encoded = base64.b64encode(b"alice:pw").decode()
    assert table.check("basic " + encoded) == "alice"
    assert table.check("BASIC  %s " % encoded) == "alice"


def test_check_utf8_user_and_password(tmp_path):
    table = AuthTable(auth_file(tmp_path, "jürgen:" + hash_password("grüße", FAST)))
    assert table.check(basic("jürgen:grüße".encode("utf-8"))) == "jürgen"
    assert table.check(basic("jürgen:grüße".encode("latin-1"))) is None


@pytest.mark.parametrize("header", [
    None,
    "",
    "Basic",
    "Basic ",
    "Bearer " + base64.b64encode(b"alice:pw").decode(),
    "Basic !!!not-base64!!!",
    "Basic " + base64.b64encode(b"alice:pw").decode().rstrip("=") + "x",
    "Basic " + base64.b64encode(b"alicepw").decode(),
    "Basic " + base64.b64encode(b":pw").decode(),
    "Basic " + base64.b64encode(b"alice:p\xffw").decode(),
    "Basic " + base64.b64encode(b"\xffalice:pw").decode(),
    "Basic YWxpY2U6cHc=\u00e9",
    "Basic " + "A" * 10000,
    "Digest username=\"alice\"",
    b"Basic YWxpY2U6cHc=",
])
def test_malformed_headers_are_refused_without_raising(tmp_path, header):
    table = AuthTable(auth_file(tmp_path, "alice:" + hash_password("pw", FAST)))
    assert table.check(header) is None


def test_parse_basic_credentials_keeps_password_bytes():
    assert parse_basic_credentials(basic(b"u:p:q")) == ("u", b"p:q")


def test_empty_auth_file_refuses_everyone(tmp_path):
    table = AuthTable(auth_file(tmp_path, "# nobody yet"))
    assert len(table) == 0
    assert table.check(basic(b"alice:pw")) is None


def test_missing_auth_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="auth-file.*absent"):
        AuthTable(str(tmp_path / "absent"))


@pytest.mark.parametrize("line, why", [
    ("alice", "expected USER:"),
    (":" + "pbkdf2_sha256$1$c2FsdA==$" + "A" * 44, "expected USER:"),
    ("al ice:" + "pbkdf2_sha256$1$c2FsdA==$" + "A" * 44, "expected USER:"),
    ("alice:md5$1$c2FsdA==$" + "A" * 44, "pbkdf2_sha256"),
    ("alice:pbkdf2_sha256$1$c2FsdA==", "pbkdf2_sha256"),
    ("alice:pbkdf2_sha256$0$c2FsdA==$" + "A" * 44, "iteration"),
    ("alice:pbkdf2_sha256$many$c2FsdA==$" + "A" * 44, "iteration"),
    ("alice:pbkdf2_sha256$1$not base64$" + "A" * 44, "base64"),
    ("alice:pbkdf2_sha256$1$c2FsdA==$QUJD", "32 bytes"),
    ("alice:pbkdf2_sha256$1$$" + "A" * 44, "salt"),
])
def test_malformed_line_is_a_config_error_naming_file_and_line(tmp_path, line, why):
    path = auth_file(tmp_path, "# header", "ok:" + hash_password("pw", FAST), line)
    with pytest.raises(ConfigError) as info:
        AuthTable(path)
    message = str(info.value)
    assert message.startswith("auth-file: ")
    assert path in message and "line 3" in message and why in message
    assert "A" * 44 not in message  # the hash itself is not repeated


def test_duplicate_user_is_a_config_error(tmp_path):
    path = auth_file(tmp_path, "a:" + hash_password("1", FAST), "a:" + hash_password("2", FAST))
    with pytest.raises(ConfigError, match="line 2"):
        AuthTable(path)


def test_non_utf8_auth_file_is_a_config_error(tmp_path):
    path = tmp_path / "users"
    path.write_bytes(b"\xff\xfe:x\n")
    with pytest.raises(ConfigError, match="line 1"):
        AuthTable(str(path))


def test_challenge_names_realm_and_charset():
    assert WWW_AUTHENTICATE == 'Basic realm="wsproxy", charset="UTF-8"'


# -- timing and the cache --------------------------------------------------------

def best_of(count, action):
    best = float("inf")
    for _ in range(count):
        start = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - start)
    return best


def test_unknown_user_costs_as_much_as_a_known_one(tmp_path):
    iterations = 100_000
    table = AuthTable(auth_file(tmp_path, "alice:" + hash_password("pw", iterations)),
                      cache_size=0)
    known = best_of(3, lambda: table.check(basic(b"alice:wrong")))
    unknown = best_of(3, lambda: table.check(basic(b"nobody:wrong")))
    assert known > 0.005  # PBKDF2 really ran
    assert unknown > 0.5 * known


def test_successful_checks_are_cached_for_a_while(tmp_path):
    iterations = 100_000
    clock = FakeClock()
    table = AuthTable(auth_file(tmp_path, "alice:" + hash_password("pw", iterations)),
                      cache_ttl=60.0, clock=clock)
    first = best_of(1, lambda: table.check(basic(b"alice:pw")))
    assert table.check(basic(b"alice:pw")) == "alice"
    cached = best_of(3, lambda: table.check(basic(b"alice:pw")))
    assert cached < first / 5
    # A wrong password never reaches the cache's answer.
    assert table.check(basic(b"alice:pwx")) is None
    # After the time to live the check is paid again (and still succeeds).
    clock.now += 61.0
    again = best_of(1, lambda: table.check(basic(b"alice:pw")))
    assert again > cached * 5
    assert table.check(basic(b"alice:pw")) == "alice"


def test_failed_checks_are_never_cached(tmp_path):
    table = AuthTable(auth_file(tmp_path, "alice:" + hash_password("pw", 100_000)))
    first = best_of(1, lambda: table.check(basic(b"alice:bad")))
    second = best_of(1, lambda: table.check(basic(b"alice:bad")))
    assert second > first / 5


def test_cache_is_bounded_and_holds_no_password(tmp_path):
    lines = ["u%d:%s" % (n, hash_password("secret%d" % n, FAST)) for n in range(5)]
    table = AuthTable(auth_file(tmp_path, *lines), cache_size=2)
    for n in range(5):
        assert table.check(basic(b"u%d:secret%d" % (n, n))) == "u%d" % n
    assert len(table._cache) == 2
    for key, (user, _expires) in table._cache.items():
        assert len(key) == 32 and b"secret" not in key
