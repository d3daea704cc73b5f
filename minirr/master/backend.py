"""The master's worker side: starting workers, giving them jobs, reading their replies,
and what each event means for a worker (pool.fate).

Owns: starting workers and the handshake, the request frame of a job, reading a worker's
      frames (reply.ReplyReader turns them into events, jobs.Jobs applies each to its job
      and says what it means for the worker: a Verdict), backpressure on a worker's pipe,
      STOP and PONG, a worker's end (stop, kill, exit) and what it means for its jobs,
      the deadlines of workers and of their jobs (exec_ttl, start, stop), and the reload
      (each old worker retired once its replacement is ready).
Never: writes to a client (answer.py does, through jobs.py), reads or writes a pipe
       itself (channel.py does), or decides a fate by itself (pool.fate does). It tells
       the operator side what happened through the `events` it is given (WorkerEvents).

    start:   launcher.start() -> WorkerChannel -> handshake {"pid": master}
             <- {"pid": its own} -> READY
    a job:   dispatch(worker, job): the request frame
    a reply: channel.on_event -> on_frames -> reader.read(job, frame) -> jobs.on_reply -> Verdict
               MORE     read on (unless the client is backlogged: the pipe waits)
               FREE     pool.job_done -> ready again, or retired now (max_jobs); the queue moves
               RECYCLE  the worker asked to be recycled: stopped; its job runs elsewhere
               BROKEN   killed; its client gets 502
    its end: its pidfd is readable -> reap -> log what it means -> its jobs fail -> replace it
"""

from __future__ import annotations

import json
import logging
import os
from typing import Callable, List, Optional, Protocol

from ..errors import FrameError
from ..wire import frame, multiplex, websocket as wire_websocket
from ..wire.frame import CODEC_JSON, CONTROL, PING, PONG, STOP, Frame, FrameStart, FramePart, printable
from ..wire.heads import request_head_encoder
from .channel import WorkerChannel
from .jobs import AT_WORKER, BROKEN_CHANNEL, DRAINING, FREE, MORE, OPEN, RECYCLE_WORKER, STREAMING, Job, Jobs, Outcome
from .pool import READY, STARTING, STOPPING, WORKING, Fate, Pool, Reason, Worker, WorkerState, failed_start, fate
from .reply import ReplyReader

log = logging.getLogger("minirr")

LARGE_BODY_BYTES = 64 * 1024           # a request body this large is written on its own, not copied
CARRIES_BODY = frozenset(("begin", "body", "end"))   # reply events whose data is body bytes for the client
STOP_PAYLOAD = json.dumps({"stop": True}).encode()
PONG_FRAME = frame.encode(0, b"", (), PONG)
STOP_STREAM_FRAME = frame.encode(0, b"", (), STOP)


class WorkerEvents(Protocol):
    """What the operator side (operations.py) is told about workers."""

    def worker_ready(self, worker: Worker, now: float) -> None: ...

    def worker_gone(self, worker: Worker, was: WorkerState) -> None: ...

    def reload_done(self, replaced: int, seconds: float, error: str, now: float) -> None: ...


class Reload:
    """A reset in progress: the workers of older generations are replaced one at a time,
    each retired only once its replacement is ready."""

    def __init__(self, generation: int, now: float) -> None:
        self.generation = generation
        self.started_at = now
        self.replaced = 0


class Backend:
    """Worker processes and their jobs (see the module docstring)."""

    def __init__(self, loop, config, launcher, pool: Pool, jobs: Jobs, events: WorkerEvents,
                 inherited: Callable[[], list] = list, websockets=None) -> None:
        self.loop = loop
        self.config = config
        self.launcher = launcher
        self.pool = pool
        self.jobs = jobs
        self.events = events
        self.inherited = inherited         # everything else of the master's a forked worker must close
        self.reader = ReplyReader()
        self.encode_head = request_head_encoder()
        self._large: dict = {}             # worker id -> the job whose large frame is arriving in parts (ids)
        self.destroy_timeout_s = config.pool.destroy_timeout
        self.trace = config.logs.trace_frames  # log every frame (for learning)
        self.stopping = False
        self.reload: Optional[Reload] = None
        self.websockets = websockets       # websocket.WebSockets: a WebSocket job's frames (None: no WebSockets)

    # ================================================================== starting
    def ensure_pool(self, now: float) -> None:
        """Start workers up to the pool's size; retire any beyond it (a reload's extra one)."""
        if self.stopping:
            return
        while self.pool.deficit() and self.pool.can_start(now):
            self._start_worker(now)
        for worker in self.pool.surplus():
            self.retire(worker, Reason.RESET, now)

    def _start_worker(self, now: float) -> None:
        worker = self.pool.new_worker(now)
        try:
            # The bootstrap's traceback is printed for the first failure of a run, not each retry.
            proc = self.launcher.start(self.descriptors() + self.inherited(),
                                       print_traceback=self.pool.boot_failures == 0)
        except OSError as exc:
            # The program vanished, or fds or processes ran out: a failed start, with back-off.
            self.pool.exited(worker, now)
            log.error("%s could not be started: %s; next start in %.1fs", worker, exc,
                      max(0.0, self.pool.next_start_at - now))
            self._after_failed_start(worker, f"it could not be started: {exc}", now)
            return
        worker.pid = proc.pid
        worker.channel = WorkerChannel(self.loop, worker, proc, self, self.config.pool.max_frame_size, self.trace)
        worker.channel.open()
        log.info("%s started", worker)
        worker.channel.write(frame.encode(CONTROL | CODEC_JSON, json.dumps({"pid": os.getpid()}).encode()))

    def descriptors(self) -> list:
        """Every descriptor of every worker: a new child closes them all."""
        items: list = []
        for worker in self.pool.workers.values():
            channel = worker.channel
            if channel is not None and not channel.closed:
                items += channel.proc.fds()
        return items

    def _on_handshake(self, worker: Worker, item, now: float) -> None:
        """{"pid": N} makes it READY; {"pid": N, "ids": M} too, on the multiplexed wire
        with min(M, [pool] max_concurrency) jobs at once (wire/multiplex.py)."""
        hello = pid = None
        if type(item) is Frame and item.flags & CONTROL:
            try:
                hello = json.loads(item.payload)
                pid = hello["pid"]
            except (ValueError, KeyError, TypeError, RecursionError):
                pid = None
        if not isinstance(pid, int) or isinstance(pid, bool):
            shown = printable(item.payload[:64]) if type(item) is Frame else "a large frame"
            self.on_broken_channel(worker, f"answered the handshake with {shown}")
            return
        ids = multiplex.offered_ids(hello)
        self.pool.hello(worker, pid, now, min(ids, self.config.pool.max_concurrency) if ids else 0)
        # WebSocket events ride on request ids (docs/external-workers.md, WebSockets)
        worker.websocket = self.pool.websockets = bool(ids) and wire_websocket.offered(hello) \
            and self.websockets is not None
        log.info("%s ready in %.0fms%s", worker, (now - worker.created_at) * 1000,
                 f", {worker.slots} requests at once" if worker.multiplexed else "")
        self.events.worker_ready(worker, now)
        self._continue_reload(now)
        self._drain_queue(now)

    # ================================================================== jobs
    def dispatch(self, worker: Worker, job: Job, now: float) -> None:
        """Send `job` (just dispatched by jobs.py) to `worker`: one request frame, naming
        its request id on the multiplexed wire."""
        job.worker = worker
        job.id = self.pool.next_id(worker) if worker.multiplexed else 0     # 0: the plain wire's one job
        self.pool.assign(worker, job, job.id)
        request = job.request
        head = self.encode_head(request)
        if job.websocket is not None:
            if worker.websocket:           # its app gets websocket.connect (master/websocket.py)
                worker.channel.write(self.websockets.connect_frame(job, head))
                return
            job.websocket = None           # this worker takes no WebSocket: an ordinary request
        body = request.body
        options = (len(head), job.id) if job.id else (len(head),)          # multiplex.options, written out
        header = frame.encode_header(CODEC_JSON, len(head) + len(body), options)
        if len(body) < LARGE_BODY_BYTES:
            worker.channel.write(header + head + body)
        else:
            worker.channel.write(header + head, body)

    def _drain_queue(self, now: float) -> None:
        """Give queued jobs to ready workers, oldest first."""
        while self.jobs.queue:
            pair = self.jobs.next_pair(now)
            if pair is None:
                return
            self.dispatch(pair[0], pair[1], now)

    def on_frames(self, worker: Worker, items: list) -> None:
        """What a read from the worker's pipe decoded (channel.py), by the worker's state.

        WORKING, on the plain wire: frames of the job in flight, one job, one reply, then
        the next job. Anything after the reply's final frame in the same read is a frame
        nobody asked for: the channel is broken, and no frame of it may reach the next
        client."""
        if worker.state is not WORKING:
            self._on_other_frames(worker, items)
            return
        if worker.multiplexed:
            self._on_multiplexed(worker, items)
            return
        now = self.loop.clock()
        job = worker.jobs[0]
        last = len(items) - 1
        for index, item in enumerate(items):
            if type(item) is not FramePart and item.stream & PING:
                self._pong(worker)
                if worker.state is not WORKING:    # it pinged too often: killed, its job failed
                    return
            event = self.reader.read(job, item)
            verdict = self.jobs.on_reply(job, event, now)
            if verdict is MORE:
                self._read_on(worker, job, now)
                continue
            if verdict is BROKEN_CHANNEL:
                self.on_broken_channel(worker, f"sent an invalid response: {event[2]}")
                return
            if index < last or worker.channel.decoder.buffered_bytes:
                self.on_broken_channel(worker, "sent a frame after its final response frame")
                return
            self._release(worker, job, now, recycle=verdict is RECYCLE_WORKER)
            return

    def _on_multiplexed(self, worker: Worker, items: list) -> None:
        """Frames of a worker that holds several jobs: each names its job (its second
        option; the parts of a large frame belong to the frame that began them). A frame
        for an id not in flight is a broken channel. Backpressure is per job, by CREDIT:
        what was read for a client is credited back once it has left the master for it."""
        now = self.loop.clock()
        credited = []
        for item in items:
            if type(item) is FramePart:
                job = self._large.get(worker.id)
            else:
                request_id = item.options[1] if len(item.options) == 2 else None
                job = worker.jobs.get(request_id)
                if job is None:
                    what = "without its request id" if request_id is None else f"for request id {request_id}, " \
                                                                             f"which is not in flight"
                    self.on_broken_channel(worker, f"sent a frame {what}")
                    return
                if type(item) is FrameStart:
                    self._large[worker.id] = job
            if job.websocket is not None:
                try:
                    verdict = self.websockets.on_worker_frame(job, item, now)
                except FrameError as exc:
                    self.on_broken_channel(worker, f"broke a WebSocket's wire: {exc}")
                    return
                if verdict is FREE:
                    self._release(worker, job, now)
                    if not worker.live:
                        return
                continue
            event = self.reader.read(job, item)
            verdict = self.jobs.on_reply(job, event, now)
            if verdict is MORE:
                if event[0] in CARRIES_BODY:
                    job.credit += len(event[2])
                    if not job.conn.backlogged or job.state is DRAINING:
                        credited.append(job)
                if not job.stop_sent and self.jobs.abandoned(job):
                    self._stop_job(worker, job, now)
                elif job.state is STREAMING and job.conn.backlogged:
                    self.jobs.held_back(job)
                    job.conn.wait_for_drain()
                continue
            if verdict is BROKEN_CHANNEL:
                self.on_broken_channel(worker, f"sent an invalid response: {event[2]}")
                return
            self._large.pop(worker.id, None)
            self._release(worker, job, now, recycle=verdict is RECYCLE_WORKER)
            if not worker.live:
                return
        for job in credited:
            self._credit(job)

    def _credit(self, job: Job) -> None:
        """Give the bytes of `job`'s stream that left the master back to its window."""
        if job.credit and job.worker is not None and job.worker.jobs.get(job.id) is job:
            job.worker.channel.write(multiplex.credit_frame(job.credit, job.id))
            job.credit = 0

    def _on_other_frames(self, worker: Worker, items: list) -> None:
        state = worker.state
        if state is STARTING:
            self._on_handshake(worker, items[0], self.loop.clock())
            if len(items) > 1 and worker.state is READY:
                self.on_broken_channel(worker, "sent a frame with no request in flight")
        elif state is READY:
            self.on_broken_channel(worker, "sent a frame with no request in flight")
        # STOPPING or DEAD: nothing it sends matters now

    def _read_on(self, worker: Worker, job: Job, now: float) -> None:
        """The reply goes on. Backpressure: while its client has HIGH_WATER_BYTES unsent,
        the worker's pipe is not read (its writes block) and exec_ttl does not count (the
        wait is the client's). A client gone before the worker showed that it streams gets
        its worker told STOP now."""
        if job.state is STREAMING:
            conn = job.conn
            if conn.backlogged:
                worker.channel.pause_reading()
                self.jobs.held_back(job)
                conn.wait_for_drain()
        elif not job.stop_sent and self.jobs.abandoned(job) and self.reader.streams(job):
            self._stop_job(worker, job, now)

    def _release(self, worker: Worker, job: Job, now: float, recycle: bool = False, counted: bool = True) -> None:
        """The job no longer holds the worker: ready again, or retired if due (max_jobs, a
        soft limit passed while it worked, its own request to be recycled); then the
        queue moves."""
        if recycle:
            self.pool.mark(worker, Reason.WORKER_REQUEST)
            counted = False
        if self.pool.job_done(worker, job.id, now, counted) is Fate.STOP:
            self._stop(worker, worker.reason, now)
            self.ensure_pool(now)
        elif not worker.channel.reading:
            worker.channel.resume_reading()
        if worker.reason is not None and worker.jobs:      # to be retired (max_jobs) once its WebSockets end
            self._bound_websockets(worker, now)
        if self.jobs.queue:
            self._drain_queue(now)

    def client_gone(self, job: Job, now: float) -> None:
        """The client left while its job was at a worker (jobs.py moved it to DRAINING). A
        stream is told STOP (now, or once its first STREAM frame shows it streams); what
        the worker still sends is dropped until its final frame, and then it is free again.
        A worker that goes on past destroy_timeout is killed."""
        worker = job.worker
        if worker is None or worker.jobs.get(job.id) is not job or worker.channel is None:
            return
        if worker.multiplexed or self.reader.streams(job):
            self._stop_job(worker, job, now)
        else:
            self.jobs.stopped(job, now)
        if worker.multiplexed:
            self._credit(job)
        else:
            worker.channel.resume_reading()

    def resume(self, job: Job) -> None:
        """The client took what it had: read the worker's pipe again."""
        worker = job.worker
        if worker is not None and worker.jobs.get(job.id) is job and worker.channel is not None:
            if worker.multiplexed:
                self._credit(job)
            else:
                worker.channel.resume_reading()
            self.jobs.resumed(job, self.loop.clock())

    def _stop_job(self, worker: Worker, job: Job, now: float) -> None:
        """STOP, once per job; destroy_timeout from now on bounds what the worker still sends."""
        job.stop_sent = True
        worker.channel.write(multiplex.stop_frame(job.id) if worker.multiplexed else STOP_STREAM_FRAME)
        self.jobs.stopped(job, now)

    def _pong(self, worker: Worker) -> None:
        """Answer a PING at once (docs/external-workers.md, Streamed responses). A worker
        waits for its PONG before it pings again (RoadRunner's does): a PING while the last
        PONG still lies unread in its pipe is a broken channel, so a worker that pings and
        never reads cannot make the master queue PONGs without end."""
        channel = worker.channel
        if channel.pong_unread():
            self.on_broken_channel(worker, "sent PING again before it read the last PONG")
            return
        channel.write(PONG_FRAME)
        channel.pong_written()

    # ================================================================== a worker's end
    def retire(self, worker: Worker, reason: Reason, now: float, why: str = "") -> None:
        """Apply pool.fate(state, reason): stop now, stop when free, or kill."""
        action = fate(worker.state, reason)
        if action is Fate.STOP:
            self._stop(worker, reason, now)
        elif action is Fate.STOP_WHEN_FREE:
            self.pool.mark(worker, reason)
            self._bound_websockets(worker, now)
        elif action is Fate.KILL:
            self._kill(worker, reason, now, why)
        self.ensure_pool(now)

    def _bound_websockets(self, worker: Worker, now: float) -> None:
        """A worker to be retired when free keeps its open WebSockets until they close, or
        until destroy_timeout from now: then each is closed 1001 (_job_overdue)."""
        if self.destroy_timeout_s:
            for job in worker.jobs.values():
                if job.state is OPEN and not job.deadline_at:
                    job.deadline_at = now + self.destroy_timeout_s

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

    def _lose_jobs(self, worker: Worker, outcome: Outcome, now: float) -> None:
        """Every job the worker holds fails now: an error answer, or an answer broken off."""
        for job in self.pool.drop_jobs(worker):
            self.jobs.worker_lost(job, outcome, now)

    def on_broken_channel(self, worker: Worker, why: str) -> None:
        """A real fault: kill it now; its clients get 502 now."""
        if not worker.live:
            return
        log.error("%s %s; killing it", worker, why)
        now = self.loop.clock()
        self._lose_jobs(worker, Outcome.BAD_RESPONSE, now)
        self.retire(worker, Reason.BROKEN_CHANNEL, now, why)

    def on_channel_failed(self, worker: Worker, exc: BaseException) -> None:
        """Our own code raised on this worker's behalf (loop containment): replace it."""
        log.error("%s: handling its channel failed; killing it", worker, exc_info=exc)
        if worker.live and worker.channel is not None and not worker.channel.closed:
            now = self.loop.clock()
            self._lose_jobs(worker, Outcome.BAD_RESPONSE, now)
            self.retire(worker, Reason.BROKEN_CHANNEL, now, "its channel failed in the master")

    def on_channel_eof(self, worker: Worker) -> None:
        """EOF on its frame pipe: the process is exiting (its descriptors close a moment
        before it can be reaped), or it closed its end and is of no use any more. Either
        way its exit comes next, with its real status and state; kill() makes sure it does."""
        if worker.state is not STOPPING:
            worker.channel.proc.kill()

    def on_exit(self, worker: Worker) -> None:
        """The process is gone: clean up, then decide what its exit means."""
        channel: WorkerChannel = worker.channel
        now = self.loop.clock()
        status = channel.proc.reap()       # it has exited (pidfd, or exited()): never waits
        channel.drain_output()
        channel.close()
        jobs = self.pool.drop_jobs(worker)
        self._large.pop(worker.id, None)
        was = self.pool.exited(worker, now)
        self._log_exit(worker, was, status)
        self.events.worker_gone(worker, was)
        for job in jobs:
            self.jobs.worker_lost(job, Outcome.WORKER_DIED, now)
        if failed_start(worker, was):
            self._after_failed_start(worker, self._start_failure(worker, status), now)
        worker.channel = None              # its buffers go with it (a job may still name the worker)
        self.ensure_pool(now)
        if self.jobs.queue:
            self._drain_queue(now)

    def _after_failed_start(self, worker: Worker, why: str, now: float) -> None:
        if self.reload is not None and worker.generation == self.reload.generation:
            self._end_reload(now, f"{worker} failed to start: {why}")
        if not self.pool.serving():
            self.jobs.refuse_all(Outcome.NO_WORKERS, now)

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
            log.warning("%s %s; the master had given up on it: %s", worker, how, failure)
        elif was is STARTING:
            log.error("%s %s before it was ready; next start in %.1fs", worker, how,
                      max(0.0, self.pool.next_start_at - self.loop.clock()))
        elif was is WORKING:
            log.error("%s %s while busy; request answered 502", worker, how)
        else:
            log.error("%s %s while idle", worker, how)

    # ================================================================== time
    def expire(self, now: float) -> None:
        """Deadlines of jobs (exec_ttl; destroy_timeout after STOP) and of workers (start,
        stop); exits of workers that have no pidfd."""
        for worker, job in self.pool.overdue_jobs(now):
            if worker.live and worker.jobs.get(job.id) is job:
                self._job_overdue(worker, job, now)
        for worker in self.pool.overdue(now):
            self._worker_overdue(worker, now)
        for worker in list(self.pool.workers.values()):
            if worker.jobs and worker.live and worker.channel is not None and worker.channel.reader_gone():
                self.on_broken_channel(worker, "closed its request pipe (it reads no more requests)")
        for worker in list(self.pool.workers.values()):
            channel = worker.channel
            if channel is not None and channel.proc.sentinel is None and not channel.closed and channel.proc.exited():
                self.on_exit(worker)
        self.ensure_pool(now)
        self._continue_reload(now)

    def _job_overdue(self, worker: Worker, job: Job, now: float) -> None:
        if job.state is OPEN:              # its worker is being retired: the WebSocket goes first
            log.info("%s is to be retired; its WebSocket %s is closed 1001 after destroy_timeout (%gs)",
                     worker, job.request.path, self.destroy_timeout_s)
            job.deadline_at = 0.0
            job.websocket.going_away()
            return
        if job.state is DRAINING:
            log.warning("%s went on with a request whose answer is over, past its deadline (destroy_timeout "
                        "%gs after the client left, or exec_ttl); killing it", worker, self.destroy_timeout_s)
            self._lose_jobs(worker, Outcome.WORKER_DIED, now)
            self._kill(worker, Reason.DESTROY_TIMEOUT, now)
            return
        if worker.multiplexed:
            log.error("%s: request %s %s exceeded exec_ttl (%gs); told to stop it", worker, job.request.method,
                      job.request.path, self.config.supervisor.exec_ttl)
            self.jobs.timed_out(job, now)
            self._stop_job(worker, job, now)
            return
        log.error("%s exceeded exec_ttl (%gs); killing it", worker, self.config.supervisor.exec_ttl)
        self.jobs.worker_lost(job, Outcome.EXEC_TTL, now)
        self._lose_jobs(worker, Outcome.WORKER_DIED, now)
        self._kill(worker, Reason.EXEC_TTL, now)

    def _worker_overdue(self, worker: Worker, now: float) -> None:
        if worker.state is STARTING:
            log.error("%s did not finish its start within allocate_timeout (%gs); killing it",
                      worker, self.config.pool.allocate_timeout)
            self._kill(worker, Reason.START_TIMEOUT, now)
        elif worker.state is STOPPING and not worker.channel.failure:
            log.warning("%s did not stop within destroy_timeout (%gs); killing it",
                        worker, self.destroy_timeout_s)
            self._kill(worker, Reason.DESTROY_TIMEOUT, now)

    # ================================================================== reload
    def begin_reload(self, now: float) -> int:
        """Replace every live worker, one at a time: each old one is retired only once its
        replacement is ready. A reload begun while another runs supersedes it: workers of
        every older generation are old now, and one still starting for the superseded
        reload is stopped (it would start the code being replaced). -> how many are to be
        replaced."""
        self.pool.generation += 1
        self.pool.forget_backoff()
        self.pool.surge = 0
        for worker in list(self.pool.workers.values()):
            if worker.state is STARTING and worker.reason is None:
                self.retire(worker, Reason.RESET, now)
        old = self._old_workers()
        log.info("reloading: replacing %d workers one at a time", len(old))
        self.reload = Reload(self.pool.generation, now)
        self._continue_reload(now)
        return len(old)

    def _old_workers(self) -> List[Worker]:
        generation = self.pool.generation
        return [w for w in self.pool.workers.values() if w.live and w.reason is None and w.generation < generation]

    def _continue_reload(self, now: float) -> None:
        """One step at a time: while a new worker is starting, wait; once there are more
        new workers serving than old ones retired, retire the next old one; otherwise
        start one more new worker (the pool may be one over its size meanwhile)."""
        reload = self.reload
        if reload is None or self.stopping:
            return
        while True:
            new = [w for w in self.pool.workers.values() if w.generation == reload.generation and w.live]
            if any(w.state is STARTING for w in new):
                return
            old = self._old_workers()
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
        self.events.reload_done(reload.replaced, now - reload.started_at, error, now)

    @property
    def reloading(self) -> bool:
        return self.reload is not None

    def stop_reload(self) -> None:
        """A shutdown began: the reload in progress is abandoned."""
        self.reload = None
        self.pool.surge = 0

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


def log_move(worker: Worker, event: str, was: WorkerState) -> None:
    """[logs] trace_frames: one line per move of a worker's state table (pool.TRANSITIONS)."""
    log.info("worker %d (pid %s): %s --%s--> %s", worker.id, worker.pid or "?", was.name, event, worker.state.name)
