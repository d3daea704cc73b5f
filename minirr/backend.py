"""The master's worker side: starting workers, giving them jobs, reading their answers,
and what each event means for a worker (pool.fate).

Owns: starting workers and the handshake, the request frame of a job, turning response
      frames into an answer for the frontend (whole, or in parts as they arrive, with
      backpressure: a worker's pipe is not read while its client is backlogged), a
      worker's end (stop, kill, exit), timeouts (exec_ttl, start, stop) and the reload.
Never: talks HTTP (frontend.py writes the answers), reads or writes a pipe itself
       (channel.py does), or decides a fate by itself (pool.fate does).

    start:  launcher.start() -> WorkerChannel -> handshake {"pid": master}
            <- {"pid": its own} -> READY
    job:    dispatch: request frame -> ... response frame(s) -> front.answer (or begin,
            part ..., end) -> the worker is free: pool.job_done -> KEEP or STOP
    end:    its pidfd is readable -> reap -> log what it means -> replace it
"""

from __future__ import annotations

import json
import logging
import os
from typing import List, Optional

from . import frame
from .channel import WorkerChannel, printable
from .frame import CODEC_JSON, CONTROL, ERROR, PING, PONG, STOP, STREAM, Frame, FrameStart
from .jobs import Job, Jobs, Outcome
from .messages import RequestHeadEncoder
from .pool import READY, STARTING, STOPPING, WORKING, Fate, Pool, Reason, Worker, WorkerState, failed_start, fate
from .responses import ResponseHeads

log = logging.getLogger("minirr")

LARGE_BODY_BYTES = 64 * 1024           # a request body this large is written on its own, not copied
MAX_HEAD_BYTES = frame.LARGE_PAYLOAD_BYTES   # a response frame's JSON head may be at most this long
STOP_PAYLOAD = json.dumps({"stop": True}).encode()
PONG_FRAME = frame.encode(0, b"", (), PONG)
STOP_STREAM_FRAME = frame.encode(0, b"", (), STOP)


class Reload:
    """A reset in progress: `old` workers are replaced one at a time, each retired only
    once its replacement is ready."""

    def __init__(self, old: List[Worker], now: float) -> None:
        self.old = old
        self.started_at = now
        self.replaced = 0


class Backend:
    """Worker processes and their jobs. `ops` (worker_ready, worker_gone, reload_done) and
    `child_descriptors` (what else a forked worker must close) are wired by the server."""

    def __init__(self, loop, config, launcher, pool: Pool, jobs: Jobs, front) -> None:
        self.loop = loop
        self.config = config
        self.launcher = launcher
        self.pool = pool
        self.jobs = jobs
        self.front = front
        self.ops = None
        self.child_descriptors = list
        self.request_heads = RequestHeadEncoder()
        self.response_heads = ResponseHeads()
        self.stopping = False
        self.reload: Optional[Reload] = None

    # ================================================================== starting
    def ensure_pool(self, now: float) -> None:
        if self.stopping:
            return
        while self.pool.deficit() and self.pool.can_start(now):
            self._start_worker(now)

    def _start_worker(self, now: float) -> None:
        worker = self.pool.new_worker(now)
        try:
            # The bootstrap's traceback is printed for the first failure of a run, not each retry.
            proc = self.launcher.start(self.descriptors() + self.child_descriptors(),
                                       print_traceback=self.pool.boot_failures == 0)
        except OSError as exc:
            # The program vanished, or fds or processes ran out: a failed start, with back-off.
            self.pool.exited(worker, now)
            log.error("%s could not be started: %s; next start in %.1fs", worker, exc,
                      max(0.0, self.pool.next_start_at - now))
            self._after_failed_start(worker, f"it could not be started: {exc}")
            return
        worker.pid = proc.pid
        worker.channel = WorkerChannel(self.loop, worker, proc, self, self.config.pool.max_frame_size)
        worker.channel.open()
        log.info("%s started", worker)
        worker.channel.write(frame.encode(CONTROL | CODEC_JSON, json.dumps({"pid": os.getpid()}).encode()))

    def descriptors(self) -> list:
        """Every descriptor of every worker: a new child closes them all (STYLE.md §5)."""
        items: list = []
        for worker in self.pool.workers.values():
            channel = worker.channel
            if channel is not None and not channel.closed:
                items += channel.proc.fds()
        return items

    def _on_handshake(self, worker: Worker, item, now: float) -> None:
        pid = None
        if type(item) is Frame and item.flags & CONTROL:
            try:
                pid = json.loads(item.payload)["pid"]
            except (ValueError, KeyError, TypeError, RecursionError):
                pid = None
        if not isinstance(pid, int) or isinstance(pid, bool):
            shown = printable(item.payload[:64]) if type(item) is Frame else "a large frame"
            self.on_broken_channel(worker, f"answered the handshake with {shown}")
            return
        self.pool.hello(worker, pid, now)
        log.info("%s ready in %.0fms", worker, (now - worker.created_at) * 1000)
        self.ops.worker_ready(worker, now)
        self._continue_reload(now)
        self.jobs.drain(now)

    # ================================================================== jobs
    def dispatch(self, worker: Worker, job: Job, now: float) -> None:
        self.pool.assign(worker, job, now)
        job.worker = worker
        request = job.request
        head = self.request_heads.encode(request)
        body = request.body
        header = frame.encode_header(CODEC_JSON, len(head) + len(body), (len(head),))
        if len(body) < LARGE_BODY_BYTES:
            worker.channel.write(header + head + body)
        else:
            worker.channel.write(header + head, body)

    def on_frames(self, worker: Worker, items: list) -> None:
        """What a read from the worker's pipe decoded (channel.py), by the worker's state."""
        now = self.loop.now()
        last = len(items) - 1
        for index, item in enumerate(items):
            state = worker.state
            if state is WORKING:
                self._on_reply(worker, worker.job, item, now, index < last)
            elif state is STARTING:
                self._on_handshake(worker, item, now)
            elif state is READY:
                self.on_broken_channel(worker, "sent a frame with no request in flight")
                return
            else:
                return                     # STOPPING or DEAD: nothing it sends matters now

    def _on_reply(self, worker: Worker, job: Job, item, now: float, more: bool) -> None:
        if type(item) is Frame:
            self._on_reply_frame(worker, job, item, now, more)
        elif type(item) is FrameStart:
            self._on_large_start(worker, job, item)
        else:
            self._on_large_part(worker, job, item, now, more)

    def _on_reply_frame(self, worker: Worker, job: Job, item: Frame, now: float, more: bool) -> None:
        """A whole response frame: the answer (the usual case), or one piece of a stream."""
        streams = item.stream & STREAM
        if streams:
            job.stream_frames = True
        if item.stream & PING:
            worker.channel.write(PONG_FRAME)   # wire-protocol.md §2.7: answer every PING, at once
        if item.flags & ERROR:
            self._on_soft_error(worker, job, bytes(item.payload[:200]), now, more)
            return
        # The first frame's head gives status and headers; a later piece of a stream may
        # repeat it (skipped) or carry none (wire-protocol.md §2.7).
        head_len = item.options[0] if item.options else (0 if job.streaming else -1)
        if not 0 <= head_len <= len(item.payload):
            self._on_bad_response(worker, job, "a response frame without its head length option")
            return
        body = memoryview(item.payload)[head_len:]
        if job.cancelled:
            pass                               # the client left: drop it
        elif job.streaming:                    # a later piece: its head repeats the first one's
            if not self._forward(worker, job, bytes(body), now):
                return
        else:
            try:
                head = self.response_heads.get(bytes(item.payload[:head_len]))
            except ValueError as exc:
                self._on_bad_response(worker, job, str(exc))
                return
            if not head.status:
                self._on_recycle_request(worker, job, now)
                return
            if not streams:
                self.front.answer(job, head, body, now)
            else:
                self.front.begin(job, head, head.content_length, bytes(body))
                self._hold_back(worker, job)
        if streams:
            self.pool.extend_deadline(worker, now)
        else:
            self._end_reply(worker, job, now, more)

    def _on_large_start(self, worker: Worker, job: Job, start: FrameStart) -> None:
        """A response frame too large to hold: its head is collected, its body passed on."""
        head_len = start.options[0] if start.options else (0 if job.streaming else -1)
        if start.flags & ERROR:
            head_len = 0                       # an error message: its first bytes are kept for the log
        elif not (0 if job.streaming else 1) <= head_len <= min(start.length, MAX_HEAD_BYTES):
            self._on_bad_response(worker, job, f"a response frame of {start.length} bytes with head length "
                                               f"{head_len}")
            return
        job.head_len = head_len
        job.head_buf = bytearray()
        job.frame_left = start.length
        job.frame_streams = bool(start.stream & STREAM)
        job.stream_frames = job.stream_frames or job.frame_streams
        job.error_frame = bool(start.flags & ERROR)

    def _on_large_part(self, worker: Worker, job: Job, part, now: float, more: bool) -> None:
        data = part.data
        job.frame_left -= len(data)
        if job.error_frame:
            if len(job.head_buf) < 200:
                job.head_buf += data[:200 - len(job.head_buf)]
            if part.last:
                self._on_soft_error(worker, job, bytes(job.head_buf), now, more)
            return
        if len(job.head_buf) < job.head_len:   # still inside the JSON head
            take = job.head_len - len(job.head_buf)
            job.head_buf += data[:take]
            data = data[take:]
            if len(job.head_buf) < job.head_len:
                return
            if not job.streaming and not job.cancelled:   # the first frame: the client's head now
                if not self._begin_large(worker, job, data):
                    return
                data = b""
        if data and not job.cancelled:
            if not self._forward(worker, job, data, now):
                return
        if not part.last:
            return
        if job.frame_streams:
            self.pool.extend_deadline(worker, now)
        elif job.cancelled:
            self._end_reply(worker, job, now, more)
        else:
            self.front.end(job, b"", now)
            self._end_reply(worker, job, now, more)

    def _begin_large(self, worker: Worker, job: Job, first: bytes) -> bool:
        """The head of a large frame is complete: the client gets the HTTP head now, with
        the frame's body length as Content-Length unless more frames follow."""
        try:
            head = self.response_heads.get(bytes(job.head_buf))
        except ValueError as exc:
            self._on_bad_response(worker, job, str(exc))
            return False
        if not head.status:
            self._on_bad_response(worker, job, "a stop request with a body")
            return False
        length = head.content_length if job.frame_streams else job.frame_left + len(first)
        self.front.begin(job, head, length, first)
        self._hold_back(worker, job)
        return True

    def _forward(self, worker: Worker, job: Job, data: bytes, now: float) -> bool:
        """Body bytes for a client whose answer is under way; False if that broke it off."""
        if not self.front.part(job, data):
            self.front.abort(job, "the body was longer than its Content-Length", now)
            self.retire(worker, Reason.BROKEN_CHANNEL, now, "sent more body than its Content-Length")
            return False
        self.pool.extend_deadline(worker, now)
        self._hold_back(worker, job)
        return True

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
            self.pool.extend_deadline(worker, self.loop.now())

    def _end_reply(self, worker: Worker, job: Job, now: float, more: bool) -> None:
        """The final frame of the job is in. Anything after it in the same read is a frame
        nobody asked for: the channel is broken, and no frame of it may reach the next
        client (STYLE.md §10)."""
        if more or not worker.channel.decoder.idle:
            worker.job = None
            self.on_broken_channel(worker, "sent a frame after its final response frame")
            return
        fate_now = self.pool.job_done(worker, now)
        if fate_now is Fate.STOP:
            self._stop(worker, worker.reason, now)
            self.ensure_pool(now)
        else:
            worker.channel.resume_reading()
        if self.jobs.queue:
            self.jobs.drain(now)

    def _on_soft_error(self, worker: Worker, job: Job, message: bytes, now: float, more: bool) -> None:
        log.warning("%s: request %s %s failed: %s", worker, job.request.method, job.request.path,
                    printable(message))
        if job.streaming and not job.cancelled:
            self.front.abort(job, "the application raised an error", now)
        elif not job.cancelled:
            self.jobs.fail(job, Outcome.SOFT_ERROR)
        self._end_reply(worker, job, now, more)

    def _on_bad_response(self, worker: Worker, job: Job, why: str) -> None:
        self.on_broken_channel(worker, f"sent an invalid response: {why}")

    def _on_recycle_request(self, worker: Worker, job: Job, now: float) -> None:
        """The worker asked to be recycled instead of answering: run the job elsewhere."""
        worker.job = None
        job.worker = None
        self.pool.mark(worker, Reason.WORKER_REQUEST)
        self._stop(worker, Reason.WORKER_REQUEST, now)
        self.ensure_pool(now)
        if not job.cancelled:
            self.jobs.retry(job, now)

    def abandon(self, job: Job, now: float) -> None:
        """The client left while its job was at a worker. A stream is told to STOP; what the
        worker still sends is dropped until its final frame, and then it is free again. A
        worker that goes on past destroy_timeout is killed (wire-protocol.md §2.7)."""
        worker = job.worker
        if worker is None or worker.job is not job or worker.channel is None:
            return
        if job.stream_frames:
            worker.channel.write(STOP_STREAM_FRAME)
            destroy = self.config.pool.destroy_timeout
            worker.deadline_at = now + destroy if destroy else 0.0
        else:
            self.pool.extend_deadline(worker, now)
        worker.channel.resume_reading()

    # ================================================================== a worker's end
    def retire(self, worker: Worker, reason: Reason, now: float, why: str = "") -> None:
        """Apply pool.fate(state, reason): stop now, stop when free, or kill."""
        action = fate(worker.state, reason)
        if action is Fate.STOP:
            self._stop(worker, reason, now)
        elif action is Fate.STOP_WHEN_FREE:
            self.pool.mark(worker, reason)
        elif action is Fate.KILL:
            self._kill(worker, reason, now, why)
        self.ensure_pool(now)

    def _stop(self, worker: Worker, reason: Reason, now: float) -> None:
        """Soft stop: the stop frame; destroy_timeout later it is killed."""
        self.pool.retire(worker, reason, now)
        worker.channel.write(frame.encode(CONTROL | CODEC_JSON, STOP_PAYLOAD))

    def _kill(self, worker: Worker, reason: Reason, now: float, why: str = "") -> None:
        channel: WorkerChannel = worker.channel
        channel.failure = channel.failure or why or reason.value
        if worker.live:
            self.pool.retire(worker, reason, now)
        channel.proc.kill()

    def on_broken_channel(self, worker: Worker, why: str) -> None:
        """A real fault: kill it now; its client (if any) gets 502 now."""
        log.error("%s %s; killing it", worker, why)
        self._fail_job(worker, Outcome.BAD_RESPONSE, "the worker broke the frame channel")
        self.retire(worker, Reason.BROKEN_CHANNEL, self.loop.now(), why)

    def on_channel_failed(self, worker: Worker, exc: BaseException) -> None:
        """Our own code raised on this worker's behalf (loop containment): replace it."""
        log.error("%s: handling its channel failed; killing it", worker, exc_info=exc)
        if worker.live and worker.channel is not None and not worker.channel.closed:
            self._fail_job(worker, Outcome.BAD_RESPONSE, "internal error")
            self.retire(worker, Reason.BROKEN_CHANNEL, self.loop.now(), "its channel failed in the master")

    def on_channel_eof(self, worker: Worker) -> None:
        """EOF on its frame pipe: the process is exiting (its descriptors close a moment
        before it can be reaped), or it closed its end and is of no use any more. Either
        way its exit comes next, with its real status and state; kill() makes sure it does."""
        if worker.state is not STOPPING:
            worker.channel.proc.kill()

    def _fail_job(self, worker: Worker, outcome: Outcome, why: str) -> None:
        """The worker's job (if any) fails now: an error answer, or an answer broken off."""
        job = worker.job
        worker.job = None
        if job is None or job.done or job.cancelled:
            return
        if job.streaming:
            self.front.abort(job, why, self.loop.now())
        else:
            self.jobs.fail(job, outcome)

    def on_exit(self, worker: Worker) -> None:
        """The process is gone: clean up, then decide what its exit means."""
        channel: WorkerChannel = worker.channel
        now = self.loop.now()
        status = channel.proc.reap(timeout=1.0)
        channel.drain_output()
        channel.close()
        job = worker.job
        was = self.pool.exited(worker, now)
        self._log_exit(worker, was, status)
        self.ops.worker_gone(worker, was)
        if job is not None and not job.done and not job.cancelled:
            if job.streaming:
                self.front.abort(job, "the worker died", now)
            else:
                self.jobs.fail(job, Outcome.WORKER_DIED)
        if failed_start(worker, was):
            self._after_failed_start(worker, self._start_failure(worker, status))
        worker.channel = None              # its buffers go with it (a job may still name the worker)
        self.ensure_pool(now)

    def _after_failed_start(self, worker: Worker, why: str) -> None:
        if self.reload is not None and worker.generation == self.pool.generation:
            self._end_reload(self.loop.now(), f"{worker} failed to start: {why}")
        if not self.pool.serving():
            self.jobs.fail_all(Outcome.NO_WORKERS)

    @staticmethod
    def _start_failure(worker: Worker, status: Optional[int]) -> str:
        how = f"killed by signal {-status}" if status is not None and status < 0 else f"exit status {status}"
        last = worker.channel.last_error if worker.channel is not None else ""
        return f"{last} ({how})" if last else how

    def _log_exit(self, worker: Worker, was: WorkerState, status: Optional[int]) -> None:
        how = f"was killed by signal {-status}" if status is not None and status < 0 else f"exited with status {status}"
        failure = worker.channel.failure
        reason = worker.reason.value if worker.reason is not None else "stop"
        if was is STOPPING and not failure:
            log.info("%s stopped (%s)", worker, reason)
        elif was is STOPPING:
            log.warning("%s %s after %s", worker, how, failure)
        elif was is STARTING:
            log.error("%s %s before it was ready; next start in %.1fs", worker, how,
                      max(0.0, self.pool.next_start_at - self.loop.now()))
        elif was is WORKING:
            log.error("%s %s while busy; request answered 502", worker, how)
        else:
            log.error("%s %s while idle", worker, how)

    # ================================================================== time
    def expire(self, now: float) -> None:
        """exec_ttl, start and stop deadlines; exits of workers that have no pidfd."""
        for worker in self.pool.overdue(now):
            self._overdue(worker, now)
        for worker in list(self.pool.workers.values()):
            channel = worker.channel
            if channel is not None and channel.proc.sentinel is None and not channel.closed and channel.proc.exited():
                self.on_exit(worker)
        self.ensure_pool(now)
        self._continue_reload(now)

    def _overdue(self, worker: Worker, now: float) -> None:
        if worker.state is WORKING:
            job = worker.job
            if job is not None and job.cancelled:
                log.warning("%s went on after its client left, past destroy_timeout (%gs); killing it",
                            worker, self.config.pool.destroy_timeout)
                self._kill(worker, Reason.DESTROY_TIMEOUT, now)
                return
            log.error("%s exceeded exec_ttl (%gs); killing it", worker, self.config.supervisor.exec_ttl)
            self._fail_job(worker, Outcome.EXEC_TTL, "exec_ttl")
            self._kill(worker, Reason.EXEC_TTL, now)
        elif worker.state is STARTING:
            log.error("%s did not finish its start within allocate_timeout (%gs); killing it",
                      worker, self.config.pool.allocate_timeout)
            self._kill(worker, Reason.START_TIMEOUT, now)
        elif worker.state is STOPPING and not worker.channel.failure:
            log.warning("%s did not stop within destroy_timeout (%gs); killing it",
                        worker, self.config.pool.destroy_timeout)
            self._kill(worker, Reason.DESTROY_TIMEOUT, now)

    # ================================================================== reload
    def begin_reload(self, now: float) -> int:
        """Replace every live worker, one at a time: each old one is retired only once its
        replacement is ready. -> how many are to be replaced."""
        self.pool.generation += 1
        self.pool.forget_backoff()
        old = [w for w in self.pool.workers.values() if w.live and w.reason is None]
        log.info("reloading: replacing %d workers one at a time", len(old))
        self.reload = Reload(old, now)
        self._continue_reload(now)
        return len(old)

    def _continue_reload(self, now: float) -> None:
        """One step at a time: while a new worker is starting, wait; once there are more
        new workers serving than old ones retired, retire the next old one; otherwise
        start one more new worker (the pool may be one over its size meanwhile)."""
        reload = self.reload
        if reload is None or self.stopping:
            return
        generation = self.pool.generation
        while True:
            new = [w for w in self.pool.workers.values() if w.generation == generation and w.live]
            if any(w.state is STARTING for w in new):
                return
            old = [w for w in reload.old if w.live and w.reason is None]
            if not old:
                self._end_reload(now, "")
                return
            if len(new) > reload.replaced:
                self.pool.surge = 0
                reload.replaced += 1
                self.retire(old[0], Reason.RESET, now)
                continue
            self.pool.surge = 1
            self.ensure_pool(now)
            return

    def _end_reload(self, now: float, error: str) -> None:
        reload = self.reload
        self.reload = None
        self.pool.surge = 0
        if error:
            log.error("reload stopped: %s; the other workers keep serving", error)
        else:
            log.info("reload complete")
        self.ops.reload_done(reload.replaced, now - reload.started_at, error, now)

    @property
    def reloading(self) -> bool:
        return self.reload is not None

    # ================================================================== shutdown
    def stop_idle(self, now: float) -> None:
        """Shutting down with nothing left to do: stop ready workers, kill starting ones."""
        for worker in list(self.pool.workers.values()):
            if worker.state is READY or worker.state is STARTING:
                self.retire(worker, Reason.SHUTDOWN, now)

    def kill_all(self) -> None:
        for worker in list(self.pool.workers.values()):
            if worker.channel is not None:
                worker.channel.proc.kill()

    def close(self) -> None:
        """The end: kill and reap what is left (bounded), close every pipe."""
        for worker in list(self.pool.workers.values()):
            channel = worker.channel
            if channel is None or channel.closed:
                continue
            channel.proc.kill()
            channel.proc.reap(1.0)
            channel.close()

