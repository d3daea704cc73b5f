"""Unit tests of minirr.http.responses: serializing answers (whole, streamed, errors), dates,
and a worker's JSON head as HTTP, checked and remembered (ResponseHeads)."""

import json

import pytest

from minirr.http.responses import (LAST_CHUNK, DateCache, ResponseHeads, chunk, complete_response, error_response,
                              head_from_json, http_date, serialize_response, streamed_head)

DATE = b"Sun, 06 Nov 1994 08:49:37 GMT"


# --- serialize_response ---------------------------------------------------------------------

def test_serialize_basic_response():
    out = serialize_response(200, [("Content-Type", "text/plain"), ("X-A", "1")], b"hi",
                             keep_alive=True, date=DATE)
    assert out == (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-A: 1\r\n"
                   b"Date: " + DATE + b"\r\nContent-Length: 2\r\n\r\nhi")


def test_serialize_drops_fields_this_layer_owns():
    app_headers = [("Connection", "keep-alive"), ("keep-alive", "timeout=5"), ("Transfer-Encoding", "chunked"),
                   ("content-length", "999"), ("Date", "yesterday"), ("X-Kept", "yes")]
    out = serialize_response(200, app_headers, b"abc", keep_alive=True, date=DATE)
    head = out.split(b"\r\n\r\n")[0]
    assert head.split(b"\r\n")[1:] == [b"X-Kept: yes", b"Date: " + DATE, b"Content-Length: 3"]


def test_serialize_connection_close_and_http10_keep_alive():
    closing = serialize_response(200, [], b"", keep_alive=False, date=DATE)
    assert b"\r\nConnection: close\r\n" in closing
    kept_10 = serialize_response(200, [], b"", keep_alive=True, date=DATE, protocol="HTTP/1.0")
    assert b"\r\nConnection: keep-alive\r\n" in kept_10
    kept_11 = serialize_response(200, [], b"", keep_alive=True, date=DATE)
    assert b"Connection" not in kept_11
    closing_10 = serialize_response(200, [], b"", keep_alive=False, date=DATE, protocol="HTTP/1.0")
    assert b"keep-alive" not in closing_10 and b"Connection: close" in closing_10


def test_serialize_head_keeps_length_drops_body():
    out = serialize_response(200, [], b"hello", keep_alive=True, head_only=True, date=DATE)
    assert out.endswith(b"Content-Length: 5\r\n\r\n")


@pytest.mark.parametrize("status", [204, 304, 100])
def test_serialize_bodiless_statuses(status):
    out = serialize_response(status, [], b"ignored", keep_alive=True, date=DATE)
    assert b"Content-Length" not in out and out.endswith(b"\r\n\r\n")


@pytest.mark.parametrize("status,line", [
    (404, b"HTTP/1.1 404 Not Found\r\n"), (418, b"HTTP/1.1 418 I'm a Teapot\r\n"),
    (299, b"HTTP/1.1 299 Success\r\n"), (499, b"HTTP/1.1 499 Client Error\r\n"),
    (599, b"HTTP/1.1 599 Server Error\r\n"), (999, b"HTTP/1.1 999 Unknown\r\n"),
])
def test_serialize_reason_phrases(status, line):
    out = serialize_response(status, [], b"", keep_alive=True, date=DATE)
    if status == 418 and not out.startswith(line):  # the phrase's spelling varies by Python
        line = out.split(b"\r\n")[0] + b"\r\n"
        assert line.startswith(b"HTTP/1.1 418 I")
    assert out.startswith(line)


@pytest.mark.parametrize("status", [99, 1000, -200])
def test_serialize_refuses_bad_status(status):
    with pytest.raises(ValueError):
        serialize_response(status, [], b"", keep_alive=True, date=DATE)


@pytest.mark.parametrize("name,value", [
    ("X-A", "1\r\nSet-Cookie: evil=1"), ("X-A", "1\nX: 2"), ("X-A", "a\rb"), ("X-A", "a\x00b"),
    ("X A", "1"), ("X-A:", "1"), ("X-A\r\nX-B", "1"), ("", "1"), ("X-\xe9", "1"), ("X-A", "snow \u2603"),
])
def test_serialize_refuses_header_injection(name, value):
    with pytest.raises(ValueError):
        serialize_response(200, [(name, value)], b"", keep_alive=True, date=DATE)


@pytest.mark.parametrize("char", [chr(c) for c in range(0x20) if c != 0x09] + ["\x7f"])
def test_serialize_refuses_every_control_character_in_a_value_naming_the_header(char):
    """RFC 9110 §5.5: VCHAR, obs-text, SP and HTAB only (VT, ESC, DEL as much as CR)."""
    with pytest.raises(ValueError, match="response header 'X-Bad' contains the control character"):
        serialize_response(200, [("X-Bad", f"a{char}b")], b"", keep_alive=True, date=DATE)


def test_serialize_latin1_value_and_tab():
    out = serialize_response(200, [("X-Name", "caf\xe9\tx")], b"", keep_alive=True, date=DATE)
    assert b"X-Name: caf\xe9\tx\r\n" in out


# --- error_response and http_date ---------------------------------------------------------------

def test_error_response():
    out = error_response(431, "header section exceeds 65536 bytes", date=DATE)
    assert out == (b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                   b"Content-Type: text/plain; charset=utf-8\r\nDate: " + DATE + b"\r\n"
                   b"Content-Length: 35\r\nConnection: close\r\n\r\n"
                   b"header section exceeds 65536 bytes\n")


def test_error_response_keep_alive_and_extra_headers():
    out = error_response(503, "no worker free", date=DATE, keep_alive=True, extra_headers=(("Retry-After", "1"),))
    assert b"Retry-After: 1\r\n" in out and b"Connection" not in out
    assert out.endswith(b"\r\n\r\nno worker free\n")


def test_error_response_utf8_message():
    out = error_response(400, "caf\xe9", date=DATE)
    assert out.endswith(b"Content-Length: 6\r\nConnection: close\r\n\r\ncaf\xc3\xa9\n")


@pytest.mark.parametrize("epoch,expected", [
    (784111777, b"Sun, 06 Nov 1994 08:49:37 GMT"),
    (784111777.999, b"Sun, 06 Nov 1994 08:49:37 GMT"),
    (0, b"Thu, 01 Jan 1970 00:00:00 GMT"),
    (951782400, b"Tue, 29 Feb 2000 00:00:00 GMT"),
    (1735689599, b"Tue, 31 Dec 2024 23:59:59 GMT"),
])
def test_http_date(epoch, expected):
    assert http_date(epoch) == expected




# --- answers whose body is still coming (streamed_head, chunk) -----------------------------------

def test_streamed_head_uses_the_apps_content_length():
    data, framing = streamed_head(b"HTTP/1.1 200 OK\r\n", 200, 12, keep_alive=True, date=DATE, protocol="HTTP/1.1")
    assert framing == "length" and data.endswith(b"Content-Length: 12\r\n\r\n")


def test_streamed_head_is_chunked_for_http11_and_close_delimited_for_http10():
    data, framing = streamed_head(b"HTTP/1.1 200 OK\r\n", 200, None, keep_alive=True, date=DATE, protocol="HTTP/1.1")
    assert framing == "chunked" and b"Transfer-Encoding: chunked\r\n" in data and b"Connection" not in data
    data, framing = streamed_head(b"HTTP/1.1 200 OK\r\n", 200, None, keep_alive=True, date=DATE, protocol="HTTP/1.0")
    assert framing == "close" and b"Connection: close\r\n" in data and b"Transfer-Encoding" not in data


def test_streamed_head_of_a_bodiless_status():
    data, framing = streamed_head(b"HTTP/1.1 204 No Content\r\n", 204, None, keep_alive=True, date=DATE,
                                  protocol="HTTP/1.1")
    assert framing == "none" and b"Transfer-Encoding" not in data and b"Content-Length" not in data


def test_chunks_and_the_last_chunk():
    assert chunk(b"hello") == b"5\r\nhello\r\n"
    assert chunk(b"x" * 255) == b"ff\r\n" + b"x" * 255 + b"\r\n"
    assert LAST_CHUNK == b"0\r\n\r\n"


def test_date_cache_formats_once_a_second():
    dates = DateCache()
    assert dates.get(784111777.1) == dates.get(784111777.9) == DATE
    assert dates.get(784111778.0) != DATE


# --- a worker's JSON head as HTTP (head_from_json, ResponseHeads) -------------------------------

def head_json(status, headers) -> bytes:
    return json.dumps({"status": status, "headers": headers}, separators=(",", ":")).encode()


@pytest.mark.parametrize("status,headers", [
    (200, {"Content-Type": ["text/plain"]}),
    (404, {"X-A": ["1", "2"], "Set-Cookie": ["a=1"]}),
    (204, {}),
])
def test_a_kept_head_serializes_like_a_fresh_one(status, headers):
    pairs = [(name, value) for name, values in headers.items() for value in values]
    expected = serialize_response(status, pairs, b"body", keep_alive=True, date=DATE)
    heads = ResponseHeads()
    for _ in range(2):                          # the second time from what was kept
        head = heads.get(head_json(status, headers)) or heads.decode(head_json(status, headers))
        assert head.status == status
        assert complete_response(head.http, status, memoryview(b"body"), keep_alive=True, date=DATE) == expected


def test_a_stop_head_is_not_a_response():
    assert head_from_json(b'{"stop":true}').status == 0


def test_the_apps_content_length_is_read_and_checked():
    assert head_from_json(head_json(200, {"Content-Length": ["12"]})).content_length == 12
    assert head_from_json(head_json(200, {})).content_length is None
    for bad in (["12", "13"], ["-1"], ["x"]):
        with pytest.raises(ValueError, match="Content-Length"):
            head_from_json(head_json(200, {"Content-Length": bad}))


@pytest.mark.parametrize("head", [b'{"status":99}', b'{"status":103}', b"[1]", b'{"status":200,"headers":[]}',
                                  b'{"status":200,"headers":{"X":["a\\r\\nb"]}}',
                                  b'{"status":200,"headers":{"X":[1]}}', b'{"status":200,"headers":{"X":null}}',
                                  b'{"status":200,"headers":' + b"[" * 100000 + b"]" * 100000 + b"}"])
def test_an_invalid_head_raises_value_error_every_time(head):
    heads = ResponseHeads()
    for _ in range(2):
        with pytest.raises(ValueError):
            heads.get(head) or heads.decode(head)
    assert head not in heads


def test_a_large_head_is_right_and_not_kept():
    heads = ResponseHeads()
    head = head_json(200, {"Content-Security-Policy": ["x" * ResponseHeads.CACHE_MAX_BYTES]})
    got = heads.get(head) or heads.decode(head)
    assert got.status == 200 and got.http.endswith(b"x" * ResponseHeads.CACHE_MAX_BYTES + b"\r\n")
    assert head not in heads


def test_the_head_cache_is_bounded():
    heads = ResponseHeads()
    for n in range(ResponseHeads.CACHE_SIZE + 50):
        assert heads.decode(head_json(200, {"X-N": [str(n)]})).status == 200
    assert len(heads) == ResponseHeads.CACHE_SIZE
