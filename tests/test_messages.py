"""Request/Response heads: RoadRunner 2023.3 keys, canonical names, round trips."""

import json

import pytest

from minirr.wire.messages import Request, Response, body_block
from minirr.wire.heads import canonical_header_name, decode_request, decode_response_head, encode_request_head, encode_response_head


def make_request():
    return Request("POST", "/a%20b", "x=1&y=2",
                   [("host", "example.com"), ("x-test", "1"), ("Cookie", "a=1; b=\"2\""), ("X-TEST", "2")],
                   b"body", "10.0.0.1", "HTTP/1.1", "http://example.com/a%20b?x=1&y=2")


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


@pytest.mark.parametrize("name,canon", [("x-test", "X-Test"), ("CONTENT-TYPE", "Content-Type"), ("host", "Host")])
def test_canonical_names(name, canon):
    assert canonical_header_name(name) == canon


def test_response_normalises_headers_and_body():
    assert Response(201, {"A": "1"}, "héllo").body == "héllo".encode()
    assert Response(headers=[("Set-Cookie", "a"), ("Set-Cookie", "b")]).headers == [("Set-Cookie", "a"), ("Set-Cookie", "b")]


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


@pytest.mark.parametrize("uri,path", [
    ("http://h/a/b?q=1#f", "/a/b"), ("http://h", "/"), ("http://h?x", "/"), ("https://h:8443/x%20y", "/x%20y"),
    ("*", "*"), ("/plain?x", "/plain"), ("http://[::1]:8080/v6", "/v6"),
])
def test_path_of(uri, path):
    from minirr.wire.heads import path_of
    assert path_of(uri) == path


def test_a_response_head_decodes_the_same_every_time():
    head = b'{"status":201,"headers":{"X":["1"]}}'
    assert decode_response_head(head) == decode_response_head(head) == (201, [("X", "1")], False)


def test_request_head_escapes_every_string_field():
    tricky = 'a"b\\c\u00e9\x01'
    request = Request("GET", "/", tricky, [("X-T", tricky), ("Cookie", "k=v")], b"", tricky, "HTTP/1.1", tricky)
    head = json.loads(encode_request_head(request))
    assert head["rawQuery"] == head["remoteAddr"] == head["uri"] == tricky
    assert head["headers"]["X-T"] == [tricky] and head["cookies"] == {"k": "v"}


def test_long_header_names_are_encoded_right_and_not_cached():
    from minirr.wire.heads import RequestHeadWriter
    name = "x-" + "a" * 500
    request = Request("GET", "/", "", [("Host", "h"), (name, "1")], b"", "127.0.0.1", "HTTP/1.1", "http://h/")
    encoder = RequestHeadWriter()
    head = json.loads(encoder.encode(request))
    assert head["headers"]["X-" + "A" + "a" * 499] == ["1"]
    assert name not in encoder.json_keys and "Host" in encoder.json_keys


@pytest.mark.parametrize("body,expected", [
    (b"raw", b"raw"), (bytearray(b"array"), b"array"), (memoryview(b"view"), b"view"), ("h\u00e9", "h\u00e9".encode()),
])
def test_response_bodies_that_are_accepted(body, expected):
    assert Response(200, {}, body).body == expected


@pytest.mark.parametrize("body,kind", [(5, "int"), (None, "NoneType"), ({"a": 1}, "dict")])
def test_a_response_body_of_another_type_says_what_a_body_may_be(body, kind):
    with pytest.raises(TypeError) as info:
        Response(200, {}, body)
    assert str(info.value) == ("a response body must be bytes, bytearray, memoryview, str or an iterable of them, "
                               f"not {kind}")


@pytest.mark.parametrize("body", [[b"a", "\u00e9", bytearray(b"b"), memoryview(b"c")], (b"a", "\u00e9", b"bc")])
def test_a_list_or_tuple_body_is_whole_joined_into_bytes(body):
    assert Response(200, {}, body).body == "a\u00e9bc".encode()


def test_a_list_body_with_a_block_of_another_type_names_it():
    with pytest.raises(TypeError) as info:
        Response(200, {}, [b"a", 5])
    assert str(info.value) == "a response body's blocks must be bytes, bytearray, memoryview or str, not int"


def test_any_other_iterable_is_kept_as_it_is_to_be_streamed():
    generator = (b for b in [b"x"])
    response = Response(200, {}, generator)
    assert response.body is generator
    assert repr(response) == "<Response 200 streamed from generator>"

    class Blocks:
        def __iter__(self):
            return iter([b"y"])
    blocks = Blocks()
    assert Response(200, {}, blocks).body is blocks


def test_a_bytes_body_is_the_very_object_given():
    body = b"x" * 100
    assert Response(200, {}, body).body is body


@pytest.mark.parametrize("block,expected", [
    (b"raw", b"raw"), (bytearray(b"array"), b"array"), (memoryview(b"view"), b"view"), ("h\u00e9", "h\u00e9".encode()),
])
def test_a_streamed_block_is_bytes_or_str_as_utf8(block, expected):
    assert body_block(block) == expected


@pytest.mark.parametrize("block,kind", [(5, "int"), (None, "NoneType"), ([b"x"], "list")])
def test_a_streamed_block_of_another_type_says_what_a_block_may_be(block, kind):
    with pytest.raises(TypeError) as info:
        body_block(block)
    assert str(info.value) == f"a response body's blocks must be bytes, bytearray, memoryview or str, not {kind}"
