"""First-byte classification and the Flash policy answer, byte-in/byte-out."""

import pytest

from wsproxy.protocol.sniff import (
    FLASH_POLICY_REQUEST,
    ConnectionKind,
    classify,
    flash_policy_response,
)


def test_flash_policy_request_bytes():
    assert FLASH_POLICY_REQUEST == b"<policy-file-request/>\x00"


def test_empty_input_needs_more_bytes():
    assert classify(b"") is None


@pytest.mark.parametrize("first_bytes", [
    b"\x16",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    b"\x80",
    b"\x80\x2e\x01\x00\x02",
])
def test_tls_hello(first_bytes):
    assert classify(first_bytes) is ConnectionKind.TLS


@pytest.mark.parametrize("first_bytes", [
    b"G",
    b"GET / HTTP/1.1\r\n",
    b"\x00",
    b"\x15\x03\x01",
    b"\x17",
    b"\x81",
])
def test_http_or_other(first_bytes):
    assert classify(first_bytes) is ConnectionKind.HTTP


def test_every_strict_prefix_of_the_flash_request_needs_more_bytes():
    for length in range(1, len(FLASH_POLICY_REQUEST)):
        assert classify(FLASH_POLICY_REQUEST[:length]) is None, length


def test_whole_flash_request():
    assert classify(FLASH_POLICY_REQUEST) is ConnectionKind.FLASH_POLICY


def test_flash_request_followed_by_more_bytes_is_still_flash():
    assert classify(FLASH_POLICY_REQUEST + b"GET /") is ConnectionKind.FLASH_POLICY


@pytest.mark.parametrize("first_bytes", [
    b"<policy-file-request />\x00",   # not what Flash sends
    b"<policy-file-request/>X",
    b"<policy-file-request/>\n",
    b"<html>",
])
def test_near_misses_are_http(first_bytes):
    assert classify(first_bytes) is ConnectionKind.HTTP


def test_accepts_bytearray_and_memoryview():
    assert classify(bytearray(FLASH_POLICY_REQUEST)) is ConnectionKind.FLASH_POLICY
    assert classify(memoryview(FLASH_POLICY_REQUEST)) is ConnectionKind.FLASH_POLICY
    assert classify(memoryview(b"\x16\x03")) is ConnectionKind.TLS
    assert classify(bytearray(b"GET")) is ConnectionKind.HTTP
    assert classify(memoryview(b"<pol")) is None


def test_default_policy_document():
    assert flash_policy_response() == (
        b'<cross-domain-policy><allow-access-from domain="*" to-ports="*" />'
        b'</cross-domain-policy>\x00')


@pytest.mark.parametrize("domain, ports", [
    ("example.com", "5900"),
    ("*.example.com", "80,443"),
    ("192.0.2.7", "5900-5910"),
    ("::1", "80,443,5900-5910"),
    ("*", "1-65535"),
])
def test_configured_policy_document(domain, ports):
    document = flash_policy_response(domain, ports)
    assert document == ('<cross-domain-policy><allow-access-from domain="%s" to-ports="%s" />'
                        '</cross-domain-policy>\x00' % (domain, ports)).encode("ascii")
    assert document.count(b"\x00") == 1 and document.endswith(b"\x00")


@pytest.mark.parametrize("domain", [
    "", " ", "example.com ", 'evil" to-ports="*', "a<b", "a>b", "a&b", "a'b",
    "a\r\nb", "a\x00b", "ex ample.com", "*example.com", "**", "bücher.example",
    "example.com/path",
])
def test_bad_domain_is_refused(domain):
    with pytest.raises(ValueError):
        flash_policy_response(domain, "*")


@pytest.mark.parametrize("ports", [
    "", " ", "0", "65536", "99999", "123456", "80,", ",80", "80,,443", "*,80", "80-",
    "-80", "90-80", "80 ,443", "80; 443", '80" domain="*', "80\r\n", "http", "0x50",
    "\u0663",  # a non-ASCII digit
])
def test_bad_ports_are_refused(ports):
    with pytest.raises(ValueError):
        flash_policy_response("*", ports)


def test_non_string_values_are_refused():
    with pytest.raises(TypeError):
        flash_policy_response(b"*", "*")
    with pytest.raises(TypeError):
        flash_policy_response("*", 5900)
