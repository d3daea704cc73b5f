"""Unit tests of minirr.http.chunked: the chunked body reader on its own, fed a buffer the way
http11.RequestParser feeds it (whole, and a byte at a time), its state table and its
limits. Whole requests with chunked bodies, and the chunked corpus, are
tests/test_http11.py's and the corpus's."""

from __future__ import annotations

import pytest

from minirr.http.chunked import TRANSITIONS, Chunk, ChunkedReader
from minirr.errors import ProtocolError
from minirr.http.parser import RequestLimits
from minirr.http.sections import SectionScan

BODY = b"5;name=value\r\nhello\r\n1A\r\n" + b"x" * 26 + b"\r\n0\r\nX-Sum: 1\r\n\r\n"


def reader(limits: RequestLimits = RequestLimits()) -> ChunkedReader:
    return ChunkedReader(limits, SectionScan(limits))


def feed(data: bytes, step: int, limits: RequestLimits = RequestLimits()):
    """Feed `data` `step` bytes at a time; -> (done, body, bytes left over)."""
    r, buf, parts = reader(limits), bytearray(), []
    done = False
    for i in range(0, len(data), step):
        buf += data[i:i + step]
        done = r.read(buf, parts)
        if done:
            buf += data[i + step:]
            break
    return done, b"".join(parts), bytes(buf)


def test_every_state_has_a_way_in_and_done_is_the_end():
    assert {new for new in TRANSITIONS.values()} | {Chunk.SIZE} == set(Chunk)
    assert not [old for (old, _) in TRANSITIONS if old is Chunk.DONE]


@pytest.mark.parametrize("step", [1, 2, 7, len(BODY)])
def test_body_is_the_same_however_split_and_the_rest_stays(step):
    done, body, rest = feed(BODY + b"GET /next", step)
    assert done and body == b"hello" + b"x" * 26 and rest == b"GET /next"


def test_needs_more_until_the_final_crlf():
    r, buf, parts = reader(), bytearray(BODY[:-2]), []
    assert r.read(buf, parts) is False and r.state is Chunk.TRAILERS
    buf += b"\r\n"
    assert r.read(buf, parts) is True and r.state is Chunk.DONE and not buf


def test_no_trailers():
    done, body, rest = feed(b"3\r\nabc\r\n0\r\n\r\n", 1)
    assert (done, body, rest) == (True, b"abc", b"")


@pytest.mark.parametrize("data, status, message", [
    (b"3\nabc", 400, "bare LF after chunk size"),
    (b"zz\r\n", 400, "malformed chunk size line"),
    (b"1" * 17 + b"\r\n", 400, "more than 16 hex digits"),
    (b"3\r\nabcX\r\n", 400, "chunk data not followed by CRLF"),
    (b"0\r\nContent-Length: 1\r\n\r\n", 400, "not allowed in a trailer section"),
    (b"11\r\n", 413, "request body exceeds 16 bytes"),
    (b"1" * 40, 431, "chunk size line exceeds 32 bytes"),
    (b"1;a=" + b"b" * 40 + b"\r\n", 431, "chunk size line exceeds 32 bytes"),
])
def test_errors_name_the_rule(data, status, message):
    limits = RequestLimits(max_request_size=16, limit_request_field_size=32)
    for step in (1, len(data)):
        with pytest.raises(ProtocolError, match=message) as caught:
            feed(data, step, limits)
        assert caught.value.status == status


def test_extensions_are_bounded_per_body_not_per_line():
    limits = RequestLimits(limit_request_field_size=16)
    line = b"1;abcdef\r\nx\r\n"  # 7 extension bytes: each line alone is fine
    assert feed(line * 2 + b"0\r\n\r\n", 1, limits)[0]
    with pytest.raises(ProtocolError, match="chunk extensions exceed 16 bytes") as caught:
        feed(line * 3 + b"0\r\n\r\n", 1, limits)
    assert caught.value.status == 431


def test_an_illegal_move_is_a_bug_that_names_the_state():
    r = reader()
    with pytest.raises(RuntimeError, match="'chunk_read' in state SIZE"):
        r._advance("chunk_read")
