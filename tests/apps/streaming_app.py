"""Streamed bodies for tests/test_streaming.py: the same routes as a native handler
(`streaming_app:handle`) and as a WSGI app (`streaming_app:wsgi_app`).

    /gate?file=P            "first\\n", then (once file P exists) "second\\n"
    /blocks?n=N[&length=L]  N blocks "block i\\n"; with `length`, that Content-Length (right or not)
    /endless?marker=P[&pause_ms=M][&size=S][&started=F&gate=G]
                            blocks of S bytes without end, M ms apart; its `finally` writes P
                            (with `gate`: it writes F, then waits for G before its first block)
    /closing?marker=P       endless too, from an iterable whose close() writes P
    /raise?after=N          N blocks, then RuntimeError("boom mid-stream")
    /list?n=N               N blocks in a list: a whole body
    /empty                  a generator that yields nothing (or only empty blocks)
    /pid                    the worker's pid (a whole body)
  WSGI only:
    /write-gate?file=P      write("first\\n"), then (once P exists) return ["second\\n"]

Each wait for a file is bounded: a test that fails early must not leave a worker waiting.
"""

from __future__ import annotations

import os
import time
from typing import Iterator, List, Tuple
from urllib.parse import parse_qs

from minirr import Response

GATE_TIMEOUT_S = 20.0


def wait_for_file(path: str) -> bool:
    deadline = time.monotonic() + GATE_TIMEOUT_S
    while not os.path.exists(path):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)          # the app waiting for its test, not the test waiting for time
    return True


def touch(path: str) -> None:
    with open(path, "w") as f:
        f.write(str(os.getpid()))


def gate(path: str) -> Iterator[bytes]:
    yield b"first\n"
    yield b"second\n" if wait_for_file(path) else b"the gate never opened\n"


def blocks(n: int) -> Iterator[bytes]:
    for i in range(n):
        yield f"block {i}\n".encode()


def endless(marker: str, pause_s: float, size: int, started: str = "", gate: str = "") -> Iterator[bytes]:
    block = b"x" * (size - 1) + b"\n"
    try:
        if gate:
            touch(started)
            wait_for_file(gate)
        while True:
            yield block
            if pause_s:
                time.sleep(pause_s)
    finally:
        touch(marker)


class Closing:
    """An endless iterable (not a generator) with a close() of its own."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __iter__(self) -> Iterator[bytes]:
        while True:
            yield b"closing\n"
            time.sleep(0.01)

    def close(self) -> None:
        touch(self.marker)


def failing(after: int) -> Iterator[bytes]:
    yield from blocks(after)
    raise RuntimeError("boom mid-stream")


def empty() -> Iterator[bytes]:
    yield b""
    return


def route(path: str, args: dict) -> Tuple[int, List[Tuple[str, str]], object]:
    """-> (status, headers, body) for both interfaces."""
    text = [("Content-Type", "text/plain")]
    if path == "/gate":
        return 200, text, gate(args["file"])
    if path == "/blocks":
        headers = text + ([("Content-Length", args["length"])] if "length" in args else [])
        return 200, headers, blocks(int(args.get("n", "3")))
    if path == "/endless":
        return 200, text, endless(args["marker"], int(args.get("pause_ms", "10")) / 1000, int(args.get("size", "64")),
                                  args.get("started", ""), args.get("gate", ""))
    if path == "/closing":
        return 200, text, Closing(args["marker"])
    if path == "/raise":
        return 200, text, failing(int(args.get("after", "2")))
    if path == "/list":
        return 200, text, list(blocks(int(args.get("n", "3"))))
    if path == "/empty":
        return 200, text, empty()
    if path == "/pid":
        return 200, text, [str(os.getpid()).encode()]
    return 404, text, [b"no such route\n"]


def handle(request):
    args = {key: values[0] for key, values in parse_qs(request.query).items()}
    status, headers, body = route(request.path, args)
    return Response(status, headers, body)


def wsgi_app(environ, start_response):
    args = {key: values[0] for key, values in parse_qs(environ["QUERY_STRING"]).items()}
    if environ["PATH_INFO"] == "/write-gate":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"first\n")
        return [b"second\n" if wait_for_file(args["file"]) else b"the gate never opened\n"]
    status, headers, body = route(environ["PATH_INFO"], args)
    start_response(f"{status} X", headers)
    return body
