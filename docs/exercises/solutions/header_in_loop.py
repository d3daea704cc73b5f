"""Exercise 2, a reference solution: minirr's worker loop with two headers of its own.

Every response, whole or streamed, carries X-Served-By (this worker's pid) and
X-Request-Count (the requests this worker has answered, this one included).
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
    served = 0
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
        served += 1
        answer(channel, handler, encode_head, stream, frame, served)


def answer(channel, handler, encode_head, stream, frame, served):
    """One request frame -> the handler -> one response frame (or a stream of them)."""
    head_len = frame.options[0]
    try:
        request = decode_request(frame.payload[:head_len], bytes(frame.payload[head_len:]))
        response = handler(request)
    except Exception as exc:                           # a soft error: the client gets 500
        log.error("request failed:\n%s", traceback.format_exc().rstrip())
        stream.fail(exc)
        return
    # Here, before the two ways out: a whole body and a streamed one both get them.
    response.headers += [("X-Served-By", str(os.getpid())), ("X-Request-Count", str(served))]
    if type(response.body) is bytes:                   # the whole answer in one frame
        head = encode_head(response)
        channel.send(CODEC_JSON, head, (len(head),), response.body)
        return
    stream.send_body(response)                         # a generator: a frame per block
