"""A real Flask app behind real minirr servers: every way a body arrives reaches request.*.

Werkzeug reads `wsgi.input` only as far as the environ says the body goes, so these tests
check what PEP 3333 leaves to the server: CONTENT_LENGTH, Transfer-Encoding and
`wsgi.input_terminated` must describe the de-chunked body the worker hands over.
Each test runs with forked workers and with external (`command`) workers.

Flask is a test tool, never a dependency of minirr: without it this file skips.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys

import pytest

pytest.importorskip("flask", reason="Flask is not installed: `pip install flask` to run the Flask tests "
                                     "(.ci/run installs it)")

from serverproc import ServerProcess  # noqa: E402
from wire import stop_module_server  # noqa: E402

APP = "flask_testapp:app"


def config(mode: str) -> str:
    if mode == "fork":
        server = f"app = {APP}\ninterface = wsgi\n"
    else:
        server = f"command = {sys.executable} -m minirr.worker {APP} --interface wsgi\n"
    return f"[server]\n{server}\n[pool]\nnum_workers = 1\n"


@pytest.fixture(scope="module", params=["fork", "command"])
def flask_server(request, tmp_path_factory):
    srv = ServerProcess.start(tmp_path_factory.mktemp(f"flask-{request.param}"), config(request.param))
    yield srv
    stop_module_server(srv)


def post(srv: ServerProcess, path: str, body, headers: dict, encode_chunked: bool = False) -> dict:
    conn = srv.connection()
    try:
        conn.request("POST", path, body=body, headers=headers, encode_chunked=encode_chunked)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    assert resp.status == 200, (resp.status, data[:500], srv.log[-2000:])
    return json.loads(data)


def test_chunked_body_reaches_request_data(flask_server):
    got = post(flask_server, "/data", iter([b"ab", b"c"]), {"Transfer-Encoding": "chunked"}, encode_chunked=True)
    assert got == {"length": 3, "body": "abc", "content_length": 3}


def test_chunked_form_reaches_request_form(flask_server):
    got = post(flask_server, "/form", iter([b"a=1&b=", b"two"]),
               {"Transfer-Encoding": "chunked", "Content-Type": "application/x-www-form-urlencoded"},
               encode_chunked=True)
    assert got == {"form": {"a": ["1"], "b": ["two"]}}


def test_urlencoded_form(flask_server):
    got = post(flask_server, "/form", b"a=1&a=2&name=caf%C3%A9",
               {"Content-Type": "application/x-www-form-urlencoded"})
    assert got == {"form": {"a": ["1", "2"], "name": ["café"]}}


def test_multipart_upload_reaches_request_files(flask_server):
    boundary = "minirr-test-boundary"
    body = (f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="title"\r\n\r\n'
            "a report\r\n"
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="upload"; filename="report.txt"\r\n'
            "Content-Type: text/plain\r\n\r\n"
            "line one\nline two\n\r\n"
            f"--{boundary}--\r\n").encode()
    got = post(flask_server, "/upload", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert got == {"files": {"upload": {"filename": "report.txt", "content": "line one\nline two\n"}},
                   "form": {"title": ["a report"]}}


def test_json_body_reaches_get_json(flask_server):
    got = post(flask_server, "/json", json.dumps({"n": 1, "s": "x"}).encode(), {"Content-Type": "application/json"})
    assert got == {"json": {"n": 1, "s": "x"}}


def test_expect_100_continue_then_the_body(flask_server):
    """The client waits for `100 Continue` before it sends the body, as curl does for large bodies."""
    with socket.create_connection((flask_server.host, flask_server.port), timeout=10) as sock:
        sock.sendall(b"POST /data HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n"
                     b"Connection: close\r\n\r\n")
        interim = sock.makefile("rb")
        assert interim.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert interim.readline() == b"\r\n"
        sock.sendall(b"hello")
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        assert resp.status == 200
        assert json.loads(resp.read()) == {"length": 5, "body": "hello", "content_length": 5}


def test_empty_body(flask_server):
    got = post(flask_server, "/data", b"", {})
    assert got == {"length": 0, "body": "", "content_length": 0}
