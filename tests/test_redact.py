"""wsproxy.redact: secrets in option values kept out of log lines (pure, and one handler filter)."""

import dataclasses
import logging
import sys

import pytest

from wsproxy.redact import (MASK, SecretFilter, is_secret_field, redact_text, redact_value,
                            secrets_in)
from wsproxy.settings import Settings


@pytest.mark.parametrize("text, shown", [
    ("http://ops:pw@svc:8080/t", "http://ops:***@svc:8080/t"),
    ("https://ops:p%40ss@svc/t?region=eu", "https://ops:***@svc/t?region=eu"),
    ("https://svc/t?apikey=abc&region=eu&access_token=x",
     "https://svc/t?apikey=***&region=eu&access_token=***"),
    ("GET /vnc.html?host=h&password=hunter2 -> 200", "GET /vnc.html?host=h&password=*** -> 200"),
    ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
    ("http://svc/t", "http://svc/t"), ("/etc/wsproxy/tokens", "/etc/wsproxy/tokens"),
    ("http://user@svc/t", "http://user@svc/t"),
])
def test_redact_text(text, shown):
    assert redact_text(text) == shown


@pytest.mark.parametrize("name", ["key_password", "vault_secret", "tls_passphrase",
                                  "db_credentials", "PASSWORD"])
def test_secret_fields_are_recognised_by_name(name):
    assert is_secret_field(name)
    assert redact_value(name, "hunter2") == MASK
    assert redact_value(name, None) is None and redact_value(name, "") == ""


@pytest.mark.parametrize("name", ["key", "cert", "token_source", "auth_file", "host_token"])
def test_other_fields_show_their_value(name):
    assert not is_secret_field(name)
    assert redact_value(name, "/etc/x") == "/etc/x"


def test_secrets_in_settings_including_fields_added_later():
    Extended = dataclasses.make_dataclass("Extended", [("key_password", str, "")],
                                          bases=(Settings,))
    settings = Extended(key_password="Hunter2-key",
                        token_source="https://ops:S3cret%21@svc/t?key=K3yValue",
                        origin=["https://u:0r1gin-pw@x"])
    assert secrets_in(settings) == {"Hunter2-key", "S3cret%21", "S3cret!", "K3yValue",
                                    "0r1gin-pw"}
    assert secrets_in(Settings(token_source="https://a:b@c/t")) == frozenset(), "too short"


def test_filter_masks_secrets_in_any_line_and_traceback():
    record = logging.LogRecord("wsproxy", logging.ERROR, __file__, 1,
                               "failed: %s\nnext", ("password Hunter2-key in error",), None)
    try:
        raise ValueError("Hunter2-key")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert SecretFilter({"Hunter2-key"}).filter(record)
    assert record.getMessage() == "failed: password *** in error\\nnext"
    assert "Hunter2-key" not in record.exc_text and MASK in record.exc_text
