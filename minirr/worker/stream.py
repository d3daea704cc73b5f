"""A worker's streamed responses: a body sent in blocks, a frame for each, as it is made.

Owns: the frames of one response whose body is an iterable (or whose blocks a WSGI app
      gave write()): which frame each block becomes, when to look for the master's STOP,
      closing the body however it ends, and the frame that ends the response.
Never: touches a descriptor (the worker's FramePipe reads and writes: `send`,
       `stop_requested`), or decides what a body may be (messages.response_body does).

    worker._answer: response.body is bytes (most) ──────> one frame (not here)
                    anything else ─> ResponseStream.send_body(response)
                                      for each block: send() ─> frame, then a look for STOP
                                      close() the body
                                      end() or fail()
"""

from __future__ import annotations

import logging
import traceback
from typing import Callable, Optional

from ..errors import ClientDisconnected
from ..wire.frame import CODEC_JSON, ERROR, STREAM
from ..wire.messages import Response, body_block

log = logging.getLogger("minirr.worker")     # it runs in the worker: its lines are the worker's


class ResponseStream:
    """The frames of a response whose body comes in blocks (docs/external-workers.md, Streamed responses).

        first block   STREAM  [head_len] head‖block     status and headers go with it
        next blocks   STREAM  [0] block
        the end               [0] (empty)               no STREAM: the response is complete
        a failure     ERROR   "message"                 the client's answer is broken off

    Each block is one frame, sent as it is produced, never held back to be joined with
    the next (PEP 3333: a server must not delay a block). After each frame it looks,
    without waiting, for the master's STOP (the client left): from then on send() raises
    ClientDisconnected, the body is closed and the final frame goes out at once. A STOP
    reaches a body that is producing slowly at its next block.

    One exception: a first block as long as the response's own Content-Length is the
    whole body (a framework's response, Flask's or Django's, is such an iterable of one
    block). It goes out at once as one ordinary frame, as a list would; the body is still
    run to its end and closed, but nothing more is sent for it: more bytes are dropped,
    and a failure is only logged, since the client already has its whole answer.

    One per worker, made before its first request and reused for each response."""

    def __init__(self, channel, encode_head: Callable[[Response], bytes]) -> None:
        self.channel = channel
        self.encode_head = encode_head   # wire.heads.response_head_encoder()
        self.started = False             # a frame of the current response went out
        self.stopped = False             # the master said STOP for the current response
        self.complete = False            # ... and it was the whole response, in one frame
        self.surplus_bytes = 0           # ... and the body went on past its Content-Length

    def send(self, response: Response, block: bytes) -> None:
        """`block` as the next STREAM frame (the first also carries `response`'s status and
        headers; or it is the whole body, see above). Raises ClientDisconnected once the
        master has said STOP."""
        if self.stopped:
            raise ClientDisconnected("the client went away: the response was stopped")
        if self.complete:
            self.surplus_bytes += len(block)
            return
        if self.started:
            self.channel.send(CODEC_JSON, b"", (0,), block, STREAM)
        else:
            head = self.encode_head(response)
            if len(block) == declared_length(response):
                self.channel.send(CODEC_JSON, head, (len(head),), block)
                self.started = self.complete = True
                return
            self.channel.send(CODEC_JSON, head, (len(head),), block, STREAM)
            self.started = True
        if self.channel.stop_requested():
            self.stopped = True
            raise ClientDisconnected("the client went away: the master stopped the response")

    def send_body(self, response: Response) -> None:
        """Send `response`'s body block by block, close it, then end the response: the
        empty final frame, an ERROR frame if the body raised, or, if it produced nothing,
        one ordinary frame. The body's close() is called however it ends (PEP 3333)."""
        body = response.body
        try:
            failure = self._send_blocks(response, body)
        finally:
            failure = _close_body(body) or failure
        if failure is not None and not self.stopped:
            self.fail(failure)
        else:
            self.end(response)

    def _send_blocks(self, response: Response, body) -> Optional[Exception]:
        """-> None, or the exception the body raised (its traceback logged here)."""
        try:
            if isinstance(body, bytes):  # the rest of a body whose first blocks write() sent
                if body:
                    self.send(response, body)
                return None
            for item in body:
                block = item if type(item) is bytes else body_block(item)
                if block:
                    self.send(response, block)
        except ClientDisconnected:
            return None
        except Exception as exc:
            self.channel.leave_if_forked()
            log.error("request failed%s:\n%s", self.failed_when(), traceback.format_exc().rstrip())
            return exc
        return None

    def failed_when(self) -> str:
        """Words for a log line: at what point of the response the request failed."""
        if self.complete:
            return " after its whole answer was sent (the client has it; nothing more is sent)"
        return " while its response was streamed" if self.started else ""

    def end(self, response: Optional[Response] = None) -> None:
        """The frame that ends the response: empty and without STREAM after STREAM frames,
        or, if none went out, the whole (empty-bodied) response in one ordinary frame."""
        if self.complete:
            if self.surplus_bytes:
                log.error("the response body went on past its Content-Length: %d more bytes dropped",
                          self.surplus_bytes)
        elif self.started:
            self.channel.send(CODEC_JSON, b"", (0,))
        else:
            head = self.encode_head(response)
            self.channel.send(CODEC_JSON, head, (len(head),))
        self._reset()

    def fail(self, exc: BaseException) -> None:
        """A soft error: an ERROR frame. Before any STREAM frame the client gets 500; after
        some, its answer is broken off. Either way the worker carries on. (After a
        complete answer nothing is sent: the master expects nothing more.)"""
        if not self.complete:
            self.channel.send(ERROR, f"{type(exc).__name__}: {exc}".encode("utf-8", "replace"))
        self._reset()

    def _reset(self) -> None:
        self.started = self.stopped = self.complete = False
        self.surplus_bytes = 0


def declared_length(response: Response) -> int:
    """The response's own Content-Length, or -1 (none, or not a number)."""
    for name, value in response.headers:
        if len(name) == 14 and name.lower() == "content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return -1


def _close_body(body: object) -> Optional[Exception]:
    """Call the body's close(), if it has one (a generator does: its `finally` runs now).
    -> None, or the exception close() raised (its traceback logged here)."""
    close = getattr(body, "close", None)
    if close is None:
        return None
    try:
        close()
    except Exception as exc:
        log.error("closing the response body failed:\n%s", traceback.format_exc().rstrip())
        return exc
    return None
