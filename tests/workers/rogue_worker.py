"""An external worker that breaks the wire protocol on purpose, one way per route, to prove
the master treats what a worker sends as untrusted (STYLE.md §10).

Run as `[server] command = python rogue_worker.py`. Written against the wire protocol
with minirr.wire.frame and minirr.wire.messages only. With ROGUE_HANDSHAKE=deep in the environment
it answers the handshake with a deeply nested JSON value instead of its pid.

Routes (anything else answers its pid; /id?X answers X):
    /double          two complete answers for one request, in one write
    /double-idle     one answer, then another a moment later, while no request is in flight
    /headers-list    "headers" is a JSON list      /headers-str     "headers" is a string
    /header-number   a header value is a number    /header-null     a header value is null
    /deep-head       a head nested 100000 deep     /status-103      a 1xx final status
    /huge-frame      a frame header announcing 2 GiB, then 1 MB of it, then nothing more
    /close-stdin     answers, then closes its request pipe and stays alive, reading nothing
    /ping-flood      starts a stream, then sends PING after PING and never reads a PONG
"""

import json
import os
import sys
import time

from minirr.wire.frame import CODEC_JSON, CONTROL, PING, STREAM, encode_header
from minirr.wire.messages import Response
from minirr.wire.heads import decode_request, encode_response_head
from minirr.worker.loop import FramePipe

DEEP = "[" * 100000 + "]" * 100000


def frame_with_head(head: bytes, body: bytes = b"") -> bytes:
    return encode_header(CODEC_JSON, len(head) + len(body), (len(head),)) + head + body


def answer_pid() -> bytes:
    return answer(str(os.getpid()))


def answer(text: str) -> bytes:
    response = Response(200, {}, text)
    return frame_with_head(encode_response_head(response), response.body)


ROGUE_HEADS = {
    "/headers-list": b'{"status":200,"headers":["X-A","1"]}',
    "/headers-str": b'{"status":200,"headers":"X-A: 1"}',
    "/header-number": b'{"status":200,"headers":{"X-A":[1]}}',
    "/header-null": b'{"status":200,"headers":{"X-A":null}}',
    "/deep-head": ('{"status":200,"headers":{"X-A":' + DEEP + "}}").encode(),
    "/status-103": b'{"status":103,"headers":{}}',
}


def linger_without_stdin() -> None:
    """Stay alive, reading nothing, until the master kills us (or has gone: then leave)."""
    master = os.getppid()
    for _ in range(600):
        if os.getppid() != master:
            break
        time.sleep(0.1)
    os._exit(0)


def main() -> int:
    pipe = FramePipe(sys.stdin.fileno(), sys.stdout.fileno())
    if pipe.receive() is None:
        return 0
    if os.environ.get("ROGUE_HANDSHAKE") == "deep":
        pipe.send(CONTROL, DEEP.encode())
    else:
        pipe.send(CONTROL, json.dumps({"pid": os.getpid()}).encode())
    out = os.fdopen(pipe.write_fd, "wb", buffering=0)
    while True:
        item = pipe.receive()
        if item is None:
            return 0
        if item.flags & CONTROL:
            if json.loads(item.payload).get("stop") is True:
                return 0
            continue
        head_len = item.options[0]
        request = decode_request(item.payload[:head_len], item.payload[head_len:])
        path = request.path
        if path == "/id":
            out.write(answer(request.query))
        elif path == "/close-stdin":
            out.write(answer_pid())
            os.close(pipe.read_fd)           # stdin: the request pipe's only reader
            linger_without_stdin()
        elif path == "/ping-flood":
            head = encode_response_head(Response(200, {}, b""))
            out.write(encode_header(CODEC_JSON, len(head) + 5, (len(head),), STREAM) + head + b"first")
            ping = encode_header(CODEC_JSON, 4, (0,), STREAM | PING) + b"ping"
            for _ in range(100000):          # 800 KB of PINGs: the pipe holds them; nothing is read
                out.write(ping)
            linger_without_stdin()
        elif path == "/double":
            out.write(answer_pid() + answer_pid())
        elif path == "/double-idle":
            out.write(answer_pid())
            time.sleep(0.3)                # the master has it as ready by now: then another
            out.write(answer_pid())
        elif path in ROGUE_HEADS:
            out.write(frame_with_head(ROGUE_HEADS[path], b"body"))
        elif path == "/huge-frame":
            head = b'{"status":200,"headers":{}}'
            out.write(encode_header(CODEC_JSON, 2 ** 31, (len(head),)) + head + b"x" * (1 << 20))
            time.sleep(3600)               # the master kills it (or the test ends it)
        else:
            out.write(answer_pid())


if __name__ == "__main__":
    raise SystemExit(main())
