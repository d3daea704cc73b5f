"""A worker's reply frames -> reply events (minirr.master.reply), pure: each input is fed
through a FrameDecoder(large=PARTS) three ways — whole, byte by byte, and in odd slices
with the next frame's bytes behind it — and must give the same events; the head cache
(ReplyHeads) against read_reply_head; what is the app's fault (APP_ERROR) and what breaks
the channel (BROKEN)."""

from __future__ import annotations

import json
from typing import List, Tuple

import pytest

from minirr.master import reply as reply_module
from minirr.master.jobs import Job
from minirr.master.reply import (APP_ERROR, BEGIN, BODY, BROKEN, END, FINAL, MAX_HEAD_BYTES, NOTHING, RECYCLE,
                                 SOFT_ERROR, SOFT_ERROR_MESSAGE_BYTES, STOP_HEAD, WHOLE, ReplyHead, ReplyHeads,
                                 ReplyReader, pending, read_reply_head)
from minirr.wire import frame
from minirr.wire.frame import CODEC_JSON, ERROR, STREAM
from minirr.wire.heads import HeadSyntaxError
from minirr.wire.messages import Request

LARGE = bytes(range(256)) * ((frame.LARGE_PAYLOAD_BYTES + 3000) // 256)
OK_HEAD = b'{"status":200,"headers":{"Content-Type":["text/plain"]}}'
OK_HTTP = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
# What a worker sends next: half of it stays in the decoder behind the input.
BEHIND = frame.encode(CODEC_JSON, b'{"status":200}next', (14,))[:9]
SLICES = (7, 1, 13, 4099, 3, 65537)


def response(body: bytes = b"", head: bytes = OK_HEAD, stream: int = 0) -> bytes:
    return frame.encode(CODEC_JSON, head + body, (len(head),), stream)


def piece(body: bytes = b"", stream: int = 0) -> bytes:
    return frame.encode(CODEC_JSON, body, (0,), stream)


def new_job() -> Job:
    return Job(None, Request("GET", "/"), True, 0.0)


# ---- feeding three ways -------------------------------------------------------------------------------

def whole(data: bytes) -> List[bytes]:
    return [data]


def byte_by_byte(data: bytes) -> List[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


def odd_slices(data: bytes) -> List[bytes]:
    data += BEHIND
    chunks, pos, turn = [], 0, 0
    while pos < len(data):
        size = SLICES[turn % len(SLICES)]
        chunks.append(data[pos:pos + size])
        pos += size
        turn += 1
    return chunks


WAYS = [whole, byte_by_byte, odd_slices]


def read(data: bytes, way=whole, reader: ReplyReader = None) -> Tuple[list, frame.FrameDecoder, Job]:
    """The raw events of `data` fed `way`, up to the reply's final one (the backend reads
    no further: it frees or kills the worker), with the decoder and the job."""
    reader = reader or ReplyReader()
    decoder = frame.FrameDecoder(max_payload_bytes=1 << 24, large=frame.PARTS)
    job = new_job()
    events: list = []
    for chunk in way(data):
        for item in decoder.feed(chunk):
            if events and is_final(events[-1], job):
                continue
            events.append(reader.read(job, item))
    return events, decoder, job


def is_final(event: tuple, job: Job) -> bool:
    return event[0] in FINAL or (event[0] == APP_ERROR and not pending(job))


def as_answer(events: list) -> list:
    """Events as the answer they describe: NOTHING left out, heads as (status, HTTP), and
    body pieces joined (BEGIN, BODY ..., END is the WHOLE answer in pieces: how many pieces,
    and whether a large frame comes whole or in parts, depends on how its bytes arrive)."""
    out: list = []                     # [kind, head, data or a list of body pieces]
    for kind, head, data in events:
        if kind == NOTHING:
            continue
        last = out[-1] if out else None
        if kind in (BODY, END) and last is not None and last[0] in (BEGIN, BODY):
            last[2].append(bytes(data))
            if kind == END:
                last[0] = WHOLE if last[0] == BEGIN else END
        else:
            head = None if head is None else (head.status, head.http)
            out.append([kind, head, data if isinstance(data, str) else [bytes(data)]])
    return [(kind, head, data if isinstance(data, str) else b"".join(data)) for kind, head, data in out]


def three_ways(data: bytes, fast: bool = True) -> list:
    """The answer `data` describes, the same whole, byte by byte and sliced (asserted)."""
    results = []
    for way in WAYS:
        events, decoder, _ = read(data, way, reader_of(fast))
        results.append(as_answer(events))
        assert decoder.buffered_bytes == (len(BEHIND) if way is odd_slices else 0), way.__name__
    assert results[0] == results[1] == results[2]
    return results[0]


def reader_of(fast: bool) -> ReplyReader:
    if fast:
        return ReplyReader()
    plain = ReplyReader()
    plain.heads, plain.read_head = {}, read_reply_head     # what MINIRR_FAST_PATHS=0 builds
    return plain


@pytest.fixture(params=[True, False], ids=["fast", "plain"])
def fast(request):
    return request.param


# ---- answers --------------------------------------------------------------------------------------------

def test_one_frame_is_the_whole_answer(fast):
    assert three_ways(response(b"hello"), fast) == [(WHOLE, (200, OK_HTTP), b"hello")]
    events, _, job = read(response(b"hello"))
    assert [e[0] for e in events] == [WHOLE] and job.reply is None      # nothing kept per job


def test_a_head_without_headers_and_an_empty_body(fast):
    assert three_ways(response(b"", b'{"status":204}'), fast) == [(WHOLE, (204, b"HTTP/1.1 204 No Content\r\n"), b"")]


def test_a_stream_begins_goes_on_and_ends(fast):
    data = response(b"a", stream=STREAM) + piece(b"b", STREAM) + response(b"c", stream=STREAM) + piece(b"d")
    assert three_ways(data, fast) == [(WHOLE, (200, OK_HTTP), b"abcd")]
    events, _, job = read(data)
    assert [(kind, bytes(body)) for kind, _, body in events] == [(BEGIN, b"a"), (BODY, b"b"), (BODY, b"c"),
                                                                 (END, b"d")]
    assert events[0][1].content_length is None and ReplyReader.streams(job)


def test_a_later_piece_of_a_stream_may_come_without_a_head_length_option():
    data = response(b"a", stream=STREAM) + frame.encode(CODEC_JSON, b"b", (), STREAM) + frame.encode(CODEC_JSON, b"c")
    assert three_ways(data) == [(WHOLE, (200, OK_HTTP), b"abc")]


def test_a_stream_gives_its_content_length_with_its_head():
    head = b'{"status":200,"headers":{"Content-Length":["4"]}}'
    events, _, _ = read(response(b"ab", head, STREAM) + piece(b"cd"))
    assert events[0][0] == BEGIN and events[0][1].content_length == 4
    assert events[0][1].http == b"HTTP/1.1 200 OK\r\n"                 # framing fields are the master's


def test_a_large_frame_comes_in_parts_with_its_body_length_as_content_length():
    assert three_ways(response(LARGE)) == [(WHOLE, (200, OK_HTTP), LARGE)]
    events, _, job = read(response(LARGE), odd_slices)
    kinds = [kind for kind, _, _ in events if kind != NOTHING]
    assert kinds[0] == BEGIN and kinds[-1] == END and set(kinds[1:-1]) == {BODY}
    assert events[[e[0] for e in events].index(BEGIN)][1].content_length == len(LARGE)
    assert not pending(job)


def test_a_large_head_is_collected_across_parts():
    head = json.dumps({"status": 201, "headers": {"X-Big": ["v" * 200000]}}).encode()
    body = b"b" * (frame.LARGE_PAYLOAD_BYTES - len(head))
    [(kind, got, joined)] = three_ways(response(body, head))
    assert (kind, got[0], joined) == (WHOLE, 201, body) and got[1].endswith(b"v" * 200000 + b"\r\n")


def test_a_large_stream_frame_goes_on_in_parts_without_ending():
    data = response(LARGE, stream=STREAM) + piece(b"!")
    assert three_ways(data) == [(WHOLE, (200, OK_HTTP), LARGE + b"!")]
    events, _, _ = read(response(LARGE, stream=STREAM))
    assert events[-1][0] == BEGIN and events[-1][1].content_length is None   # more frames follow


def test_a_large_frame_as_a_later_piece_of_a_stream():
    data = response(b"a", stream=STREAM) + frame.encode(CODEC_JSON, LARGE)   # no head option, no STREAM: the last
    assert three_ways(data) == [(WHOLE, (200, OK_HTTP), b"a" + LARGE)]


# ---- soft errors and recycling ----------------------------------------------------------------------------

def test_an_error_frame_is_a_soft_error_with_its_message():
    assert three_ways(frame.encode(ERROR, b"ValueError: boom\n")) == [(SOFT_ERROR, None, "'ValueError: boom.'")]


@pytest.mark.parametrize("size", [1000, frame.LARGE_PAYLOAD_BYTES + 1], ids=["long", "large"])
def test_of_a_long_error_message_the_first_bytes_are_kept(size):
    [(kind, _, message)] = three_ways(frame.encode(ERROR, b"E" * size))
    assert kind == SOFT_ERROR and message == repr("E" * SOFT_ERROR_MESSAGE_BYTES)


def test_an_error_frame_mid_stream_is_a_soft_error():
    answer = three_ways(response(b"a", stream=STREAM) + frame.encode(ERROR, b"boom"))
    assert answer == [(BEGIN, (200, OK_HTTP), b"a"), (SOFT_ERROR, None, "'boom'")]


def test_a_stop_head_asks_to_be_recycled():
    assert three_ways(response(b"", b'{"stop":true}')) == [(RECYCLE, None, "")]
    assert read_reply_head(b'{"stop":true}') is STOP_HEAD


# ---- the channel is broken: BROKEN ------------------------------------------------------------------------

@pytest.mark.parametrize("data,why", [
    (frame.encode(CODEC_JSON, b'{"status":200}'), "a response frame without its head length option"),
    (frame.encode(CODEC_JSON, b"{}", (3,)), "a response frame without its head length option"),
    (response(b"body", b'{"stop":true}'), "a stop request with a body"),
    (response(b"", b'{"stop":true}', STREAM), "a stop request with a body"),
    (response(LARGE, b'{"stop":true}'), "a stop request with a body"),
    (frame.encode(CODEC_JSON, LARGE), f"a response frame of {len(LARGE)} bytes with head length -1"),
    (frame.encode(CODEC_JSON, LARGE, (0,)), f"a response frame of {len(LARGE)} bytes with head length 0"),
    (frame.encode(CODEC_JSON, LARGE, (MAX_HEAD_BYTES + 1,)),
     f"a response frame of {len(LARGE)} bytes with head length {MAX_HEAD_BYTES + 1}"),
], ids=["no_head_length", "head_length_past_the_payload", "stop_with_a_body", "stop_that_streams", "large_stop",
        "large_without_head_length", "large_with_an_empty_head", "large_head_too_long"])
def test_frames_that_break_the_protocol_are_broken(data, why):
    assert three_ways(data) == [(BROKEN, None, why)]


NOT_OBJECTS = [(b"[1]", "list"), (b"not json", "not_json"), (b"\xff\xfe", "not_utf8"),
               (b"[" * 100000, "nested_100k_deep"), (b'"a string"', "string"), (b'{"status":200} trailing', "trailing")]


@pytest.mark.parametrize("head,size", [(head, "small") for head, _ in NOT_OBJECTS] + [
    (b"[1]", "large"), (b"[" * 100000, "large")], ids=[name for _, name in NOT_OBJECTS] + ["large_list", "large_deep"])
def test_a_head_that_is_no_json_object_is_broken(head, size):
    answer = three_ways(response(LARGE if size == "large" else b"body", head))
    [(kind, _, why)] = answer
    assert kind == BROKEN and why.startswith("an invalid response head: response head ")
    with pytest.raises(HeadSyntaxError):
        read_reply_head(head)


# ---- the app got its head wrong: APP_ERROR, the channel is fine -------------------------------------------------

APP_ERRORS = [
    (b'{"status":99}', "response status 99 is outside 200..599"),
    (b'{"status":600}', "response status 600 is outside 200..599"),
    (b'{"status":"200"}', "response status '200' is outside 200..599"),
    (b'{"status":true}', "response status True is outside 200..599"),
    (b'{}', "response status None is outside 200..599"),
    (b'{"status":200,"headers":{"X":["a\\r\\nSet-Cookie: evil=1"]}}', "response header 'X' contains the control character '\\r' (RFC 9110 §5.5)"),
    (b'{"status":200,"headers":{"X":["a\\nb"]}}', "response header 'X' contains the control character '\\n' (RFC 9110 §5.5)"),
    (b'{"status":200,"headers":{"Bad Name":["v"]}}', "response header name 'Bad Name' is not a token"),
    (b'{"status":200,"headers":{"X":["\\u20ac"]}}', "response header 'X' is not latin-1 text"),
    (b'{"status":200,"headers":{"X":[1]}}', "response header 'X' has a int value, not a string"),
    (b'{"status":200,"headers":{"X":null}}', "response header 'X' has a NoneType value, not strings"),
    (b'{"status":200,"headers":[["X","1"]]}', "response headers are a JSON list, not an object"),
    (b'{"status":200,"headers":{"Content-Length":["1","2"]}}',
     "response Content-Length ['1', '2'] is not one whole number"),
    (b'{"status":200,"headers":{"Content-Length":["-1"]}}', "response Content-Length ['-1'] is not one whole number"),
]


@pytest.mark.parametrize("head,why", APP_ERRORS, ids=[why.split(" is ")[0][:40] for _, why in APP_ERRORS])
def test_a_head_the_app_got_wrong_is_an_app_error(fast, head, why):
    assert three_ways(response(b"body", head), fast) == [(APP_ERROR, None, why)]
    events, _, job = read(response(b"body", head))
    assert not pending(job)                                        # one frame: the worker is done with it
    with pytest.raises(ValueError) as info:
        read_reply_head(head)
    assert not isinstance(info.value, HeadSyntaxError)


def test_the_rest_of_a_stream_whose_head_the_app_got_wrong_is_read_as_usual():
    data = response(b"a", b'{"status":99}', STREAM) + piece(b"b", STREAM) + piece(b"c")
    events, _, _ = read(data)
    assert [kind for kind, _, _ in events] == [APP_ERROR, BODY, END]
    _, _, job = read(response(b"a", b'{"status":99}', STREAM))
    assert pending(job)                                            # more frames are to come


def test_the_rest_of_a_large_frame_whose_head_the_app_got_wrong_is_read_as_usual():
    """Fed whole, the head and the frame's end come in one part: the reply ends with the
    APP_ERROR. Otherwise the rest of the frame follows it, read as usual, to its END."""
    data = response(LARGE, b'{"status":99}')
    for way in WAYS:
        events, decoder, job = read(data, way)
        answer = as_answer(events)
        assert answer[0] == (APP_ERROR, None, "response status 99 is outside 200..599")
        rest = answer[1:]
        assert rest == [] if way is whole else (rest[0][0] == END and LARGE.endswith(rest[0][2]))
        assert is_final(events[-1], job) and not pending(job)
    events, _, job = read(data[:30000])
    assert events[-1][0] == APP_ERROR and pending(job)


def test_an_empty_head_of_a_small_frame_is_broken():
    [(kind, _, why)] = three_ways(frame.encode(CODEC_JSON, b"body", (0,)))
    assert kind == BROKEN and why.startswith("an invalid response head: response head is not JSON")


def test_the_kinds_that_end_a_reply():
    assert FINAL == {WHOLE, END, SOFT_ERROR, RECYCLE, BROKEN}


# ---- the head cache: ReplyHeads, the fast twin of read_reply_head ---------------------------------------

CORPUS = [
    OK_HEAD, b'{"status":204}', b'{"status":200,"headers":{}}', b'{"status":201,"headers":{"X":"one"}}',
    b'{"status":200,"headers":{"Set-Cookie":["a=1","b=2"],"set-cookie":["c=3"]}}',
    b'{"status":404,"headers":{"Content-Length":["12"],"content-length":[" 12 "]}}',
    b'{"status":599,"headers":{"x-lower":["v"],"X-UPPER":["w"]}}',
    b'{"status":200,"headers":{"X":["caf\\u00e9"]}}', b'{"stop":true}', b'{"stop":true,"status":200}',
    b'{"status":200,"headers":{"Connection":["close"],"Date":["x"],"Transfer-Encoding":["chunked"]}}',
    b' {"status":200} ', b'{"status":200,"extra":{"nested":[1,2,3]}}',
    json.dumps({"status": 200, "headers": {"X-Large": ["v" * 5000]}}).encode(),
]


@pytest.mark.parametrize("head", CORPUS)
def test_the_cache_gives_what_read_reply_head_gives(head):
    heads = ReplyHeads()
    assert heads.read(head) == read_reply_head(head)
    assert heads.read(head) == read_reply_head(head)               # again, from the cache if it kept it


def test_the_cache_keeps_a_head_once_and_gives_it_back():
    heads = ReplyHeads()
    first = heads.read(OK_HEAD)
    assert heads.read(OK_HEAD) is first and list(heads) == [OK_HEAD]
    assert first == ReplyHead(200, OK_HTTP, None)


def test_the_cache_is_bounded_in_number_and_in_size():
    heads = ReplyHeads()
    for i in range(ReplyHeads.CACHE_SIZE + 50):
        head = b'{"status":200,"headers":{"Set-Cookie":["id=%d"]}}' % i
        assert heads.read(head) == read_reply_head(head)
    assert len(heads) == ReplyHeads.CACHE_SIZE
    big = json.dumps({"status": 200, "headers": {"X": ["v" * ReplyHeads.CACHE_MAX_BYTES]}}).encode()
    fresh = ReplyHeads()
    assert fresh.read(big) == read_reply_head(big) and big not in fresh


@pytest.mark.parametrize("head", [b'{"status":99}', b"[1]", b"[" * 100000], ids=["app_error", "list", "deep"])
def test_the_cache_keeps_only_valid_heads(head):
    heads = ReplyHeads()
    with pytest.raises(ValueError):
        heads.read(head)
    assert len(heads) == 0


def test_the_reader_caches_heads_only_on_the_fast_path(monkeypatch):
    monkeypatch.setattr(reply_module, "FAST", True)
    reader = ReplyReader()
    read(response(b"x"), reader=reader)
    assert list(reader.heads) == [OK_HEAD]
    monkeypatch.setattr(reply_module, "FAST", False)
    plain = ReplyReader()
    assert plain.heads == {} and plain.read_head is read_reply_head
    read(response(b"x"), reader=plain)
    assert plain.heads == {}
