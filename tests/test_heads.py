"""The JSON heads on the wire (minirr.wire.heads): RoadRunner 2023.3's keys, canonical
names, round trips, checked response heads; and each fast twin against its plain
function over a corpus (many headers, repeated names, cookies, odd casing, non-ASCII
values, an empty query, a body-less request, heads larger than the caches keep), plus a
process run with MINIRR_FAST_PATHS=0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minirr.master.reply import ReplyHeads, read_reply_head
from minirr.wire.heads import (RequestHeadWriter, ResponseHeadCache, _raw_head_json, canonical_header_name,
                               decode_request, decode_request_json, decode_response_head, encode_request_head,
                               encode_response_head, path_of)
from minirr.wire.messages import Request, Response

ROOT = Path(__file__).resolve().parent.parent


def make_request():
    return Request("POST", "/a%20b", "x=1&y=2",
                   [("host", "example.com"), ("x-test", "1"), ("Cookie", "a=1; b=\"2\""), ("X-TEST", "2")],
                   b"body", "10.0.0.1", "HTTP/1.1", "http://example.com/a%20b?x=1&y=2")


# ---- the request head ----------------------------------------------------------------------------

def test_request_head_has_every_roadrunner_key():
    head = json.loads(encode_request_head(make_request()))
    assert list(head) == ["remoteAddr", "protocol", "method", "uri", "headers", "cookies", "rawQuery",
                          "parsed", "uploads", "attributes"]
    assert head["headers"] == {"Host": ["example.com"], "X-Test": ["1", "2"], "Cookie": ['a=1; b="2"']}
    assert head["cookies"] == {"a": "1", "b": "2"}
    assert head["parsed"] is False and head["uploads"] is None and head["attributes"] == {}


def test_request_round_trip():
    request = make_request()
    back = decode_request(encode_request_head(request), request.body)
    assert (back.method, back.path, back.query, back.body, back.remote_addr, back.protocol, back.uri) == \
        ("POST", "/a%20b", "x=1&y=2", b"body", "10.0.0.1", "HTTP/1.1", request.uri)
    assert back.header("x-test") == "1" and back.header("missing", "d") == "d"


@pytest.mark.parametrize("name,canon", [("x-test", "X-Test"), ("CONTENT-TYPE", "Content-Type"), ("host", "Host"),
                                        ("x--y", "X--Y"), ("www-authenticate", "Www-Authenticate")])
def test_canonical_names(name, canon):
    assert canonical_header_name(name) == canon


def test_request_head_escapes_every_string_field():
    tricky = 'a"b\\c\u00e9\x01'
    request = Request("GET", "/", tricky, [("X-T", tricky), ("Cookie", "k=v")], b"", tricky, "HTTP/1.1", tricky)
    head = json.loads(encode_request_head(request))
    assert head["rawQuery"] == head["remoteAddr"] == head["uri"] == tricky
    assert head["headers"]["X-T"] == [tricky] and head["cookies"] == {"k": "v"}


def test_long_header_names_are_encoded_right_and_not_cached():
    name = "x-" + "a" * 500
    request = Request("GET", "/", "", [("Host", "h"), (name, "1")], b"", "127.0.0.1", "HTTP/1.1", "http://h/")
    encoder = RequestHeadWriter()
    head = json.loads(encoder.encode(request))
    assert head["headers"]["X-" + "A" + "a" * 499] == ["1"]
    assert name not in encoder.json_keys and "Host" in encoder.json_keys


@pytest.mark.parametrize("head", [b"[1]", b'"text"', b"not json", b"\xff", b"[" * 100000],
                         ids=["list", "string", "not_json", "not_utf8", "deep"])
def test_a_request_head_that_is_no_json_object_is_refused(head):
    with pytest.raises(ValueError):
        decode_request(head, b"")


@pytest.mark.parametrize("uri,path", [
    ("http://h/a/b?q=1#f", "/a/b"), ("http://h", "/"), ("http://h?x", "/"), ("https://h:8443/x%20y", "/x%20y"),
    ("*", "*"), ("/plain?x", "/plain"), ("http://[::1]:8080/v6", "/v6"),
])
def test_path_of(uri, path):
    assert path_of(uri) == path


# ---- the response head -----------------------------------------------------------------------------

def test_response_head_round_trip():
    head = encode_response_head(Response(404, [("Set-Cookie", "a"), ("Set-Cookie", "b"), ("X", "y")]))
    assert head == b'{"status":404,"headers":{"Set-Cookie":["a","b"],"X":["y"]}}'
    assert decode_response_head(head) == (404, [("Set-Cookie", "a"), ("Set-Cookie", "b"), ("X", "y")], False)


def test_worked_example_head():
    assert decode_response_head(b'{"status":200,"headers":{}}') == (200, [], False)


def test_worker_stop_head():
    assert decode_response_head(b'{"stop":true}')[2] is True


@pytest.mark.parametrize("head", [b"[]", b"{}", b'{"status":99}', b'{"status":600}', b'{"status":"200"}', b"nope"])
def test_bad_response_heads(head):
    with pytest.raises(ValueError):
        decode_response_head(head)


def test_a_response_head_decodes_the_same_every_time():
    head = b'{"status":201,"headers":{"X":["1"]}}'
    assert decode_response_head(head) == decode_response_head(head) == (201, [("X", "1")], False)


# ---- the fast twins agree with their plain functions ------------------------------------------------------

def request(headers, query: str = "q=1", body: bytes = b"", method: str = "GET") -> Request:
    uri = "http://h/p" + ("?" + query if query else "")
    return Request(method, "/p", query, headers, body, "192.0.2.7", "HTTP/1.1", uri)


REQUESTS = {
    "plain": request([("Host", "h")]),
    "no_headers": request([]),
    "many_headers": request([("Host", "h")] + [(f"X-Header-{i}", f"value {i}") for i in range(200)]),
    "repeated_names": request([("X-A", "1"), ("x-a", "2"), ("X-B", "3"), ("X-A", "4")]),
    "odd_casing": request([("hOsT", "h"), ("cOnTeNt-TyPe", "text/plain"), ("X-UPPER", "u"), ("x-lower", "l")]),
    "cookies": request([("Cookie", 'a=1; b="two"; c'), ("cookie", "a=shadowed; d = 4 ;e="), ("COOKIE", ";;=x")]),
    "cookie_without_pairs": request([("Cookie", "plain")]),
    "non_ascii_values": request([("X-Latin", "caf\u00e9 \u00ff"), ("X-Ctl", "tab\there"), ("X-Quote", 'a"b\\c')]),
    "token_characters": request([("x!#$%&'*+.^_`|~", "v")]),
    "empty_query": request([("Host", "h")], query=""),
    "bodyless_post": request([("Host", "h"), ("Content-Length", "0")], method="POST"),
    "long_names": request([("x-" + "n" * RequestHeadWriter.NAME_CACHE_MAX_LENGTH, "1"), ("X-" + "m" * 5000, "2")]),
    "large_head": request([("X-Big", "v" * 100000), ("Host", "h")]),
}


@pytest.mark.parametrize("name", list(REQUESTS))
def test_the_request_head_writer_writes_what_encode_request_head_writes(name):
    req = REQUESTS[name]
    writer = RequestHeadWriter()
    assert writer.encode(req) == encode_request_head(req)
    assert writer.encode(req) == encode_request_head(req)         # again, with its names remembered


def test_the_request_head_writer_agrees_once_its_name_cache_is_full():
    writer = RequestHeadWriter()
    for i in range(0, RequestHeadWriter.NAME_CACHE_SIZE + 100, 50):
        req = request([(f"x-name-{j}", str(j)) for j in range(i, i + 50)])
        assert writer.encode(req) == encode_request_head(req)
    assert len(writer.json_keys) == RequestHeadWriter.NAME_CACHE_SIZE
    for req in REQUESTS.values():
        assert writer.encode(req) == encode_request_head(req)


HEAD_TEXTS = {name: encode_request_head(req).decode("utf-8") for name, req in REQUESTS.items()}
HEAD_TEXTS.update({
    "whitespace_around": " \n" + HEAD_TEXTS["plain"] + "\t ",
    "a_list": "[1, 2]", "a_string": '"head"', "empty_object": "{}",
})
BAD_HEAD_TEXTS = {"not_json": "not json", "empty": "", "trailing": '{"a":1} x', "unclosed": '{"a":'}


@pytest.mark.parametrize("name", list(HEAD_TEXTS))
def test_raw_head_json_decodes_what_decode_request_json_decodes(name):
    assert _raw_head_json(HEAD_TEXTS[name]) == decode_request_json(HEAD_TEXTS[name])


@pytest.mark.parametrize("name", list(BAD_HEAD_TEXTS))
def test_raw_head_json_refuses_what_decode_request_json_refuses_in_the_same_words(name):
    text = BAD_HEAD_TEXTS[name]
    with pytest.raises(ValueError) as plain:
        decode_request_json(text)
    with pytest.raises(ValueError) as fast:
        _raw_head_json(text)
    assert str(fast.value) == str(plain.value)


def test_raw_head_json_and_decode_request_json_both_refuse_a_head_nested_too_deep():
    text = "[" * 100000
    with pytest.raises(RecursionError):
        decode_request_json(text)
    with pytest.raises(RecursionError):
        _raw_head_json(text)


RESPONSES = {
    "plain": Response(200, [("Content-Type", "text/plain")]),
    "no_headers": Response(204, []),
    "repeated_names": Response(200, [("Set-Cookie", "a=1"), ("X", "y"), ("Set-Cookie", "b=2"), ("set-cookie", "c")]),
    "non_ascii": Response(201, [("X-Latin", "caf\u00e9 \u00ff"), ("X-Quote", 'a"b\\c')]),
    "not_latin1": Response(200, [("X-Euro", "\u20ac")]),   # fine for the worker to encode; the master refuses it
    "many_headers": Response(200, [(f"X-{i}", str(i)) for i in range(200)]),
    "large_head": Response(200, [("X-Big", "v" * (ResponseHeadCache.CACHE_MAX_BYTES + 1))]),
    "status_only": Response(503),
}


@pytest.mark.parametrize("name", list(RESPONSES))
def test_the_response_head_cache_encodes_what_encode_response_head_encodes(name):
    response = RESPONSES[name]
    cache = ResponseHeadCache()
    assert cache.encode(response) == encode_response_head(response)
    assert cache.encode(response) == encode_response_head(response)        # from the cache, if it kept it


def test_the_response_head_cache_is_bounded_and_still_agrees_when_full():
    cache = ResponseHeadCache()
    for i in range(ResponseHeadCache.CACHE_SIZE + 20):
        response = Response(200, [("Set-Cookie", f"id={i}")])
        assert cache.encode(response) == encode_response_head(response)
    assert len(cache.heads) == ResponseHeadCache.CACHE_SIZE
    big = RESPONSES["large_head"]
    assert cache.encode(big) == encode_response_head(big) and (200, tuple(big.headers)) not in cache.heads


REPLY_HEADS = {name: encode_response_head(response) for name, response in RESPONSES.items() if name != "not_latin1"}
REPLY_HEADS.update({
    "stop": b'{"stop":true}', "headers_as_strings": b'{"status":200,"headers":{"X":"one"}}',
    "lengths_that_agree": b'{"status":200,"headers":{"Content-Length":["3"," 3"]}}',
    "framing_fields": b'{"status":200,"headers":{"Connection":["close"],"Transfer-Encoding":["chunked"]}}',
})
BAD_REPLY_HEADS = {"status_99": b'{"status":99}', "crlf": b'{"status":200,"headers":{"X":["a\\r\\nb"]}}',
                   "two_lengths": b'{"status":200,"headers":{"Content-Length":["1","2"]}}', "list": b"[1]",
                   "not_json": b"nope", "deep": b"[" * 100000,
                   "not_latin1": encode_response_head(RESPONSES["not_latin1"])}


@pytest.mark.parametrize("name", list(REPLY_HEADS))
def test_the_reply_head_cache_reads_what_read_reply_head_reads(name):
    heads = ReplyHeads()
    assert heads.read(REPLY_HEADS[name]) == read_reply_head(REPLY_HEADS[name])
    assert heads.read(REPLY_HEADS[name]) == read_reply_head(REPLY_HEADS[name])


@pytest.mark.parametrize("name", list(BAD_REPLY_HEADS))
def test_the_reply_head_cache_refuses_what_read_reply_head_refuses_in_the_same_words(name):
    head = BAD_REPLY_HEADS[name]
    with pytest.raises(ValueError) as plain:
        read_reply_head(head)
    heads = ReplyHeads()
    with pytest.raises(ValueError) as fast:
        heads.read(head)
    assert (type(fast.value), str(fast.value)) == (type(plain.value), str(plain.value)) and len(heads) == 0


# ---- the switch -----------------------------------------------------------------------------------------

SWITCH_CHECK = """
import json
from minirr.master import reply
from minirr.wire import heads
from minirr.wire.messages import Request
encode = heads.request_head_encoder()
request = Request("POST", "/p", "q=1", [("Host", "h"), ("Cookie", "a=1")], b"", "192.0.2.7", "HTTP/1.1", "http://h/p?q=1")
back = heads.decode_request(encode(request), b"body")
print(json.dumps({
    "fast": heads.FAST,
    "plain_encoders": [encode is heads.encode_request_head,
                       heads.response_head_encoder() is heads.encode_response_head,
                       heads._request_json is heads.decode_request_json],
    "plain_reader": reply.ReplyReader().read_head is reply.read_reply_head,
    "round_trip": [back.method, back.path, back.query, back.header("cookie"), back.body.decode()],
}))
"""


@pytest.mark.parametrize("setting,fast", [("0", False), ("1", True)])
def test_minirr_fast_paths_picks_the_plain_code_or_the_twins_for_the_whole_package(setting, fast):
    env = dict(os.environ, PYTHONPATH=str(ROOT), MINIRR_FAST_PATHS=setting)
    result = subprocess.run([sys.executable, "-c", SWITCH_CHECK], cwd=str(ROOT), capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "fast": fast, "plain_encoders": [not fast] * 3, "plain_reader": not fast,
        "round_trip": ["POST", "/p", "q=1", "a=1", "body"]}
