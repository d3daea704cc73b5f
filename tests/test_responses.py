"""Unit tests of minirr.http.responses: serializing answers (whole, streamed, errors), dates,
and the body writers of a streamed answer."""

import json

import pytest

from minirr.http.responses import (FRAMING_FIELDS, LAST_CHUNK, WRITERS, DateCache, NoBodyWriter, body_framing, chunk,
                                   complete_response, error_response, http_date, serialize_response, streamed_head)

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




# --- answers whose body is still coming: streamed_head and the body writers ----------------------

def streamed(status=200, content_length=None, protocol="HTTP/1.1", head_only=False, keep_alive=True):
    return streamed_head(b"HTTP/1.1 %d X\r\n" % status, status, content_length, keep_alive=keep_alive,
                         head_only=head_only, date=DATE, protocol=protocol)


@pytest.mark.parametrize("status,length,protocol,framing", [
    (200, 12, "HTTP/1.1", "length"), (200, None, "HTTP/1.1", "chunked"), (200, None, "HTTP/1.0", "close"),
    (204, None, "HTTP/1.1", "none"), (304, 12, "HTTP/1.1", "none"), (200, 0, "HTTP/1.0", "length"),
])
def test_the_framing_picks_the_writer_from_the_table(status, length, protocol, framing):
    assert body_framing(status, length, protocol) == framing
    data, writer = streamed(status, length, protocol)
    assert type(writer) is WRITERS[framing]
    connection = {(True, "HTTP/1.1"): b"", (True, "HTTP/1.0"): b"Connection: keep-alive\r\n"}.get(
        (writer.keeps_alive, protocol), b"Connection: close\r\n")
    assert data.endswith(FRAMING_FIELDS[framing](length) + connection + b"\r\n")


def test_the_apps_content_length_frames_the_body_exactly():
    data, writer = streamed(content_length=5)
    assert data.endswith(b"Content-Length: 5\r\n\r\n") and not writer.complete
    assert writer.write(b"ab") == b"ab" and not writer.complete
    assert writer.write(b"abcd") is None                       # past the length: refused, nothing counted
    assert writer.end(b"cde") == b"cde" and writer.complete
    _, writer = streamed(content_length=5)
    assert writer.end(b"abc") is None                          # shorter than announced
    _, writer = streamed(content_length=2)
    assert writer.write(b"ab") == b"ab" and writer.complete    # the first piece may fill it


def test_a_chunked_body_ends_with_the_last_chunk_and_never_sends_an_empty_chunk_early():
    data, writer = streamed()
    assert b"Transfer-Encoding: chunked\r\n" in data and b"Connection" not in data
    assert writer.write(b"hello") == b"5\r\nhello\r\n" and writer.write(b"") == b""
    assert writer.end(b"!") == b"1\r\n!\r\n0\r\n\r\n" and writer.end(b"") == LAST_CHUNK


def test_an_http10_body_ends_with_the_connection():
    data, writer = streamed(protocol="HTTP/1.0")
    assert b"Connection: close\r\n" in data and b"Transfer-Encoding" not in data and not writer.keeps_alive
    assert writer.write(b"ab") == b"ab" and writer.end(b"c") == b"c"


@pytest.mark.parametrize("length", [5, None])
def test_head_gets_the_head_a_get_would_and_no_body(length):
    data, writer = streamed(content_length=length, head_only=True)
    get, _ = streamed(content_length=length)
    assert data == get and type(writer) is NoBodyWriter and writer.keeps_alive
    assert writer.write(b"x" * 10) == b"" and writer.end(b"y") == b""     # whatever the app sends: nothing


def test_a_bodiless_status_has_no_framing_fields():
    data, writer = streamed(status=204)
    assert b"Transfer-Encoding" not in data and b"Content-Length" not in data
    assert writer.write(b"x") == b"" and writer.end(b"") == b""


def test_chunks_and_the_last_chunk():
    assert chunk(b"hello") == b"5\r\nhello\r\n"
    assert chunk(b"x" * 255) == b"ff\r\n" + b"x" * 255 + b"\r\n"
    assert LAST_CHUNK == b"0\r\n\r\n"


def test_date_cache_formats_once_a_second():
    dates = DateCache()
    assert dates.get(784111777.1) == dates.get(784111777.9) == DATE
    assert dates.get(784111778.0) != DATE
