"""The multiplexed wire's pure parts (minirr.wire.multiplex): what a master's frame means on
each wire, the table of requests in flight and the ids just ended, the CREDIT window, and
the frames the master sends (docs/external-workers.md, Many requests at once)."""

from __future__ import annotations

from pathlib import Path

import pytest

from minirr.errors import FrameError
from minirr.wire import frame, multiplex
from minirr.wire.frame import CODEC_JSON, CONTROL, CREDIT, STOP, STREAM_WINDOW_BYTES, FrameDecoder
from minirr.wire.multiplex import Kind, RequestTable, Window


def decoded(data: bytes) -> frame.Frame:
    (item,) = FrameDecoder().feed(data)
    return item


def test_the_credit_bit_is_named_and_unused_by_goridge():
    assert CREDIT == 0x10 and not CREDIT & (frame.STREAM | frame.STOP | frame.PING | frame.PONG)
    assert frame.names(CREDIT, frame.STREAM_NAMES) == "CREDIT"
    assert "stream=CREDIT" in frame.describe(multiplex.credit_frame(4096, 7))
    assert STREAM_WINDOW_BYTES == 1048576


# The worked examples of docs/external-workers.md, Many requests at once: each frame as
# minirr builds it, its header shown in hex there.
DOCUMENTED = [
    frame.encode(CONTROL, b'{"pid":4321,"ids":1000}'),
    frame.encode_header(CODEC_JSON, 245, multiplex.options(245, 7)),
    frame.encode(CODEC_JSON, b'{"status":200,"headers":{}}Hello', multiplex.options(27, 7)),
    frame.encode(CODEC_JSON, b'{"status":200,"headers":{}}tick', multiplex.options(27, 9), frame.STREAM),
    frame.encode(CODEC_JSON, b"tock", multiplex.options(0, 9), frame.STREAM),
    frame.encode(CODEC_JSON, b"", multiplex.options(0, 9)),
    frame.encode(frame.ERROR, b"boom", (0, 7)),
    multiplex.stop_frame(7),
    multiplex.credit_frame(65536, 7),
]


@pytest.mark.parametrize("data", DOCUMENTED, ids=range(len(DOCUMENTED)))
def test_the_documented_frames_byte_for_byte(data):
    text = (Path(__file__).resolve().parent.parent / "docs" / "external-workers.md").read_text()
    section = text[text.index("## Many requests at once"):text.index("## A PHP worker")]
    header_words = data[0] & 0x0F
    assert data[:4 * header_words].hex(" ") in section


def test_the_masters_frames_read_back():
    assert multiplex.classify(decoded(multiplex.stop_frame(7)), True) == (Kind.STOP, 7, 0)
    assert multiplex.classify(decoded(multiplex.credit_frame(65536, 7)), True) == (Kind.CREDIT, 7, 65536)
    assert multiplex.classify(decoded(multiplex.request_frame(b'{"h":1}', b"xy", 7)), True) == (Kind.REQUEST, 7, 7)


@pytest.mark.parametrize("data,kind,request_id,value", [
    (multiplex.request_frame(b"{}", b"body", 9), Kind.REQUEST, 9, 2),
    (multiplex.stop_frame(9), Kind.STOP, 9, 0),
    (multiplex.credit_frame(300, 9), Kind.CREDIT, 9, 300),
    (frame.encode(0, b"", (0, 9), frame.PONG), Kind.PONG, 9, 0),
    (frame.encode(CONTROL | CODEC_JSON, b'{"stop":true}'), Kind.CONTROL, 0, 0),
])
def test_what_a_frame_means_on_the_multiplexed_wire(data, kind, request_id, value):
    assert multiplex.classify(decoded(data), True) == (kind, request_id, value)


@pytest.mark.parametrize("data,kind", [
    (frame.encode(CODEC_JSON, b"{}", (2,)), Kind.REQUEST),
    (frame.encode(0, b"", (), STOP), Kind.STOP),
    (frame.encode(0, b"", (), frame.PONG), Kind.PONG),
])
def test_what_a_frame_means_on_the_classic_wire(data, kind):
    item = decoded(data)
    assert not multiplex.is_multiplexed(item) or kind is not Kind.REQUEST
    assert multiplex.classify(item, False).kind is kind and multiplex.classify(item, False).request_id == 0


@pytest.mark.parametrize("data,multiplexed,message", [
    (frame.encode(CODEC_JSON, b"{}", (2,)), True, "a frame with 1 options on the multiplexed wire"),
    (frame.encode(0, b"", (), STOP), True, "a frame with 0 options on the multiplexed wire"),
    (frame.encode(CODEC_JSON, b"{}", (2, 0)), True, "a frame for request id 0: ids are 1 and up"),
    (frame.encode(CODEC_JSON, b"{}", (2, 5)), False, "a frame with 2 options on the classic wire"),
    (frame.encode(0, b"", (5,), CREDIT), False, "stream bits CREDIT, which the master does not send on the classic"),
    (frame.encode(0, b"", (0, 5), frame.STREAM), True, "stream bits STREAM, which the master does not send"),
    (frame.encode(0, b"", (0, 5), STOP | CREDIT), True, "stream bits STOP|CREDIT, which the master does not send"),
])
def test_a_frame_that_does_not_fit_the_wire_is_a_frame_error(data, multiplexed, message):
    with pytest.raises(FrameError) as info:
        multiplex.classify(decoded(data), multiplexed)
    assert message in str(info.value)


def test_options_carry_the_id_only_on_the_multiplexed_wire():
    assert multiplex.options(27, 0) == (27,) and multiplex.options(27, 4) == (27, 4)


def test_a_table_takes_up_to_its_limit_and_refuses_an_id_in_flight():
    table: RequestTable[str] = RequestTable(2)
    table.begin(1, "a")
    with pytest.raises(FrameError, match="a second request with id 1, which is still in flight"):
        table.begin(1, "again")
    table.begin(2, "b")
    with pytest.raises(FrameError, match="request 3 would be request 3 in flight; this worker takes 2 at once"):
        table.begin(3, "c")
    table.end(1)
    table.begin(3, "c")
    assert table.in_flight == {2: "b", 3: "c"}


def test_a_frame_for_an_id_just_ended_crossed_it_and_is_nothing():
    table: RequestTable[str] = RequestTable(2)
    table.begin(5, "x")
    assert table.find(5, "STOP") == "x"
    table.end(5)
    assert table.find(5, "STOP") is None and table.find(5, "CREDIT") is None
    with pytest.raises(FrameError, match="STOP for request id 6, which is not in flight"):
        table.find(6, "STOP")


def test_the_table_remembers_the_last_limit_ids_ended_and_no_more():
    table: RequestTable[str] = RequestTable(3)
    for request_id in range(1, 6):
        table.begin(request_id, "r")
        table.end(request_id)
    for request_id in (3, 4, 5):
        assert table.find(request_id, "STOP") is None
    for request_id in (1, 2):
        with pytest.raises(FrameError):
            table.find(request_id, "STOP")


def test_an_id_used_again_is_forgotten_as_ended():
    table: RequestTable[str] = RequestTable(2)
    table.begin(1, "old")
    table.end(1)
    table.begin(1, "new")
    assert table.find(1, "STOP") == "new"
    table.end(1)
    for request_id in (2, 3):                # two more ends: 1 falls out of a memory of two
        table.begin(request_id, "r")
        table.end(request_id)
    with pytest.raises(FrameError):
        table.find(1, "STOP")


def test_a_window_starts_full_spends_and_takes_credit_back():
    window = Window(100)
    assert window.room == 100
    window.spend(60)
    window.spend(40)
    assert window.room == 0
    with pytest.raises(ValueError):
        window.spend(1)
    window.credit(30)
    assert window.room == 30
    with pytest.raises(FrameError, match="CREDIT of 71 bytes, but only 70 are sent and not credited"):
        window.credit(71)
    assert Window().size == STREAM_WINDOW_BYTES


@pytest.mark.parametrize("hello,ids", [
    ({"pid": 1, "ids": 1000}, 1000), ({"pid": 1}, 0), ({"pid": 1, "ids": 0}, 0), ({"pid": 1, "ids": True}, 0),
    ({"pid": 1, "ids": "9"}, 0), ({"pid": 1, "ids": 2 ** 32}, 0), ([1], 0), (None, 0),
])
def test_what_a_worker_offers_in_its_handshake(hello, ids):
    assert multiplex.offered_ids(hello) == ids
