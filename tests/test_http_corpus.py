"""The request corpus (tests/corpus/README.md), fed to http11.RequestParser four ways; each
request is then finished as the frontend finishes it (frontend.finish_request: the peer,
trusted proxies, the target URI).

Every valid case must give the same requests whole, one byte at a time, followed by the
start of another request, and followed by EOF. Every invalid case must raise a
ProtocolError with the expected status, however it is fed.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from minirr.errors import ProtocolError
from minirr.master.frontend import finish_request
from minirr.http.parser import CLOSED, CONTINUE, NEED_DATA, PAUSED, RequestLimits as Limits, RequestParser
from minirr.wire.messages import Request

CORPUS = Path(__file__).parent / "corpus"
LIMITS = Limits(**json.loads((CORPUS / "limits.json").read_text()))
DEFAULT_CONNECTION = {"remote_addr": "192.0.2.10", "trusted_proxies": [], "default_host": "localhost"}
NEXT_REQUEST_START = b"GET /next HTTP/1.1\r\nHost: exa"


def load_cases(kind):
    cases = []
    for http_file in sorted((CORPUS / kind).glob("*.http")):
        expected = json.loads(http_file.with_suffix(".json").read_text(encoding="utf-8"))
        cases.append(pytest.param(http_file.read_bytes(), expected, id=http_file.stem))
    return cases


VALID = load_cases("valid")
INVALID = load_cases("invalid")


class Connection(RequestParser):
    """The parser plus what the frontend knows of the connection (the corpus's "connection")."""

    def __init__(self, settings: dict) -> None:
        super().__init__(LIMITS)
        self.peer = settings["remote_addr"]
        self.default_host = settings["default_host"]
        self.trusted = tuple(ipaddress.ip_network(n) for n in settings["trusted_proxies"])


def make_connection(expected) -> Connection:
    return Connection(dict(DEFAULT_CONNECTION, **expected.get("connection", {})))


def as_dict(request: Request, keep_alive: bool) -> dict:
    return {
        "method": request.method, "path": request.path, "query": request.query,
        "headers": [list(pair) for pair in request.headers],
        "body": request.body.decode("latin-1"), "remote_addr": request.remote_addr,
        "protocol": request.protocol, "uri": request.uri, "keep_alive": keep_alive,
    }


def drain(conn: Connection, seen: list):
    """Pull events until the parser wants bytes or is done; answer each Request at once."""
    while True:
        event = conn.next_event()
        if isinstance(event, Request):
            finish_request(event, conn.peer, conn.host, conn.default_host, conn.trusted)
            seen.append(as_dict(event, conn.keep_alive))
            assert conn.next_event() is PAUSED  # paused until the response is "sent"
            conn.start_next_cycle()
        elif event is not CONTINUE:
            assert event in (NEED_DATA, CLOSED)
            return event


def feed(conn: Connection, chunks, eof: bool = False):
    """-> (requests as dicts, last event)."""
    seen: list = []
    last = drain(conn, seen)
    for chunk in chunks:
        conn.receive_data(chunk)
        last = drain(conn, seen)
    if eof:
        conn.receive_data(b"")
        last = drain(conn, seen)
    return seen, last


def split_bytes(data: bytes):
    return [data[i:i + 1] for i in range(len(data))]


def expected_end(requests) -> object:
    """After the last request: more data wanted, unless it closed the connection."""
    return NEED_DATA if requests[-1]["keep_alive"] else CLOSED


FEEDS = {
    "whole": lambda data: [data],
    "bytewise": split_bytes,
    "trailing": lambda data: [data + NEXT_REQUEST_START],
}


@pytest.mark.parametrize("feed_kind", sorted(FEEDS))
@pytest.mark.parametrize("data,expected", VALID)
def test_valid(data, expected, feed_kind):
    requests, last = feed(make_connection(expected), FEEDS[feed_kind](data))
    assert requests == expected["requests"]
    assert last is expected_end(expected["requests"])


@pytest.mark.parametrize("data,expected", VALID)
def test_valid_then_eof(data, expected):
    """Buffered complete requests are still returned after EOF, with keep_alive False."""
    conn = make_connection(expected)
    conn.receive_data(data)
    conn.receive_data(b"")
    requests, last = feed(conn, [])
    assert requests == [dict(r, keep_alive=False) for r in expected["requests"]]
    assert last is CLOSED


@pytest.mark.parametrize("data,expected", VALID)
def test_valid_truncated_then_eof_is_closed(data, expected):
    """EOF in the middle of the (first) request is a silent CLOSED, not an error."""
    conn = make_connection(expected)
    conn.receive_data(data[:len(data) // 2])
    requests, last = feed(conn, [], eof=True)
    assert last is CLOSED
    assert len(requests) <= len(expected["requests"])


@pytest.mark.parametrize("feed_kind", sorted(FEEDS))
@pytest.mark.parametrize("data,expected", INVALID)
def test_invalid(data, expected, feed_kind):
    conn = make_connection(expected)
    with pytest.raises(ProtocolError) as info:
        feed(conn, FEEDS[feed_kind](data))
    assert info.value.status == expected["status"]
    assert expected["error"] in info.value.msg
    assert "\n" not in info.value.msg and len(info.value.msg) <= 120
    # poisoned: the same error again, and received bytes are ignored
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(ProtocolError) as again:
        conn.next_event()
    assert (again.value.status, again.value.msg) == (info.value.status, info.value.msg)


def test_corpus_size():
    assert len(VALID) + len(INVALID) >= 70
    for kind in ("valid", "invalid"):
        http_files = {p.stem for p in (CORPUS / kind).glob("*.http")}
        json_files = {p.stem for p in (CORPUS / kind).glob("*.json")}
        assert http_files == json_files, f"{kind}: unpaired files"
