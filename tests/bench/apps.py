"""The benchmark's applications: as small as an app can be, so the server is what is measured.

Owns: a hello app and a body echo/sink app, each as a WSGI callable (run by minirr with
`interface = wsgi` and by gunicorn, the same object for both) and as a minirr handler
(`interface = minirr`), to show what the WSGI adapter costs.
Never: imports anything outside the standard library, or does work a real app would
skip — no logging, no routing, no allocation that grows with the number of requests.

    minirr:   [server] app = apps:hello_wsgi     interface = wsgi
              [server] app = apps:hello_minirr   interface = minirr
    gunicorn: gunicorn --chdir tests/bench apps:hello_wsgi

Every response carries Content-Length, so no server has to fall back to chunked
encoding or to closing the connection to mark the end of the body.
"""

from __future__ import annotations

from typing import Callable, Iterable, List, Tuple

try:
    from minirr import Response
except ImportError:  # gunicorn's venv has no minirr; it only loads the WSGI apps
    Response = None

HELLO_BODY = b"Hello, world!\n"
_HELLO_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(HELLO_BODY)))]

# The body read by the echo and sink apps is capped: a benchmark sends at most a few MB,
# and a cap keeps a stray request from making a worker allocate without bound.
MAX_BODY_BYTES = 64 * 1024 * 1024

StartResponse = Callable[[str, List[Tuple[str, str]]], object]


# ---- WSGI (PEP 3333) ----------------------------------------------------------------

def hello_wsgi(environ: dict, start_response: StartResponse) -> Iterable[bytes]:
    """GET anything -> 200 `Hello, world!`."""
    start_response("200 OK", list(_HELLO_HEADERS))
    return [HELLO_BODY]


def echo_wsgi(environ: dict, start_response: StartResponse) -> Iterable[bytes]:
    """The request body, returned as the response body."""
    body = _read_wsgi_body(environ)
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))])
    return [body]


def sink_wsgi(environ: dict, start_response: StartResponse) -> Iterable[bytes]:
    """Reads the whole request body and answers only its length: a large upload's
    bytes cross the server once, not twice as with echo."""
    received = str(len(_read_wsgi_body(environ))).encode("ascii")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(received)))])
    return [received]


STREAM_BLOCK = b"s" * 65536


def stream_wsgi(environ: dict, start_response: StartResponse) -> Iterable[bytes]:
    """A generator of 64 KiB blocks, `?mb=N` MiB in all (default 200), no Content-Length:
    a download streamed as it is produced (chunked on HTTP/1.1)."""
    mebibytes = int(environ.get("QUERY_STRING", "").partition("mb=")[2] or 200)
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return (STREAM_BLOCK for _ in range(mebibytes * 16))


def big_wsgi(environ: dict, start_response: StartResponse) -> Iterable[bytes]:
    """One answer of `?mb=N` MiB (default 10) in one block with Content-Length: a worker
    sends it as one frame (tests/bench/slow_readers.py)."""
    mebibytes = int(environ.get("QUERY_STRING", "").partition("mb=")[2] or 10)
    body = b"b" * (mebibytes * 1024 * 1024)
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))])
    return [body]


def pause_stream_wsgi(environ: dict, start_response: StartResponse) -> Iterable[bytes]:
    """Two blocks a second apart: the first must reach the client at once (PEP 3333)."""
    import time
    start_response("200 OK", [("Content-Type", "text/plain")])

    def blocks():
        yield b"first\n"
        time.sleep(1.0)
        yield b"second\n"
    return blocks()


def _read_wsgi_body(environ: dict) -> bytes:
    """PEP 3333: read exactly CONTENT_LENGTH bytes; an absent or empty value means none."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length <= 0:
        return b""
    return environ["wsgi.input"].read(min(length, MAX_BODY_BYTES))


# ---- minirr handlers: Request -> Response -------------------------------------------

def hello_minirr(request):
    """The hello app as a native minirr handler (no WSGI environ built per request)."""
    return Response(200, _HELLO_HEADERS, HELLO_BODY)


def echo_minirr(request):
    """The echo app as a native minirr handler."""
    return Response(200, [("Content-Type", "application/octet-stream")], request.body)
