"""Request and Response (minirr.wire.messages): what a response body may be, how it is
normalised, and the blocks of a streamed one. The JSON heads are tests/test_heads.py's."""

import pytest

from minirr.wire.messages import Response, body_block


def test_response_normalises_headers_and_body():
    assert Response(201, {"A": "1"}, "héllo").body == "héllo".encode()
    assert Response(headers=[("Set-Cookie", "a"), ("Set-Cookie", "b")]).headers == [("Set-Cookie", "a"), ("Set-Cookie", "b")]


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
