"""The worker's per-request shortcuts give the same answers as the plain code they skip:
remembered response heads."""

import json

import pytest

from minirr import messages
from minirr.messages import Response, encode_response_head


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
    assert encode_response_head(response) == plain_head(response)
    assert encode_response_head(response) == plain_head(response)   # the second time from the cache


def test_heads_that_differ_in_anything_stay_apart():
    heads = [encode_response_head(response) for response in RESPONSES]
    assert len(set(heads)) == len(heads)


def test_the_head_cache_is_bounded_and_heads_past_the_bound_are_still_right():
    for n in range(messages._ENCODED_HEAD_CACHE_SIZE + 50):
        response = Response(200, [("Content-Length", str(n))])
        assert encode_response_head(response) == plain_head(response)
    assert len(messages._ENCODED_HEAD_CACHE) <= messages._ENCODED_HEAD_CACHE_SIZE
