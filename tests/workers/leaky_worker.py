"""A worker that writes stray text to stdout, its frame channel, as a careless `print()` or
PHP `echo` would. The master must log what leaked, kill it, and start a new one.

Run as `[server] command = python leaky_worker.py`. Written against the wire protocol with
minirr.wire.frame and minirr.wire.messages only: not `python -m minirr.worker`, which moves print()
output to stderr precisely so that this cannot happen.

Routes: /pid, /env?NAME, /leak (prints to stdout, then answers). If a file `leak-at-start`
exists in the working directory, the worker deletes it and prints before the handshake:
the first worker leaks, the next one starts cleanly.
"""

import json
import os
import sys

from minirr.wire.frame import CODEC_JSON, CONTROL
from minirr.wire.messages import Response
from minirr.wire.heads import decode_request, encode_response_head
from minirr.worker.loop import FramePipe

STRAY_TEXT = "debug: a stray line on stdout"


def leak(where: str) -> None:
    print(f"{STRAY_TEXT} {where}", flush=True)     # the bug this worker demonstrates


def answer(channel: FramePipe, request) -> None:
    if request.path == "/leak":
        leak("in a request")
    if request.path == "/env":
        value = os.environ.get(request.query)
        response = Response(200 if value is not None else 404, {}, value or "")
    else:
        response = Response(200, {}, str(os.getpid()))
    head = encode_response_head(response)
    channel.send(CODEC_JSON, head + response.body, (len(head),))


def main() -> int:
    channel = FramePipe(sys.stdin.fileno(), sys.stdout.fileno())
    if channel.receive() is None:
        return 0
    if os.path.exists("leak-at-start"):
        os.remove("leak-at-start")
        leak("before the handshake")
    channel.send(CONTROL, json.dumps({"pid": os.getpid()}).encode())
    while True:
        item = channel.receive()
        if item is None:
            return 0
        if item.flags & CONTROL:
            if json.loads(item.payload).get("stop") is True:
                return 0
            continue
        head_len = item.options[0]
        answer(channel, decode_request(item.payload[:head_len], item.payload[head_len:]))


if __name__ == "__main__":
    raise SystemExit(main())
