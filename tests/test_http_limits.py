"""HTTP limits, smuggling defences, timeouts and connection limits over the wire.

The parser's rules are tested byte by byte in test_http_corpus; here a representative
case of each goes through a real server, to show the master answers it with the
right status, a one-line body, `Connection: close`, and then closes the connection.
"""

from __future__ import annotations

import os
import resource
import select
import socket
import time

import pytest

from serverproc import wait_until
from wire import (BASE_CONFIG, assert_rejected, connect, exchange, parse_response_head, parse_responses,
                  read_until_closed, start_module_server, stop_module_server)

LIMITS_CONFIG = ("[http]\nmax_request_size = 1000\nlimit_request_line = 200\nlimit_request_fields = 10\n"
                 "limit_request_field_size = 200\nlimit_request_headers = 1000\n")
TIMEOUT_S = 0.3
TIMEOUTS_CONFIG = f"[http]\nheader_timeout = {TIMEOUT_S}\nbody_timeout = {TIMEOUT_S}\nkeepalive_timeout = {TIMEOUT_S}\n"


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """One server with small limits for every rejection case (each on its own connection)."""
    srv = start_module_server(tmp_path_factory.mktemp("limits"), LIMITS_CONFIG)
    yield srv
    stop_module_server(srv)


@pytest.fixture(scope="module")
def impatient(tmp_path_factory):
    """One server with 300 ms header, body and keep-alive timeouts."""
    srv = start_module_server(tmp_path_factory.mktemp("timeouts"), TIMEOUTS_CONFIG)
    yield srv
    stop_module_server(srv)


def get_request(srv, headers: str = "", source=None):
    data, ending = exchange(srv, b"GET /request HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n"
                            + headers.encode() + b"\r\n", source=source)
    [(status, _, body)] = parse_responses(data)
    return status, body.decode()


def chunked_post(*chunks: bytes) -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    return b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body


# (name, bytes, status, a piece of the one-line message)
REJECTIONS = [
    # limits (LIMITS_CONFIG)
    ("request_line_414", b"GET /" + b"a" * 250 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414,
     "request line exceeds 200 bytes"),
    ("fields_431", b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(10)) + b"\r\n",
     431, "more than 10 header fields"),
    ("field_size_431", b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 250 + b"\r\n\r\n", 431,
     "field line exceeds 200 bytes"),
    # the whole line counts: name, colon, whitespace and value (a 1-byte value here)
    ("field_size_name_and_ows_431", b"GET / HTTP/1.1\r\nHost: x\r\nX-" + b"n" * 150 + b":" + b" " * 48 + b"v\r\n\r\n",
     431, "header field line exceeds 200 bytes"),
    ("trailer_field_size_431", chunked_post(b"abc")[:-2] + b"T-" + b"n" * 150 + b":" + b" " * 48 + b"v\r\n\r\n",
     431, "trailer field line exceeds 200 bytes"),
    ("header_section_431",
     b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 150) for i in range(8)) + b"\r\n",
     431, "header section exceeds 1000 bytes"),
    ("content_length_413_body_not_sent", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n", 413,
     "request body exceeds 1000 bytes"),
    ("expect_100_413_without_100",
     b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n", 413,
     "request body exceeds 1000 bytes"),
    ("chunked_413", chunked_post(b"a" * 600, b"b" * 600), 413, "request body exceeds 1000 bytes"),
    # request smuggling: framing that two parsers could read two ways (RFC 9112 §6.3, §2.2, §5.2)
    ("cl_and_te", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\n", 400, "both Transfer-Encoding and Content-Length"),
    ("cl_with_sign", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello", 400,
     "invalid Content-Length"),
    ("cl_values_differ", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
     400, "Content-Length values differ"),
    ("te_not_final_chunked", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400,
     "final transfer coding 'identity' is not chunked"),
    ("te_in_http10", b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400,
     "Transfer-Encoding in an HTTP/1.0 request"),
    ("chunk_size_with_sign", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n"
     b"0\r\n\r\n", 400, "malformed chunk size line"),
    ("bare_lf", b"GET / HTTP/1.1\nHost: x\n\n", 400, "bare LF"),
    ("obs_fold", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400, "obsolete line folding"),
    ("two_hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "more than one Host"),
    ("content_type_twice", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Type: text/html\r\n"
     b"Content-Length: 2\r\n\r\nhi", 400, "header field 'content-type' repeated with different values"),
    ("no_host", b"GET / HTTP/1.1\r\nX-A: a\r\n\r\n", 400, "without a Host header"),
    ("space_before_colon", b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400, "whitespace before colon"),
    ("nul_in_value", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400, "control character"),
    ("non_ascii_target", b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", 400, "non-ASCII"),
    # versions and codings
    ("http2_505", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505, "HTTP/2.0 is not supported"),
    ("http09_505", b"GET /\r\n\r\n", 505, "HTTP/0.9 is not supported"),
    ("unknown_coding_501", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: foo, chunked\r\n\r\n", 501,
     "unknown transfer coding 'foo'"),
]


@pytest.mark.parametrize("data,status,message", [case[1:] for case in REJECTIONS], ids=[c[0] for c in REJECTIONS])
def test_rejection_answers_then_closes(limited, data, status, message):
    line = assert_rejected(*exchange(limited, data), status)
    assert message in line


def test_requests_at_every_limit_are_served(limited):
    line = b"POST /echo?" + b"q" * 180 + b" HTTP/1.1"
    assert len(line) == 200
    body = bytes(range(256)) * 3 + b"z" * 232
    fields = [b"Host: x", b"X-Big: " + b"v" * 191, b"Content-Length: 1000"] + [b"X-%d: v" % i for i in range(7)]
    data, ending = exchange(limited, line + b"\r\n" + b"\r\n".join(fields) + b"\r\n\r\n" + body, shutdown=True)
    [(status, _, echoed)] = parse_responses(data)
    assert (status, echoed, ending) == (200, body, "eof")


def test_rejection_after_a_served_request_on_the_same_connection(limited):
    good = b"GET /request HTTP/1.1\r\nHost: x\r\n\r\n"
    data, ending = exchange(limited, good + b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" + good)
    statuses = [r[0] for r in parse_responses(data)]
    assert statuses == [200, 400], data          # nothing after the error is parsed
    assert ending == "eof"


def test_413_reaches_a_client_that_sends_the_body_anyway(limited):
    """The server answers before reading the body, then drains what the client still
    sends (a close with unread bytes would reset the connection under the response)."""
    conn = limited.connection()
    try:
        conn.request("POST", "/echo", body=b"x" * 5_000_000)
        response = conn.getresponse()
        assert response.status == 413
        assert response.read() == b"request body exceeds 1000 bytes\n"
    finally:
        conn.close()


def test_413_from_content_length_before_the_body_is_sent(limited):
    """The client waits for the answer before sending a body byte, and gets it."""
    with connect(limited) as sock:
        sock.sendall(b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n")
        data, ending = read_until_closed(sock)
    assert "exceeds 1000 bytes" in assert_rejected(data, ending, 413)


# ---------------------------------------------------------------------------- timeouts

def exchange_after_timeout(srv, data: bytes):
    """exchange(), checking that the server waited at least TIMEOUT_S before it ended it."""
    started = time.monotonic()
    result = exchange(srv, data)
    assert time.monotonic() - started >= TIMEOUT_S
    return result


def test_partial_header_gets_408_after_header_timeout(impatient):
    data, ending = exchange_after_timeout(impatient, b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert "request header not complete within 0.3s" in assert_rejected(data, ending, 408)


def test_silent_connection_is_closed_without_a_response(impatient):
    assert exchange_after_timeout(impatient, b"") == (b"", "eof")


def test_stalled_body_gets_408_after_body_timeout(impatient):
    data, ending = exchange_after_timeout(impatient, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    assert "no request body bytes for 0.3s" in assert_rejected(data, ending, 408)


def test_idle_keep_alive_connection_is_closed(impatient):
    with connect(impatient) as sock:
        sock.sendall(b"GET /request HTTP/1.1\r\nHost: x\r\n\r\n")
        data, ending = read_until_closed(sock)
    [(status, headers, _)] = parse_responses(data)
    assert (status, ending) == (200, "eof")
    assert "connection" not in headers          # it was kept alive, then timed out


def test_partial_second_request_gets_408(impatient):
    with connect(impatient) as sock:
        sock.sendall(b"GET /request HTTP/1.1\r\nHost: x\r\n\r\nGET /request HTTP/1.1\r\n")
        data, ending = read_until_closed(sock)
    assert [r[0] for r in parse_responses(data)] == [200, 408]


def test_a_request_at_the_worker_outlives_the_connection_timeouts(impatient):
    """Connection timeouts are about the client; a slow app is exec_ttl's business."""
    data, ending = exchange(impatient, b"GET /sleep?0.8 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    [(status, _, body)] = parse_responses(data)
    assert (status, body, ending) == (200, b"slept", "eof")


def test_unread_response_is_dropped_after_body_timeout(serve):
    """No write progress for body_timeout: the master drops the response and the client."""
    srv = serve(BASE_CONFIG + "[http]\nbody_timeout = 300ms\n")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect((srv.host, srv.port))
        sock.sendall(b"GET /bytes?30000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        srv.wait_for_log(r"127\.0\.0\.1: response not read for 0\.3s; closed")
        received = 0
        try:
            while True:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                received += len(chunk)
        except ConnectionResetError:
            pass
        assert received < 30_000_000
    assert get_request(srv)[0] == 200


# ---------------------------------------------------------------------------- connections

def test_trusted_proxy_sets_remote_addr_and_scheme(serve):
    srv = serve(BASE_CONFIG + "[http]\ntrusted_proxies = 127.0.0.1\n")
    forwarded = "X-Forwarded-For: 198.51.100.1, 127.0.0.1\r\nX-Forwarded-Proto: https\r\n"
    status, body = get_request(srv, forwarded)
    assert status == 200
    assert body.split(" ")[4:6] == ["https://example.com/request", "198.51.100.1"]
    # 127.0.0.2 is loopback too, but not a trusted proxy: its headers are not believed
    status, body = get_request(srv, forwarded, source="127.0.0.2")
    assert body.split(" ")[4:6] == ["http://example.com/request", "127.0.0.2"]


def response_arrived(sock: socket.socket, buffers: dict) -> bool:
    """Read what is there without blocking; True once a whole response is in."""
    while select.select([sock], [], [], 0)[0]:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buffers[sock] = buffers.get(sock, b"") + chunk
    data = buffers.get(sock, b"")
    if b"\r\n\r\n" not in data:
        return False
    _, headers, end = parse_response_head(data)
    return len(data) >= end + int(headers["content-length"])


def test_max_connections_waits_in_the_backlog_and_refuses_none(serve):
    srv = serve(BASE_CONFIG + "[http]\nmax_connections = 5\n")
    request = b"GET /request HTTP/1.1\r\nHost: x\r\n\r\n"
    socks = []
    try:
        for _ in range(10):
            sock = connect(srv)
            sock.sendall(request)
            socks.append(sock)
        buffers: dict = {}

        def answered_now():
            return [s for s in socks if response_arrived(s, buffers)]
        wait_until(lambda: len(answered_now()) >= 5, message="5 answered connections")
        answered = answered_now()
        assert len(answered) == 5
        waiting = [s for s in socks if s not in answered]
        # A round trip on an open connection: a master that had accepted the others would
        # have queued their requests ahead of this one.
        buffers.pop(answered[0])
        answered[0].sendall(request)
        wait_until(lambda: response_arrived(answered[0], buffers), message="a second response")
        assert not [s for s in waiting if response_arrived(s, buffers)]
        for sock in answered:
            sock.close()
        wait_until(lambda: all(response_arrived(s, buffers) for s in waiting), message="the rest answered")
        assert all(buffers[s].startswith(b"HTTP/1.1 200 ") for s in waiting)
    finally:
        for sock in socks:
            sock.close()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs resource.prlimit (Linux)")
def test_out_of_descriptors_is_logged_once_and_backed_off(serve):
    srv = serve(BASE_CONFIG + "[http]\nkeepalive_timeout = 60s\nheader_timeout = 60s\n")
    assert get_request(srv)[0] == 200
    pid = srv.proc.pid
    highest_fd = max(int(name) for name in os.listdir(f"/proc/{pid}/fd"))
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (highest_fd + 4, hard))
    request = b"GET /request HTTP/1.1\r\nHost: x\r\n\r\n"
    socks = [connect(srv) for _ in range(8)]
    try:
        for sock in socks:
            sock.sendall(request)
        srv.wait_for_log(r"accept failed: Too many open files")
        buffers: dict = {}
        wait_until(lambda: response_arrived(socks[0], buffers), message="the first connection answered")
        # While connections wait in the backlog the master must sleep, not spin on accept:
        # measure its CPU time across a request that keeps the worker busy for 0.5 s.
        before, started = cpu_seconds(pid), time.monotonic()
        buffers.pop(socks[0])
        socks[0].sendall(b"GET /sleep?0.5 HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(lambda: response_arrived(socks[0], buffers), message="the sleep answered")
        assert cpu_seconds(pid) - before < 0.5 * (time.monotonic() - started)

        def all_answered():
            for sock in socks:                # close answered ones: their descriptors free others
                if sock.fileno() >= 0 and response_arrived(sock, buffers):
                    sock.close()
            return all(sock.fileno() < 0 for sock in socks)
        wait_until(all_answered, timeout=20, message="every connection answered")
        assert all(data.startswith(b"HTTP/1.1 200 ") for data in buffers.values())
        assert len([line for line in srv.log.splitlines() if "accept failed" in line]) == 1
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        for sock in socks:
            sock.close()
