"""The app docs/life-of-a-request.md follows: one route for each story it tells.

    GET /                 Hello, world!  (the life of one request)
    GET /pid              the worker's pid
    GET /crash            the worker dies in the middle of the request: the client gets 502
    GET /slow?s=N         sleeps N seconds (past exec_ttl, the client gets 504)
    GET /stream?n=N&pause=S
                          N blocks of text, S seconds apart, from a generator: streamed
    GET /big?mb=N         N MiB in blocks of 64 KiB, streamed; each MiB made is logged
                          (docs/exercises/4-backpressure.md)

`create_app` is the bootstrap: it runs once in each worker (see docs/bootstrap-once.md).
"""

from __future__ import annotations

import logging
import os
import time
from urllib.parse import parse_qs

from minirr import Request, Response

log = logging.getLogger("tour_app")


def create_app():
    """The bootstrap: once per worker, before its first request."""
    log.info("bootstrap done in worker pid %d", os.getpid())
    return handle


def handle(request: Request) -> Response:
    query = {name: values[-1] for name, values in parse_qs(request.query).items()}
    if request.path == "/pid":
        return Response(200, {"Content-Type": "text/plain"}, f"{os.getpid()}\n")
    if request.path == "/crash":
        os._exit(7)                     # no answer, no clean-up: as a segfault would
    if request.path == "/slow":
        time.sleep(float(query.get("s", "5")))
        return Response(200, {"Content-Type": "text/plain"}, "slept\n")
    if request.path == "/stream":
        return Response(200, {"Content-Type": "text/plain"},
                        blocks(int(query.get("n", "3")), float(query.get("pause", "0"))))
    if request.path == "/big":
        return Response(200, {"Content-Type": "application/octet-stream"}, big(int(query.get("mb", "32"))))
    return Response(200, {"Content-Type": "text/plain"}, "Hello, world!\n")


BLOCK = bytes(range(256)) * 256                   # 64 KiB


def big(mib: int):
    """`mib` MiB of BLOCK, a block at a time, saying so at each MiB it has made."""
    for i in range(mib * 16):
        yield BLOCK
        if i % 16 == 15:
            log.info("made %d MiB of %d", i // 16 + 1, mib)


def blocks(n: int, pause_s: float):
    """A generator body: each block leaves the worker as a frame of its own."""
    try:
        for i in range(n):
            if i and pause_s:
                time.sleep(pause_s)
            yield f"block {i}\n"
    finally:
        log.info("the stream ended after %d of %d blocks", i + 1 if n else 0, n)
