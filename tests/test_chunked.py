"""Unit tests of minirr.http.chunked: the chunked body reader on its own, fed a buffer the way
http11.RequestParser feeds it (whole, and a byte at a time), its state table and its
limits. Whole requests with chunked bodies, and the chunked corpus, are
tests/test_http11.py's and the corpus's."""

from __future__ import annotations

import pytest

from minirr.http.chunked import (CHUNK_FRAMING_FACTOR, CHUNK_FRAMING_MIN_BYTES, COMPLETE, FRAMING_BYTES_PER_READ,
                                 NEED_DATA, SPENT, TRANSITIONS, Chunk, ChunkedReader)
from minirr.errors import ProtocolError
from minirr.http.parser import RequestLimits
from minirr.http.sections import SectionScan

BODY = b"5;name=value\r\nhello\r\n1A\r\n" + b"x" * 26 + b"\r\n0\r\nX-Sum: 1\r\n\r\n"


def reader(limits: RequestLimits = RequestLimits()) -> ChunkedReader:
    return ChunkedReader(limits, SectionScan(limits))


def read_all(r: ChunkedReader, buf: bytearray, parts: list):
    """read() again while it stops at its budget (as the parser's caller asks again)."""
    outcome = r.read(buf, parts)
    while outcome is SPENT:
        outcome = r.read(buf, parts)
    return outcome


def feed(data: bytes, step: int, limits: RequestLimits = RequestLimits()):
    """Feed `data` `step` bytes at a time; -> (done, body, bytes left over)."""
    r, buf, parts = reader(limits), bytearray(), []
    done = False
    for i in range(0, len(data), step):
        buf += data[i:i + step]
        done = read_all(r, buf, parts) is COMPLETE
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
    assert r.read(buf, parts) is NEED_DATA and r.state is Chunk.TRAILERS
    buf += b"\r\n"
    assert r.read(buf, parts) is COMPLETE and r.state is Chunk.DONE and not buf


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


def small_chunks(count: int, size: int = 1) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (size, bytes([97 + i % 26]) * size) for i in range(count))


def test_a_read_stops_after_its_framing_budget_and_goes_on_where_it_stopped():
    """A buffer full of tiny chunks is read FRAMING_BYTES_PER_READ of framing at a time
    (SPENT), so one connection cannot hold the master's loop; the result is the same."""
    data = small_chunks(3000) + b"0\r\n\r\nGET /next"   # 15,000 bytes of framing
    r, buf, parts = reader(), bytearray(data), []
    outcomes = []
    while not outcomes or outcomes[-1] is SPENT:
        buf_before, data_before = len(buf), len(parts)      # each part is one byte here
        outcomes.append(r.read(buf, parts))
        framing = (buf_before - len(buf)) - (len(parts) - data_before)
        assert framing <= FRAMING_BYTES_PER_READ + 5         # it stops at the first chunk past it
    assert outcomes == [SPENT] * (len(outcomes) - 1) + [COMPLETE] and len(outcomes) >= 15_000 // FRAMING_BYTES_PER_READ
    assert b"".join(parts) == bytes(97 + i % 26 for i in range(3000)) and buf == b"GET /next"


def test_large_chunks_are_read_whole_in_one_read():
    data = (b"10000\r\n" + b"z" * 0x10000 + b"\r\n") * 64 + b"0\r\n\r\n"
    r, buf, parts = reader(), bytearray(data), []
    assert r.read(buf, parts) is COMPLETE and len(b"".join(parts)) == 64 * 0x10000


@pytest.mark.parametrize("step", [1, 4096, 1 << 20])
def test_a_body_of_tiny_chunks_is_refused_past_the_framing_allowance(step):
    """Framing may exceed the data CHUNK_FRAMING_FACTOR times over once past
    CHUNK_FRAMING_MIN_BYTES: 1-byte chunks (5 bytes of framing each) pass that point."""
    allowed = CHUNK_FRAMING_MIN_BYTES // 5                # 1-byte chunks within the allowance
    assert feed(small_chunks(allowed) + b"0\r\n\r\n", step)[0]
    with pytest.raises(ProtocolError) as caught:
        feed(small_chunks(allowed + 1) + b"0\r\n\r\n", step)
    assert caught.value.status == 400
    assert caught.value.msg == (f"chunk framing exceeds {CHUNK_FRAMING_FACTOR} times the body's data "
                                f"(past {CHUNK_FRAMING_MIN_BYTES} bytes): chunks too small")


def test_small_chunks_that_carry_more_than_their_framing_are_fine():
    body = small_chunks(20_000, size=6)                   # 5 bytes of framing for 6 of data
    done, data, _ = feed(body + b"0\r\n\r\n", 1 << 20, RequestLimits(max_request_size=1 << 20))
    assert done and len(data) == 120_000


def test_an_illegal_move_is_a_bug_that_names_the_state():
    r = reader()
    with pytest.raises(RuntimeError, match="'chunk_read' in state SIZE"):
        r._advance("chunk_read")
