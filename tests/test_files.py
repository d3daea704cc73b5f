"""minirr.http.files, the pure decisions of static files, fed every edge: the path (and
every way to leave the folder), HTTP-dates, conditional requests in RFC 9110 §13.2.2's
order, byte ranges, If-Range, Accept-Encoding, and the head of each answer."""

from __future__ import annotations

import calendar

import pytest

from minirr.http import files
from minirr.http.files import FileInfo, Refusal, UNSATISFIABLE

PREFIX = "/static/"


# ---- the path ----------------------------------------------------------------------------------

@pytest.mark.parametrize("path, expected", [
    ("/static/app.css", "app.css"),
    ("/static/admin/css/base.css", "admin/css/base.css"),
    ("/static/a%20b.txt", "a b.txt"),
    ("/static/caf%C3%A9.txt", "café.txt"),
    ("/static/%41.txt", "A.txt"),
    ("/static/a.css;v=1", "a.css;v=1"),       # ; is an ordinary byte of a segment: no such file, later
    ("/static/x..y", "x..y"),                 # dots inside a name are fine
    ("/static/a/b.c/d", "a/b.c/d"),
])
def test_paths_that_name_a_file(path, expected):
    assert files.relative_path(path, PREFIX) == expected


@pytest.mark.parametrize("path, message", [
    ("/static/../etc/passwd", "a dot segment"),
    ("/static/css/../../etc/passwd", "a dot segment"),
    ("/static/./app.css", "a dot segment"),
    ("/static/..", "a dot segment"),
    ("/static/%2e%2e/etc/passwd", "a dot segment"),        # encoded dots are still dots
    ("/static/%2E%2E/etc/passwd", "a dot segment"),
    ("/static/.%2e/etc/passwd", "a dot segment"),
    ("/static/%2e/app.css", "a dot segment"),
    ("/static/..%2fetc%2fpasswd", "an encoded slash"),     # ..%2f would join segments after decoding
    ("/static/a%2Fb", "an encoded slash"),
    ("/static/..\\etc\\passwd", "a backslash"),
    ("/static/a%5cb", "a backslash"),
    ("/static/a%00.css", "a NUL or control character"),
    ("/static/a%0d%0aX: y", "a NUL or control character"),
    ("/static/a%7f", "a NUL or control character"),
    ("/static/a%zz", "not a %XX escape"),
    ("/static/a%4", "not a %XX escape"),
    ("/static/a%", "not a %XX escape"),
    ("/static/%ff%fe", "not UTF-8"),
    ("/static/%c0%ae%c0%ae/x", "not UTF-8"),               # overlong UTF-8 dots
])
def test_paths_that_try_to_leave_the_folder_are_400(path, message):
    refusal = files.relative_path(path, PREFIX)
    assert isinstance(refusal, Refusal) and refusal.status == 400 and message in refusal.message, refusal


@pytest.mark.parametrize("path", [
    "/static/", "/static/css/", "/static/a//b.css",               # folders: no listings
    "/static/.env", "/static/.git/config", "/static/css/.hidden",  # dot-files
    "/static/%2eenv", "/static/.well-known/x",
])
def test_folders_and_dot_files_are_not_found(path):
    assert files.relative_path(path, PREFIX) == files.NOT_FOUND


def test_a_dot_segment_is_refused_even_after_a_dot_file():
    """The hostile part is named (400), whatever comes first."""
    assert files.relative_path("/static/.git/../x", PREFIX).status == 400


# ---- HTTP-dates ------------------------------------------------------------------------------------

EPOCH_1994 = calendar.timegm((1994, 11, 6, 8, 49, 37, 0, 0, 0))


@pytest.mark.parametrize("text", ["Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT",
                                  "Sun Nov  6 08:49:37 1994", "  Sun, 06 Nov 1994 08:49:37 GMT  "])
def test_the_three_date_forms(text):
    assert files.parse_http_date(text) == EPOCH_1994


@pytest.mark.parametrize("text", ["", "yesterday", "Sun, 06 Nov 1994 08:49:37 +0100", "Sun, 31 Feb 1994 08:49:37 GMT",
                                  "Sun, 06 Nov 1994 25:49:37 GMT", "Sun, 06 Foo 1994 08:49:37 GMT",
                                  "Sun, 6 Nov 1994 08:49:37 GMT", "1994-11-06T08:49:37Z"])
def test_what_is_not_an_http_date(text):
    assert files.parse_http_date(text) is None


def test_two_digit_years():
    assert files.parse_http_date("Thursday, 01-Jan-70 00:00:00 GMT") == 0
    assert files.parse_http_date("Friday, 01-Jan-27 00:00:00 GMT") == calendar.timegm((2027, 1, 1, 0, 0, 0, 0, 0, 0))


# ---- validators ---------------------------------------------------------------------------------------

INFO = FileInfo(size=1000, mtime_ns=EPOCH_1994 * 1_000_000_000 + 123)
NOW = EPOCH_1994 + 3600.0
ETAG = files.etag_of(INFO, "identity")
LAST_MODIFIED = "Sun, 06 Nov 1994 08:49:37 GMT"


def test_the_etag_is_strong_and_differs_per_coding_size_and_time():
    assert ETAG.startswith('"') and not ETAG.startswith("W/")
    tags = {ETAG, files.etag_of(INFO, "gzip"), files.etag_of(INFO, "br"),
            files.etag_of(INFO._replace(size=1001), "identity"), files.etag_of(INFO._replace(mtime_ns=1), "identity")}
    assert len(tags) == 5


def test_last_modified_is_never_later_than_now():
    assert files.last_modified_s(INFO, NOW) == EPOCH_1994
    assert files.last_modified_s(INFO, EPOCH_1994 - 50.5) == EPOCH_1994 - 51     # a file from the future


# ---- conditional requests ------------------------------------------------------------------------------

LATER = "Sun, 06 Nov 1994 09:49:37 GMT"
EARLIER = "Sun, 06 Nov 1994 07:49:37 GMT"


@pytest.mark.parametrize("headers, status", [
    ([], 0),
    ([("If-None-Match", ETAG)], 304),
    ([("If-None-Match", f'"x", {ETAG}')], 304),
    ([("If-None-Match", "W/" + ETAG)], 304),                  # weak comparison
    ([("If-None-Match", "*")], 304),
    ([("If-None-Match", '"other"')], 0),
    ([("If-None-Match", '"x"'), ("If-None-Match", ETAG)], 304),   # two lines are one list
    ([("If-None-Match", "garbage")], 0),
    ([("If-None-Match", f", ,{ETAG},")], 304),                 # empty list elements
    ([("If-Modified-Since", LAST_MODIFIED)], 304),
    ([("If-Modified-Since", LATER)], 304),
    ([("If-Modified-Since", EARLIER)], 0),
    ([("If-Modified-Since", "not a date")], 0),               # ignored
    # If-None-Match wins over If-Modified-Since (§13.2.2 step 3 before step 4)
    ([("If-None-Match", '"other"'), ("If-Modified-Since", LATER)], 0),
    ([("If-None-Match", ETAG), ("If-Modified-Since", EARLIER)], 304),
    ([("If-Match", ETAG)], 0),
    ([("If-Match", "*")], 0),
    ([("If-Match", '"other"')], 412),
    ([("If-Match", "W/" + ETAG)], 412),                       # strong comparison
    ([("If-Unmodified-Since", LATER)], 0),
    ([("If-Unmodified-Since", EARLIER)], 412),
    ([("If-Unmodified-Since", "not a date")], 0),
    # If-Match wins over If-Unmodified-Since (step 1 before step 2), and both before step 3
    ([("If-Match", ETAG), ("If-Unmodified-Since", EARLIER)], 0),
    ([("If-Match", '"other"'), ("If-None-Match", ETAG)], 412),
])
def test_preconditions_in_rfc_9110_order(headers, status):
    fields = files.request_fields(headers)
    assert files.precondition_status("GET", fields, ETAG, EPOCH_1994) == status
    assert files.precondition_status("HEAD", fields, ETAG, EPOCH_1994) == status


def test_if_modified_since_is_for_get_and_head_only():
    assert files.precondition_status("POST", {"if-modified-since": LATER}, ETAG, EPOCH_1994) == 0
    assert files.precondition_status("POST", {"if-none-match": ETAG}, ETAG, EPOCH_1994) == 412


# ---- ranges ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, span", [
    ("bytes=0-99", (0, 99)),
    ("bytes=100-", (100, 999)),
    ("bytes=-100", (900, 999)),
    ("bytes=-5000", (0, 999)),                 # a suffix longer than the file: all of it
    ("bytes=990-5000", (990, 999)),            # last clamped
    ("bytes=999-999", (999, 999)),
    ("BYTES = 0-0", (0, 0)),
    ("bytes=1000-", UNSATISFIABLE),
    ("bytes=5000-6000", UNSATISFIABLE),
    ("bytes=-0", UNSATISFIABLE),
    ("bytes=5-1", None),                       # invalid: ignored
    ("bytes=0-1,5-9", None),                   # several ranges: the whole file
    ("items=0-9", None),
    ("bytes=", None), ("bytes=-", None), ("bytes=a-b", None), ("bytes 0-9", None),
    ("bytes=" + "9" * 20 + "-", None),         # more digits than any file has
])
def test_range_values(value, span):
    assert files.parse_range(value, 1000) == span


def test_an_empty_file_ignores_ranges():
    assert files.parse_range("bytes=0-10", 0) is None


@pytest.mark.parametrize("value, allowed", [
    (None, True),
    (ETAG, True),
    ('"other"', False),
    ("W/" + ETAG, False),                      # If-Range compares strongly
    (LAST_MODIFIED, True),
    (LATER, False),                            # a date must be exactly Last-Modified
    ("garbage", False),
])
def test_if_range(value, allowed):
    assert files.if_range_allows(value, ETAG, EPOCH_1994, NOW) is allowed


def test_if_range_with_a_date_needs_a_strong_last_modified():
    """Last-Modified is only a strong validator once the file is a second older than now."""
    assert files.if_range_allows(LAST_MODIFIED, ETAG, EPOCH_1994, EPOCH_1994 + 0.5) is False


# ---- content codings ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value, codings", [
    (None, ()), ("", ()),
    ("gzip, deflate, br", ("br", "gzip")),
    ("gzip, deflate", ("gzip",)),
    ("br", ("br",)),
    ("x-gzip", ("gzip",)),
    ("GZIP", ("gzip",)),
    ("gzip;q=1.0, br;q=0.5", ("gzip", "br")),     # the client's preference first
    ("gzip;q=0, br", ("br",)),
    ("*", ("br", "gzip")),
    ("*;q=0.5, gzip;q=0", ("br",)),
    ("identity", ()),
    ("gzip;q=0.5, identity", ()),                   # identity preferred
    ("gzip;q=0.5, identity;q=0.5", ("gzip",)),
    ("identity;q=0, *;q=0", ()),
    ("deflate", ()),
    ("gzip;q=2, br;q=x", ()),                       # unparsable entries are left out
    ("gzip ; q = 0.8 ,  br ; q=0.9", ("br", "gzip")),
])
def test_codings_to_try(value, codings):
    assert files.codings_to_try(value) == codings


# ---- the plan and its head --------------------------------------------------------------------------------

def plan(headers=(), method="GET", coding="identity", info=INFO):
    return files.plan(method, files.request_fields(headers), info, coding, "text/css; charset=utf-8", "no-cache", NOW)


def fields(answer):
    return dict(answer.headers)


def test_a_whole_file():
    answer = plan()
    assert (answer.status, answer.content_length, answer.offset, answer.length) == (200, 1000, 0, 1000)
    assert fields(answer) == {"Content-Type": "text/css; charset=utf-8", "Last-Modified": LAST_MODIFIED, "ETag": ETAG,
                              "Cache-Control": "no-cache", "Vary": "Accept-Encoding", "Accept-Ranges": "bytes"}


def test_head_announces_the_length_and_sends_nothing():
    answer = plan(method="HEAD")
    assert (answer.status, answer.content_length, answer.length) == (200, 1000, 0)


def test_head_ignores_range():
    assert plan([("Range", "bytes=0-9")], method="HEAD").status == 200


def test_a_range():
    answer = plan([("Range", "bytes=10-19")])
    assert (answer.status, answer.content_length, answer.offset, answer.length) == (206, 10, 10, 10)
    assert fields(answer)["Content-Range"] == "bytes 10-19/1000"


def test_an_unsatisfiable_range_is_416_with_the_size():
    answer = plan([("Range", "bytes=1000-")])
    assert (answer.status, answer.length) == (416, 0)
    assert fields(answer)["Content-Range"] == "bytes */1000"


def test_if_range_that_fails_sends_the_whole_file():
    answer = plan([("Range", "bytes=10-19"), ("If-Range", '"old"')])
    assert (answer.status, answer.length) == (200, 1000)


def test_a_304_carries_the_cache_fields_and_no_metadata():
    answer = plan([("If-None-Match", ETAG)])
    assert (answer.status, answer.content_length, answer.length) == (304, 0, 0)
    assert fields(answer) == {"ETag": ETAG, "Cache-Control": "no-cache", "Vary": "Accept-Encoding"}


def test_a_304_beats_a_range():
    assert plan([("If-None-Match", ETAG), ("Range", "bytes=0-1")]).status == 304


def test_a_412():
    assert plan([("If-Match", '"other"')])[:2] == (412, [])


def test_a_coded_file_says_its_coding_and_has_its_own_etag():
    answer = plan(coding="br")
    assert fields(answer)["Content-Encoding"] == "br" and fields(answer)["ETag"] == files.etag_of(INFO, "br")
    assert plan([("If-None-Match", ETAG)], coding="br").status == 200     # the identity tag is another file's


def test_request_fields_reads_the_conditional_fields_once_and_joins_their_lines():
    headers = [("Host", "x"), ("if-none-match", '"a"'), ("Range", "bytes=0-1"), ("If-None-Match", '"b"'),
               ("X-Other", "y"), ("ACCEPT-ENCODING", "gzip")]
    assert files.request_fields(headers) == {"if-none-match": '"a", "b"', "range": "bytes=0-1",
                                             "accept-encoding": "gzip"}
    assert files.field(headers, "If-None-Match") == '"a", "b"' and files.field(headers, "If-Match") is None


def test_the_head_bytes():
    date = b"Mon, 07 Dec 2026 10:00:00 GMT"
    head = files.answer_head(plan([("Range", "bytes=0-9")]), True, date, "HTTP/1.1")
    assert head.startswith(b"HTTP/1.1 206 Partial Content\r\nContent-Type: text/css; charset=utf-8\r\n")
    assert b"\r\nContent-Range: bytes 0-9/1000\r\n" in head and b"\r\nContent-Length: 10\r\n" in head
    assert b"\r\nDate: " + date + b"\r\n" in head and head.endswith(b"\r\n\r\n") and b"Connection" not in head
    closing = files.answer_head(plan(), False, date, "HTTP/1.1")
    assert b"\r\nConnection: close\r\n" in closing
    old = files.answer_head(plan(), True, date, "HTTP/1.0")
    assert b"\r\nConnection: keep-alive\r\n" in old
    not_modified = files.answer_head(plan([("If-None-Match", ETAG)]), True, date, "HTTP/1.1")
    assert not_modified.startswith(b"HTTP/1.1 304 Not Modified\r\n") and b"Content-Length" not in not_modified
