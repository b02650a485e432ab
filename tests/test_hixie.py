"""hixie-75/76 handshake answers and 0x00 … 0xFF framing, byte-in/byte-out."""

import base64
import hashlib
import os

import pytest

from wsproxy.protocol.errors import HandshakeError, ProtocolError
from wsproxy.protocol.hixie import (
    CLOSE_FRAME,
    KEY3_LENGTH,
    HixieConnection,
    hixie76_answer,
    hixie_response,
    is_hixie,
    is_hixie76,
)

# The worked example of draft-hixie-thewebsocketprotocol-76 §1.3: the digits
# 1868545188 and 1733470270 over 12 and 10 spaces give 155712099 and
# 173347027; with key3 "Tm[K T2u" the answer is "fQJ,fN/4F4!~K~MH".
KEY1 = "18x 6]8vM;54 *(5:  {   U1]8  z [  8"
KEY2 = "1_ tx7X d  <  nw  334J702) 7]o}` 0"
KEY3 = b"Tm[K T2u"
ANSWER = b"fQJ,fN/4F4!~K~MH"


def hixie76_headers(**extra):
    headers = {
        "host": "example.com",
        "origin": "http://example.com",
        "upgrade": "WebSocket",
        "connection": "Upgrade",
        "sec-websocket-key1": KEY1,
        "sec-websocket-key2": KEY2,
    }
    headers.update(extra)
    return headers


def hixie75_headers(**extra):
    headers = {
        "host": "example.com:8080",
        "origin": "http://example.com",
        "upgrade": "WebSocket",
        "connection": "Upgrade",
    }
    headers.update(extra)
    return headers


def frame(payload):
    return b"\x00" + base64.b64encode(payload) + b"\xff"


# -- detection ---------------------------------------------------------------

def test_is_hixie():
    assert is_hixie(hixie75_headers())
    assert is_hixie(hixie76_headers())
    assert is_hixie(hixie75_headers(upgrade="websocket"))
    assert not is_hixie(hixie75_headers(**{"sec-websocket-version": "13"}))
    assert not is_hixie(hixie75_headers(**{"sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ=="}))
    assert not is_hixie({"host": "example.com"})
    assert not is_hixie(hixie75_headers(upgrade="h2c"))


def test_is_hixie76():
    assert is_hixie76(hixie76_headers())
    assert not is_hixie76(hixie75_headers())
    assert not is_hixie76(hixie75_headers(**{"sec-websocket-key1": KEY1}))


# -- hixie-76 answer ---------------------------------------------------------

def test_hixie76_worked_example():
    assert hixie76_answer(KEY1, KEY2, KEY3) == ANSWER
    assert hixie_response("/demo", hixie76_headers(), KEY3, False, None) == (
        b"HTTP/1.1 101 WebSocket Protocol Handshake\r\n"
        b"Upgrade: WebSocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Origin: http://example.com\r\n"
        b"Sec-WebSocket-Location: ws://example.com/demo\r\n"
        b"\r\n" + ANSWER)


def test_hixie76_second_example_with_subprotocol_and_tls():
    # The draft's other example: "4 @1  46546xW%0l 1 5" and "12998 5 Y3 1  .P00"
    # with key3 "^n:ds[4U" give "8jKS'y:G*Co,Wxa-".
    headers = hixie76_headers(**{"sec-websocket-key1": "4 @1  46546xW%0l 1 5",
                                 "sec-websocket-key2": "12998 5 Y3 1  .P00",
                                 "sec-websocket-protocol": "sample"})
    response = hixie_response("/demo?token=a%20b", headers, bytearray(b"^n:ds[4U"), True, "sample")
    assert response == (
        b"HTTP/1.1 101 WebSocket Protocol Handshake\r\n"
        b"Upgrade: WebSocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Origin: http://example.com\r\n"
        b"Sec-WebSocket-Location: wss://example.com/demo?token=a%20b\r\n"
        b"Sec-WebSocket-Protocol: sample\r\n"
        b"\r\n8jKS'y:G*Co,Wxa-")


def test_hixie76_zero_key_number():
    # "0" over one space is 0; MD5 of eight zero bytes then key3.
    answer = hixie76_answer(" 0", "0 0", b"\x00" * 8)
    assert answer == hashlib.md5(b"\x00" * 16).digest()


def test_hixie76_largest_key_number():
    answer = hixie76_answer("4294967295 ", " 4294967295", KEY3)
    assert answer == hashlib.md5(b"\xff" * 8 + KEY3).digest()


@pytest.mark.parametrize("key1, key2, reason_word", [
    ("18x6]8vM;54*(5:{U1]8z[8", KEY2, "spaces"),            # no spaces
    (KEY1, "1_ tx7X d  <  nw  334J702) 7]o}` 8", "multiple"),  # 1733470278 / 10
    ("no digits here", KEY2, "digits"),
    ("", KEY2, "digits"),
    ("4294967296 ", KEY2, "32 bits"),                        # one over 32 bits
    ("1" * 4000 + " ", KEY2, "32 bits"),
    ("9" * 5000 + " ", KEY2, "32 bits"),                     # over int()'s digit limit
    ("\u0661\u0662 ", KEY2, "digits"),                         # non-ASCII digits
    (KEY1, "12\t3", "spaces"),                               # a tab is not a space
])
def test_bad_keys_are_400(key1, key2, reason_word):
    headers = hixie76_headers(**{"sec-websocket-key1": key1, "sec-websocket-key2": key2})
    with pytest.raises(HandshakeError) as excinfo:
        hixie_response("/demo", headers, KEY3, False, None)
    assert excinfo.value.status == 400
    assert reason_word in excinfo.value.reason


@pytest.mark.parametrize("key3", [None, b"", b"Tm[K T2", b"Tm[K T2u!", "Tm[K T2u"])
def test_key3_must_be_eight_bytes(key3):
    with pytest.raises(HandshakeError) as excinfo:
        hixie_response("/demo", hixie76_headers(), key3, False, None)
    assert excinfo.value.status == 400
    assert KEY3_LENGTH == 8


def test_key1_without_key2_is_400():
    headers = hixie75_headers(**{"sec-websocket-key1": KEY1})
    with pytest.raises(HandshakeError) as excinfo:
        hixie_response("/demo", headers, KEY3, False, None)
    assert excinfo.value.status == 400


# -- hixie-75 answer ---------------------------------------------------------

def test_hixie75_response():
    assert hixie_response("/demo", hixie75_headers(), None, False, None) == (
        b"HTTP/1.1 101 Web Socket Protocol Handshake\r\n"
        b"Upgrade: WebSocket\r\n"
        b"Connection: Upgrade\r\n"
        b"WebSocket-Origin: http://example.com\r\n"
        b"WebSocket-Location: ws://example.com:8080/demo\r\n"
        b"\r\n")


def test_hixie75_response_tls_subprotocol_no_origin():
    headers = hixie75_headers(host="[::1]:443")
    del headers["origin"]
    assert hixie_response("/", headers, None, True, "base64") == (
        b"HTTP/1.1 101 Web Socket Protocol Handshake\r\n"
        b"Upgrade: WebSocket\r\n"
        b"Connection: Upgrade\r\n"
        b"WebSocket-Location: wss://[::1]:443/\r\n"
        b"WebSocket-Protocol: base64\r\n"
        b"\r\n")


# -- refused requests --------------------------------------------------------

@pytest.mark.parametrize("host", [None, ""])
def test_missing_host_is_400(host):
    for headers in (hixie75_headers(), hixie76_headers()):
        if host is None:
            del headers["host"]
        else:
            headers["host"] = host
        with pytest.raises(HandshakeError) as excinfo:
            hixie_response("/demo", headers, KEY3, False, None)
        assert excinfo.value.status == 400


INJECTIONS = ["a\r\nSet-Cookie: x=1", "a\nb", "a\rb", "a\x00b", "a\x7fb", "caf\u00e9"]


@pytest.mark.parametrize("value", INJECTIONS)
@pytest.mark.parametrize("where", ["host", "origin", "path", "subprotocol"])
@pytest.mark.parametrize("hixie76", [False, True])
def test_echoed_values_cannot_inject(value, where, hixie76):
    headers = hixie76_headers() if hixie76 else hixie75_headers()
    path, subprotocol = "/demo", "chat"
    if where == "path":
        path = "/" + value
    elif where == "subprotocol":
        subprotocol = value
    else:
        headers[where] = value
    with pytest.raises(HandshakeError) as excinfo:
        hixie_response(path, headers, KEY3, False, subprotocol)
    assert excinfo.value.status == 400


@pytest.mark.parametrize("path", ["", "demo", "/a b", "http://example.com/"])
def test_bad_path_is_400(path):
    with pytest.raises(HandshakeError) as excinfo:
        hixie_response(path, hixie75_headers(), None, False, None)
    assert excinfo.value.status == 400


@pytest.mark.parametrize("host", ["exa mple.com", "example.com/evil", "a@b", "ex\tample"])
def test_bad_host_is_400(host):
    with pytest.raises(HandshakeError):
        hixie_response("/", hixie75_headers(host=host), None, False, None)


# -- framing: receiving ------------------------------------------------------

def test_one_frame():
    connection = HixieConnection()
    assert connection.receive_data(frame(b"hello")) == [b"hello"]
    assert connection.data_to_send() == []
    assert connection.failure is None and connection.close_received is None
    assert not connection.close_sent


def test_binary_payload_round_trips():
    payload = bytes(range(256)) * 3
    assert HixieConnection().receive_data(frame(payload)) == [payload]


def test_frame_split_byte_by_byte():
    connection = HixieConnection()
    stream = frame(b"first message") + frame(b"\x00\xff\x80") + frame(b"x")
    received = []
    for index in range(len(stream)):
        received += connection.receive_data(stream[index:index + 1])
    assert received == [b"first message", b"\x00\xff\x80", b"x"]
    assert connection.failure is None


def test_every_split_point():
    stream = frame(b"abc") + frame(b"defgh")
    for cut in range(len(stream) + 1):
        connection = HixieConnection()
        received = connection.receive_data(stream[:cut]) + connection.receive_data(stream[cut:])
        assert received == [b"abc", b"defgh"], cut


def test_coalesced_frames():
    payloads = [os.urandom(size) for size in (1, 2, 3, 100, 1000, 4096)]
    stream = b"".join(frame(payload) for payload in payloads)
    assert HixieConnection().receive_data(stream) == payloads


def test_coalesced_with_partial_tail():
    connection = HixieConnection()
    stream = frame(b"one") + frame(b"two") + frame(b"three")
    assert connection.receive_data(stream[:-4]) == [b"one", b"two"]
    assert connection.receive_data(stream[-4:]) == [b"three"]


def test_accepts_bytearray_and_memoryview():
    connection = HixieConnection()
    assert connection.receive_data(bytearray(frame(b"a"))) == [b"a"]
    assert connection.receive_data(memoryview(frame(b"b"))[:3]) == []
    assert connection.receive_data(memoryview(frame(b"b"))[3:]) == [b"b"]


def test_empty_message_yields_nothing():
    connection = HixieConnection()
    assert connection.receive_data(b"\x00\xff" + frame(b"z") + b"\x00\xff") == [b"z"]
    assert connection.failure is None


def test_empty_input():
    connection = HixieConnection()
    assert connection.receive_data(b"") == []
    assert connection.failure is None


def test_large_frame_in_small_pieces():
    payload = os.urandom(700 * 1024)
    stream = frame(payload) + frame(b"after")
    connection = HixieConnection()
    received = []
    for start in range(0, len(stream), 1000):
        received += connection.receive_data(stream[start:start + 1000])
    assert received == [payload, b"after"]


# -- framing: limits and bad input -------------------------------------------

def assert_failed(connection, code):
    assert isinstance(connection.failure, ProtocolError)
    assert connection.failure.code == code
    assert connection.close_sent
    assert connection.data_to_send() == [CLOSE_FRAME]
    assert connection.data_to_send() == []
    # Everything after a failure is ignored.
    assert connection.receive_data(frame(b"later")) == []
    assert connection.send_data(b"later") == []


def test_text_at_the_limit_is_accepted():
    connection = HixieConnection(max_message_size=8)
    assert connection.receive_data(frame(b"123456")) == [b"123456"]   # 8 base64 bytes
    assert connection.failure is None


def test_complete_frame_over_the_limit_is_1009():
    connection = HixieConnection(max_message_size=8)
    assert connection.receive_data(frame(b"ok") + frame(b"1234567")) == [b"ok"]
    assert_failed(connection, 1009)


def test_growing_frame_over_the_limit_is_1009_before_its_end():
    connection = HixieConnection(max_message_size=16)
    assert connection.receive_data(frame(b"kept") + b"\x00" + b"A" * 16) == [b"kept"]
    assert connection.failure is None
    assert connection.receive_data(b"A") == []
    assert_failed(connection, 1009)


def test_endless_frame_fed_byte_by_byte_is_1009():
    connection = HixieConnection(max_message_size=100)
    connection.receive_data(b"\x00")
    for _ in range(100):
        connection.receive_data(b"Q")
    assert connection.failure is None
    connection.receive_data(b"Q")
    assert_failed(connection, 1009)


@pytest.mark.parametrize("text", [
    b"A", b"AB", b"ABC", b"ABCDE",          # length not a multiple of 4
    b"AB=C", b"A===", b"AA==AA==", b"=AAA",  # padding out of place
    b"AB C", b"AB\nC", b"AB-_", b"\x80\x81\x82\x83", b"QUJD\xc3\xa9AA",
])
def test_invalid_base64_is_1007(text):
    connection = HixieConnection()
    assert connection.receive_data(frame(b"before") + b"\x00" + text + b"\xff" + frame(b"x")) \
        == [b"before"]
    assert_failed(connection, 1007)


@pytest.mark.parametrize("first_byte", [b"\x01", b"\x7f", b"\x80", b"\xfe", b"Q"])
def test_unknown_frame_type_is_1002(first_byte):
    connection = HixieConnection()
    assert connection.receive_data(frame(b"before") + first_byte + b"\x05hello") == [b"before"]
    assert_failed(connection, 1002)


def test_length_prefixed_0xff_frame_is_1002():
    connection = HixieConnection()
    assert connection.receive_data(b"\xff") == []
    assert connection.failure is None
    assert connection.receive_data(b"\x03abc") == []
    assert_failed(connection, 1002)


# -- closing -----------------------------------------------------------------

def test_client_close():
    connection = HixieConnection()
    assert connection.receive_data(frame(b"last") + CLOSE_FRAME + frame(b"ignored")) == [b"last"]
    assert connection.close_received == (1000, "")
    assert connection.failure is None
    assert connection.close_sent
    assert connection.data_to_send() == [CLOSE_FRAME]
    assert connection.receive_data(frame(b"ignored")) == []
    assert connection.send_data(b"late") == []
    connection.send_close()
    assert connection.data_to_send() == []


def test_client_close_split():
    connection = HixieConnection()
    assert connection.receive_data(b"\xff") == []
    assert connection.close_received is None
    assert connection.receive_data(b"\x00") == []
    assert connection.close_received == (1000, "")
    assert connection.data_to_send() == [CLOSE_FRAME]


def test_server_close_then_client_close():
    connection = HixieConnection()
    connection.send_close(1001, "going away")
    assert connection.close_sent
    assert connection.data_to_send() == [CLOSE_FRAME]
    assert connection.send_data(b"data") == []
    # The client's data still in flight is decoded; its close is not answered twice.
    assert connection.receive_data(frame(b"in flight") + CLOSE_FRAME) == [b"in flight"]
    assert connection.close_received == (1000, "")
    assert connection.data_to_send() == []


def test_send_close_twice_queues_once():
    connection = HixieConnection()
    connection.send_close()
    connection.send_close()
    assert connection.data_to_send() == [CLOSE_FRAME]


# -- framing: sending --------------------------------------------------------

def test_send_data_small():
    connection = HixieConnection()
    assert connection.send_data(b"hello") == [b"\x00aGVsbG8=\xff"]
    assert connection.send_data(bytearray(b"\x00\xff")) == [b"\x00AP8=\xff"]
    assert connection.send_data(memoryview(b"abc")) == [b"\x00YWJj\xff"]
    assert connection.data_to_send() == []


def test_send_data_empty_sends_nothing():
    assert HixieConnection().send_data(b"") == []


def test_send_data_large_comes_in_parts():
    payload = os.urandom(200 * 1024)
    parts = HixieConnection().send_data(payload)
    assert b"".join(parts) == frame(payload)
    assert parts[0] == b"\x00" and parts[-1] == b"\xff"


def test_send_then_receive_round_trip():
    sender, receiver = HixieConnection(), HixieConnection(max_message_size=1024 * 1024)
    payloads = [os.urandom(size) for size in (1, 57, 58, 59, 60, 65536, 300000)]
    wire = b"".join(b"".join(sender.send_data(payload)) for payload in payloads)
    assert receiver.receive_data(wire) == payloads


def test_send_ping_does_nothing():
    connection = HixieConnection()
    assert connection.send_ping() is None
    assert connection.send_ping(b"x") is None
    assert connection.data_to_send() == []
    assert not connection.close_sent


class RacingHixieConnection(HixieConnection):
    """Runs a competing ``send_close`` (the target side's) the moment ``close_sent`` is read.

    The competitor runs only where no close lock is held at that point, the
    interleaving two real threads hit when the check and the queueing are
    not one step.
    """

    armed = False

    @property
    def close_sent(self):
        value = self.__dict__.get("_close_sent_flag", False)
        lock = self.__dict__.get("_close_lock")
        if self.armed and (lock is None or not lock.locked()):
            self.armed = False
            self.send_close()
        return value

    @close_sent.setter
    def close_sent(self, value):
        self.__dict__["_close_sent_flag"] = value


def test_client_close_racing_a_target_close_queues_one_close():
    connection = RacingHixieConnection()
    connection.armed = True
    assert connection.receive_data(b"\xff\x00") == []
    connection.send_close()
    assert b"".join(connection.data_to_send()) == CLOSE_FRAME


def test_failure_racing_a_target_close_queues_one_close():
    connection = RacingHixieConnection()
    connection.armed = True
    connection.receive_data(b"\x00Q!==\xff")
    assert connection.failure is not None and connection.failure.code == 1007
    assert b"".join(connection.data_to_send()) == CLOSE_FRAME
