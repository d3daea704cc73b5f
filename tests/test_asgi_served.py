"""ASGI apps behind a real `python -m minirr serve` (the classic wire: today's master sends
each worker one request at a time): the scope as a client's request makes it, bodies in
and out, streams, failures, a client that leaves, and the lifespan as the bootstrap once
per worker, with its shutdown when the worker is told to stop.

tests/apps/asgi_testapp.py is the app; test_worker_asgi.py drives the same worker over
its pipes, without a master.
"""

from __future__ import annotations

import json
import re
import sys

import pytest

from serverproc import ServerProcess
from wire import StreamClient, assert_answer_completed, chunked_body, head_of, stop_module_server

CONFIG = "[server]\napp = asgi_testapp:app\n[pool]\nnum_workers = 1\n"
COMMAND = f"[server]\ncommand = {sys.executable} -m minirr.worker asgi_testapp:app --interface asgi\n[pool]\nnum_workers = 1\n"


@pytest.fixture(scope="module", params=["fork", "command"])
def srv(request, tmp_path_factory):
    text = CONFIG if request.param == "fork" else COMMAND
    server = ServerProcess.start(tmp_path_factory.mktemp(f"asgi-{request.param}"), text,
                                 overrides=["http.trusted_proxies=127.0.0.1"])
    yield server
    stop_module_server(server)


def scope_of(srv, path: str = "/scope", **kwargs) -> dict:
    status, _, body = srv.request("GET", path, **kwargs)
    assert status == 200, body
    return json.loads(body)


def test_the_scope_of_a_real_request(srv):
    scope = scope_of(srv, "/scope/caf%C3%A9?q=a%20b", headers={"X-Two": "1", "Accept": "text/plain"})
    assert scope["path"] == "/scope/café" and scope["raw_path"] == "/scope/caf%C3%A9"
    assert scope["query_string"] == "q=a%20b" and scope["http_version"] == "1.1" and scope["scheme"] == "http"
    assert scope["client"] == ["127.0.0.1", 0] and scope["server"] == [srv.host, srv.port]
    assert ["host", f"{srv.host}:{srv.port}"] in scope["headers"] and ["x-two", "1"] in scope["headers"]
    assert scope["first_receive"] == {"type": "http.request", "more_body": False, "length": 0}


def test_a_trusted_proxy_gives_the_client_and_the_scheme(srv):
    scope = scope_of(srv, headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"})
    assert scope["client"] == ["203.0.113.7", 0] and scope["scheme"] == "https"


def test_the_lifespan_state_is_the_workers(srv):
    pids = {scope_of(srv)["state"]["started_in"] for _ in range(3)}
    assert len(pids) == 1 and pids <= set(srv.workers())


def test_a_chunked_body_arrives_whole(srv):
    conn = srv.connection()
    try:
        conn.request("POST", "/echo", body=iter([b"ab", b"c" * 70000]), encode_chunked=True)
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b"ab" + b"c" * 70000
    finally:
        conn.close()


def test_a_stream_reaches_the_client_chunked(srv):
    status, headers, body = srv.request("GET", "/stream/s?n=3&size=4")
    assert status == 200 and headers["transfer-encoding"] == "chunked" and body == b"AAAABBBBCCCC"


def test_an_http_1_0_client_gets_a_stream_ended_by_the_close(srv):
    data = srv.raw(b"GET /stream/s?n=2&size=3 HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n\r\nAAABBB")


def test_a_head_request_gets_the_head_only(srv):
    status, headers, body = srv.request("HEAD", "/echo")
    assert status == 200 and body == b""


def test_a_content_length_filled_by_the_first_piece_is_a_whole_answer(srv):
    status, headers, body = srv.request("GET", "/length-then-more")
    assert status == 200 and headers["content-length"] == "5" and body == b"12345"


@pytest.mark.parametrize("target", ["/raise", "/returns-nothing", "/bad-status", "/bad-header"])
def test_a_failing_request_gets_500_and_the_worker_stays(srv, target):
    before = srv.workers()
    assert srv.request("GET", target)[0] == 500
    assert srv.request("GET", "/echo", body=b"x")[2] == b"x" and srv.workers() == before


def test_a_stream_that_fails_is_broken_off(srv):
    with StreamClient(srv) as client:
        client.get("/raise-mid-stream")
        data = client.read_to_eof()
    status, headers, start = head_of(data)
    assert status == 200 and data[start:] == b"4\r\nsome\r\n"      # no last chunk: the client knows
    assert_answer_completed(srv, "/raise-mid-stream")


def test_a_client_that_leaves_mid_stream_is_an_http_disconnect(srv):
    with StreamClient(srv) as client:
        client.get("/until-disconnect/left")
        client.read_until(lambda buf: chunked_body(buf, complete=False), what="the first piece")
    srv.wait_for_log(r"left got http\.disconnect")
    assert srv.request("GET", "/seen/left")[2] == b"http.disconnect"


def test_the_answer_goes_out_before_work_after_it_ends(srv):
    status, _, body = srv.request("GET", "/background/served")
    assert status == 200 and body == b"answered first"
    assert srv.request("GET", "/release/background-served")[0] == 200     # the same worker: it was free
    srv.wait_for_log("background done served")


# ---- the lifespan, once per worker ------------------------------------------------------------

def test_each_worker_starts_once_and_shuts_down_when_told(serve):
    srv = serve("[server]\napp = asgi_testapp:app\n[pool]\nnum_workers = 2\nmax_jobs = 3\n")
    served_by = set()
    for _ in range(10):                           # max_jobs: workers are recycled meanwhile, and say so
        scope = scope_of(srv)
        assert scope["state"]["started_in"] == scope["served_by"]    # its own lifespan's state
        served_by.add(scope["served_by"])
    srv.wait_for_log(r"lifespan shutdown in \d+")
    assert srv.stop() == 0
    shut = set(int(pid) for pid in re.findall(r"lifespan shutdown in (\d+)", srv.log))
    assert len(served_by) >= 3 and served_by <= shut


def test_a_failed_startup_is_a_failed_bootstrap_and_requests_get_503(serve):
    srv = serve("[server]\napp = asgi_testapp:startup_fails\n[pool]\nnum_workers = 1\n")
    srv.wait_for_log(r"minirr\.worker: bootstrap failed: the database at db:5432 refused the connection$")
    srv.wait_for_log(r"exited with status 3 before it was ready")
    assert srv.request("GET", "/")[0] == 503


def test_an_app_without_lifespan_is_served(serve):
    srv = serve("[server]\napp = asgi_testapp:no_lifespan\n[pool]\nnum_workers = 1\n")
    status, _, body = srv.request("GET", "/")
    assert status == 200 and body == b"{}"
    srv.wait_for_log("does not take part in the ASGI lifespan protocol")


def test_a_factory_of_an_asgi_app(serve):
    srv = serve("[server]\napp = asgi_testapp:create_app\nfactory = true\n[pool]\nnum_workers = 1\n")
    assert srv.request("GET", "/echo", body=b"made")[2] == b"made"
