"""WebSocket as bytes (minirr.http.websocket, RFC 6455): the handshake checked and its 101,
frames read by the incremental reader (every input fed whole, byte by byte, and with the
next frame behind it, with the same events or the same close code), frames built, and the
WebSocket events of the multiplexed wire (minirr.wire.websocket). No I/O."""

from __future__ import annotations

import struct

import pytest

from minirr.errors import FrameError
from minirr.http import websocket as ws
from minirr.http.websocket import FrameReader, HandshakeError
from minirr.wire import websocket as wire

MASK = b"\x37\xfa\x21\x3d"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="                   # RFC 6455 §1.3's example


def client(opcode: int, payload: bytes = b"", fin: bool = True, first_bits: int = 0) -> bytes:
    """A client's frame: masked (§5.1); `first_bits` sets RSV bits on top."""
    data = ws.encode_frame(opcode, payload, fin, MASK)
    return bytes([data[0] | first_bits]) + data[1:]


def feed_three_ways(data: bytes, max_bytes: int = 1 << 20, masked: bool = True):
    """The events (or the WebSocketError's code) of `data` fed whole, one byte at a time,
    and with a ping behind it: all three must agree; -> what they gave."""
    results = []
    after = client(ws.PING, b"after") if masked else ws.encode_frame(ws.PING, b"after")
    for chunks in ([data], [data[i:i + 1] for i in range(len(data))], [data + after]):
        reader = FrameReader(max_bytes, masked)
        events = []
        for chunk in chunks:
            events += reader.feed(chunk)
        if events and events[-1][0] == "fail":
            assert reader.done and reader.feed(client(ws.TEXT, b"more")) == []     # nothing after a fault
            results.append(("error", events[-1][1].code) if len(events) == 1 else (events[:-1], events[-1][1].code))
            continue
        if chunks[-1].endswith(after) and len(chunks) == 1 and not reader.done:
            assert events[-1] == ("ping", b"after")           # the trailing frame was read too
            events = events[:-1]
        results.append(events)
    assert results[0] == results[1] == results[2], results
    return results[0]


# ---- the handshake (§4.2.1) ----------------------------------------------------------------------

def headers(**extra) -> list:
    fields = {"Host": "example.com", "Upgrade": "websocket", "Connection": "keep-alive, Upgrade",
              "Sec-WebSocket-Key": KEY, "Sec-WebSocket-Version": "13"}
    fields.update({name.replace("_", "-"): value for name, value in extra.items()})
    return [(name, value) for name, value in fields.items() if value is not None]


def test_a_valid_handshake_gives_its_key_and_subprotocols():
    found = ws.check_handshake("GET", "HTTP/1.1", headers(Sec_WebSocket_Protocol="chat, superchat"))
    assert found == ws.Handshake(KEY, ("chat", "superchat"))
    assert ws.upgrade_requested(headers()) and not ws.upgrade_requested(headers(Upgrade="h2c"))


def test_the_accept_value_is_the_rfc_example():
    assert ws.accept_value(KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("method,protocol,fields,why", [
    ("POST", "HTTP/1.1", {}, "is a GET, not POST"),
    ("GET", "HTTP/1.0", {}, "needs HTTP/1.1"),
    ("GET", "HTTP/1.1", {"Connection": "keep-alive"}, "needs Connection: Upgrade"),
    ("GET", "HTTP/1.1", {"Sec_WebSocket_Key": None}, "one Sec-WebSocket-Key"),
    ("GET", "HTTP/1.1", {"Sec_WebSocket_Key": "c2hvcnQ="}, "one Sec-WebSocket-Key"),     # 5 bytes
    ("GET", "HTTP/1.1", {"Sec_WebSocket_Key": "not base64!!"}, "one Sec-WebSocket-Key"),
    ("GET", "HTTP/1.1", {"Content_Length": "5"}, "has no body"),
    ("GET", "HTTP/1.1", {"Transfer_Encoding": "chunked"}, "has no body"),
])
def test_a_bad_handshake_is_400(method, protocol, fields, why):
    with pytest.raises(HandshakeError, match=why) as info:
        ws.check_handshake(method, protocol, headers(**fields))
    assert info.value.status == 400 and info.value.headers == ()


@pytest.mark.parametrize("version", ["8", None, "13, 8"])
def test_another_version_is_426_saying_which_this_server_speaks(version):
    with pytest.raises(HandshakeError, match="speaks version 13") as info:
        ws.check_handshake("GET", "HTTP/1.1", headers(Sec_WebSocket_Version=version))
    assert info.value.status == 426 and info.value.headers == (("Sec-WebSocket-Version", "13"),)


def test_two_keys_are_400():
    fields = headers() + [("Sec-WebSocket-Key", KEY)]
    with pytest.raises(HandshakeError, match="one Sec-WebSocket-Key"):
        ws.check_handshake("GET", "HTTP/1.1", fields)


def test_the_101_carries_the_accept_value_the_subprotocol_and_the_apps_fields_but_not_framing_ones():
    handshake = ws.Handshake(KEY, ("chat",))
    data = ws.accept_response(handshake, "chat", [("X-App", "1"), ("Connection", "close"), ("Upgrade", "h2c")],
                              b"Sun, 06 Nov 1994 08:49:37 GMT")
    assert data == (b"HTTP/1.1 101 Switching Protocols\r\nX-App: 1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n"
                    b"Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n")


@pytest.mark.parametrize("subprotocol,fields,why", [
    ("superchat", [], "was not offered"),
    (None, [("X-Bad", "a\r\nSet-Cookie: x")], "control character"),
])
def test_a_101_the_rfc_does_not_allow_is_refused(subprotocol, fields, why):
    with pytest.raises(ValueError, match=why):
        ws.accept_response(ws.Handshake(KEY, ("chat",)), subprotocol, fields, b"d")


# ---- frames read (§5) -------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 100000])
@pytest.mark.parametrize("opcode,kind", [(ws.TEXT, "text"), (ws.BINARY, "binary")])
def test_a_message_of_each_length_form(size, opcode, kind):
    payload = b"a" * size
    assert feed_three_ways(client(opcode, payload)) == [(kind, payload)]


def test_fragments_are_joined_and_a_ping_between_them_comes_first():
    data = client(ws.TEXT, b"Hel", fin=False) + client(ws.PING, b"p") + client(ws.CONTINUATION, b"lo", fin=False) \
        + client(ws.CONTINUATION, b"!")
    assert feed_three_ways(data) == [("ping", b"p"), ("text", b"Hello!")]


def test_pings_pongs_and_a_close_with_its_code_and_reason():
    data = client(ws.PING, b"x" * 125) + client(ws.PONG, b"") + client(ws.CLOSE, ws.close_payload(1000, "bye"))
    assert feed_three_ways(data) == [("ping", b"x" * 125), ("pong", b""), ("close", (1000, "bye"))]


def test_nothing_is_read_after_a_close():
    reader = FrameReader(100)
    assert reader.feed(client(ws.CLOSE) + client(ws.TEXT, b"late")) == [("close", (ws.NO_STATUS, ""))]
    assert reader.done and reader.feed(client(ws.TEXT, b"later")) == []


@pytest.mark.parametrize("data", [
    ws.encode_frame(ws.TEXT, b"unmasked"),                                  # §5.1
    client(ws.TEXT, b"x", first_bits=0x40),                                 # RSV1 without an extension
    client(ws.BINARY, b"x", first_bits=0x20),
    client(ws.PING, b"x", first_bits=0x10),
    client(0x3, b"x"), client(0x7, b""), client(0xB, b""), client(0xF, b"x"),   # reserved opcodes
    client(ws.PING, b"x" * 126),                                            # a control frame over 125 bytes
    client(ws.PING, b"x", fin=False),                                       # a fragmented control frame
    client(ws.CONTINUATION, b"x"),                                          # nothing to continue
    client(ws.TEXT, b"a", fin=False) + client(ws.TEXT, b"b"),               # a new message mid-message
    client(ws.CLOSE, b"\x03"),                                              # a one-byte close payload
] + [client(ws.CLOSE, struct.pack("!H", code)) for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000,
                                                              2999, 5000, 65535)])
def test_a_protocol_error_is_close_1002(data):
    assert feed_three_ways(data) == ("error", ws.PROTOCOL_ERROR)


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000,
                                  3999, 4000, 4999])
def test_every_close_code_a_frame_may_carry_is_read(code):
    assert feed_three_ways(client(ws.CLOSE, struct.pack("!H", code))) == [("close", (code, ""))]


@pytest.mark.parametrize("data", [
    client(ws.TEXT, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"),   # a surrogate
    client(ws.TEXT, b"\xc0\xaf"),                                                        # overlong
    client(ws.TEXT, b"\xf4\x90\x80\x80"),                                                # past U+10FFFF
    client(ws.TEXT, b"\xe2\x82", fin=False) + client(ws.CONTINUATION, b"(") ,            # broken across fragments
    client(ws.TEXT, b"ends in half a character \xe2\x82"),
    client(ws.CLOSE, ws.close_payload(1000) + b"\xff"),                                  # the reason too
])
def test_text_that_is_not_utf8_is_close_1007(data):
    assert feed_three_ways(data) == ("error", ws.INVALID_DATA)


def test_a_character_split_across_fragments_is_fine():
    euro = "€".encode()
    data = client(ws.TEXT, euro[:1], fin=False) + client(ws.CONTINUATION, euro[1:2], fin=False) \
        + client(ws.CONTINUATION, euro[2:])
    assert feed_three_ways(data) == [("text", euro)]


def test_invalid_text_fails_at_its_fragment_before_the_message_ends():
    [(kind, error)] = FrameReader(100).feed(client(ws.TEXT, b"ok \xff", fin=False))   # the rest has not come
    assert kind == "fail" and error.code == ws.INVALID_DATA


def test_the_events_before_a_fault_are_the_peers():
    events = FrameReader(100).feed(client(ws.TEXT, b"ok") + client(ws.PING, b"p") + client(ws.TEXT, b"x", first_bits=0x40))
    assert events[:2] == [("text", b"ok"), ("ping", b"p")] and events[2][0] == "fail"
    assert events[2][1].code == ws.PROTOCOL_ERROR


def test_a_message_over_max_message_size_is_1009_as_soon_as_its_header_says_so():
    reader = FrameReader(1000)
    [(kind, error)] = reader.feed(client(ws.BINARY, b"x" * 1001)[:8])   # the header only: nothing held
    assert kind == "fail" and error.code == ws.MESSAGE_TOO_BIG and "max_message_size" in error.reason
    assert not reader.buffer
    fragments = client(ws.BINARY, b"x" * 600, fin=False) + client(ws.CONTINUATION, b"x" * 401)
    assert feed_three_ways(fragments, max_bytes=1000) == ("error", ws.MESSAGE_TOO_BIG)
    assert feed_three_ways(client(ws.BINARY, b"x" * 1000), max_bytes=1000) == [("binary", b"x" * 1000)]


def test_a_feed_reads_at_most_frames_per_feed_and_the_next_feed_reads_on():
    reader = FrameReader(1 << 20)
    data = b"".join(client(ws.TEXT if i == 0 else ws.CONTINUATION, b"x", fin=i == 999) for i in range(1000))
    rounds = [reader.feed(data)]
    while reader.more:
        rounds.append(reader.feed(b""))
    assert len(rounds) == -(-1000 // ws.FRAMES_PER_FEED) and rounds[-1] == [("text", b"x" * 1000)]
    assert not any(rounds[:-1]) and not reader.buffer


def test_a_reader_of_a_servers_frames_refuses_masked_ones():
    assert feed_three_ways(ws.encode_frame(ws.TEXT, b"hi"), masked=False) == [("text", b"hi")]
    assert feed_three_ways(client(ws.TEXT, b"hi"), masked=False) == ("error", ws.PROTOCOL_ERROR)


# ---- frames built -------------------------------------------------------------------------------------

def test_masking_twice_gives_the_bytes_back_and_the_header_uses_the_shortest_length():
    data = bytes(range(256)) * 3
    assert ws.mask_bytes(ws.mask_bytes(data, MASK), MASK) == data
    assert [len(ws.encode_header(ws.BINARY, n)) for n in (125, 126, 65535, 65536)] == [2, 4, 4, 10]
    assert ws.encode_frame(ws.TEXT, b"Hello") == b"\x81\x05Hello"                  # §5.7
    assert client(ws.TEXT, b"Hello")[:2] == b"\x81\x85"


def test_a_close_reason_is_cut_to_fit_without_half_a_character():
    payload = ws.close_payload(1000, "é" * 100)
    assert len(payload) <= 125 and ws.parse_close(payload) == (1000, "é" * 61)


# ---- the wire's WebSocket events (wire/websocket.py) ----------------------------------------------------

def test_accept_and_close_payloads_read_back():
    assert wire.read_accept(wire.accept_payload("chat", [("X-A", "1")])) == ("chat", [("X-A", "1")])
    assert wire.read_close(wire.close_payload(4000, "bye"), "CLOSE") == (4000, "bye")
    assert wire.offered({"pid": 1, "ids": 5, "websocket": 1}) and not wire.offered({"pid": 1, "websocket": True})


@pytest.mark.parametrize("payload", [b"[]", b"not json", b'{"subprotocol": 5}', b'{"headers": [["a"]]}',
                                     b'{"headers": [["a", 1]]}', b'{"headers": {"a": "b"}}'])
def test_an_accept_of_another_shape_breaks_the_wire(payload):
    with pytest.raises(FrameError, match="ACCEPT"):
        wire.read_accept(payload)


@pytest.mark.parametrize("payload", [b"1", b'{"code": "1000"}', b'{"code": 1000, "reason": 5}'])
def test_a_close_of_another_shape_breaks_the_wire(payload):
    with pytest.raises(FrameError, match="CLOSE"):
        wire.read_close(payload, "CLOSE")
