"""A job's answer as the worker sends it: frames in, calls to the frontend out.

Owns: reading a worker's response frames for the job it works on — the usual answer in
      one frame; a stream of frames (STREAM, with PING answered by PONG); a frame too
      large to hold, its head collected and its body passed on in parts — and turning
      them into `front.answer`, or `front.begin`, `part` ... `end`, or `abort`;
      backpressure (the worker's pipe is not read while its client is backlogged); what
      happens when the client leaves mid-answer (STOP, then what follows is dropped).
Never: starts, stops or kills a worker, or decides its fate: when an answer ends it goes
       back to the backend (`release`), and a broken answer too (`on_broken_channel`).

    one frame, no STREAM ──────────────────────────> front.answer(job, head, body)
    frame with STREAM ──> front.begin(head, body) ──> part ... ──(frame without STREAM)──> front.end
    FrameStart (large) ──> head collected ──> front.begin(head, Content-Length) ──> FramePart ...
    client backlogged ──> channel.pause_reading(); conn.wait_for_drain() ──> front calls resume()

The wire is RoadRunner's (docs/external-workers.md, What a worker must do, and Streamed responses): the first frame's head gives
status and headers; later pieces of a stream repeat it or carry none.
"""

from __future__ import annotations

import logging

from ..wire import frame
from .channel import printable
from ..wire.frame import ERROR, PING, PONG, STOP, STREAM, Frame, FrameStart
from .jobs import Job, Outcome, Reply
from .pool import Pool, Worker
from ..http.responses import ResponseHeads

log = logging.getLogger("minirr")

MAX_HEAD_BYTES = frame.LARGE_PAYLOAD_BYTES   # a response frame's JSON head may be at most this long
PONG_FRAME = frame.encode(0, b"", (), PONG)
STOP_STREAM_FRAME = frame.encode(0, b"", (), STOP)


class Replies:
    """Reads the answers of working workers. `backend` gets them back when an answer ends."""

    def __init__(self, loop, backend, pool: Pool, jobs, front, destroy_timeout_s: float) -> None:
        self.loop = loop
        self.backend = backend
        self.pool = pool
        self.jobs = jobs
        self.front = front
        self.destroy_timeout_s = destroy_timeout_s
        self.heads = ResponseHeads()

    def on_large(self, worker: Worker, job: Job, item, now: float, more: bool) -> None:
        """A FrameStart or FramePart of a frame too large to hold; `more`: others follow it
        in this read."""
        if type(item) is FrameStart:
            self._on_large_start(worker, job, item)
        else:
            self._on_large_part(worker, job, item, now, more)

    def on_frame(self, worker: Worker, job: Job, item: Frame, now: float, more: bool) -> None:
        """A whole response frame: the answer (the usual case), or one piece of a stream."""
        streams = item.stream & STREAM
        if streams:
            self._reply(job).stream_frames = True
            if job.cancelled:                  # the client left before we knew it streams
                self._stop_stream(worker, job, now)
        if item.stream & PING:
            worker.channel.write(PONG_FRAME)   # docs/external-workers.md: answer every PING, at once
        if item.flags & ERROR:
            self._on_soft_error(worker, job, bytes(item.payload[:200]), now, more)
            return
        # The first frame's head gives status and headers; a later piece of a stream may
        # repeat it (skipped) or carry none (docs/external-workers.md, Streamed responses).
        head_len = item.options[0] if item.options else (0 if job.streaming else -1)
        if not 0 <= head_len <= len(item.payload):
            self._on_bad_response(worker, job, "a response frame without its head length option")
            return
        body = memoryview(item.payload)[head_len:]
        if job.cancelled:
            pass                               # the client left: drop it
        elif job.streaming:                    # a later piece: its head repeats the first one's
            if streams:
                self._forward(worker, job, bytes(body), now)
            else:
                self.front.end(job, bytes(body), now)   # the piece without STREAM ends the answer
        else:
            head_json = bytes(item.payload[:head_len])
            try:
                head = self.heads.get(head_json) or self.heads.decode(head_json)
            except ValueError as exc:
                self._on_bad_response(worker, job, str(exc))
                return
            if not head.status:
                self.backend.recycle(worker, job, now)
                return
            if not streams:
                self.front.answer(job, head, body, now)
            else:
                self._reply(job)
                if self.front.begin(job, head, head.content_length, bytes(body)):
                    self._hold_back(worker, job)
                else:
                    self._drop_rest(worker, job, now)
        if not streams:
            self._end_reply(worker, job, now, more)
        elif worker.channel.reading and not job.cancelled:   # not while the client holds it back,
            self.pool.extend_deadline(worker, now)            # nor once it is told to STOP

    def _on_large_start(self, worker: Worker, job: Job, start: FrameStart) -> None:
        """A response frame too large to hold: its head is collected, its body passed on."""
        head_len = start.options[0] if start.options else (0 if job.streaming else -1)
        if start.flags & ERROR:
            head_len = 0                       # an error message: its first bytes are kept for the log
        elif not (0 if job.streaming else 1) <= head_len <= min(start.length, MAX_HEAD_BYTES):
            self._on_bad_response(worker, job, f"a response frame of {start.length} bytes with head length "
                                               f"{head_len}")
            return
        reply = self._reply(job)
        reply.head_len = head_len
        reply.head_buf = bytearray()
        reply.frame_left = start.length
        reply.frame_streams = bool(start.stream & STREAM)
        reply.stream_frames = reply.stream_frames or reply.frame_streams
        reply.error_frame = bool(start.flags & ERROR)
        if reply.frame_streams and job.cancelled:
            self._stop_stream(worker, job, self.loop.clock())

    @staticmethod
    def _reply(job: Job) -> Reply:
        """The job's Reply, made when its answer turns out not to come in one small frame."""
        if job.reply is None:
            job.reply = Reply()
        return job.reply

    def _on_large_part(self, worker: Worker, job: Job, part, now: float, more: bool) -> None:
        reply = job.reply
        data = part.data
        reply.frame_left -= len(data)
        if reply.error_frame:
            if len(reply.head_buf) < 200:
                reply.head_buf += data[:200 - len(reply.head_buf)]
            if part.last:
                self._on_soft_error(worker, job, bytes(reply.head_buf), now, more)
            return
        if len(reply.head_buf) < reply.head_len:   # still inside the JSON head
            take = reply.head_len - len(reply.head_buf)
            reply.head_buf += data[:take]
            data = data[take:]
            if len(reply.head_buf) < reply.head_len:
                return
            if not job.streaming and not job.cancelled:   # the first frame: the client's head now
                if not self._begin_large(worker, job, data):
                    return
                data = b""
        if data and not job.cancelled:
            self._forward(worker, job, data, now)
        if not part.last:
            return
        if reply.frame_streams:
            if worker.channel.reading and not job.cancelled:
                self.pool.extend_deadline(worker, now)
        elif job.cancelled:
            self._end_reply(worker, job, now, more)
        else:
            self.front.end(job, b"", now)
            self._end_reply(worker, job, now, more)

    def _begin_large(self, worker: Worker, job: Job, first: bytes) -> bool:
        """The head of a large frame is complete: the client gets the HTTP head now, with
        the frame's body length as Content-Length unless more frames follow."""
        reply = job.reply
        head_json = bytes(reply.head_buf)
        try:
            head = self.heads.get(head_json) or self.heads.decode(head_json)
        except ValueError as exc:
            self._on_bad_response(worker, job, str(exc))
            return False
        if not head.status:
            self._on_bad_response(worker, job, "a stop request with a body")
            return False
        length = head.content_length if reply.frame_streams else reply.frame_left + len(first)
        if self.front.begin(job, head, length, first):
            self._hold_back(worker, job)
        else:
            self._drop_rest(worker, job, self.loop.clock())
        return True

    def _forward(self, worker: Worker, job: Job, data: bytes, now: float) -> None:
        """Body bytes for a client whose answer is under way. More than the app's own
        Content-Length breaks the answer off; the rest of it is dropped (the worker is fine:
        its frames are; its app miscounted)."""
        if not self.front.part(job, data):
            self.front.abort(job, "the body was longer than its Content-Length", now)
            self._drop_rest(worker, job, now)
            return
        self.pool.extend_deadline(worker, now)
        self._hold_back(worker, job)

    def _drop_rest(self, worker: Worker, job: Job, now: float) -> None:
        """The client's answer was broken off (the app miscounted its Content-Length): the
        rest of it is dropped, a stream told to STOP; the worker is fine."""
        job.cancelled = True
        self.abandon(job, now)

    def _hold_back(self, worker: Worker, job: Job) -> None:
        """Backpressure: while the client has HIGH_WATER_BYTES unsent, the worker's pipe is
        not read (its writes block), and exec_ttl does not count: the wait is the client's."""
        conn = job.conn
        if conn.backlogged:
            worker.channel.pause_reading()
            worker.deadline_at = 0.0
            conn.wait_for_drain()

    def resume(self, job: Job) -> None:
        """The client took what it had: read the worker's pipe again."""
        worker = job.worker
        if worker is not None and worker.job is job and worker.channel is not None:
            worker.channel.resume_reading()
            self.pool.extend_deadline(worker, self.loop.clock())

    def _end_reply(self, worker: Worker, job: Job, now: float, more: bool) -> None:
        """The final frame of the job is in. Anything after it in the same read is a frame
        nobody asked for: the channel is broken, and no frame of it may reach the next
        client (STYLE.md §10)."""
        if more or worker.channel.decoder.buffered_bytes:
            worker.job = None
            self.backend.on_broken_channel(worker, "sent a frame after its final response frame")
            return
        self.backend.release(worker, now)

    def _on_soft_error(self, worker: Worker, job: Job, message: bytes, now: float, more: bool) -> None:
        log.warning("%s: request %s %s failed: %s", worker, job.request.method, job.request.path,
                    printable(message))
        if job.streaming and not job.cancelled:
            self.front.abort(job, "the application raised an error", now)
        elif not job.cancelled:
            self.jobs.fail(job, Outcome.SOFT_ERROR)
        self._end_reply(worker, job, now, more)

    def _on_bad_response(self, worker: Worker, job: Job, why: str) -> None:
        self.backend.on_broken_channel(worker, f"sent an invalid response: {why}")

    def abandon(self, job: Job, now: float) -> None:
        """The client left while its job was at a worker. A stream is told to STOP (now, or
        when its first STREAM frame shows it streams); what the worker still sends is
        dropped until its final frame, and then it is free again. A worker that goes on
        past destroy_timeout is killed (docs/external-workers.md, Streamed responses)."""
        worker = job.worker
        if worker is None or worker.job is not job or worker.channel is None:
            return
        if job.reply is not None and job.reply.stream_frames:
            self._stop_stream(worker, job, now)
        else:
            self.pool.extend_deadline(worker, now)
        worker.channel.resume_reading()

    def _stop_stream(self, worker: Worker, job: Job, now: float) -> None:
        """STOP, once per job; destroy_timeout from now on bounds what the worker still sends."""
        reply = self._reply(job)
        if not reply.stop_sent:
            reply.stop_sent = True
            worker.channel.write(STOP_STREAM_FRAME)
            worker.deadline_at = now + self.destroy_timeout_s if self.destroy_timeout_s else 0.0
