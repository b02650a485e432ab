"""wsproxy.trust: trusted networks, plain addresses, and the X-Forwarded-For walk (pure)."""

import pytest

from wsproxy import trust

TRUSTED = trust.networks(["127.0.0.1", "10.0.0.0/8", "2001:db8:f::/48"])


@pytest.mark.parametrize("text, canonical", [
    ("203.0.113.9", "203.0.113.9"), (" 203.0.113.9 ", "203.0.113.9"),
    ("2001:DB8::7", "2001:db8::7"), ("::ffff:198.51.100.1", "198.51.100.1"), ("::1", "::1"),
])
def test_plain_addresses_come_back_canonical(text, canonical):
    assert trust.plain_address(text) == canonical


@pytest.mark.parametrize("text", [
    "", "fe80::1%eth0", "fe80::1%25eth0", "fe80::1%", "203.0.113.9:80", "[::1]", "[::1]:80",
    "010.0.0.1", "1.2.3", "1.2.3.4.5", "0x7f000001", "2001:db8::/32", "example.org",
    "unknown", "_hidden", "1.2.3.4\n", "1.2.3.4\x00", "\u0661.2.3.4",
])
def test_anything_else_is_refused(text):
    assert trust.plain_address(text) is None


@pytest.mark.parametrize("header, client", [
    ("203.0.113.9", "203.0.113.9"),
    ("198.51.100.66, 203.0.113.9", "203.0.113.9"),
    ("198.51.100.66, 203.0.113.9, 10.1.1.1, 127.0.0.1", "203.0.113.9"),
    ("garbage%, 203.0.113.9, 10.1.1.1", "203.0.113.9"),
    ("10.1.1.1, 10.2.2.2", "10.1.1.1"),
    ("2001:db8::9,2001:db8:f::1", "2001:db8::9"),
    ("", None), (" , ", None),
], ids=["one", "client-prefix", "hops", "junk-left-of-client", "all-trusted", "ipv6", "empty",
        "blank"])
def test_walk_from_the_right_past_trusted_hops(header, client):
    found = trust.forwarded_client(header, TRUSTED)
    assert found.address == client and found.bad is None


@pytest.mark.parametrize("header, bad", [
    ("203.0.113.9, fe80::1%eth0", "fe80::1%eth0"),
    ("203.0.113.9, 10.1.1.1, nonsense", "nonsense"),
])
def test_a_bad_entry_before_the_client_stops_the_walk(header, bad):
    assert trust.forwarded_client(header, TRUSTED) == trust.ForwardedClient(None, bad)
