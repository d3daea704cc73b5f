"""Applications the process tests serve. Each path exercises one behaviour of the server."""

import os
import sys
import time

from minirr import Response

BOOTED_AT = time.time()
GROWN = []                  # /grow keeps its allocations here, for max_worker_memory tests


def route(request):
    path = request.path
    if path == "/pid":
        return Response(200, {"Content-Type": "text/plain"}, str(os.getpid()))
    if path == "/echo":
        return Response(200, {"Content-Type": "application/octet-stream"}, request.body)
    if path == "/raise":
        raise RuntimeError("boom from the app")
    if path == "/crash":
        os._exit(7)
    if path == "/sleep":
        print(f"sleeping in {os.getpid()}", file=sys.stderr, flush=True)
        time.sleep(float(request.query or "1"))
        return Response(200, {}, "slept")
    if path == "/print":
        print("hello from stdout")
        print("hello from stderr", file=sys.stderr)
        return Response(200, {}, "printed")
    if path == "/grow":
        # Keep MB more resident memory in this worker (every page is written: real RSS).
        GROWN.append(b"\x01" * (int(request.query or "1") * 1024 * 1024))
        return Response(200, {}, f"{os.getpid()} holds {len(GROWN)} blocks")
    if path == "/fds":
        return Response(200, {}, " ".join(sorted(os.listdir("/proc/self/fd"), key=int)))
    if path == "/request":
        return Response(200, {"Content-Type": "text/plain"},
                        f"{request.method} {request.path} {request.query} {request.protocol} {request.uri} "
                        f"{request.remote_addr} {request.header('x-test')}")
    if path == "/bytes":
        return Response(200, {"Content-Type": "application/octet-stream"}, b"x" * int(request.query or "0"))
    if path == "/headers":
        return Response(200, [("X-Multi", "a"), ("X-Multi", "b"), ("Content-Type", "text/plain")], "h")
    return Response(200, {"Content-Type": "text/plain"}, "Hello, world!")


def create_app():
    return route


class App:
    def handle(self, request):
        return route(request)


def create_object_app():
    return App()


def failing_factory():
    raise RuntimeError("cannot bootstrap: the database is down")


def stdlib_failing_factory():
    import json
    return json.loads("{")          # raised inside the standard library, reported at this line


def exiting_factory():
    raise SystemExit("Vault at http://127.0.0.1:1: connection refused")


def wsgi_app(environ, start_response):
    body = f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def create_validated_wsgi_app():
    import wsgiref.validate
    return wsgiref.validate.validator(wsgi_app)
