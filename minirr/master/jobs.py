"""A job's life: one request from its client to a worker and back, as one table.

Owns: the Job and its state table (`JobState`, `TRANSITIONS`, `advance`: everything that
      moves a job lives here, h11's `_state.py` habit); the FIFO of jobs waiting for a
      worker (max_queue_size, allocate_timeout); the table from a failure to what the
      client sees (`ERROR_ANSWERS`); what each reply event (reply.py) means for the job,
      its client and its worker (`on_reply` returns a `Verdict` for the worker); the
      bookkeeping of a job whose answer ended (metrics, access log).
Never: touches a socket or a pipe: the answers part (answer.py) writes to the client, and
       the backend acts on the verdict (frees, recycles or kills the worker). Never picks a
       worker's fate (pool.fate does).

A job's states, and the one row of TRANSITIONS behind each way it can end:

    QUEUED ──dispatched──> AT_WORKER ──answered──> DONE            the usual case: one frame
      │                      │  ──streamed──> STREAMING ──finished──> DONE
      │                      │  ──answered_early──> DRAINING       a first piece that fills its Content-Length
      │                      │  ──failed──> DONE                   500 soft error, 502 worker died, 504 exec_ttl
      │                      │  ──failed_early──> DRAINING         a stream whose head the app got wrong (500)
      │                      │  ──recycled──> QUEUED               the worker asked to be recycled: run it elsewhere, first
      │                      │  ──client_gone──> DRAINING          the worker finishes (or is told STOP) for nobody
      │                    STREAMING ──broken──> DRAINING          body past its Content-Length, the app raised: broken off
      │                      ──worker_lost──> DONE                 the worker died or was killed mid-stream: broken off
      │                      ──client_gone──> DRAINING             STOP
      ├──refused──> DONE                                            503: queue full, allocate_timeout, no workers, stopping
      └──client_gone──> DONE                                        removed from the queue at once (logged 499)
    DRAINING ──finished | worker_lost──> DONE                       the worker let go of it

A WebSocket (master/websocket.py) is one long job: the app accepts it, and then its
socket and its app each end in their own time; the job is DONE once both have.

    AT_WORKER ──upgraded──> OPEN           websocket.accept: the 101 is out; no exec_ttl from now on
    AT_WORKER ──failed_early──> DRAINING   websocket.close before accepting: 403 (ERROR_ANSWERS)
    OPEN ──ws_closed──> DRAINING           the socket ended first (a close either way, the client gone,
                                           a protocol error, no pong, a stop's 1001): the app is told
                                           websocket.disconnect and has destroy_timeout to return
    OPEN ──finished──> CLOSING             the app returned (or raised: 1011) while the socket is open
    OPEN ──worker_lost──> CLOSING          its worker died or broke the channel: close 1011
    CLOSING ──ws_closed──> DONE            the close handshake the master began is over

The client's answer ends when a job leaves QUEUED, AT_WORKER or STREAMING for DRAINING or
DONE: that is when it is counted and logged, once. DRAINING is the worker's side still
running: what it sends is dropped until its final frame.

Each field of a Job has one writer: this module (state, times, outcome), answer.py (what
the client got: status, body bytes, the body writer), reply.py (`reply`, its reading
state) and backend.py (`worker`, `id`, `stop_sent`, `credit`: where it runs).
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from typing import Deque, Dict, NamedTuple, Optional, Tuple

from ..errors import MinirrError
from ..logs import AccessLog
from .metrics import ServerMetrics
from .pool import Pool
from .reply import APP_ERROR, BEGIN, BODY, BROKEN, END, NOTHING, RECYCLE, SOFT_ERROR, WHOLE, pending

log = logging.getLogger("minirr")


class JobState(str, enum.Enum):          # str: see pool.WorkerState
    QUEUED = "queued"              # waiting for a worker
    AT_WORKER = "at worker"        # a worker has it; nothing answered yet
    STREAMING = "streaming"        # the answer's head is out; its body is on its way
    DRAINING = "draining"          # the client's answer is over; the worker still sends (dropped)
    DONE = "done"                  # terminal: answered, and no worker holds it
    OPEN = "websocket open"        # a WebSocket: accepted, its app and its socket both live
    CLOSING = "websocket closing"  # its app is done; its socket's close handshake is under way


QUEUED, AT_WORKER, STREAMING, DRAINING, DONE, OPEN, CLOSING = JobState

TRANSITIONS = {
    (QUEUED, "dispatched"): AT_WORKER,
    (QUEUED, "refused"): DONE,
    (QUEUED, "client_gone"): DONE,
    (AT_WORKER, "answered"): DONE,
    (AT_WORKER, "streamed"): STREAMING,
    (AT_WORKER, "answered_early"): DRAINING,
    (AT_WORKER, "failed"): DONE,
    (AT_WORKER, "failed_early"): DRAINING,
    (AT_WORKER, "recycled"): QUEUED,
    (AT_WORKER, "client_gone"): DRAINING,
    (AT_WORKER, "broken"): DRAINING,       # a first piece already past its Content-Length
    (STREAMING, "finished"): DONE,
    (STREAMING, "broken"): DRAINING,
    (STREAMING, "worker_lost"): DONE,
    (STREAMING, "client_gone"): DRAINING,
    (DRAINING, "finished"): DONE,
    (DRAINING, "worker_lost"): DONE,
    (AT_WORKER, "upgraded"): OPEN,
    (OPEN, "ws_closed"): DRAINING,
    (OPEN, "finished"): CLOSING,
    (OPEN, "worker_lost"): CLOSING,
    (CLOSING, "ws_closed"): DONE,
}


def advance(job: "Job", event: str) -> JobState:
    """The one place a job's state changes; a move the table does not have is a bug."""
    new = TRANSITIONS.get((job.state, event))
    if new is None:
        raise MinirrError(f"job {job.request.method} {job.request.path}: event {event!r} is not allowed in "
                          f"state {job.state.name}")
    job.state = new
    return new


class Outcome(enum.Enum):
    """How a job failed, when it did not end with the app's own answer."""
    SOFT_ERROR = "soft_error"              # the handler raised; the worker carries on
    APP_ERROR = "app_error"                # the app's head is not valid HTTP; the worker carries on
    BAD_RESPONSE = "bad_response"          # the worker's answer broke the protocol
    WORKER_DIED = "worker_died"
    EXEC_TTL = "exec_ttl"
    ALLOCATE_TIMEOUT = "allocate_timeout"
    QUEUE_FULL = "queue_full"
    NO_WORKERS = "no_workers"
    SHUTDOWN = "shutdown"
    WS_DENIED = "ws_denied"                # websocket.close before websocket.accept
    WS_NOT_ACCEPTED = "ws_not_accepted"    # the app ended (or its accept was invalid) before accepting


class ErrorAnswer(NamedTuple):
    status: int
    message: str
    retry_after: bool                      # a 503 the client may retry: Retry-After is sent
    no_free_worker: bool                   # counted in minirr_no_free_workers_total


ERROR_ANSWERS: Dict[Outcome, ErrorAnswer] = {
    Outcome.SOFT_ERROR: ErrorAnswer(500, "the application raised an error", False, False),
    Outcome.APP_ERROR: ErrorAnswer(500, "the application sent an invalid response head", False, False),
    Outcome.BAD_RESPONSE: ErrorAnswer(502, "the worker sent an invalid response", False, False),
    Outcome.WORKER_DIED: ErrorAnswer(502, "the worker died while handling the request", False, False),
    Outcome.EXEC_TTL: ErrorAnswer(504, "the request exceeded exec_ttl", False, False),
    Outcome.ALLOCATE_TIMEOUT: ErrorAnswer(503, "no free worker within allocate_timeout", True, True),
    Outcome.QUEUE_FULL: ErrorAnswer(503, "the request queue is full", True, True),
    Outcome.NO_WORKERS: ErrorAnswer(503, "no worker is running (workers fail to start)", True, True),
    Outcome.SHUTDOWN: ErrorAnswer(503, "the server is shutting down", True, False),
    Outcome.WS_DENIED: ErrorAnswer(403, "the application refused the WebSocket", False, False),
    Outcome.WS_NOT_ACCEPTED: ErrorAnswer(500, "the application did not accept the WebSocket", False, False),
}
# Failures of a job still waiting in the queue; the rest happen at a worker.
REFUSALS = frozenset((Outcome.ALLOCATE_TIMEOUT, Outcome.QUEUE_FULL, Outcome.NO_WORKERS, Outcome.SHUTDOWN))
CLIENT_GONE_STATUS = 499                   # in the access log: the client left before its answer (nginx's)


class Verdict(enum.Enum):
    """What a reply event means for the worker (the backend acts on it)."""
    MORE = "more"                          # the reply goes on: read on
    FREE = "free"                          # the worker is done with this job
    RECYCLE = "recycle"                    # the worker asked to be recycled: stop it; its job runs elsewhere
    BROKEN = "broken"                      # the worker broke the channel: kill it


MORE, FREE, RECYCLE_WORKER, BROKEN_CHANNEL = Verdict


class Job:
    """One request on its way through the pool (see the module docstring for who writes
    which field)."""

    __slots__ = ("conn", "request", "keep_alive", "state", "ended_by", "queued_at", "deadline_at", "worker", "id",
                 "stop_sent", "credit", "status", "body_bytes", "writer", "reply", "outcome", "websocket")

    def __init__(self, conn, request, keep_alive: bool, now: float) -> None:
        self.conn = conn                   # the client connection (connection.Connection)
        self.request = request
        self.keep_alive = keep_alive       # the client may send another request after this one
        self.state = QUEUED
        self.ended_by = ""                 # the event that ended its client's answer ("answered", "client_gone", ...)
        self.queued_at = now
        self.deadline_at = 0.0             # QUEUED: allocate_timeout; at a worker: exec_ttl, or destroy_timeout after STOP
        self.worker = None                 # pool.Worker, once dispatched (backend)
        self.id = 0                        # its request id on that worker (backend)
        self.stop_sent = False             # the worker was told STOP (backend)
        self.credit = 0                    # streamed bytes read from its worker, not credited back yet (backend)
        self.status = 0                    # the answer's status, once its head is written (answer.py)
        self.body_bytes = 0                # body bytes written for the client (answer.py)
        self.writer = None                 # a streamed answer's body writer (answer.py)
        self.reply = None                  # reply.ReplyState, when the answer is not one small frame (reply.py)
        self.outcome: Optional[Outcome] = None
        self.websocket = None              # an upgrade request's websocket.WebSocketSession (frontend)

    @property
    def head_only(self) -> bool:
        return self.request.method == "HEAD"

    def __repr__(self) -> str:
        return f"<Job {self.request.method} {self.request.path} {self.state.name}>"


class Jobs:
    """The queue, and each job's life from submission to its end. `answers` writes to the
    clients (answer.Answers); the pool says which worker is free."""

    def __init__(self, pool: Pool, answers, max_queue_size: int, allocate_timeout_s: float, exec_ttl_s: float,
                 destroy_timeout_s: float, metrics: ServerMetrics, access_log: Optional[AccessLog]) -> None:
        self.pool = pool
        self.answers = answers
        self.max_queue_size = max_queue_size
        self.allocate_timeout_s = allocate_timeout_s
        self.exec_ttl_s = exec_ttl_s
        self.destroy_timeout_s = destroy_timeout_s
        self.metrics = metrics
        self.access_log = access_log       # None when [logs] access_log is off
        self.queue: Deque[Job] = deque()
        self._on_reply = {WHOLE: self._whole, BEGIN: self._begin, BODY: self._body, END: self._end,
                          SOFT_ERROR: self._soft_error, APP_ERROR: self._app_error, RECYCLE: self._recycle,
                          BROKEN: self._broken, NOTHING: self._nothing}

    # ================================================================== submission and the queue
    def submit(self, job: Job, now: float):
        """A ready worker takes `job` now (-> that worker: the caller dispatches it); else
        it waits in the queue, or is refused at once (full queue, no worker can start)."""
        worker = self.pool.ready_worker()
        if worker is not None:
            advance(job, "dispatched")
            job.deadline_at = now + self.exec_ttl_s if self.exec_ttl_s else 0.0
            return worker
        if self.max_queue_size and len(self.queue) >= self.max_queue_size:
            self.fail(job, Outcome.QUEUE_FULL, now)
        elif self.pool.boot_failures and not self.pool.serving():
            self.fail(job, Outcome.NO_WORKERS, now)
        else:
            job.deadline_at = now + self.allocate_timeout_s if self.allocate_timeout_s else 0.0
            self.queue.append(job)
        return None

    def next_pair(self, now: float):
        """The oldest queued job and a ready worker for it (-> (worker, job), the job
        dispatched), or None when either is missing."""
        if not self.queue:
            return None
        worker = self.pool.ready_worker()
        if worker is None:
            return None
        job = self.queue.popleft()
        advance(job, "dispatched")
        job.deadline_at = now + self.exec_ttl_s if self.exec_ttl_s else 0.0
        return worker, job

    def client_gone(self, job: Job, now: float) -> bool:
        """The client left before its answer ended. A queued job is removed at once (its
        body freed with it). -> True if a worker holds the job: the backend then tells it
        STOP or lets it finish for nobody."""
        if job.state is QUEUED:
            self.queue.remove(job)
            self._move(job, "client_gone", now)
            return False
        if job.state is AT_WORKER or job.state is STREAMING:
            self._move(job, "client_gone", now)
            return True
        return False                       # DRAINING (nothing owed any more) or DONE

    @property
    def waiting(self) -> int:
        return len(self.queue)

    # ================================================================== the worker's reply
    def on_reply(self, job: Job, event: tuple, now: float) -> Verdict:
        """A reply event of `job`'s worker (reply.ReplyReader.read) -> the verdict for it."""
        kind, head, data = event
        if kind is WHOLE and job.state is AT_WORKER:     # the usual case, written out (as _whole)
            self.answers.whole(job, head, data)
            self._move(job, "answered", now)
            return FREE
        return self._on_reply[kind](job, head, data, now)

    def _whole(self, job: Job, head, body, now: float) -> Verdict:
        if job.state is AT_WORKER:
            self.answers.whole(job, head, body)
            self._move(job, "answered", now)
        else:
            self._move(job, "finished", now)
        return FREE

    def _begin(self, job: Job, head, first, now: float) -> Verdict:
        if job.state is AT_WORKER:
            self._move(job, self.answers.begin(job, head, first), now)
        self._progress(job, now)
        return MORE

    def _body(self, job: Job, head, piece, now: float) -> Verdict:
        if job.state is STREAMING:
            event = self.answers.part(job, piece)
            if event is not None:
                self._move(job, event, now)
        self._progress(job, now)
        return MORE

    def _end(self, job: Job, head, last, now: float) -> Verdict:
        if job.state is STREAMING:
            event = self.answers.end(job, last)
            self._move(job, event, now)
            if event != "finished":        # broken off: the worker's side ends with this frame too
                self._move(job, "finished", now)
        else:
            self._move(job, "finished", now)
        return FREE

    def _soft_error(self, job: Job, head, message: str, now: float) -> Verdict:
        request = job.request
        log.warning("%s: request %s %s failed: %s", job.worker, request.method, request.path, message)
        if job.state is STREAMING:
            self._break(job, "the application raised an error", now)
            self._move(job, "finished", now)
        elif job.state is AT_WORKER:
            self.fail(job, Outcome.SOFT_ERROR, now)
        else:
            self._move(job, "finished", now)
        return FREE

    def _app_error(self, job: Job, head, why: str, now: float) -> Verdict:
        """The app's head is not valid HTTP (a header with CR LF, say): its 500, the worker kept."""
        request = job.request
        log.error("%s: request %s %s: the application's response head is invalid: %s; answered 500",
                  job.worker, request.method, request.path, why)
        more = pending(job)
        if job.state is AT_WORKER:          # (only a first head is read: never while STREAMING)
            self.fail(job, Outcome.APP_ERROR, now, early=more)
        if more:
            return MORE
        if job.state is DRAINING:
            self._move(job, "finished", now)
        return FREE

    def _recycle(self, job: Job, head, data, now: float) -> Verdict:
        """The worker asks to be recycled instead of answering: the job runs elsewhere, first."""
        if job.state is AT_WORKER:
            advance(job, "recycled")
            # First in line, and its allocate_timeout counts from its arrival, as for the jobs
            # behind it: the queue stays in deadline order, so expire() looks at the front only.
            job.deadline_at = job.queued_at + self.allocate_timeout_s if self.allocate_timeout_s else 0.0
            self.queue.appendleft(job)
        else:
            self._move(job, "finished", now)
        return RECYCLE_WORKER

    def _broken(self, job: Job, head, why: str, now: float) -> Verdict:
        self.worker_lost(job, Outcome.BAD_RESPONSE, now)
        return BROKEN_CHANNEL

    @staticmethod
    def _nothing(job: Job, head, data, now: float) -> Verdict:
        return MORE

    def held_back(self, job: Job) -> None:
        """Its client is backlogged: the worker's pipe waits, and so does exec_ttl."""
        job.deadline_at = 0.0

    def resumed(self, job: Job, now: float) -> None:
        """Its client took what it had: exec_ttl counts again from now."""
        if job.state is STREAMING and self.exec_ttl_s:
            job.deadline_at = now + self.exec_ttl_s

    def stopped(self, job: Job, now: float) -> None:
        """Its client left and its worker goes on (told STOP, or finishing for nobody):
        destroy_timeout from now on bounds what it still does (or exec_ttl, if sooner)."""
        if self.destroy_timeout_s:
            bound = now + self.destroy_timeout_s
            pending = job.deadline_at and now < job.deadline_at    # exec_ttl still running (not the one just passed)
            job.deadline_at = min(job.deadline_at, bound) if pending else bound

    def _progress(self, job: Job, now: float) -> None:
        """A stream made progress: exec_ttl counts again from now (not while the client holds
        it back: the backend pauses the clock then; nor after STOP: destroy_timeout bounds it)."""
        if self.exec_ttl_s and job.state is STREAMING and job.deadline_at:
            job.deadline_at = now + self.exec_ttl_s

    # ================================================================== endings
    def worker_lost(self, job: Job, outcome: Outcome, now: float) -> None:
        """The job's worker died, was killed, or broke the channel: an error answer (502,
        504), or an answer broken off; nothing more comes for it."""
        if job.state is AT_WORKER:
            self.fail(job, outcome, now)
        elif job.state is STREAMING:
            self._break(job, ERROR_ANSWERS[outcome].message, now, event="worker_lost")
        elif job.state is DRAINING:
            self._move(job, "worker_lost", now)
        elif job.state is OPEN:
            job.websocket.worker_lost()    # close 1011; the socket's close handshake goes on
            self._move(job, "worker_lost", now)

    def timed_out(self, job: Job, now: float) -> None:
        """exec_ttl passed on a worker that holds other jobs too (request ids): this client
        gets 504, or its stream is broken off, and the worker is told STOP for this job
        alone (the backend); the job drains, bounded by destroy_timeout."""
        if job.state is AT_WORKER:
            self.fail(job, Outcome.EXEC_TTL, now, early=True)
        elif job.state is STREAMING:
            self._break(job, ERROR_ANSWERS[Outcome.EXEC_TTL].message, now)

    def fail(self, job: Job, outcome: Outcome, now: float, early: bool = False) -> None:
        """The one place a failed job becomes what its client sees (ERROR_ANSWERS)."""
        answer = ERROR_ANSWERS[outcome]
        if answer.no_free_worker:
            self.metrics.no_free_worker()
        message = answer.message
        if outcome is Outcome.EXEC_TTL:
            message = f"{message} ({self.exec_ttl_s:g}s)"
        headers: Tuple[Tuple[str, str], ...] = ()
        if answer.retry_after:
            headers = (("Retry-After", str(self._retry_after(outcome, now))),)
        job.outcome = outcome
        self.answers.error(job, answer.status, message, headers, keep_alive=answer.status < 502)
        if outcome in REFUSALS:
            self._move(job, "refused", now)
        else:
            self._move(job, "failed_early" if early else "failed", now)

    def _break(self, job: Job, why: str, now: float, event: str = "broken") -> None:
        """A streamed answer broken off after its head went out: the connection closes (a
        chunked body without its last chunk, or a short one, tells the client)."""
        self.answers.abort(job, why)
        self._move(job, event, now)

    def refuse_all(self, outcome: Outcome, now: float) -> None:
        """Every queued job gets `outcome` (no worker can start, or the server stops)."""
        while self.queue:
            self.fail(self.queue.popleft(), outcome, now)

    def expire(self, now: float) -> None:
        """allocate_timeout: the oldest jobs first (the queue is in arrival order)."""
        queue = self.queue
        while queue and queue[0].deadline_at and now >= queue[0].deadline_at:
            self.fail(queue.popleft(), Outcome.ALLOCATE_TIMEOUT, now)

    def _retry_after(self, outcome: Outcome, now: float) -> int:
        if outcome is Outcome.NO_WORKERS:
            return max(1, int(self.pool.next_start_at - now + 0.999))
        return 1

    def move(self, job: Job, event: str, now: float) -> None:
        """A WebSocket's move (master/websocket.py decides which): the same bookkeeping."""
        self._move(job, event, now)

    def _move(self, job: Job, event: str, now: float) -> None:
        """advance(), and when the client's answer ends with this move: count it, log it."""
        was = job.state
        new = advance(job, event)
        if (new is not DONE and new is not DRAINING) or was is DRAINING:
            return
        job.ended_by = event
        duration_s = now - job.queued_at
        status = job.status or CLIENT_GONE_STATUS
        self.metrics.request_answered(status, duration_s)
        if self.access_log is not None:
            request = job.request
            target = request.path + ("?" + request.query if request.query else "")
            pid = job.worker.pid if job.worker is not None else "-"
            if job.websocket is None:
                self.access_log.log(request.remote_addr, request.method, target, request.protocol, status,
                                    job.body_bytes, duration_s, pid)
            else:                          # its messages and close code too
                self.access_log.log(request.remote_addr, request.method, target, request.protocol, status,
                                    job.body_bytes, duration_s, pid, job.websocket.log_fields())

    @staticmethod
    def abandoned(job: Job) -> bool:
        """Its worker still sends, for a client whose answer is not complete (gone, broken
        off, refused): what it makes now is wasted, and a stream should be told STOP. Not
        so for a first piece that filled its Content-Length: that client has it all, and
        the app's body runs to its end (README, WSGI)."""
        return job.state is DRAINING and job.ended_by != "answered_early"
