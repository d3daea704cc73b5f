"""The master's worker side: starting workers, giving them jobs, and what each event means
for a worker (pool.fate).

Owns: starting workers and the handshake, the request frame of a job, a worker's end
      (stop, kill, exit) and what it means for its job, timeouts (exec_ttl, start,
      stop), and the reload (each old worker retired once its replacement is ready).
Never: talks HTTP (frontend.py writes the answers), reads or writes a pipe itself
       (channel.py does), reads an answer's frames (replies.py does), or decides a fate
       by itself (pool.fate does).

    start:  launcher.start() -> WorkerChannel -> handshake {"pid": master}
            <- {"pid": its own} -> READY
    job:    dispatch: request frame ... response frame(s) -> replies -> release(worker):
            pool.job_done -> KEEP (ready again) or STOP (retired now)
    end:    its pidfd is readable -> reap -> log what it means -> replace it
"""

from __future__ import annotations

import json
import logging
import os
from typing import List, Optional

from ..wire import frame
from .channel import WorkerChannel, printable
from ..wire.frame import CODEC_JSON, CONTROL, Frame
from .jobs import Job, Jobs, Outcome
from ..wire.messages import RequestHeadEncoder
from .pool import READY, STARTING, STOPPING, WORKING, Fate, Pool, Reason, Worker, WorkerState, failed_start, fate
from .replies import Replies

log = logging.getLogger("minirr")

LARGE_BODY_BYTES = 64 * 1024           # a request body this large is written on its own, not copied
STOP_PAYLOAD = json.dumps({"stop": True}).encode()


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
        self.replies = Replies(loop, self, pool, jobs, front, config.pool.destroy_timeout)
        self.trace = config.logs.trace_frames  # log every frame and every worker's moves (for learning)
        if self.trace:
            pool.on_move = _log_move
        self.stopping = False
        self.reload: Optional[Reload] = None

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
        worker.channel.trace = self.trace
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
        now = self.loop.clock()
        last = len(items) - 1
        for index, item in enumerate(items):
            state = worker.state
            if state is WORKING:
                if type(item) is Frame:        # the usual case: the whole answer in one frame
                    self.replies.on_frame(worker, worker.job, item, now, index < last)
                else:
                    self.replies.on_large(worker, worker.job, item, now, index < last)
            elif state is STARTING:
                self._on_handshake(worker, item, now)
            elif state is READY:
                self.on_broken_channel(worker, "sent a frame with no request in flight")
                return
            else:
                return                     # STOPPING or DEAD: nothing it sends matters now

    def release(self, worker: Worker, now: float) -> None:
        """Its job is answered: it is ready again, or retired if due (max_jobs, or a soft
        limit passed while it worked); then the queue moves."""
        if self.pool.job_done(worker, now) is Fate.STOP:
            self._stop(worker, worker.reason, now)
            self.ensure_pool(now)
        elif not worker.channel.reading:
            worker.channel.resume_reading()
        if self.jobs.queue:
            self.jobs.drain(now)

    def recycle(self, worker: Worker, job: Job, now: float) -> None:
        """The worker asked to be recycled instead of answering: run the job elsewhere."""
        worker.job = None
        job.worker = None
        self.pool.mark(worker, Reason.WORKER_REQUEST)
        self._stop(worker, Reason.WORKER_REQUEST, now)
        self.ensure_pool(now)
        if not job.cancelled:
            self.jobs.retry(job, now)

    def abandon(self, job: Job, now: float) -> None:
        """The client left while its job was at a worker (the replies wind it down)."""
        self.replies.abandon(job, now)

    def resume(self, job: Job) -> None:
        """The client took what it had: read the worker's pipe again."""
        self.replies.resume(job)

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
        self.retire(worker, Reason.BROKEN_CHANNEL, self.loop.clock(), why)

    def on_channel_failed(self, worker: Worker, exc: BaseException) -> None:
        """Our own code raised on this worker's behalf (loop containment): replace it."""
        log.error("%s: handling its channel failed; killing it", worker, exc_info=exc)
        if worker.live and worker.channel is not None and not worker.channel.closed:
            self._fail_job(worker, Outcome.BAD_RESPONSE, "internal error")
            self.retire(worker, Reason.BROKEN_CHANNEL, self.loop.clock(), "its channel failed in the master")

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
            self.front.abort(job, why, self.loop.clock())
        else:
            self.jobs.fail(job, outcome)

    def on_exit(self, worker: Worker) -> None:
        """The process is gone: clean up, then decide what its exit means."""
        channel: WorkerChannel = worker.channel
        now = self.loop.clock()
        status = channel.proc.reap()       # it has exited (pidfd, or exited()): never waits
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
            self._end_reload(self.loop.clock(), f"{worker} failed to start: {why}")
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


def _log_move(worker: Worker, event: str, was: WorkerState) -> None:
    """[logs] trace_frames: one line per move of a worker's state table (pool.TRANSITIONS)."""
    log.info("worker %d (pid %s): %s --%s--> %s", worker.id, worker.pid or "?", was.name, event, worker.state.name)
