"""Streamed responses end to end: a generator's blocks reach the client as they are made.

Real servers (the `serve` fixture), one worker each, serving tests/apps/streaming_app.py
as a native handler and as a WSGI app. Clients are raw sockets, so the test sees the
bytes and the framing (chunked, Content-Length, close-delimited) as they arrive. Waits
are polls with deadlines; an app that must wait for its test waits for a file the test
creates.

The worker side in-process (no master, frames on real pipes) is in test_worker_stream.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from serverproc import run_cli, wait_until
from wire import StreamClient, assert_answer_completed, chunked_body, dechunk, head_of

CONFIGS = {
    "minirr": "[server]\napp = streaming_app:handle\n",
    "wsgi": "[server]\napp = streaming_app:wsgi_app\ninterface = wsgi\n",
}
POOL = "[pool]\nnum_workers = 1\n"



@pytest.fixture(params=sorted(CONFIGS))
def srv(request, serve):
    return serve(CONFIGS[request.param] + POOL)


@pytest.fixture
def wsgi_srv(serve):
    return serve(CONFIGS["wsgi"] + POOL)


def wait_for_file(path: Path, what: str) -> str:
    return wait_until(lambda: path.exists() and path.read_text(), timeout=10, message=what)


def pid_of(srv) -> int:
    status, _, body = srv.request("GET", "/pid")
    assert status == 200, body
    return int(body)


BLOCKS_3 = b"block 0\nblock 1\nblock 2\n"


# ---- the first block goes out at once -------------------------------------------------------

def test_the_first_block_reaches_the_client_before_the_generator_ends(srv, tmp_path):
    gate = tmp_path / "open"
    with StreamClient(srv) as client:
        client.get(f"/gate?file={gate}")
        status, headers, start = client.read_until(head_of, what="the head")
        assert status == 200 and headers["transfer-encoding"] == "chunked" and "content-length" not in headers
        body, ended = client.read_until(lambda buf: chunked_body(buf, complete=False), what="the first block")
        assert (body, ended) == (b"first\n", False)       # the generator is waiting for `gate`
        gate.touch()
        body, _ = client.read_until(lambda buf: b"second" in buf and chunked_body(buf, complete=False),
                                    what="the second block")
        assert body == b"first\nsecond\n"


def test_a_block_given_to_write_reaches_the_client_before_the_app_returns(wsgi_srv, tmp_path):
    gate = tmp_path / "open"
    with StreamClient(wsgi_srv) as client:
        client.get(f"/write-gate?file={gate}")
        body, ended = client.read_until(lambda buf: chunked_body(buf, complete=False), what="the written block")
        assert (body, ended) == (b"first\n", False)       # the app has not returned yet
        gate.touch()
        client.read_until(lambda buf: b"second" in buf, what="the second block")


# ---- framing ---------------------------------------------------------------------------------

def test_chunked_answer_ends_and_the_connection_serves_the_next_request(srv):
    with StreamClient(srv) as client:
        client.get("/blocks?n=3")
        assert_answer_completed(srv, "/blocks?n=3")
        body, ended = client.read_until(chunked_body, what="the whole chunked body")
        assert body == BLOCKS_3 and ended
        _, headers, _ = head_of(client.buf)
        assert headers["transfer-encoding"] == "chunked" and headers.get("connection") != "close"
        client.buf = b""
        client.get("/pid")
        status, headers, start = client.read_until(head_of, what="the second answer")
        assert status == 200 and int(headers["content-length"]) > 0


def test_http10_answer_is_close_delimited(srv):
    with StreamClient(srv) as client:
        client.get("/blocks?n=3", protocol="HTTP/1.0")
        assert_answer_completed(srv, "/blocks?n=3")
        data = client.read_to_eof()
    status, headers, start = head_of(data)
    assert status == 200 and "transfer-encoding" not in headers and "content-length" not in headers
    assert data[start:] == BLOCKS_3


def test_head_gets_the_head_only_and_the_connection_goes_on(srv):
    with StreamClient(srv) as client:
        client.get("/blocks?n=3", method="HEAD")
        assert_answer_completed(srv, "/blocks?n=3")
        status, headers, start = client.read_until(head_of, what="the head")
        assert status == 200
        client.get("/pid")
        second = client.read_until(lambda buf: head_of(buf[start:]), what="the next answer")
        assert client.buf[start:start + 9] == b"HTTP/1.1 "   # no body bytes between the two heads
        assert second[0] == 200


def test_an_app_given_content_length_frames_the_answer(srv):
    with StreamClient(srv) as client:
        client.get(f"/blocks?n=3&length={len(BLOCKS_3)}")
        assert_answer_completed(srv, f"/blocks?n=3&length={len(BLOCKS_3)}")
        status, headers, start = client.read_until(head_of, what="the head")
        assert headers["content-length"] == str(len(BLOCKS_3)) and "transfer-encoding" not in headers
        client.read_until(lambda buf: len(buf) >= start + len(BLOCKS_3), what="the body")
        assert client.buf[start:] == BLOCKS_3
        client.get("/pid")                                  # the connection goes on
        client.read_until(lambda buf: head_of(buf[start + len(BLOCKS_3):]), what="the next answer")


def test_a_body_longer_than_its_content_length_closes_the_connection(srv):
    with StreamClient(srv) as client:
        client.get("/blocks?n=3&length=10")
        data = client.read_to_eof()
    status, headers, start = head_of(data)
    assert headers["content-length"] == "10"
    srv.wait_for_log(r"answer broken off .*longer than its Content-Length")


@pytest.mark.parametrize("length", [5, 10])            # the first block is longer; the second goes past it
def test_no_byte_past_its_content_length_reaches_the_client(srv, length):
    with StreamClient(srv) as client:
        client.get(f"/blocks?n=3&length={length}")
        data = client.read_to_eof()
    status, headers, start = head_of(data)
    assert headers["content-length"] == str(length)
    assert len(data) - start <= length, data[start:]


def test_a_first_block_as_long_as_its_content_length_is_the_whole_answer_and_the_rest_is_dropped(srv):
    """As a framework's one-block response is sent: one ordinary answer. The body goes
    on past its length here: the client still gets exactly its answer, the worker logs."""
    with StreamClient(srv) as client:
        client.get("/blocks?n=3&length=8")
        status, headers, start = client.read_until(head_of, what="the head")
        assert headers["content-length"] == "8" and "transfer-encoding" not in headers
        client.read_until(lambda buf: len(buf) >= start + 8, what="the body")
        client.get("/pid")                                  # the connection goes on
        second = client.read_until(lambda buf: head_of(buf[start + 8:]), what="the next answer")
        assert client.buf[start:start + 8] == b"block 0\n" and second[0] == 200
    srv.wait_for_log(r"went on past its Content-Length: 16 more bytes dropped")


def test_a_body_shorter_than_its_content_length_closes_the_connection(srv):
    with StreamClient(srv) as client:
        client.get("/blocks?n=3&length=100")
        assert_answer_completed(srv, "/blocks?n=3&length=100")
        data = client.read_to_eof()
    status, headers, start = head_of(data)
    assert headers["content-length"] == "100" and data[start:] == BLOCKS_3
    srv.wait_for_log(r"answer broken off .*shorter than its Content-Length")


def test_a_list_is_one_frame_answered_with_its_length(srv):
    status, headers, body = srv.request("GET", "/list?n=3")
    assert (status, body) == (200, BLOCKS_3)
    assert headers["content-length"] == str(len(BLOCKS_3)) and "transfer-encoding" not in headers


def test_an_iterable_that_yields_nothing_is_one_empty_frame(srv):
    status, headers, body = srv.request("GET", "/empty")
    assert (status, body, headers["content-length"]) == (200, b"", "0")
    assert "transfer-encoding" not in headers


# ---- the client leaves -----------------------------------------------------------------------

@pytest.mark.parametrize("route,marker_is", [("endless", "the generator's finally"), ("closing", "close()")])
def test_a_client_leaving_mid_stream_closes_the_body_and_frees_the_worker(srv, tmp_path, route, marker_is):
    pid = pid_of(srv)
    marker = tmp_path / "marker"
    with StreamClient(srv) as client:
        client.get(f"/{route}?marker={marker}")
        client.read_until(lambda buf: chunked_body(buf, complete=False), what="the first block")
        client.leave()
    assert int(wait_for_file(marker, marker_is)) == pid
    assert pid_of(srv) == pid                              # the same worker, free again


def test_a_client_leaving_an_endless_flood_frees_the_worker(srv, tmp_path):
    """No pause between blocks: the worker is blocked writing to its pipe (the master
    stops reading it while the client is backlogged) when the client leaves."""
    pid = pid_of(srv)
    marker = tmp_path / "marker"
    with StreamClient(srv) as client:
        client.get(f"/endless?marker={marker}&pause_ms=0&size=65536")
        client.read_until(lambda buf: len(buf) > 256 * 1024, what="a good part of the flood")
        client.leave()
    wait_for_file(marker, "the generator's finally")
    assert pid_of(srv) == pid


def test_a_client_gone_before_the_first_block_still_stops_the_stream(serve, tmp_path):
    srv = serve(CONFIGS["minirr"] + POOL + "destroy_timeout = 2s\n[rpc]\nlisten = unix:minirr.sock\n")
    started, gate, marker = tmp_path / "started", tmp_path / "gate", tmp_path / "marker"
    with StreamClient(srv) as client:
        client.get(f"/endless?marker={marker}&started={started}&gate={gate}")
        wait_for_file(started, "the request to reach the app")
        client.leave()
    # A round trip through the master's loop: the reset, readable before it was asked,
    # has been handled by the time the answer comes.
    assert run_cli("workers", "-c", str(srv.config_path)).returncode == 0
    gate.touch()                                            # now the body makes its first block
    wait_until(marker.exists, timeout=5, message="the body to be stopped")


# ---- the app fails mid-stream -----------------------------------------------------------------

def test_an_exception_mid_stream_breaks_the_answer_off_and_the_worker_goes_on(srv):
    pid = pid_of(srv)
    with StreamClient(srv) as client:
        client.get("/raise?after=2")
        data = client.read_to_eof()
    status, headers, start = head_of(data)
    body, ended, used = dechunk(data[start:])
    assert status == 200 and body == b"block 0\nblock 1\n"
    assert not ended and data[start + used:] == b""         # no last chunk: the client knows it is cut short
    srv.wait_for_log(r"\(pid \d+\).*request failed while its response was streamed")
    srv.wait_for_log(r'streaming_app\.py", line \d+, in failing')   # the traceback, relayed
    srv.wait_for_log(r"RuntimeError: boom mid-stream")
    assert pid_of(srv) == pid


def test_an_exception_before_the_first_block_is_a_500(srv):
    status, _, _ = srv.request("GET", "/raise?after=0")
    assert status == 500
    srv.wait_for_log(r"RuntimeError: boom mid-stream")

