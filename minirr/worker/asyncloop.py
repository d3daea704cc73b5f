"""An async worker: one asyncio event loop runs an ASGI application, many requests at once.

Owns: the worker's side of the wire for an ASGI app — its lifespan startup before the
      handshake answer (which asks for request ids), the requests in flight (by id on
      the multiplexed wire, one at a time on the classic one), STOP, each request's CREDIT
      window, the master's stop frame and the lifespan shutdown after it; reading the
      request pipe and writing the response pipe without blocking the loop; the exit status.
Never: speaks ASGI itself (asgi.py makes scope, receive and send), sees HTTP bytes, or
       waits on a pipe: only the event loop waits, and a slow master makes send() wait.

    master ─ request pipe ──> add_reader: FrameDecoder ──> _on_frame (multiplex.classify)
                                request ──> a task: HTTPCycle.run(app) ─┐
                                STOP    ──> the cycle: client_left()     │ send()
                                CREDIT  ──> the request's Frames.credit  │
                                stop    ──> finish the requests, then    │
                                            lifespan.shutdown, exit 0    v
    master <─ response pipe ── Outbox: whole frames queued in order, written as the pipe
                               takes them (add_writer); send() waits while more than
                               OUTBOX_HIGH_WATER_BYTES wait, and (with ids) while the
                               request's window is spent

The wire (docs/external-workers.md, Many requests at once) is chosen by the master: the
handshake answer offers ids; a master that takes them sends every frame with the id as
its second option; one that does not (RoadRunner's, minirr's today) sends one request at a
time with one option, and gets the same frames a sync worker sends, byte for byte.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import deque
from itertools import islice
from typing import Deque, List, Optional, Set

from ..errors import FrameError
from ..wire import frame, multiplex, websocket as wire_websocket
from ..wire.frame import CODEC_JSON, CONTROL, ERROR, STREAM, Frame, FrameDecoder
from ..wire.heads import decode_request, response_head_encoder
from ..wire.multiplex import Kind, RequestTable, Window
from .asgi import HTTPCycle, Lifespan, LifespanFailed
from .websocket import WebSocketCycle, WebSocketFrames
from .loop import (EXIT_BOOT_FAILED, EXIT_OK, READ_SIZE, FramePipe, is_stop, leave_forked_child,
                   log_boot_failure)

log = logging.getLogger("minirr.worker")

EXIT_BROKEN_CHANNEL = 1            # the master sent something this wire does not allow
OUTBOX_HIGH_WATER_BYTES = 256 * 1024   # send() waits while more than this waits for the pipe
READS_PER_WAKE = 16                # then the loop runs the app's coroutines before reading on
CANCELLED_WITHIN_S = 1.0           # at exit, coroutines still running get this long to end when cancelled
IOVECS_PER_WRITE = 64              # well under IOV_MAX (1024 on Linux)


def serve_asgi(pipe: FramePipe, app, max_concurrency: int, print_traceback: bool = True) -> int:
    """Run `app` (ASGI 3) in a new event loop until the master says stop or goes away.
    Called by loop.serve once the master's handshake is in and the app is loaded."""
    return AsyncWorker(pipe, app, max_concurrency, print_traceback).run()


async def _cancel_the_rest() -> None:
    """Whatever still runs ends with the worker: requests in flight when the master went
    away or broke the channel, coroutines the app started on its own (fire and forget),
    the lifespan's. Each is cancelled and given a moment to unwind (so that none is
    destroyed pending); one that will not end is left to the process's exit."""
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in others:
        task.cancel()
    if others:
        await asyncio.wait(others, timeout=CANCELLED_WITHIN_S)


class Outbox:
    """The response pipe, non-blocking: whole frames queued in the order they are made,
    written as the pipe takes them. Frames of many requests interleave, never their bytes.

    Made in the worker process, it remembers its pid: a child the app forked must never
    write a frame (its bytes would land in another request's answer)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, worker_pid: int, on_gone) -> None:
        self.loop = loop
        self.fd = fd
        self.worker_pid = worker_pid
        self.queue: Deque[memoryview] = deque()
        self.buffered = 0                # bytes queued, not yet written
        self.closed = False              # the master closed the pipe: nothing more is written
        self._writing = False            # add_writer is on
        self._waiters: List[asyncio.Future] = []
        self._on_gone = on_gone

    def put(self, data: bytes, body=b"") -> None:
        """One frame: its header and payload, and a body written from where it lies."""
        if os.getpid() != self.worker_pid:
            leave_forked_child(self.worker_pid)
        if self.closed:
            return
        for part in (data, body):
            if part:
                self.queue.append(memoryview(part))
                self.buffered += len(part)
        if not self._writing:
            self._on_writable()          # the usual case: the pipe takes it at once

    def close(self) -> None:
        """Nothing more is written (what is queued is dropped)."""
        self.closed = True
        self.queue.clear()
        self.buffered = 0
        if self._writing:
            self.loop.remove_writer(self.fd)
            self._writing = False
        self._wake()

    def _on_writable(self) -> None:
        try:
            written = os.writev(self.fd, list(islice(self.queue, IOVECS_PER_WRITE)))
        except BlockingIOError:
            written = 0
        except (BrokenPipeError, ConnectionResetError):
            self.close()
            self._on_gone()
            return
        self._consume(written)
        if self.queue and not self._writing:
            self.loop.add_writer(self.fd, self._on_writable)
            self._writing = True
        elif not self.queue and self._writing:
            self.loop.remove_writer(self.fd)
            self._writing = False
        if self.buffered <= OUTBOX_HIGH_WATER_BYTES:
            self._wake()

    def _consume(self, written: int) -> None:
        self.buffered -= written
        queue = self.queue
        while written:
            first = queue[0]
            if written >= len(first):
                written -= len(first)
                queue.popleft()
            else:
                queue[0] = first[written:]
                written = 0

    async def drain(self, high_water: int = OUTBOX_HIGH_WATER_BYTES) -> None:
        """Wait until at most `high_water` bytes are queued (or the pipe is gone)."""
        while self.buffered > high_water and not self.closed:
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            await waiter

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class Frames:
    """One request's frames (the asgi.RequestFrames role): its options, `[head_len]` or
    `[head_len, id]`; on the multiplexed wire its CREDIT window; and its one final frame,
    after which the id is free again."""

    def __init__(self, worker: "AsyncWorker", request_id: int) -> None:
        self.worker = worker
        self.request_id = request_id
        self.window: Optional[Window] = Window() if request_id else None
        self.cycle: Optional[HTTPCycle] = None
        self.ended = False               # the final frame is out
        self._credited = asyncio.Event()

    def whole(self, head: bytes, body: bytes) -> None:
        self._final(CODEC_JSON, head, multiplex.options(len(head), self.request_id), body)

    async def piece(self, head: bytes, body: bytes) -> None:
        """STREAM frames for `body` (the first carries `head`). With ids, as much as the
        window has room for at a time: a piece larger than what is left waits for CREDIT,
        and one larger than the window goes out in window-sized frames."""
        outbox = self.worker.outbox
        rest = memoryview(body)
        while rest and not self.ended:
            size = len(rest)
            if self.window is not None:
                size = await self._room(size)
                if self.ended:
                    return                   # the client left while it waited
                self.window.spend(size)
            options = multiplex.options(len(head), self.request_id)
            outbox.put(frame.encode_header(CODEC_JSON, len(head) + size, options, STREAM) + head, rest[:size])
            head = b""
            rest = rest[size:]
            await outbox.drain()

    def end(self) -> None:
        self._final(CODEC_JSON, b"", multiplex.options(0, self.request_id))

    def fail(self, message: str) -> None:
        # the classic wire's ERROR has no options (as a sync worker sends it); with ids, [0, id]
        options = (0, self.request_id) if self.request_id else ()
        self._final(ERROR, message.encode("utf-8", "replace"), options)

    def credit(self, nbytes: int) -> None:
        self.window.credit(nbytes)           # FrameError if the master gives back more than was sent
        self._credited.set()

    def left(self) -> None:
        """STOP: the client left (a request whose cycle never began is ended here)."""
        if self.cycle is not None:
            self.cycle.client_left()
        else:
            self.end()

    async def _room(self, wanted: int) -> int:
        while self.window.room == 0 and not self.ended:
            self._credited.clear()
            await self._credited.wait()
        return min(wanted, self.window.room)

    def _final(self, flags: int, payload: bytes, options: tuple, body: bytes = b"") -> None:
        if self.ended:
            return
        self.ended = True
        self._credited.set()                 # a piece waiting for room gives up
        header = frame.encode_header(flags, len(payload) + len(body), options)
        self.worker.outbox.put(header + payload, body)
        self.worker.request_ended(self)


class AsyncWorker:
    """The worker process's life with an ASGI app: startup, serve, stop (see the module docstring)."""

    def __init__(self, pipe: FramePipe, app, max_concurrency: int, print_traceback: bool) -> None:
        self.pipe = pipe
        self.app = app
        self.max_concurrency = max_concurrency
        self.print_traceback = print_traceback
        self.multiplexed: Optional[bool] = None     # decided by the master's first request frame
        self.table: RequestTable[Frames] = RequestTable(max_concurrency)
        self.current: Optional[Frames] = None       # the classic wire: its one request in flight
        self.tasks: Set[asyncio.Future] = set()     # the app's coroutines, one per request
        self.stopping = False
        self.encode_head = response_head_encoder()
        self.decoder: Optional[FrameDecoder] = None
        self._handlers = {Kind.REQUEST: self._on_request, Kind.STOP: self._on_stop,
                          Kind.CREDIT: self._on_credit, Kind.PONG: lambda item, incoming: None,
                          Kind.WEBSOCKET: self._on_websocket}

    def run(self) -> int:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            return loop.run_until_complete(self._main(loop))
        finally:
            loop.run_until_complete(_cancel_the_rest())
            asyncio.set_event_loop(None)
            loop.close()

    async def _main(self, loop: asyncio.AbstractEventLoop) -> int:
        self.loop = loop
        self.lifespan = Lifespan(self.app)
        try:
            await self.lifespan.startup()       # the rest of the bootstrap: timed by the master
        except LifespanFailed as failed:
            self._log_startup_failure(failed)
            return EXIT_BOOT_FAILED
        self.finished: asyncio.Future = loop.create_future()   # -> (exit status, graceful)
        os.set_blocking(self.pipe.read_fd, False)
        os.set_blocking(self.pipe.write_fd, False)
        self.outbox = Outbox(loop, self.pipe.write_fd, self.pipe.pid, lambda: self._finish(EXIT_OK))
        self.decoder, waiting = self.pipe.take_over()
        hello = {"pid": os.getpid(), multiplex.IDS_KEY: self.max_concurrency, wire_websocket.OFFER_KEY: 1}
        self.outbox.put(frame.encode(CONTROL, json.dumps(hello).encode()))
        self._on_frames(waiting)
        loop.add_reader(self.pipe.read_fd, self._on_readable)
        status, graceful = await self.finished
        loop.remove_reader(self.pipe.read_fd)
        if graceful:
            await self.lifespan.shutdown()
            await self.outbox.drain(0)
        return status

    def _log_startup_failure(self, failed: LifespanFailed) -> None:
        if failed.cause is not None:
            log_boot_failure(failed.cause, self.print_traceback)
            return
        lines = [line for line in failed.message.strip().splitlines() if line.strip()]
        if not lines:
            log.error("bootstrap failed: the application sent lifespan.startup.failed without a message")
            return
        details = "\n" + "\n".join(lines[:-1]) if self.print_traceback and len(lines) > 1 else ""
        log.error("bootstrap failed: %s%s", lines[-1].strip(), details)

    def _finish(self, status: int, graceful: bool = False) -> None:
        """The worker ends: gracefully (after the stop frame: the lifespan shutdown comes
        next, and what is queued is still written), or at once, writing nothing more (the
        master has gone, or broke the channel and will kill this worker anyway)."""
        if not graceful:
            self.outbox.close()
        if not self.finished.done():
            self.finished.set_result((status, graceful))

    # ---- the request pipe --------------------------------------------------------------
    def _on_readable(self) -> None:
        if os.getpid() != self.pipe.pid:
            leave_forked_child(self.pipe.pid)    # a forked child must not take the master's frames
        try:
            for _ in range(READS_PER_WAKE):
                items = self._read()
                if items is None:
                    self._finish(EXIT_OK)        # EOF: the master is gone; nobody reads answers
                    return
                self._on_frames(items)
                if self.finished.done():
                    return
        except BlockingIOError:
            return

    def _read(self) -> Optional[list]:
        """Frames completed by one read (None at EOF). A large request body is read straight
        into its frame's buffer (FrameDecoder's GATHER mode: the worker trusts its master)."""
        view = self.decoder.payload_buffer()
        if view is not None:
            received = os.readv(self.pipe.read_fd, [view])
            return self.decoder.payload_received(received) if received else None
        data = os.read(self.pipe.read_fd, READ_SIZE)
        return self.decoder.feed(data) if data else None

    def _on_frames(self, items: list) -> None:
        try:
            for item in items:
                if not self.finished.done():
                    self._on_frame(item)
        except FrameError as exc:
            log.error("the master broke the frame channel: %s; the worker exits", exc)
            self._finish(EXIT_BROKEN_CHANNEL)

    def _on_frame(self, item: Frame) -> None:
        if item.flags & CONTROL:
            if is_stop(item.payload):
                self.stopping = True
                self._finish_if_stopped()
            return
        if self.multiplexed is None:
            self.multiplexed = multiplex.is_multiplexed(item)
        incoming = multiplex.classify(item, self.multiplexed)
        self._handlers[incoming.kind](item, incoming)

    def _on_request(self, item: Frame, incoming: multiplex.Incoming) -> None:
        if self.stopping:
            raise FrameError("a request after the stop frame")
        frames = Frames(self, incoming.request_id)
        if self.multiplexed:
            self.table.begin(incoming.request_id, frames)
        elif self.current is not None:
            raise FrameError("a second request while one is in flight: the classic wire carries one at a time")
        else:
            self.current = frames
        head_len = item.options[0] if item.options else len(item.payload)
        payload = item.payload
        try:
            # one copy of the body, into the bytes the app sees (the payload may be a bytearray)
            request = decode_request(bytes(payload[:head_len]), bytes(memoryview(payload)[head_len:]))
        except Exception as exc:             # a head that is not what a master sends: this request fails
            log.error("a request head that does not decode: %s: %s", type(exc).__name__, exc)
            frames.fail(f"{type(exc).__name__}: {exc}")
            return
        frames.cycle = HTTPCycle(request, self.lifespan.state, frames, self.encode_head)
        self._start(frames.cycle)

    def _start(self, cycle) -> None:
        task = self.loop.create_task(self._serve(cycle))
        self.tasks.add(task)
        task.add_done_callback(self._on_task_done)

    def _on_websocket(self, item: Frame, incoming: multiplex.Incoming) -> None:
        """A WebSocket event (wire/websocket.py): a new connection, or one for a connection in flight."""
        if incoming.value != wire_websocket.CONNECT:
            frames = self._in_flight(incoming.request_id, "a WebSocket event")
            if frames is None:
                return                       # it crossed the connection's final frame
            if not isinstance(frames, WebSocketFrames):
                raise FrameError(f"a WebSocket event for request id {incoming.request_id}, which is HTTP")
            frames.deliver(incoming.value, item.payload)
            return
        if self.stopping:
            raise FrameError("a WebSocket after the stop frame")
        frames = WebSocketFrames(self, incoming.request_id)
        self.table.begin(incoming.request_id, frames)
        try:
            request = decode_request(bytes(item.payload), b"")
        except Exception as exc:             # a head that is not what a master sends: this one fails
            log.error("a WebSocket head that does not decode: %s: %s", type(exc).__name__, exc)
            frames.fail(f"{type(exc).__name__}: {exc}")
            return
        frames.cycle = WebSocketCycle(request, self.lifespan.state, frames)
        self._start(frames.cycle)

    def _on_stop(self, item: Frame, incoming: multiplex.Incoming) -> None:
        frames = self._in_flight(incoming.request_id, "STOP")
        if frames is not None:
            frames.left()

    def _on_credit(self, item: Frame, incoming: multiplex.Incoming) -> None:
        frames = self._in_flight(incoming.request_id, "CREDIT")
        if frames is not None:
            frames.credit(incoming.value)

    def _in_flight(self, request_id: int, what: str) -> Optional[Frames]:
        """The request a STOP or CREDIT is for; None if it crossed that request's final frame."""
        if self.multiplexed:
            return self.table.find(request_id, what)
        return self.current

    # ---- requests ------------------------------------------------------------------------
    async def _serve(self, cycle: HTTPCycle) -> None:
        try:
            await cycle.run(self._call_app)
        except SystemExit as exc:            # as in a sync worker: the process exits with it
            log.error("the application called sys.exit(%r) in request %s; the worker exits", exc.code, cycle.label)
            self._finish(exc.code if isinstance(exc.code, int) else 1)

    async def _call_app(self, scope: dict, receive, send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            self.pipe.leave_if_forked()      # a child the app forked, come back into the loop, leaves

    def request_ended(self, frames: Frames) -> None:
        """A request's final frame is out: its id (or the classic wire) is free."""
        if self.multiplexed:
            self.table.end(frames.request_id)
        elif self.current is frames:
            self.current = None
        self._finish_if_stopped()

    def _on_task_done(self, task: asyncio.Future) -> None:
        self.tasks.discard(task)
        self._finish_if_stopped()

    def _finish_if_stopped(self) -> None:
        """After the stop frame, the worker ends once every request has ended and the app's
        coroutine for each has returned (a background task after the answer included)."""
        if self.stopping and not self.tasks and not self.table.in_flight and self.current is None:
            self._finish(EXIT_OK, graceful=True)
