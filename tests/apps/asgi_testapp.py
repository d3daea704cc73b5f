"""ASGI applications for the async worker's tests, in plain asyncio (no framework).

test_worker_asgi.py runs them with `python -m minirr.worker asgi_testapp:app --interface
asgi` and plays the master over pipes; test_asgi_served.py serves them behind a real
`python -m minirr serve`. Nothing here waits on a clock: a request that must wait, waits
for another request (/wait/KEY until /release/KEY), so every interleaving is the test's.

`app`'s routes (its lifespan puts the worker's pid and a resource into `state`):

    /scope                  the scope as JSON (bytes as latin-1 text), and the first receive()
    /echo                   the request body back, in one piece
    /wait/KEY  /release/KEY the first answers once the second has come
    /stream/KEY?n=N&size=S  N pieces of S bytes; /progress/KEY: how many send() returned from
    /until-disconnect/KEY   one piece, then receive() until http.disconnect; /seen/KEY says so
    /background             answers, then goes on: prints "background done KEY" to stderr
    /log?msg=TEXT           prints TEXT to stderr, then answers
    /pid                    the worker's pid
    /raise /raise-after-start /raise-mid-stream /returns-nothing /returns-after-start
    /unfinished-stream /bad-status /bad-header /length-then-more   the ways an app goes wrong
    /fork                   forks; the child comes back into the worker's loop
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from urllib.parse import parse_qs

EVENTS: dict = {}
PROGRESS: dict = {}
SEEN: dict = {}


def event(key: str) -> asyncio.Event:
    if key not in EVENTS:
        EVENTS[key] = asyncio.Event()
    return EVENTS[key]


async def answer(send, body: bytes, status: int = 200, headers=()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain")] + list(headers)})
    await send({"type": "http.response.body", "body": body})


def text(value) -> object:
    """The scope in JSON: bytes as latin-1 text, tuples as lists."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, (list, tuple)):
        return [text(item) for item in value]
    if isinstance(value, dict):
        return {key: text(item) for key, item in value.items()}
    return value


async def lifespan(scope, receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            scope["state"]["started_in"] = os.getpid()
            scope["state"]["resource"] = {"opened": 1}
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            print(f"lifespan shutdown in {os.getpid()}", file=sys.stderr, flush=True)
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(scope, receive, send)
        return
    path = scope["path"]
    query = {key: values[0] for key, values in parse_qs(scope["query_string"].decode()).items()}
    parts = path.strip("/").split("/")
    route = ROUTES.get(parts[0])
    if route is None:
        await answer(send, b"no such route", 404)
        return
    await route(scope, receive, send, parts[1] if len(parts) > 1 else "", query)


async def show_scope(scope, receive, send, key, query) -> None:
    first = await receive()
    shown = {name: text(value) for name, value in scope.items() if name != "state"}
    shown["state"] = {"started_in": scope["state"].get("started_in")}
    shown["served_by"] = os.getpid()
    shown["first_receive"] = {"type": first["type"], "more_body": first["more_body"], "length": len(first["body"])}
    await answer(send, json.dumps(shown).encode(), headers=[(b"content-type", b"application/json")])


async def echo(scope, receive, send, key, query) -> None:
    await answer(send, (await receive())["body"])


async def wait(scope, receive, send, key, query) -> None:
    await event(key).wait()
    await answer(send, f"{key} released".encode())


async def release(scope, receive, send, key, query) -> None:
    event(key).set()
    await answer(send, f"released {key}".encode())


async def stream(scope, receive, send, key, query) -> None:
    pieces, size = int(query.get("n", "3")), int(query.get("size", "5"))
    PROGRESS[key] = 0
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    for number in range(pieces):
        await send({"type": "http.response.body", "body": bytes([65 + number % 26]) * size, "more_body": True})
        PROGRESS[key] = number + 1
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def progress(scope, receive, send, key, query) -> None:
    await answer(send, str(PROGRESS.get(key)).encode())


async def until_disconnect(scope, receive, send, key, query) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"first", "more_body": True})
    message = await receive()
    SEEN[key] = message["type"]
    print(f"{key} got {message['type']}", file=sys.stderr, flush=True)
    await send({"type": "http.response.body", "body": b"after it", "more_body": True})   # dropped, silently
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def seen(scope, receive, send, key, query) -> None:
    await answer(send, str(SEEN.get(key)).encode())


async def background(scope, receive, send, key, query) -> None:
    await answer(send, b"answered first")
    await event(f"background-{key}").wait()     # the answer is out; this request's coroutine goes on
    print(f"background done {key}", file=sys.stderr, flush=True)


async def log(scope, receive, send, key, query) -> None:
    print(query.get("msg", ""), file=sys.stderr, flush=True)
    await answer(send, b"logged")


async def raises(scope, receive, send, key, query) -> None:
    raise RuntimeError("raised before the answer")


async def raises_after_start(scope, receive, send, key, query) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    raise RuntimeError("raised after http.response.start")


async def raises_mid_stream(scope, receive, send, key, query) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"some", "more_body": True})
    raise RuntimeError("raised mid-stream")


async def returns_nothing(scope, receive, send, key, query) -> None:
    return


async def returns_after_start(scope, receive, send, key, query) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})


async def unfinished_stream(scope, receive, send, key, query) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"some", "more_body": True})


async def bad_status(scope, receive, send, key, query) -> None:
    await answer(send, b"", status=99)


async def bad_header(scope, receive, send, key, query) -> None:
    await answer(send, b"", headers=[(b"x-injected", b"a\r\nSet-Cookie: b")])


async def length_then_more(scope, receive, send, key, query) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": b"12345", "more_body": True})
    await send({"type": "http.response.body", "body": b"678", "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def pid(scope, receive, send, key, query) -> None:
    await answer(send, str(os.getpid()).encode())


async def fork(scope, receive, send, key, query) -> None:
    child = os.fork()
    if child == 0:
        return                      # the child comes back into the worker's loop: it must leave, answering nothing
    os.waitpid(child, 0)
    await answer(send, b"parent answered")


ROUTES = {
    "scope": show_scope, "echo": echo, "wait": wait, "release": release, "stream": stream, "progress": progress,
    "until-disconnect": until_disconnect, "seen": seen, "background": background, "log": log,
    "raise": raises, "raise-after-start": raises_after_start, "raise-mid-stream": raises_mid_stream,
    "returns-nothing": returns_nothing, "returns-after-start": returns_after_start,
    "unfinished-stream": unfinished_stream, "bad-status": bad_status, "bad-header": bad_header,
    "length-then-more": length_then_more, "fork": fork, "pid": pid,
}


# ---- apps whose lifespan goes another way -----------------------------------------------

async def startup_fails(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "the database at db:5432 refused the connection"})
        await receive()             # waits for more: the worker must not wait for it
        return
    await answer(send, b"never")


async def startup_raises(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        await receive()
        json.loads("{")             # an exception after taking lifespan.startup: a failed start
    await answer(send, b"never")


async def startup_exits(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        await receive()
        raise SystemExit("Vault at http://vault:8200: sealed")
    await answer(send, b"never")


async def no_lifespan(scope, receive, send) -> None:
    """Raises on any scope but http, as Django's ASGIHandler does."""
    if scope["type"] != "http":
        raise ValueError(f"this app only speaks http, not {scope['type']}")
    await answer(send, repr(scope["state"]).encode())


async def shutdown_fails(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.failed", "message": "could not flush the cache"})
        return
    await answer(send, b"ok")


def create_app():
    """A factory of an ASGI app (factory = true)."""
    return app


def create_wsgi_app():
    """A factory that returns a WSGI app: with interface = asgi, the bootstrap says so."""
    def wsgi_app(environ, start_response):
        start_response("200 OK", [])
        return [b"wsgi"]
    return wsgi_app
