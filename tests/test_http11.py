"""Unit tests of minirr.http.parser: the RequestParser API, its state table, limits and
repeated fields fed three ways. The grammar's rules one by one are tests/test_grammar.py's,
the line-level limits on their own tests/test_sections.py's; parsing rules case by case
live in the corpus; responses are tests/test_responses.py's, proxy trust
tests/test_frontend.py's."""

from __future__ import annotations


import pytest

from minirr.http import grammar
from minirr.http import parser as http11
from minirr.errors import ProtocolError
from minirr.http.parser import (CLOSED, CONTINUE, NEED_DATA, PAUSED, TRANSITIONS, RequestLimits as Limits, RequestParser,
                           State, YIELD)
from minirr.wire.messages import Request

GET = b"GET /a HTTP/1.1\r\nHost: example.com\r\n\r\n"
DATE = b"Sun, 06 Nov 1994 08:49:37 GMT"


def conn(limits: Limits = Limits()) -> RequestParser:
    return RequestParser(limits)


def post(body: bytes, extra: bytes = b"") -> bytes:
    return (b"POST /p HTTP/1.1\r\nHost: example.com\r\n" + extra
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


# --- sentinels, limits, the state table ------------------------------------------------

def test_sentinels_are_distinct_and_readable():
    sentinels = [NEED_DATA, PAUSED, CLOSED, CONTINUE]
    assert len(set(map(id, sentinels))) == 4
    assert [repr(s) for s in sentinels] == ["NEED_DATA", "PAUSED", "CLOSED", "CONTINUE"]


def test_limits_defaults_follow_gunicorn():
    limits = Limits()
    assert (limits.max_request_size, limits.limit_request_line, limits.limit_request_fields,
            limits.limit_request_field_size, limits.limit_request_headers) == (
        10 * 1024 * 1024, 8190, 100, 8190, 65536)


@pytest.mark.parametrize("state,event", sorted(TRANSITIONS, key=lambda k: (k[0].name, k[1])))
def test_every_transition_is_taken_by_advance(state, event):
    c = conn()
    c._state = state
    http11._advance(c, event)
    assert c._state is TRANSITIONS[(state, event)]


def test_illegal_move_raises_and_names_state():
    c = conn()
    with pytest.raises(RuntimeError, match="'body_complete' in state HEAD"):
        http11._advance(c, "body_complete")
    with pytest.raises(RuntimeError, match="in state HEAD"):
        c.start_next_cycle()  # no Request was handed out


def test_every_state_has_a_way_in_and_terminal_states_absorb():
    reachable = {new for new in TRANSITIONS.values()} | {State.HEAD}
    assert reachable == set(State)
    for terminal in (State.CLOSED, State.FAILED):
        assert {new for (old, _), new in TRANSITIONS.items() if old is terminal} == {terminal}


# --- pausing and pipelining -------------------------------------------------------------

def test_request_then_paused_until_next_cycle():
    c = conn()
    c.receive_data(GET + GET.replace(b"/a", b"/b"))
    first = c.next_event()
    assert isinstance(first, Request) and first.path == "/a"
    assert c.next_event() is PAUSED
    assert c.next_event() is PAUSED
    assert c.buffered_bytes == len(GET)  # the pipelined request waits, unparsed
    c.start_next_cycle()
    assert c.next_event().path == "/b"
    c.start_next_cycle()
    assert c.next_event() is NEED_DATA
    assert c.buffered_bytes == 0


def test_empty_connection_needs_data():
    c = conn()
    assert c.next_event() is NEED_DATA
    assert not c.has_partial_request and not c.reading_body


def test_request_fields():
    c = conn()
    c.receive_data(b"PUT /x/y?z=1 HTTP/1.1\r\nHost: h.test:81\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nok")
    r = c.next_event()
    # The parser knows neither the peer nor the server's scheme and address: `uri` is the
    # request-target as sent and `remote_addr` is empty until the frontend fills them in.
    assert (r.method, r.path, r.query, r.body, r.remote_addr, r.protocol, r.uri) == (
        "PUT", "/x/y", "z=1", b"ok", "", "HTTP/1.1", "/x/y?z=1")
    assert r.headers == [("Host", "h.test:81"), ("X-A", "1"), ("Content-Length", "2")]
    assert c.host == "h.test:81"


def test_a_request_without_host_says_so():
    c = conn()
    c.receive_data(b"GET /p HTTP/1.0\r\n\r\n")
    assert c.next_event().uri == "/p" and c.host is None


# --- EOF --------------------------------------------------------------------------------

def test_eof_on_idle_connection_is_closed():
    c = conn()
    c.receive_data(b"")
    assert c.next_event() is CLOSED
    assert c.next_event() is CLOSED


def test_eof_mid_head_and_mid_body_is_closed_without_error():
    for partial in (b"GET / HTTP/1.1\r\nHo", post(b"hello")[:-2]):
        c = conn()
        c.receive_data(partial)
        assert c.next_event() is NEED_DATA
        c.receive_data(b"")
        assert c.next_event() is CLOSED


def test_eof_mid_chunked_body_is_closed():
    c = conn()
    c.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
    assert c.next_event() is NEED_DATA
    c.receive_data(b"")
    assert c.next_event() is CLOSED


def test_eof_after_buffered_requests_returns_them_without_keep_alive():
    c = conn()
    c.receive_data(GET + GET)
    c.receive_data(b"")
    for _ in range(2):
        assert isinstance(c.next_event(), Request)
        assert c.keep_alive is False
        c.start_next_cycle()
    assert c.next_event() is CLOSED


def test_eof_while_paused_clears_keep_alive():
    c = conn()
    c.receive_data(GET)
    c.next_event()
    assert c.keep_alive is True
    c.receive_data(b"")
    assert c.keep_alive is False
    c.start_next_cycle()
    assert c.next_event() is CLOSED


def test_bytes_after_eof_are_a_caller_bug():
    c = conn()
    c.receive_data(b"")
    c.receive_data(b"")  # repeating the EOF is harmless
    with pytest.raises(RuntimeError):
        c.receive_data(b"x")


def test_close_request_ends_the_connection_and_drops_later_bytes():
    c = conn()
    c.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" + GET)
    assert isinstance(c.next_event(), Request) and c.keep_alive is False
    c.start_next_cycle()
    assert c.next_event() is CLOSED
    c.receive_data(GET)
    assert c.next_event() is CLOSED and c.buffered_bytes == 0
    c.start_next_cycle()  # a late call in a terminal state is harmless
    assert c.next_event() is CLOSED


# --- keep-alive (RFC 9112 §9.3) ---------------------------------------------------------

@pytest.mark.parametrize("version,connection,expected", [
    (b"HTTP/1.1", None, True),
    (b"HTTP/1.1", b"keep-alive", True),
    (b"HTTP/1.1", b"close", False),
    (b"HTTP/1.1", b"Close", False),
    (b"HTTP/1.1", b"upgrade, close", False),
    (b"HTTP/1.0", None, False),
    (b"HTTP/1.0", b"keep-alive", True),
    (b"HTTP/1.0", b"KEEP-ALIVE", True),
    (b"HTTP/1.0", b"keep-alive, close", False),
    (b"HTTP/1.1", b"te", True),
])
def test_keep_alive_rules(version, connection, expected):
    head = b"GET / " + version + b"\r\nHost: a\r\n"
    if connection is not None:
        head += b"Connection: " + connection + b"\r\n"
    c = conn()
    c.receive_data(head + b"\r\n")
    assert isinstance(c.next_event(), Request)
    assert c.keep_alive is expected


def test_keep_alive_from_two_connection_lines():
    c = conn()
    c.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n")
    c.next_event()
    assert c.keep_alive is False


# --- 100-continue (RFC 9110 §10.1.1) ------------------------------------------------------

def test_continue_once_then_need_data_then_request():
    c = conn()
    c.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    assert c.next_event() is CONTINUE
    assert c.reading_body
    assert c.next_event() is NEED_DATA
    c.receive_data(b"hel")
    assert c.next_event() is NEED_DATA
    c.receive_data(b"lo")
    assert c.next_event().body == b"hello"


def test_continue_for_chunked_body():
    c = conn()
    c.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert c.next_event() is CONTINUE
    c.receive_data(b"2\r\nok\r\n0\r\n\r\n")
    assert c.next_event().body == b"ok"


def test_continue_even_with_part_of_the_body_buffered():
    c = conn()
    c.receive_data(post(b"hello", b"Expect: 100-continue\r\n")[:-2])
    assert c.next_event() is CONTINUE


def test_no_continue_when_body_already_complete_or_absent():
    for data in (post(b"hello", b"Expect: 100-continue\r\n"),
                 b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n"):
        c = conn()
        c.receive_data(data)
        assert isinstance(c.next_event(), Request)


def test_no_continue_for_http10_or_other_expectations():
    for head in (b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
                 b"POST / HTTP/1.1\r\nHost: a\r\nExpect: something\r\nContent-Length: 1\r\n\r\n"):
        c = conn()
        c.receive_data(head)
        assert c.next_event() is NEED_DATA


def test_too_large_body_refused_before_continue():
    c = conn(Limits(max_request_size=10))
    c.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n")
    with pytest.raises(ProtocolError) as info:
        c.next_event()
    assert info.value.status == 413


def test_continue_is_not_repeated_for_the_next_request():
    c = conn()
    c.receive_data(post(b"x", b"Expect: 100-continue\r\n") + post(b"y")[:-1])
    assert c.next_event().body == b"x"
    c.start_next_cycle()
    assert c.next_event() is NEED_DATA


# --- progress properties ------------------------------------------------------------------

def test_has_partial_request_and_reading_body():
    c = conn()
    c.receive_data(b"\r\n")
    c.next_event()
    assert not c.has_partial_request  # empty lines before a request are not a request
    c.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n")
    assert c.next_event() is NEED_DATA
    assert c.has_partial_request and not c.reading_body
    c.receive_data(b"\r\nab")
    assert c.next_event() is NEED_DATA
    assert c.has_partial_request and c.reading_body
    assert c.buffered_bytes == 0  # body bytes in progress are not counted as buffered
    c.receive_data(b"cd")
    assert isinstance(c.next_event(), Request)
    assert not c.has_partial_request and not c.reading_body


# --- limits with the defaults, enforced while data arrives ---------------------------------

def test_endless_header_section_refused_before_it_ends():
    c = conn()
    c.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n")
    with pytest.raises(ProtocolError) as info:
        for i in range(1000):
            c.receive_data(b"X-Filler-%04d: %s\r\n" % (i, b"v" * 1000))
            assert c.next_event() is NEED_DATA
    assert info.value.status == 431
    assert info.value.msg == "header section exceeds 65536 bytes"
    assert i < 70  # refused at about 64 KiB, not buffered on


def test_endless_request_line_refused():
    c = conn()
    c.receive_data(b"GET /")
    with pytest.raises(ProtocolError) as info:
        for _ in range(100):
            c.receive_data(b"a" * 1000)
            c.next_event()
    assert info.value.status == 414
    assert info.value.msg == "request line exceeds 8190 bytes"


def test_default_request_line_limit_is_inclusive():
    target = b"/" + b"a" * (8190 - len(b"GET  HTTP/1.1") - 1)
    for extra, ok in ((b"", True), (b"a", False)):
        c = conn()
        c.receive_data(b"GET " + target + extra + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        if ok:
            assert isinstance(c.next_event(), Request)
        else:
            with pytest.raises(ProtocolError, match="8190"):
                c.next_event()


@pytest.mark.parametrize("section", ["header", "trailer"])
def test_field_line_limit_counts_name_colon_whitespace_and_value(section):
    """limit_request_field_size bounds the whole field line and its CRLF, as gunicorn
    counts it: a one-byte value with a long name and whitespace around it is over the limit."""
    limits = Limits(limit_request_field_size=40)
    if section == "header":
        start, end = b"GET / HTTP/1.1\r\nHost: a\r\n", b"\r\n\r\n"
    else:
        start, end = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n", b"\r\n\r\n"
    at_limit = b"X-A-Rather-Long-Field-Name: \t v \t" + b" " * 5
    assert len(at_limit + b"\r\n") == 40
    for way in WAYS:
        assert isinstance(outcome(start + at_limit + end, way, limits), list), way
        assert outcome(start + at_limit + b"\t" + end, way, limits) == (
            431, f"{section} field line exceeds 40 bytes"), way


def test_many_small_chunks_without_extensions_are_fine_a_budget_at_a_time():
    """3,000 1-byte chunks (within chunked.CHUNK_FRAMING_MIN_BYTES): next_event() yields
    after chunked.FRAMING_BYTES_PER_READ of framing, and goes on when asked again."""
    body = b"".join(b"1\r\n%c\r\n" % (97 + i % 26) for i in range(3000))
    c = conn()
    c.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body + b"0\r\n\r\n")
    events = [c.next_event()]
    while events[-1] is YIELD:
        events.append(c.next_event())
    assert len(events) > 1 and len(events[-1].body) == 3000


def test_huge_content_length_digits_do_not_hit_int_limits():
    c = conn()
    c.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n")
    with pytest.raises(ProtocolError) as info:
        c.next_event()
    assert info.value.status == 413


# --- protocol errors poison the connection -----------------------------------------------

def test_error_poisons_connection():
    c = conn()
    c.receive_data(b"GET / HTTP/1.1\nHost: a\r\n\r\n")
    with pytest.raises(ProtocolError) as first:
        c.next_event()
    c.receive_data(GET)
    assert c.buffered_bytes == 0
    for _ in range(2):
        with pytest.raises(ProtocolError) as again:
            c.next_event()
        assert (again.value.msg, again.value.status) == (first.value.msg, first.value.status)
    c.start_next_cycle()  # harmless
    assert not c.has_partial_request and not c.reading_body


def test_error_after_a_good_request_comes_on_the_next_cycle():
    c = conn()
    c.receive_data(GET + b"BAD\r\n\r\n")
    assert isinstance(c.next_event(), Request)
    assert c.next_event() is PAUSED
    c.start_next_cycle()
    with pytest.raises(ProtocolError):
        c.next_event()


# --- repeated single-value fields (RFC 9110 §5.3) -------------------------------------------

def outcome(data: bytes, way: str, limits: Limits = Limits()):
    """Feed `data` whole, byte by byte, or followed by the start of another request:
    -> the first Request's headers, or (status, message) of the ProtocolError."""
    chunks = {"whole": [data], "bytewise": [data[i:i + 1] for i in range(len(data))],
              "trailing": [data + b"GET /next HTTP/1.1\r\nHo"]}[way]
    c = conn(limits=limits)
    try:
        for chunk in chunks:
            c.receive_data(chunk)
            event = c.next_event()
            if isinstance(event, Request):
                return event.headers
    except ProtocolError as exc:
        return exc.status, exc.msg
    raise AssertionError(f"no request and no error, last event {event!r}")


WAYS = ("whole", "bytewise", "trailing")


@pytest.mark.parametrize("name", sorted(grammar.SINGLE_VALUE_FIELDS))
def test_single_value_field_repeated_with_different_values_is_400(name):
    spelled = "-".join(part.capitalize() for part in name.split("-"))
    head = b"GET / HTTP/1.1\r\nHost: a\r\n%s: one\r\nX-B: 1\r\n%s: " % (spelled.encode(), name.encode())
    expected = (400, f"header field '{name}' repeated with different values (RFC 9110 §5.3)")
    for way in WAYS:
        assert outcome(head + b"two\r\n\r\n", way) == expected, way
        assert outcome(head + b" one \r\n\r\n", way) == [("Host", "a"), (spelled, "one"), ("X-B", "1"), (name, "one")]


@pytest.mark.parametrize("name", ["Accept", "Cookie", "Connection", "X-Forwarded-For", "Content-Encoding", "If-Match"])
def test_list_fields_may_repeat_with_different_values(name):
    data = b"GET / HTTP/1.1\r\nHost: a\r\n%s: one\r\n%s: two\r\n\r\n" % (name.encode(), name.encode())
    for way in WAYS:
        assert outcome(data, way) == [("Host", "a"), (name, "one"), (name, "two")]


def test_host_and_content_length_keep_their_own_repeat_rules():
    assert not {"host", "content-length"} & grammar.SINGLE_VALUE_FIELDS
    for way in WAYS:
        assert outcome(b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", way) == (
            400, "more than one Host header (RFC 9112 §3.2)")
        assert outcome(post(b"hi", b"Content-Length: 2\r\n"), way)[-1] == ("Content-Length", "2")
