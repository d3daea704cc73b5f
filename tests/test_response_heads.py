"""The master's response heads: each distinct JSON head from a worker is checked and
turned into HTTP once (backend._http_head), and that gives what serializing it afresh gives."""

import json

import pytest

from minirr import backend, http11
from minirr.messages import HEAD_CACHE_MAX_BYTES

DATE = b"Fri, 27 Nov 2026 16:00:00 GMT"


def head_json(status, headers) -> bytes:
    return json.dumps({"status": status, "headers": headers}, separators=(",", ":")).encode()


@pytest.mark.parametrize("status,headers", [
    (200, {"Content-Type": ["text/plain"]}),
    (404, {"X-A": ["1", "2"], "Set-Cookie": ["a=1"]}),
    (204, {}),
])
def test_a_kept_head_serializes_like_a_fresh_one(status, headers):
    pairs = [(name, value) for name, values in headers.items() for value in values]
    expected = http11.serialize_response(status, pairs, b"body", keep_alive=True, date=DATE)
    for _ in range(2):                          # the second time from what was kept
        got_status, head = backend._http_head(head_json(status, headers))
        assert got_status == status
        assert http11.complete_response(head, status, memoryview(b"body"), keep_alive=True, date=DATE) == expected


def test_a_stop_head_is_not_a_response():
    assert backend._http_head(b'{"stop":true}') == (0, None)


@pytest.mark.parametrize("head", [b'{"status":99}', b"[1]", b'{"status":200,"headers":{"X":["a\\r\\nb"]}}'])
def test_an_invalid_head_raises_value_error_every_time(head):
    for _ in range(2):
        with pytest.raises(ValueError):
            backend._http_head(head)
    assert head not in backend._HTTP_HEADS


def test_a_large_head_is_right_and_not_kept():
    head = head_json(200, {"Content-Security-Policy": ["x" * HEAD_CACHE_MAX_BYTES]})
    status, http_head = backend._http_head(head)
    assert status == 200 and http_head.endswith(b"x" * HEAD_CACHE_MAX_BYTES + b"\r\n")
    assert head not in backend._HTTP_HEADS
