"""Real ASGI frameworks, unchanged, behind a real minirr: FastAPI (a Pydantic body model, a
dependency, a background task, a StreamingResponse, a lifespan context that opens a
resource once per worker), Starlette (lifespan state, a stream stopped when its client
leaves) and Django's `get_asgi_application()`. `[server] interface` is left at auto: each
app is told to be ASGI from what it is.

The frameworks are test tools, never dependencies of minirr: each test skips, saying why,
when its framework is not installed (.ci/run installs them into its test venvs).
"""

from __future__ import annotations

import json
import re

import pytest

from serverproc import ServerProcess
from wire import StreamClient, chunked_body, stop_module_server


def needs(module: str, name: str) -> None:
    pytest.importorskip(module, reason=f"{name} is not installed: `pip install {name.lower()}` to run the {name} "
                                       f"tests (.ci/run installs it)")


def start(tmp_path_factory, app: str, workers: int = 1) -> ServerProcess:
    return ServerProcess.start(tmp_path_factory.mktemp(app.split(":")[0]),
                               f"[server]\napp = {app}\n[pool]\nnum_workers = {workers}\n")


# ---- FastAPI ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fastapi_srv(tmp_path_factory):
    needs("fastapi", "FastAPI")
    srv = start(tmp_path_factory, "fastapi_testapp:app")
    yield srv
    stop_module_server(srv)


def post_json(srv, path: str, payload) -> tuple:
    status, headers, body = srv.request("POST", path, body=json.dumps(payload),
                                        headers={"Content-Type": "application/json"})
    return status, json.loads(body)


def test_fastapi_a_body_model_and_a_dependency(fastapi_srv):
    status, first = post_json(fastapi_srv, "/items", {"name": "pen", "quantity": 4})
    assert status == 200 and first["name"] == "pen" and first["double"] == 8
    status, second = post_json(fastapi_srv, "/items", {"name": "ink", "quantity": 1})
    assert second["opened_in"] == first["opened_in"] and second["uses"] == first["uses"] + 1   # one resource


def test_fastapi_refuses_a_body_that_does_not_fit_the_model(fastapi_srv):
    status, answer = post_json(fastapi_srv, "/items", {"name": "pen", "quantity": "many"})
    assert status == 422 and answer["detail"][0]["loc"] == ["body", "quantity"]


def test_fastapi_a_background_task_runs_after_the_answer(fastapi_srv):
    status, headers, body = fastapi_srv.request("POST", "/notify?message=shipped")
    assert status == 200 and json.loads(body) == {"queued": "shipped"}
    fastapi_srv.wait_for_log("background task: shipped")


def test_fastapi_a_streaming_response(fastapi_srv):
    status, headers, body = fastapi_srv.request("GET", "/stream?n=4")
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    assert body == b"line 0\nline 1\nline 2\nline 3\n"


def test_fastapi_a_sync_endpoint_runs_in_a_thread(fastapi_srv):
    status, headers, body = fastapi_srv.request("GET", "/sync")
    assert status == 200 and json.loads(body) == {"in_a_thread": True}


def test_fastapi_the_resource_opens_once_per_worker_and_closes_when_it_stops(tmp_path_factory):
    needs("fastapi", "FastAPI")
    srv = start(tmp_path_factory, "fastapi_testapp:app", workers=2)
    try:
        pids = srv.wait_workers(2)
        srv.wait_for_log("resource opened in", count=2)
        for _ in range(4):
            assert post_json(srv, "/items", {"name": "x", "quantity": 1})[0] == 200
        assert srv.request("GET", "/openapi.json")[0] == 200
    finally:
        assert srv.stop() == 0
    opened = [int(pid) for pid in re.findall(r"resource opened in (\d+)", srv.log)]
    closed = [int(pid) for pid in re.findall(r"resource closed in (\d+) after \d+ uses", srv.log)]
    assert sorted(opened) == sorted(pids) == sorted(closed)


# ---- Starlette --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def starlette_srv(tmp_path_factory):
    needs("starlette", "Starlette")
    srv = start(tmp_path_factory, "starlette_testapp:app")
    yield srv
    stop_module_server(srv)


def test_starlette_json_and_lifespan_state(starlette_srv):
    status, answer = post_json(starlette_srv, "/echo", {"a": [1, 2]})
    assert status == 200 and answer["got"] == {"a": [1, 2]} and answer["started_in"] in starlette_srv.workers()
    assert starlette_srv.request("GET", "/hello/w%C3%B6rld")[2] == "hello wörld".encode()


def test_starlette_an_endless_stream_stops_when_its_client_leaves(starlette_srv):
    with StreamClient(starlette_srv) as client:
        client.get("/endless")
        client.read_until(lambda buf: chunked_body(buf, complete=False), what="the first pieces")
    starlette_srv.wait_for_log("the endless stream ended")      # its background task: after the stream
    assert starlette_srv.request("GET", "/hello/again")[2] == b"hello again"


# ---- Django -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def django_srv(tmp_path_factory):
    needs("django", "Django")
    srv = start(tmp_path_factory, "django_asgi:application")
    yield srv
    stop_module_server(srv)


def test_django_a_sync_view_and_an_async_view(django_srv):
    status, _, body = django_srv.request("GET", "/hello")
    assert status == 200 and body.startswith(b"hello from a sync view in ")
    assert django_srv.request("GET", "/async")[2] == b"hello from an async view"


def test_django_sees_the_request(django_srv):
    status, _, body = django_srv.request("POST", "/echo/thing?q=1", body=b"payload", headers={"X-Test": "yes"})
    assert status == 200 and json.loads(body) == {"method": "POST", "body": "payload", "path": "/echo/thing",
                                                  "name": "thing", "query": "1", "header": "yes"}


def test_django_a_streaming_response(django_srv):
    status, headers, body = django_srv.request("GET", "/stream")
    assert status == 200 and body == b"piece 0\npiece 1\npiece 2\n"


def test_django_a_missing_page_is_its_404(django_srv):
    assert django_srv.request("GET", "/nowhere")[0] == 404


def test_django_says_once_that_it_takes_no_part_in_the_lifespan(django_srv):
    django_srv.wait_for_log("does not take part in the ASGI lifespan protocol")
