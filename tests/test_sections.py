"""The line-level limits of a head and a trailer section (minirr.http.sections.SectionScan),
driven directly: every input fed whole, byte by byte, and with trailing data, with the
same answer each way."""

from __future__ import annotations

from typing import Optional, Tuple

import pytest

from minirr.errors import ProtocolError
from minirr.http.parser import RequestLimits
from minirr.http.sections import SectionScan

LIMITS = RequestLimits(limit_request_line=30, limit_request_fields=3, limit_request_field_size=20,
                       limit_request_headers=60)
WAYS = ("whole", "bytewise", "trailing")


def scan(data: bytes, way: str, limits: RequestLimits = LIMITS, trailers: bool = False,
         used: int = 0, fields: int = 0) -> Optional[Tuple[int, str]]:
    """Check `data` as the parser does: check_partial while the section has no end,
    check_complete once it has. -> None, or (status, message) of the ProtocolError.
    `trailers`: a trailer section after a header section of `used` bytes and `fields` lines."""
    s = SectionScan(limits)
    if trailers:
        s.section_used, s.fields_seen = used, fields
        s.start_section(request_line=False, trailers=True)
    pieces = {"whole": [data], "trailing": [data + b"GET /next HTTP/1.1\r\nHost: x\r\n"],
              "bytewise": [data[i:i + 1] for i in range(len(data))]}[way]
    buf = bytearray()
    try:
        for piece in pieces:
            buf += piece
            end = buf.find(b"\r\n\r\n", s.search_at)
            if end >= 0:
                s.check_complete(buf, end)
                return None
            s.check_partial(buf)
            s.search_at = max(0, len(buf) - 3)
    except ProtocolError as exc:
        return exc.status, exc.msg
    return None


def same_every_way(data: bytes, **kwargs):
    results = {way: scan(data, way, **kwargs) for way in WAYS}
    assert len(set(results.values())) == 1, results
    return results["whole"]


# ---- the request line (414) ----------------------------------------------------------------------

def test_a_request_line_at_its_limit_passes():
    line = b"GET /" + b"a" * (30 - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"
    assert len(line) == 30
    assert same_every_way(line + b"\r\n\r\n") is None


def test_a_request_line_over_its_limit_is_414():
    line = b"GET /" + b"a" * 20 + b" HTTP/1.1x"
    assert same_every_way(line + b"\r\n\r\n") == (414, "request line exceeds 30 bytes")


def test_a_request_line_is_refused_before_it_ends():
    assert scan(b"GET /" + b"a" * 40, "whole") == (414, "request line exceeds 30 bytes")


def test_a_cr_at_the_end_of_a_partial_line_is_not_counted_yet():
    s = SectionScan(LIMITS)
    s.check_partial(bytearray(b"G" * 30 + b"\r"))          # 30 bytes and half a line end: fine


# ---- field lines (431) ------------------------------------------------------------------------------------

HEAD = b"GET / HTTP/1.1\r\n"


def test_a_field_line_at_its_limit_passes():
    field = b"X-A: " + b"v" * 13
    assert len(field + b"\r\n") == 20             # its CRLF counts, as gunicorn counts it
    assert same_every_way(HEAD + field + b"\r\n\r\n") is None


def test_a_field_line_over_its_limit_is_431():
    assert same_every_way(HEAD + b"X-A: " + b"v" * 16 + b"\r\n\r\n") == (431, "header field line exceeds 20 bytes")


def test_the_crlf_of_a_field_line_counts_against_its_limit():
    """gunicorn's default 8190 refuses a field line of 8189 bytes and its CRLF (its corpus,
    invalid/008); minirr borrows the key's name and default, so it counts the same way."""
    field = b"X-A: " + b"v" * 14
    assert len(field) == 19 and len(field + b"\r\n") == 21
    assert same_every_way(HEAD + field + b"\r\n\r\n") == (431, "header field line exceeds 20 bytes")


def test_more_fields_than_the_limit_is_431():
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(4))
    assert same_every_way(HEAD + fields + b"\r\n") == (431, "more than 3 header fields")
    assert same_every_way(HEAD + fields[:-len(b"X-3: v\r\n")] + b"\r\n") is None


def test_a_header_section_over_its_limit_is_431():
    fields = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 13) for i in range(3))   # 18 + 2 bytes each
    assert same_every_way(HEAD + fields + b"\r\n") == (431, "header section exceeds 60 bytes")


def test_of_two_limits_passed_the_one_passed_first_is_named():
    limits = RequestLimits(limit_request_line=100, limit_request_fields=10, limit_request_field_size=30,
                           limit_request_headers=25)
    # the section's 25 bytes are passed before the line's 30
    assert same_every_way(HEAD + b"X-A: " + b"v" * 40 + b"\r\n\r\n", limits=limits) == (
        431, "header section exceeds 25 bytes")
    limits = RequestLimits(limit_request_line=100, limit_request_fields=10, limit_request_field_size=10,
                           limit_request_headers=25)
    assert same_every_way(HEAD + b"X-A: " + b"v" * 40 + b"\r\n\r\n", limits=limits) == (
        431, "header field line exceeds 10 bytes")


# ---- line ends ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\nHost: a\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\n\r\n"])
def test_a_bare_lf_is_400(data):
    assert same_every_way(data) == (400, "bare LF line ending (RFC 9112 §2.2: lines end with CRLF)")


def test_a_limit_passed_before_a_bare_lf_is_named_first():
    assert same_every_way(HEAD + b"X-A: " + b"v" * 16 + b"\n\r\n") == (431, "header field line exceeds 20 bytes")


# ---- trailers share the budget ----------------------------------------------------------------------------------

def test_trailer_lines_name_their_section():
    assert same_every_way(b"X-T: " + b"v" * 16 + b"\r\n\r\n", trailers=True) == (
        431, "trailer field line exceeds 20 bytes")


def test_trailers_count_against_the_header_fields():
    assert same_every_way(b"X-T: 1\r\nX-U: 2\r\n\r\n", trailers=True, fields=2) == (
        431, "more than 3 header and trailer fields")
    assert same_every_way(b"X-T: 1\r\n\r\n", trailers=True, fields=2) is None


def test_trailers_count_against_the_header_section_size():
    assert same_every_way(b"X-T: " + b"v" * 10 + b"\r\n\r\n", trailers=True, used=50) == (
        431, "header and trailer section exceeds 60 bytes")
    assert same_every_way(b"X-T: 1\r\n\r\n", trailers=True, used=50) is None


def test_new_request_forgets_the_previous_budget():
    s = SectionScan(LIMITS)
    s.section_used, s.fields_seen = 59, 3
    s.new_request()
    assert (s.section_used, s.fields_seen, s.line_at, s.section_at, s.trailers) == (0, 0, 0, -1, False)
