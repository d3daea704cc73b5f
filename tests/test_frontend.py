"""Unit tests of the frontend's own decisions: how a parsed Request is finished (the
client behind a trusted proxy, the target URI). The frontend's sockets are exercised by
the process tests (test_server.py, test_http_limits.py, test_streaming.py)."""

from __future__ import annotations

import ipaddress

import pytest

from minirr.http import forwarded
from minirr.master.frontend import finish_request
from minirr.http.parser import RequestLimits, RequestParser


def nets(*cidrs):
    return tuple(ipaddress.ip_network(c) for c in cidrs)


def parsed(data: bytes):
    c = RequestParser(RequestLimits())
    c.receive_data(data)
    return c, c.next_event()


def test_the_peer_and_the_host_make_the_target_uri():
    c, r = parsed(b"PUT /x/y?z=1 HTTP/1.1\r\nHost: h.test:81\r\nContent-Length: 0\r\n\r\n")
    finish_request(r, "192.0.2.10", c.host, "127.0.0.1:8080", ())
    assert (r.remote_addr, r.uri) == ("192.0.2.10", "http://h.test:81/x/y?z=1")


def test_without_host_the_uri_names_the_server_itself():
    c, r = parsed(b"GET /p HTTP/1.0\r\n\r\n")
    finish_request(r, "192.0.2.10", c.host, "svc.internal:8080", ())
    assert r.uri == "http://svc.internal:8080/p"


def test_other_target_forms_keep_their_uri():
    c, r = parsed(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")
    finish_request(r, "192.0.2.10", c.host, "x", ())
    assert (r.path, r.uri) == ("*", "*")
    c, r = parsed(b"GET http://other.test/a?b HTTP/1.1\r\nHost: h\r\n\r\n")
    finish_request(r, "192.0.2.10", c.host, "x", ())
    assert r.uri == "http://other.test/a?b"


# --- X-Forwarded-For / X-Forwarded-Proto ---------------------------------------------------

def forwarded_request(peer, trusted, *fields):
    c = RequestParser(RequestLimits())
    c.receive_data(b"GET /p HTTP/1.1\r\nHost: example.com\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n")
    request = c.next_event()
    finish_request(request, peer, c.host, "192.0.2.99:8080", nets(*trusted))
    return request


def test_trusted_proxy_sets_client_and_scheme():
    r = forwarded_request("10.0.0.5", ["10.0.0.0/8"], b"X-Forwarded-For: 203.0.113.7", b"X-Forwarded-Proto: https")
    assert (r.remote_addr, r.uri) == ("203.0.113.7", "https://example.com/p")
    assert ("X-Forwarded-For", "203.0.113.7") in r.headers


def test_untrusted_peer_is_not_believed_but_headers_pass():
    r = forwarded_request("192.0.2.1", ["10.0.0.0/8"], b"X-Forwarded-For: 203.0.113.7", b"X-Forwarded-Proto: https")
    assert (r.remote_addr, r.uri) == ("192.0.2.1", "http://example.com/p")
    assert r.headers[1:] == [("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "https")]


@pytest.mark.parametrize("peer, trusted, xff, client", [
    ("10.0.0.5", [], b"203.0.113.7", "10.0.0.5"),
    ("10.0.0.5", ["10.0.0.0/8"], b"1.1.1.1, 2.2.2.2, 10.9.9.9", "2.2.2.2"),
    ("::ffff:10.0.0.5", ["10.0.0.0/8"], b"203.0.113.7", "203.0.113.7"),
    ("fd00::1", ["fd00::/8"], b"2001:db8::1", "2001:db8::1"),
], ids=["no_trusted_proxies_means_no_trust", "forged_left_entries_are_ignored",
        "ipv4_mapped_peer_matches_ipv4_network", "ipv6_proxy_network"])
def test_client_address_from_x_forwarded_for(peer, trusted, xff, client):
    assert forwarded_request(peer, trusted, b"X-Forwarded-For: " + xff).remote_addr == client


def test_trusted_proxy_without_xff_keeps_peer():
    r = forwarded_request("10.0.0.5", ["10.0.0.0/8"], b"X-Forwarded-Proto: HTTPS")
    assert (r.remote_addr, r.uri) == ("10.0.0.5", "https://example.com/p")


@pytest.mark.parametrize("text,expected", [
    ("10.0.0.1", "10.0.0.1"), (" 10.0.0.1:8080 ", "10.0.0.1"), ("::1", "::1"),
    ("[::1]:80", "::1"), ("[2001:db8::1]", "2001:db8::1"), ("::ffff:1.2.3.4", "1.2.3.4"),
    ("unknown", None), ("", None), ("[::1", None), ("1.2.3.4.5", None), ("_hidden", None),
])
def test_parse_address(text, expected):
    address = forwarded.parse_address(text)
    assert (None if address is None else str(address)) == expected


def test_forwarded_helpers_directly():
    trusted = nets("10.0.0.0/8")
    assert forwarded.is_trusted("10.1.2.3", trusted)
    assert not forwarded.is_trusted("", trusted)
    assert not forwarded.is_trusted("10.1.2.3", ())
    assert forwarded.client_address("10.0.0.1", ["1.2.3.4, bogus"], trusted) == "10.0.0.1"
    assert forwarded.client_address("10.0.0.1", ["bogus, 10.0.0.2"], trusted) == "10.0.0.2"
    assert forwarded.client_address("10.0.0.1", [], trusted) == "10.0.0.1"
    assert forwarded.client_scheme("http", ["https, http"]) == "http"
    assert forwarded.client_scheme("https", ["ftp"]) == "https"
    assert forwarded.client_scheme("http", []) == "http"


