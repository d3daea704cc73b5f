"""Exercise 2, the starting point: minirr's worker loop, to change.

This is `minirr.worker.loop.serve` and `minirr.worker.loop._answer`, shortened (no forked-child
guard, a failed bootstrap not reported in one line). Copy it, make every response carry
`X-Served-By` and `X-Request-Count` (the TODO below), and check it:

    cp docs/exercises/starters/header_in_loop.py my_loop.py
    python docs/exercises/check_header_in_loop.py my_loop.py
"""

import json
import logging
import os
import traceback

from minirr.wire.frame import CODEC_JSON, CONTROL
from minirr.wire.heads import decode_request, response_head_encoder
from minirr.worker.stream import ResponseStream

log = logging.getLogger("your_loop")


def serve(channel, bootstrap):
    """Handshake, bootstrap, then answer request frames until stop or EOF."""
    if channel.receive() is None:                      # the handshake: {"pid": <the master's>}
        return 0
    handler = bootstrap()                              # the app's create_app(): once
    channel.send(CONTROL, json.dumps({"pid": os.getpid()}).encode())
    encode_head = response_head_encoder()
    stream = ResponseStream(channel, encode_head)
    while True:
        frame = channel.receive()
        if frame is None:
            return 0                                   # EOF: the master has gone
        if frame.flags & CONTROL:
            if json.loads(frame.payload).get("stop") is True:
                return 0
            continue
        if frame.stream:
            continue                                   # a STOP that crossed the end of its stream
        answer(channel, handler, encode_head, stream, frame)


def answer(channel, handler, encode_head, stream, frame):
    """One request frame -> the handler -> one response frame (or a stream of them)."""
    head_len = frame.options[0]
    try:
        request = decode_request(frame.payload[:head_len], bytes(frame.payload[head_len:]))
        response = handler(request)
    except Exception as exc:                           # a soft error: the client gets 500
        log.error("request failed:\n%s", traceback.format_exc().rstrip())
        stream.fail(exc)
        return
    # TODO: every response, whole or streamed, carries X-Served-By (this worker's pid) and
    # X-Request-Count (how many requests this worker has answered, this one included).
    if type(response.body) is bytes:                   # the whole answer in one frame
        head = encode_head(response)
        channel.send(CODEC_JSON, head, (len(head),), response.body)
        return
    stream.send_body(response)                         # a generator: a frame per block
