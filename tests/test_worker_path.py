"""The worker's per-request shortcuts give the same answers as the plain code they skip:
remembered response heads, the request head decoded without json's whitespace scans."""

import json

import pytest

from minirr.wire.messages import Request, Response
from minirr.wire.heads import ResponseHeadCache, decode_request, encode_request_head, encode_response_head


def plain_head(response: Response) -> bytes:
    """What encode_response_head wrote before it remembered anything."""
    grouped = {}
    for name, value in response.headers:
        grouped.setdefault(name, []).append(value)
    return json.dumps({"status": response.status, "headers": grouped},
                      separators=(",", ":"), ensure_ascii=False).encode("utf-8")


RESPONSES = [
    Response(200),
    Response(200, [("Content-Type", "text/plain"), ("Content-Length", "14")]),
    Response(200, [("Content-Length", "14"), ("Content-Type", "text/plain")]),   # same pairs, other order
    Response(201, [("Content-Type", "text/plain"), ("Content-Length", "14")]),   # same pairs, other status
    Response(200, [("Set-Cookie", "a=1"), ("X", "y"), ("Set-Cookie", "b=2")]),
    Response(404, {"X-Quote": 'a"b\\c', "X-Accent": "café\x01"}),
]


@pytest.mark.parametrize("response", RESPONSES, ids=range(len(RESPONSES)))
def test_a_remembered_head_is_the_plain_head(response):
    encoder = ResponseHeadCache()
    assert encoder.encode(response) == plain_head(response)
    assert encoder.encode(response) == plain_head(response)   # the second time from the cache
    assert encode_response_head(response) == plain_head(response)


def test_heads_that_differ_in_anything_stay_apart():
    encoder = ResponseHeadCache()
    heads = [encoder.encode(response) for response in RESPONSES]
    assert len(set(heads)) == len(heads)


def test_the_head_cache_is_bounded_and_heads_past_the_bound_are_still_right():
    encoder = ResponseHeadCache()
    for n in range(encoder.CACHE_SIZE + 50):
        response = Response(200, [("Content-Length", str(n))])
        assert encoder.encode(response) == plain_head(response)
    assert len(encoder.heads) == encoder.CACHE_SIZE


def test_a_large_head_is_right_and_not_remembered():
    encoder = ResponseHeadCache()
    response = Response(200, [("Content-Security-Policy", "x" * encoder.CACHE_MAX_BYTES)])
    assert encoder.encode(response) == plain_head(response)
    assert (200, tuple(response.headers)) not in encoder.heads


def request_head() -> bytes:
    return encode_request_head(Request("GET", "/a", "q=1", [("Host", "h"), ("X-Test", "1"), ("X-Test", "2")],
                                       b"", "10.0.0.1", "HTTP/1.1", "http://h/a?q=1"))


def fields(request: Request) -> tuple:
    return (request.method, request.path, request.query, request.headers, request.body,
            request.remote_addr, request.protocol, request.uri)


@pytest.mark.parametrize("around", [(b" ", b""), (b"", b"\n"), (b"\r\n\t ", b" \r\n")])
def test_whitespace_around_a_request_head_is_still_json(around):
    before, after = around
    assert fields(decode_request(before + request_head() + after, b"x")) == fields(decode_request(request_head(), b"x"))


@pytest.mark.parametrize("head", [b"", b"nope", b'{"uri":', b'{"uri":"/"} {}', b'{"uri":"/"}x', b" [1] x"])
def test_a_broken_request_head_raises_what_json_loads_raises(head):
    with pytest.raises(ValueError) as expected:
        json.loads(head.decode())
    with pytest.raises(ValueError) as got:
        decode_request(head, b"")
    assert (type(got.value), str(got.value)) == (type(expected.value), str(expected.value))


@pytest.mark.parametrize("head", [b"[]", b" 1 ", b'"s"'])
def test_a_request_head_that_is_json_but_no_object_is_refused(head):
    with pytest.raises(ValueError, match="not a JSON object"):
        decode_request(head, b"")
