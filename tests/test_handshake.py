"""Byte-level tests of wsproxy.protocol.handshake: the RFC 6455 opening handshake."""

import base64

import pytest

from wsproxy.protocol.errors import HandshakeError
from wsproxy.protocol.handshake import (WEBSOCKET_GUID, Request, accept_key, accept_response,
                                        check_rfc6455, choose_subprotocol, error_response,
                                        find_head_end, http_response, is_upgrade,
                                        parse_request, reason_phrase)

#: RFC 6455 §1.3's example key and the answer it must get.
RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

GOOD_HEADERS = [
    ("Host", "server.example.com"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", RFC_KEY),
    ("Origin", "http://example.com"),
    ("Sec-WebSocket-Protocol", "chat, binary"),
    ("Sec-WebSocket-Version", "13"),
]


def head(request_line="GET /chat HTTP/1.1", headers=GOOD_HEADERS, drop=(), extra=()) -> bytes:
    """A request head as bytes, without headers named in ``drop`` and with ``extra``."""
    lines = [request_line]
    lines += ["%s: %s" % (name, value) for name, value in headers if name.lower() not in drop]
    lines += ["%s: %s" % pair for pair in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def refused(data: bytes, check=True) -> HandshakeError:
    """The HandshakeError that parsing (and checking) ``data`` raises."""
    with pytest.raises(HandshakeError) as info:
        request = parse_request(data)
        if check:
            check_rfc6455(request)
    return info.value


def split_response(data: bytes):
    """(status line, header dict, body) of an HTTP response built by wsproxy."""
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(": ")
        assert name not in headers, "duplicate header %s" % name
        headers[name] = value
    return lines[0], headers, body


# -- find_head_end -------------------------------------------------------------------


def test_find_head_end():
    data = head()
    assert find_head_end(data, 16384) == len(data)
    assert find_head_end(data + b"\x81\x80rest", 16384) == len(data)
    assert find_head_end(bytearray(data), 16384) == len(data)
    for cut in range(len(data)):
        assert find_head_end(data[:cut], 16384) == -1


def test_find_head_end_431_once_the_limit_holds_no_end():
    assert find_head_end(b"GET / HTTP/1.1\r\nX: " + b"a" * 50, 100) == -1
    with pytest.raises(HandshakeError) as info:
        find_head_end(b"GET / HTTP/1.1\r\nX: " + b"a" * 200, 100)
    assert info.value.status == 431


def test_find_head_end_limit_is_exact_however_the_head_arrives():
    limit = 100
    for size in range(limit - 3, limit + 6):
        data = b"GET / HTTP/1.1\r\nX: " + b"a" * (size - 23) + b"\r\n\r\n"
        assert len(data) == size
        # Fed whole, or growing a byte at a time as the handler's buffer does.
        outcomes = []
        for pieces in ([data], [data[:cut] for cut in range(1, size + 1)]):
            try:
                results = [find_head_end(piece, limit) for piece in pieces]
                outcomes.append(results[-1])
            except HandshakeError as exc:
                outcomes.append(exc.status)
        expected = size if size <= limit else 431
        assert outcomes == [expected, expected], "head of %d bytes" % size


# -- parse_request --------------------------------------------------------------------


def test_parse_request_fields():
    request = parse_request(head("GET /chat?token=abc&x=1 HTTP/1.1",
                                 extra=[("X-Many", "one"), ("x-many", " two \t")]))
    assert isinstance(request, Request)
    assert request.method == "GET"
    assert request.target == "/chat?token=abc&x=1"
    assert request.path == "/chat"
    assert request.version == "HTTP/1.1"
    assert request.header_list[0] == ("Host", "server.example.com")
    assert request.header_list[-2:] == [("X-Many", "one"), ("x-many", "two")]
    assert request.headers["host"] == "server.example.com"
    assert request.headers["x-many"] == "one, two"
    assert request.count("x-many") == 2
    assert request.count("host") == 1
    assert request.count("absent") == 0
    assert request.header_tokens("sec-websocket-protocol") == ["chat", "binary"]
    assert request.header_tokens("absent") == []
    assert is_upgrade(request)


def test_parse_request_accepts_any_buffer_and_tabs_and_obs_text_in_values():
    request = parse_request(bytearray(head(extra=[("X-Tab", "a\tb"), ("X-Latin", "caf\xe9")])))
    assert request.headers["x-tab"] == "a\tb"
    assert request.headers["x-latin"] == "caf\xe9"
    assert parse_request(memoryview(head())).method == "GET"


def test_parse_request_http_1_0_parses_but_is_not_a_websocket_handshake():
    request = parse_request(head("GET / HTTP/1.0"))
    assert request.version == "HTTP/1.0"
    error = refused(head("GET / HTTP/1.0"))
    assert error.status == 400


@pytest.mark.parametrize("data", [
    b"",
    b"\r\n\r\n",
    b"GET /\r\n\r\n",
    b"GET / HTTP/1.1 extra\r\n\r\n",
    b"GET  / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1 \r\n\r\n",
    b" GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/2\r\n\r\n",
    b"GET / HTTP/2.0\r\n\r\n",
    b"GET / HTTP/1.11\r\n\r\n",
    b"GET / HTTP/1.\r\n\r\n",
    b"GET / HTTP/1.x\r\n\r\n",
    b"GET / HTTP/1.\xb2\r\n\r\n",
    b"GET / http/1.1\r\n\r\n",
    b"GET / HTTPS/1.1\r\n\r\n",
    b"G(T / HTTP/1.1\r\n\r\n",
    b"G\xc9T / HTTP/1.1\r\n\r\n",
    b"GET /a\x01b HTTP/1.1\r\n\r\n",
    b"GET /caf\xe9 HTTP/1.1\r\n\r\n",
    b"GET /\tx HTTP/1.1\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
])
def test_parse_request_bad_request_line_is_400(data):
    assert refused(data, check=False).status == 400


@pytest.mark.parametrize("lines", [
    [b"Host: a", b" folded"],
    [b"Host: a", b"\tfolded"],
    [b"NoColon"],
    [b": empty name"],
    [b"Bad Name: x"],
    [b"Host : a"],
    [b"Ho(st): a"],
    [b"H\xe9: a"],
    [b"X: a\x01b"],
    [b"X: a\x7fb"],
    [b"X: a\nb"],
    [b"X: a\rb"],
    [b"X: \x00"],
    [b"Host: a", b"", b"X: after an empty line"],
])
def test_parse_request_bad_header_lines_are_400(lines):
    data = b"GET / HTTP/1.1\r\n" + b"\r\n".join(lines) + b"\r\n\r\n"
    assert refused(data, check=False).status == 400


# -- check_rfc6455 ------------------------------------------------------------------------


def test_check_rfc6455_good_request_returns_the_key():
    assert check_rfc6455(parse_request(head())) == RFC_KEY


@pytest.mark.parametrize("connection", ["Upgrade", "upgrade", "keep-alive, Upgrade",
                                        "Upgrade, keep-alive", "keep-alive,UPGRADE"])
def test_connection_header_with_the_upgrade_token(connection):
    data = head(drop=("connection",), extra=[("Connection", connection)])
    assert check_rfc6455(parse_request(data)) == RFC_KEY


def test_upgrade_and_connection_split_over_repeated_headers():
    data = head(drop=("connection",), extra=[("Connection", "keep-alive"),
                                              ("Connection", "Upgrade")])
    assert check_rfc6455(parse_request(data)) == RFC_KEY
    data = head(drop=("upgrade",), extra=[("Upgrade", "WebSocket")])
    assert check_rfc6455(parse_request(data)) == RFC_KEY


@pytest.mark.parametrize("method", ["POST", "PUT", "HEAD", "OPTIONS", "get"])
def test_non_get_is_405(method):
    error = refused(head("%s /chat HTTP/1.1" % method))
    assert error.status == 405
    assert error.headers.get("Allow") == "GET"


@pytest.mark.parametrize("versions", [None, "8", "14", "13, 8", "8, 13", "", "thirteen"])
def test_wrong_version_is_426_with_the_supported_version(versions):
    extra = [] if versions is None else [("Sec-WebSocket-Version", versions)]
    error = refused(head(drop=("sec-websocket-version",), extra=extra))
    assert error.status == 426
    assert error.headers == {"Sec-WebSocket-Version": "13"}


@pytest.mark.parametrize("drop, extra", [
    (("host",), []),
    (("upgrade",), []),
    (("upgrade",), [("Upgrade", "h2c")]),
    (("connection",), []),
    (("connection",), [("Connection", "keep-alive")]),
    (("connection",), [("Connection", "upgraded")]),
    (("sec-websocket-key",), []),
    (("sec-websocket-key",), [("Sec-WebSocket-Key", "")]),
    (("sec-websocket-key",), [("Sec-WebSocket-Key", base64.b64encode(b"x" * 15).decode())]),
    (("sec-websocket-key",), [("Sec-WebSocket-Key", base64.b64encode(b"x" * 17).decode())]),
    (("sec-websocket-key",), [("Sec-WebSocket-Key", "not base64 at all!!!!!==")]),
    (("sec-websocket-key",), [("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ")]),
    (("sec-websocket-key",), [("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25j\xe9Q==")]),
    ((), [("Sec-WebSocket-Key", RFC_KEY)]),
    ((), [("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAA==")]),
])
def test_other_bad_handshakes_are_400(drop, extra):
    error = refused(head(drop=drop, extra=extra))
    assert error.status == 400
    assert error.reason


def test_handshake_errors_never_escape_as_other_exceptions():
    # Every prefix and every one-byte corruption of a good head either parses
    # and checks, or raises HandshakeError: never anything else.
    data = head()
    for cut in range(len(data)):
        for candidate in (data[:cut] + b"\r\n\r\n", data[:cut] + b"\x00" + data[cut + 1:],
                          data[:cut] + b"\xff" + data[cut + 1:]):
            try:
                check_rfc6455(parse_request(candidate))
            except HandshakeError as exc:
                assert exc.status in (400, 405, 426)


# -- subprotocols and answers ---------------------------------------------------------------


@pytest.mark.parametrize("offered, chosen", [
    (["binary", "base64"], "binary"),
    (["base64", "binary"], "binary"),
    (["base64"], "base64"),
    (["chat", "base64"], "base64"),
    ([" base64 "], "base64"),
    (["binary"], "binary"),
    ([], None),
    (["chat"], None),
    (["chat", "superchat"], None),
])
def test_choose_subprotocol(offered, chosen):
    assert choose_subprotocol(offered) == chosen


def test_choose_subprotocol_from_the_request_header():
    request = parse_request(head(extra=[("Sec-WebSocket-Protocol", "base64")]))
    assert choose_subprotocol(request.header_tokens("sec-websocket-protocol")) == "binary"
    request = parse_request(head(drop=("sec-websocket-protocol",),
                                 extra=[("Sec-WebSocket-Protocol", "base64, chat")]))
    assert choose_subprotocol(request.header_tokens("sec-websocket-protocol")) == "base64"
    request = parse_request(head(drop=("sec-websocket-protocol",)))
    assert choose_subprotocol(request.header_tokens("sec-websocket-protocol")) is None


def test_accept_key_rfc_example():
    assert accept_key(RFC_KEY) == RFC_ACCEPT
    assert WEBSOCKET_GUID == "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def test_accept_response_with_subprotocol():
    data = accept_response(RFC_KEY, "binary")
    assert data == (b"HTTP/1.1 101 Switching Protocols\r\n"
                    b"Upgrade: websocket\r\n"
                    b"Connection: Upgrade\r\n"
                    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                    b"Sec-WebSocket-Protocol: binary\r\n"
                    b"\r\n")


def test_accept_response_without_subprotocol_has_no_protocol_header():
    data = accept_response(RFC_KEY, None)
    assert b"Sec-WebSocket-Protocol" not in data
    status, headers, body = split_response(data)
    assert status == "HTTP/1.1 101 Switching Protocols"
    assert headers["Sec-WebSocket-Accept"] == RFC_ACCEPT
    assert body == b""


def test_accept_response_extra_headers():
    status, headers, _ = split_response(accept_response(RFC_KEY, "base64", {"X-Extra": "1"}))
    assert headers["Sec-WebSocket-Protocol"] == "base64"
    assert headers["X-Extra"] == "1"


def test_error_response_426():
    error = HandshakeError(426, "unsupported WebSocket version", {"Sec-WebSocket-Version": "13"})
    status, headers, body = split_response(error_response(error))
    assert status == "HTTP/1.1 426 Upgrade Required"
    assert headers["Sec-WebSocket-Version"] == "13"
    assert headers["Connection"] == "close"
    assert int(headers["Content-Length"]) == len(body)
    assert b"unsupported WebSocket version" in body


@pytest.mark.parametrize("status, phrase", [(400, "Bad Request"), (405, "Method Not Allowed"),
                                            (431, "Request Header Fields Too Large"),
                                            (499, "Error")])
def test_error_response_status_lines(status, phrase):
    data = error_response(HandshakeError(status, "why"))
    line, headers, body = split_response(data)
    assert line == "HTTP/1.1 %d %s" % (status, phrase)
    assert int(headers["Content-Length"]) == len(body)
    assert headers["Content-Type"].startswith("text/plain")
    assert reason_phrase(status) == phrase


def test_every_refusal_answers_with_its_status():
    for data in (head("POST / HTTP/1.1"), head(drop=("sec-websocket-version",)),
                 head(drop=("host",)), b"GET / HTTP/2\r\n\r\n"):
        error = refused(data)
        assert error_response(error).startswith(b"HTTP/1.1 %d " % error.status)


def test_http_response():
    data = http_response(200, b"hi", {"X-A": "b"}, content_type="text/html", close=False)
    status, headers, body = split_response(data)
    assert status == "HTTP/1.1 200 OK"
    assert headers == {"Content-Type": "text/html", "Content-Length": "2", "X-A": "b"}
    assert body == b"hi"
