"""Inside a worker process: load the app once, then answer request frames until told to stop.

Owns: the worker side of the wire (handshake, request loop, soft errors, streamed
      responses and the master's STOP), the bootstrap's failure as one log line, the
      worker's logging, and `python -m minirr.worker` (__main__.py calls `main`). Loading
      the application is load.py's.
Never: sees HTTP bytes or sockets; only frames on two descriptors and Request objects.

    master                                    worker
      |-- CONTROL|JSON {"pid": master} ------->|  bootstrap: import app, call factory
      |<------------- CONTROL {"pid": self} ---|  ready
      |-- JSON [head_len] head‖body ---------->|  handler(Request) -> Response
      |<------------- JSON [head_len] head‖body|
      |<------------- ERROR "message" ---------|  (the handler raised: client gets 500)
      |-- CONTROL|JSON {"stop": true} -------->|  exit 0

A body given as an iterable (a generator) is streamed (stream.py): each block leaves as a
frame of its own as soon as it is produced (docs/external-workers.md, Streamed responses):

      |<--- STREAM [head_len] head‖block 1 ----|  status and headers go with the first block
      |<--- STREAM [0] block 2 ----------------|  (between blocks: a look for STOP, no wait)
      |<------------- [0] (empty) -------------|  no STREAM: the response is complete
      |-- STOP (the client left) ------------->|  close the body, then the empty final frame

The same loop serves a forked worker (pipes created by the master) and an external one
started as a command (`python -m minirr.worker app:attr`, frames on stdin/stdout). An
ASGI application is handed to asyncloop.py after its import: one event loop, many
requests at once, its lifespan startup as the rest of the bootstrap.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import sys
import traceback
from typing import Callable, Optional

from ..wire import frame
from ..wire.frame import CODEC_JSON, CONTROL, PONG, STOP, FrameDecoder
from ..wire.heads import decode_request, response_head_encoder
from ..wire.messages import Response
from .load import (ASYNC_MAX_CONCURRENCY, INTERFACES, AppHandler, AppShapeError, ASGIApp, describe_failure,
                   load_handler)
from .stream import ResponseStream

log = logging.getLogger("minirr.worker")

EXIT_OK = 0
EXIT_BOOT_FAILED = 3          # like gunicorn's WORKER_BOOT_ERROR: the master backs off
READ_SIZE = 64 * 1024           # os.read allocates this much per call: keep it modest
LARGE_BODY_BYTES = 64 * 1024    # a response body this large is written on its own, not copied


class FramePipe:
    """Blocking frame I/O on a pair of descriptors (the worker may block; the master never).

    Made in the worker process, it remembers that process's pid: a process the app forks
    inherits the descriptors, and must never write a frame (its answer would reach
    another client). `send` from any other process ends that process instead."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.pid = os.getpid()
        self._decoder = FrameDecoder()
        self._pending: list = []
        self._poll = select.poll()          # for stop_requested(): a look at the pipe that never waits
        self._poll.register(read_fd, select.POLLIN)

    def receive(self) -> Optional[frame.Frame]:
        """The next frame, or None at EOF (the master has gone)."""
        decoder = self._decoder
        while not self._pending:
            view = decoder.payload_buffer()
            if view is not None:           # a large payload in progress: read straight into it
                received = os.readv(self.read_fd, [view])
                if not received:
                    return None
                self._pending.extend(decoder.payload_received(received))
                continue
            data = os.read(self.read_fd, READ_SIZE)
            if not data:
                return None
            self._pending.extend(decoder.feed(data))
        return self._pending.pop(0)

    def take_over(self) -> tuple:
        """-> (the decoder, the frames decoded and not yet received): for the async loop,
        which reads the same pipe from then on (a stop frame may already be waiting)."""
        pending, self._pending = self._pending, []
        return self._decoder, pending

    def leave_if_forked(self) -> None:
        """Called where the app's code may have forked: a child that has come back into
        minirr's code leaves at once (see leave_forked_child)."""
        if os.getpid() != self.pid:
            leave_forked_child(self.pid)

    def stop_requested(self) -> bool:
        """Without waiting: has the master sent STOP for the response under way (its
        client left), or closed the pipe? Whatever is waiting on the pipe is decoded; STOP
        and PONG frames are taken out, any other frame is kept, in order, for receive()."""
        if self._poll.poll(0):
            data = os.read(self.read_fd, READ_SIZE)
            if not data:
                return True                 # EOF: the master is gone, nobody reads the rest
            self._pending.extend(self._decoder.feed(data))
        if not self._pending:
            return False
        stop = any(item.stream & STOP for item in self._pending)
        self._pending = [item for item in self._pending if not item.stream & (STOP | PONG)]
        return stop

    def send(self, flags: int, payload: bytes, options=(), body: bytes = b"", stream: int = 0) -> None:
        """One frame whose payload is `payload` followed by `body`. The header always goes
        out in one write with what follows it; a large body is written from where it
        lies instead of being copied into the frame."""
        if os.getpid() != self.pid:
            leave_forked_child(self.pid)
        data = frame.encode_header(flags, len(payload) + len(body), options, stream) + payload
        if len(body) < LARGE_BODY_BYTES:
            _write_all(self.write_fd, data + body)
        else:
            _write_all(self.write_fd, data)
            _write_all(self.write_fd, body)


def leave_forked_child(worker_pid: int) -> None:
    """This process was forked by the app inside worker `worker_pid` and has come back
    into minirr's loop (it returned or raised instead of exiting): it must not answer
    or read the next request. It says so and exits at once."""
    print(f"minirr: process {os.getpid()}, forked by the app in worker pid {worker_pid}, returned into the "
          f"worker loop; it exits without answering (end forked children with os._exit)", file=sys.stderr,
          flush=True)
    os._exit(70)   # EX_SOFTWARE


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# ---- the loop ---------------------------------------------------------------------------

def serve(channel: FramePipe, bootstrap: Callable[[], AppHandler], print_traceback: bool = True) -> int:
    """Handshake, bootstrap, then answer requests until stop or EOF. Returns an exit status.

    A failed bootstrap is logged as one headline naming the exception and the app's
    file:line; the traceback follows it only with `print_traceback` (a master retrying
    the same failure asks for it the first time only). An ASGI app (an ASGIApp from the
    bootstrap) is served by asyncloop.py instead."""
    hello = channel.receive()
    if hello is None:
        return EXIT_OK
    try:
        handler = bootstrap()
    except (Exception, SystemExit) as exc:
        log_boot_failure(exc, print_traceback)
        return EXIT_BOOT_FAILED
    if isinstance(handler, ASGIApp):
        from .asyncloop import serve_asgi    # only ASGI workers pay for asyncio's import
        return serve_asgi(channel, handler.app, handler.max_concurrency, print_traceback)
    channel.send(CONTROL, json.dumps({"pid": os.getpid()}).encode())
    encode_head = response_head_encoder()
    stream = ResponseStream(channel, encode_head)
    attach = getattr(handler, "attach_stream", None)
    if attach is not None:
        attach(stream)                   # the WSGI adapter: write() sends each block at once through it
    while True:
        request_frame = channel.receive()
        if request_frame is None:
            return EXIT_OK
        if request_frame.flags & CONTROL:
            if is_stop(request_frame.payload):
                return EXIT_OK
            continue
        if request_frame.stream:
            continue                     # a STOP (or PONG) that crossed the end of its stream: it is over
        _answer(channel, handler, encode_head, stream, request_frame)


def log_boot_failure(exc: BaseException, print_traceback: bool) -> None:
    """The bootstrap failed: one headline, then (with `print_traceback`) the traceback.
    An app that knows why it cannot start says so in one line: sys.exit("Vault at ...: ...");
    an app wired up wrong (AppShapeError) is told which key to change, with no traceback."""
    if isinstance(exc, SystemExit):
        if isinstance(exc.code, str):
            log.error("bootstrap failed: %s", exc.code)
        else:
            log.error("bootstrap exited with status %s", exc.code)
        return
    if isinstance(exc, AppShapeError):
        log.error("bootstrap failed: %s", exc)
        return
    details = ""
    if print_traceback:
        details = "\n" + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
    log.error("bootstrap failed: %s%s", describe_failure(exc), details)


def is_stop(payload: bytes) -> bool:
    """A control frame's payload: is it the master's {"stop": true}?"""
    try:
        return json.loads(payload).get("stop") is True
    except (ValueError, AttributeError):
        return False


def _answer(channel: FramePipe, handler: AppHandler, encode_head: Callable[[Response], bytes], stream: ResponseStream,
            request_frame: frame.Frame) -> None:
    head_len = request_frame.options[0] if request_frame.options else len(request_frame.payload)
    payload = request_frame.payload
    try:
        # One copy of the body, into the bytes the app sees (the payload may be a bytearray).
        request = decode_request(payload[:head_len], bytes(memoryview(payload)[head_len:]))
        response = handler(request)
        if not isinstance(response, Response):
            raise TypeError(f"handler returned {type(response).__name__}, expected minirr.Response")
    except Exception as exc:
        channel.leave_if_forked()          # a child the handler forked, raising on its way out
        if stream.stopped:                 # its write() said the client left, and it let that through
            stream.end()
            return
        # A soft error: this request failed, the worker is fine and carries on.
        log.error("request failed%s:\n%s", stream.failed_when(), traceback.format_exc().rstrip())
        stream.fail(exc)
        return
    body = response.body
    if type(body) is bytes and not stream.started:    # the usual case: the whole answer in one frame
        head = encode_head(response)
        channel.send(CODEC_JSON, head, (len(head),), body)
        return
    stream.send_body(response)


class LevelPerLineFormatter(logging.Formatter):
    """`LEVEL name: message`, and every further line of a record (a traceback) starts with
    `LEVEL |`: the master reads the level off each line it relays, so a traceback logged
    at ERROR still shows under `[logs] level = warning`."""

    def format(self, record: logging.LogRecord) -> str:
        first, *rest = super().format(record).split("\n")
        return "\n".join([first] + [f"{record.levelname} | {line}" for line in rest])


def configure_worker_logging() -> None:
    """Lines on stderr, each starting with its level; the master adds the worker's pid."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LevelPerLineFormatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)


# ---- python -m minirr.worker ------------------------------------------------------------

def main(argv=None) -> int:
    """Run an app as an external worker: frames on stdin (in) and stdout (out).

    stdout is the frame channel, so the app's own print() output is moved to stderr
    before the app is imported: a stray print cannot corrupt the channel.
    """
    parser = argparse.ArgumentParser(prog="python -m minirr.worker",
                                     description="Serve a Python app as a minirr/RoadRunner worker over stdin/stdout.")
    parser.add_argument("app", help="module:attribute")
    parser.add_argument("--factory", action="store_true", help="call the attribute once to get the handler")
    parser.add_argument("--interface", choices=INTERFACES, default="auto",
                        help="what the app speaks: asgi, wsgi, minirr, or auto (told from its signature)")
    parser.add_argument("--max-concurrency", type=int, default=ASYNC_MAX_CONCURRENCY, metavar="N",
                        help=f"requests an ASGI app takes at once (default {ASYNC_MAX_CONCURRENCY})")
    parser.add_argument("--path", default=os.getcwd(), help="folder put first on sys.path (default: cwd)")
    args = parser.parse_args(argv)
    frames_in = os.dup(0)
    frames_out = os.dup(1)
    os.dup2(2, 1)                        # fd 1 now means stderr: print() goes to the log
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdout = sys.stderr
    configure_worker_logging()
    channel = FramePipe(frames_in, frames_out)
    concurrency = max(1, args.max_concurrency)
    return serve(channel, lambda: load_handler(args.app, args.factory, args.interface, args.path, concurrency))

