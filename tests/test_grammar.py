"""The rules of an HTTP/1.1 request head (minirr.http.grammar), one pure function at a time:
request targets, Transfer-Encoding, Content-Length, Connection, repeated single-value
fields. The same rules fed through the parser are tests/test_http11.py's and the corpus's."""

from __future__ import annotations

import pytest

from minirr.http import grammar
from minirr.errors import ProtocolError


def test_check_single_values_directly():
    grammar.check_single_values({"host": ["a", "b"], "accept": ["x", "y"], "range": ["bytes=0-1"] * 3})
    with pytest.raises(ProtocolError) as info:
        grammar.check_single_values({"accept": ["x", "y"], "from": ["a@b", "a@b", "c@d"]})
    assert (info.value.status, info.value.msg) == (
        400, "header field 'from' repeated with different values (RFC 9110 §5.3)")


@pytest.mark.parametrize("method,target,expected", [
    ("GET", "/a/b?c=d&e", ("/a/b", "c=d&e")),
    ("GET", "/a?", ("/a", "")),
    ("OPTIONS", "*", ("*", "")),
    ("CONNECT", "example.com:443", ("", "")),
    ("GET", "http://example.com", ("/", "")),
    ("GET", "https://example.com:8443/x?y", ("/x", "y")),
])
def test_split_target_forms(method, target, expected):
    assert grammar.split_target(method, target) == expected


@pytest.mark.parametrize("method,target", [
    ("GET", "*"), ("CONNECT", "/"), ("CONNECT", "example.com"), ("GET", "example.com:80"),
    ("GET", "/a b"), ("GET", "/%G0"), ("GET", "/a#b"), ("GET", "http://u@h/"), ("GET", "mailto:x@y"),
])
def test_split_target_refusals(method, target):
    with pytest.raises(ProtocolError) as info:
        grammar.split_target(method, target)
    assert info.value.status == 400


@pytest.mark.parametrize("values,status", [
    (["chunked"], None), (["CHUNKED"], None),
    # RFC 9112 §6.3: a final coding other than chunked, known or not, is 400 ...
    (["foo"], 400), (["gzip"], 400), (["identity"], 400), (["chunked, identity"], 400), (["chunked, gzip"], 400),
    (["chunked", "foo"], 400), (["gzip, chunked, foo"], 400), (["chunked;q=1"], 400), (["chunked ; q=1"], 400),
    # ... as are codings the framing cannot be trusted with ...
    (["chunked", "chunked"], 400), (["chunked, chunked"], 400), (["foo, chunked, chunked"], 400),
    (["chunked;q=1, chunked"], 400),
    ([" chunked , "], 400), ([",chunked"], 400), (["gzip,,chunked"], 400), (["chunked", ""], 400),
    # ... and only a request framed by a final chunked gets 501 for what comes before it
    (["gzip, chunked"], 501), (["foo, chunked"], 501), (["identity, chunked"], 501), (["x-gzip", "chunked"], 501),
    (["gzip;level=1, chunked"], 501),
])
def test_transfer_coding_rules(values, status):
    if status is None:
        grammar.check_transfer_coding(values, "HTTP/1.1", has_length=False)
    else:
        with pytest.raises(ProtocolError) as info:
            grammar.check_transfer_coding(values, "HTTP/1.1", has_length=False)
        assert info.value.status == status


@pytest.mark.parametrize("values,message", [
    (["chunked, identity"], "final transfer coding 'identity' is not chunked (RFC 9112 §6.3)"),
    (["chunked;q=1"], "chunked transfer coding takes no parameters (RFC 9112 §7)"),
    (["foo, gzip, chunked"], "unknown transfer coding 'foo'"),
    (["gzip, foo, chunked"], "unknown transfer coding 'foo'"),
    (["gzip;level=1, chunked"], "transfer coding 'gzip;level=1' is not supported"),
])
def test_transfer_coding_messages(values, message):
    with pytest.raises(ProtocolError) as info:
        grammar.check_transfer_coding(values, "HTTP/1.1", has_length=False)
    assert info.value.msg == message


@pytest.mark.parametrize("values,expected", [
    (["0"], 0), (["10"], 10), (["007"], 7), (["5, 5"], 5), (["5", "05"], 5), (["100"], 100),
])
def test_content_length_values(values, expected):
    assert grammar.content_length(values, limit=100) == expected


@pytest.mark.parametrize("values,status", [
    (["101"], 413), (["1" * 30], 413), (["5, 6"], 400), (["5", "6"], 400), (["-0"], 400), ([" "], 400),
])
def test_content_length_refusals(values, status):
    with pytest.raises(ProtocolError) as info:
        grammar.content_length(values, limit=100)
    assert info.value.status == status


@pytest.mark.parametrize("values,protocol,expected", [
    (None, "HTTP/1.1", False), (None, "HTTP/1.0", True), (["close"], "HTTP/1.1", True),
    (["Keep-Alive"], "HTTP/1.0", False), (["foo, bar"], "HTTP/1.0", True),
])
def test_asks_to_close(values, protocol, expected):
    assert grammar.asks_to_close(values, protocol) is expected


def test_shown_cuts_long_client_strings():
    assert grammar.shown("x" * 100) == repr("x" * 40 + "...")
