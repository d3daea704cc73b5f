"""Requests on their way through the pool: the queue, and what each outcome means.

Owns: the Job (one request, from the front to a worker and back), the FIFO of jobs
      waiting for a free worker (max_queue_size, allocate_timeout), the Outcome of a job
      and the one table from outcome to what the client sees, and the bookkeeping of an
      answered job (metrics, access log).
Never: touches a socket or a pipe: the frontend writes answers, the backend talks to
       workers. Never decides a worker's fate (pool.fate does).

    front ──submit(conn, request)──> a ready worker? ──yes──> back.dispatch(worker, job)
                                           │no
                                           └──> queue ──(a worker is free)──> back.dispatch
    back ──the answer──> front ──finished(job, status, bytes)──> metrics, access log
    back / queue ──fail(job, outcome)──> front.answer_error(job, status, message, headers)
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from typing import Deque, Dict, NamedTuple, Optional, Tuple

from ..logs import AccessLog
from .metrics import ServerMetrics
from .pool import Pool

log = logging.getLogger("minirr")


class Outcome(enum.Enum):
    """How a job ended when it did not end with the app's own answer."""
    SOFT_ERROR = "soft_error"              # the handler raised; the worker carries on
    BAD_RESPONSE = "bad_response"          # the worker's answer broke the protocol
    WORKER_DIED = "worker_died"
    EXEC_TTL = "exec_ttl"
    ALLOCATE_TIMEOUT = "allocate_timeout"
    QUEUE_FULL = "queue_full"
    NO_WORKERS = "no_workers"
    SHUTDOWN = "shutdown"


class ErrorAnswer(NamedTuple):
    status: int
    message: str
    retry_after: bool                      # a 503 the client may retry: Retry-After is sent
    no_free_worker: bool                   # counted in minirr_no_free_workers_total


ANSWERS: Dict[Outcome, ErrorAnswer] = {
    Outcome.SOFT_ERROR: ErrorAnswer(500, "the application raised an error", False, False),
    Outcome.BAD_RESPONSE: ErrorAnswer(502, "the worker sent an invalid response", False, False),
    Outcome.WORKER_DIED: ErrorAnswer(502, "the worker died while handling the request", False, False),
    Outcome.EXEC_TTL: ErrorAnswer(504, "the request exceeded exec_ttl", False, False),
    Outcome.ALLOCATE_TIMEOUT: ErrorAnswer(503, "no free worker within allocate_timeout", True, True),
    Outcome.QUEUE_FULL: ErrorAnswer(503, "the request queue is full", True, True),
    Outcome.NO_WORKERS: ErrorAnswer(503, "no worker is running (workers fail to start)", True, True),
    Outcome.SHUTDOWN: ErrorAnswer(503, "the server is shutting down", True, False),
}


class Job:
    """One request on its way through the pool, and what has been answered so far."""

    __slots__ = ("conn", "request", "keep_alive", "queued_at", "deadline_at", "worker", "status", "body_bytes",
                 "reply", "streaming", "cancelled", "done")

    def __init__(self, conn, request, keep_alive: bool, now: float) -> None:
        self.conn = conn                   # the client connection (connection.Connection)
        self.request = request
        self.keep_alive = keep_alive
        self.queued_at = now
        self.deadline_at = 0.0             # allocate_timeout, while queued
        self.worker = None                 # pool.Worker, once dispatched
        self.status = 0                    # the answer's status, once its head is sent
        self.body_bytes = 0                # body bytes sent to the client (access log)
        self.reply: Optional[Reply] = None   # an answer that does not come in one frame
        self.streaming = False             # the head went to the client; the body is on its way
        self.cancelled = False             # the client left: what the worker still sends is dropped
        self.done = False                  # the answer is complete (counted and logged)

    @property
    def head_only(self) -> bool:
        return self.request.method == "HEAD"


class Reply:
    """An answer under way that did not come in one small frame: several frames (a stream),
    or one frame too large to hold. The backend reads it, the frontend writes it."""

    __slots__ = ("framing", "length_left", "head_len", "head_buf", "frame_left", "frame_streams", "error_frame",
                 "stream_frames", "stop_sent")

    def __init__(self) -> None:
        self.framing = ""                  # "length", "chunked", "close" or "none" (frontend)
        self.length_left = 0               # framing "length": body bytes still owed
        self.head_len = 0                  # a large frame: its JSON head's length ...
        self.head_buf = bytearray()        # ... collected until complete
        self.frame_left = 0                # payload bytes of that frame still to come
        self.frame_streams = False         # that frame has the STREAM bit: more frames follow it
        self.error_frame = False           # that frame is an ERROR (a soft error, a long message)
        self.stream_frames = False         # the worker streams (STREAM frames): it understands STOP
        self.stop_sent = False             # STOP went to the worker (the client left)


class Jobs:
    """The queue between front and back. `front` and `back` are wired in by the server."""

    def __init__(self, pool: Pool, max_queue_size: int, allocate_timeout_s: float, exec_ttl_s: float,
                 metrics: ServerMetrics, access_log: Optional[AccessLog]) -> None:
        self.pool = pool
        self.max_queue_size = max_queue_size
        self.allocate_timeout_s = allocate_timeout_s
        self.exec_ttl_s = exec_ttl_s
        self.metrics = metrics
        self.access_log = access_log       # None when [logs] access_log is off
        self.queue: Deque[Job] = deque()
        self.front = None
        self.back = None

    # ---- from the front ------------------------------------------------------------------
    def submit(self, job: Job, now: float) -> None:
        """A ready worker takes `job` now; otherwise it waits in the queue (or fails at once
        when the queue is full, or no worker can start)."""
        worker = self.pool.ready_worker()
        if worker is not None:
            self.back.dispatch(worker, job, now)
        elif self.max_queue_size and len(self.queue) >= self.max_queue_size:
            self.fail(job, Outcome.QUEUE_FULL)
        elif self.pool.boot_failures and not self.pool.serving():
            self.fail(job, Outcome.NO_WORKERS)
        else:
            job.deadline_at = now + self.allocate_timeout_s if self.allocate_timeout_s else 0.0
            self.queue.append(job)

    def abandon(self, job: Job, now: float) -> None:
        """The client left before its answer was complete. A queued job is dropped (it
        stays in the deque, skipped: removing it would cost O(n)); one at a worker is the
        backend's to wind down. An answer already under way is counted as it stands."""
        job.cancelled = True
        if job.worker is not None:
            self.back.abandon(job, now)
        if job.streaming:
            self.finished(job, now)

    # ---- from the back ---------------------------------------------------------------------
    def drain(self, now: float) -> None:
        """Give queued jobs to ready workers, oldest first."""
        queue = self.queue
        while queue:
            job = queue[0]
            if job.cancelled:
                queue.popleft()
                continue
            worker = self.pool.ready_worker()
            if worker is None:
                return
            queue.popleft()
            self.back.dispatch(worker, job, now)

    def retry(self, job: Job, now: float) -> None:
        """The worker asked to be recycled instead of answering: run the job elsewhere, first."""
        job.worker = None
        self.queue.appendleft(job)
        self.drain(now)

    # ---- endings ---------------------------------------------------------------------------
    def fail(self, job: Job, outcome: Outcome) -> None:
        """The one place a failed job becomes what the client sees (the ANSWERS table)."""
        answer = ANSWERS[outcome]
        if answer.no_free_worker:
            self.metrics.no_free_worker()
        message = answer.message
        if outcome is Outcome.EXEC_TTL:
            message = f"{message} ({self.exec_ttl_s:g}s)"
        headers: Tuple[Tuple[str, str], ...] = ()
        if answer.retry_after:
            headers = (("Retry-After", str(self._retry_after(outcome))),)
        self.front.answer_error(job, answer.status, message, headers, keep_alive=answer.status < 502)

    def finished(self, job: Job, now: float) -> None:
        """The answer is written (or the client left during it): count it and log it."""
        job.done = True
        duration_s = now - job.queued_at
        self.metrics.request_answered(job.status, duration_s)
        if self.access_log is not None:
            request = job.request
            target = request.path + ("?" + request.query if request.query else "")
            pid = job.worker.pid if job.worker is not None else "-"
            self.access_log.log(request.remote_addr, request.method, target, request.protocol, job.status,
                                job.body_bytes, duration_s, pid)

    def _retry_after(self, outcome: Outcome) -> int:
        if outcome is Outcome.NO_WORKERS:
            return max(1, int(self.pool.next_start_at - self.front.loop.now() + 0.999))
        return 1

    def expire(self, now: float) -> None:
        """allocate_timeout: the oldest jobs first (the queue is in arrival order)."""
        queue = self.queue
        while queue and (queue[0].cancelled or (queue[0].deadline_at and now >= queue[0].deadline_at)):
            job = queue.popleft()
            if not job.cancelled:
                self.fail(job, Outcome.ALLOCATE_TIMEOUT)

    def fail_all(self, outcome: Outcome) -> None:
        while self.queue:
            job = self.queue.popleft()
            if not job.cancelled:
                self.fail(job, outcome)

    @property
    def waiting(self) -> int:
        return sum(1 for job in self.queue if not job.cancelled)

