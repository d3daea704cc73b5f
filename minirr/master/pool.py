"""The worker pool's bookkeeping: worker records, their state table, and their fate.

Owns: which workers exist, what state each is in, which jobs each holds (by request id:
      one at a time for the plain wire, up to `slots` for a worker that takes ids), which
      one gets the next job (an idle one, else the least loaded with a free slot), what
      happens to a worker and why (`fate`, `Reason`), when one is overdue, and the
      back-off after failed starts.
Never: touches a process, a pipe or a clock. The backend does the I/O and passes `now`
       in; of a job the pool reads only its `deadline_at`.

Worker state table (one `_advance` applies it and raises on a move it does not allow):

    STARTING --hello--> READY --assign--> WORKING --done--> READY   (done: its last job ended)
    WORKING --assign--> WORKING                        (another job in a free slot)
    READY | WORKING | STARTING --retire--> STOPPING   (stop frame sent, or killed)
    any live state --exit--> DEAD                      (DEAD is terminal)

A worker's fate follows from its state and the reason (RoadRunner's rule): a soft reason
(max_jobs, ttl, a reset ...) stops a ready worker now and a working one when its response
is out; a fault (exec_ttl, a broken channel ...) kills it, busy or not.

    fate(state, reason)   soft reason        fault
    STARTING              KILL               KILL
    READY                 STOP               KILL
    WORKING               STOP_WHEN_FREE     KILL
    STOPPING              KEEP               KILL
"""

from __future__ import annotations

import enum
import random
from collections import deque
from typing import Callable, Deque, Dict, List, Optional

from ..errors import MinirrError


class WorkerState(str, enum.Enum):
    """The names are what `minirr workers`, the logs and the metrics show. A str enum,
    like every state table's here: a state then hashes as its string does, in C (a plain
    Enum member hashes in Python code, and tables are looked up several times a request)."""
    STARTING = "starting"
    READY = "ready"
    WORKING = "working"
    STOPPING = "stopping"
    DEAD = "dead"



STARTING, READY, WORKING, STOPPING, DEAD = WorkerState
LIVE = (STARTING, READY, WORKING)

TRANSITIONS = {
    (STARTING, "hello"): READY,
    (READY, "assign"): WORKING,
    (WORKING, "assign"): WORKING,
    (WORKING, "done"): READY,
    (STARTING, "retire"): STOPPING,
    (READY, "retire"): STOPPING,
    (WORKING, "retire"): STOPPING,
    (STARTING, "exit"): DEAD,
    (READY, "exit"): DEAD,
    (WORKING, "exit"): DEAD,
    (STOPPING, "exit"): DEAD,
}


class Reason(enum.Enum):
    """Why a worker is stopped or killed. The value is the word logs and metrics use."""
    MAX_JOBS = "max_jobs"
    TTL = "ttl"
    IDLE_TTL = "idle_ttl"
    MEMORY = "memory"
    RESET = "reset"
    WORKER_REQUEST = "worker_request"    # the worker asked to be recycled
    SHUTDOWN = "shutdown"
    EXEC_TTL = "exec_ttl"                # faults from here on
    BROKEN_CHANNEL = "broken_channel"    # a bad frame, a bad head, a frame nobody asked for
    START_TIMEOUT = "start_timeout"
    DESTROY_TIMEOUT = "destroy_timeout"


FAULTS = frozenset((Reason.EXEC_TTL, Reason.BROKEN_CHANNEL, Reason.START_TIMEOUT, Reason.DESTROY_TIMEOUT))
# Reasons counted under their own name in minirr_worker_restarts_total; any other exit is
# a crash, and a shutdown is no restart at all.
COUNTED = frozenset((Reason.MAX_JOBS, Reason.TTL, Reason.IDLE_TTL, Reason.MEMORY, Reason.EXEC_TTL,
                     Reason.RESET, Reason.WORKER_REQUEST))


class Fate(enum.Enum):
    KEEP = "keep"                        # nothing to do (it is already stopping)
    STOP = "stop"                        # send it the stop frame now
    STOP_WHEN_FREE = "stop when free"    # mark it; stop it once its response is out
    KILL = "kill"


FATES = {
    (STARTING, False): Fate.KILL, (STARTING, True): Fate.KILL,
    (READY, False): Fate.STOP, (READY, True): Fate.KILL,
    (WORKING, False): Fate.STOP_WHEN_FREE, (WORKING, True): Fate.KILL,
    (STOPPING, False): Fate.KEEP, (STOPPING, True): Fate.KILL,
}


def fate(state: WorkerState, reason: Reason) -> Fate:
    """What happens to a worker in `state` for `reason`: the table in the module docstring."""
    return FATES[(state, reason in FAULTS)]


def restart_label(was: WorkerState, reason: Optional[Reason]) -> Optional[str]:
    """The `reason` label a worker's exit is counted under in minirr_worker_restarts_total,
    or None for none (a shutdown). A worker that was STOPPING left for the reason it was
    retired for; any other exit, or a fault that is not exec_ttl, is a crash."""
    if reason is Reason.SHUTDOWN:
        return None
    if was is STOPPING and reason in COUNTED:
        return reason.value
    return "crash"


BOOT_BACKOFF_FIRST_S = 0.5
BOOT_BACKOFF_MAX_S = 30.0
MAX_JOBS_JITTER = 0.15        # up to +15% per worker, so a pool never recycles all at once
MAX_REQUEST_ID = 0xFFFFFFFF   # request ids are u32 option words, 1 and up


class Worker:
    """One worker process as the pool sees it. `channel` is the backend's (pipes, process)."""

    def __init__(self, worker_id: int, created_at: float, max_jobs: int) -> None:
        self.id = worker_id
        self.pid = 0
        self.state = STARTING
        self.created_at = created_at
        self.ready_at = 0.0               # when it answered the handshake; 0.0 = never
        self.last_done_at = 0.0           # when it last finished a job (idle_ttl)
        self.max_jobs = max_jobs           # 0 = unlimited; already jittered
        self.jobs_done = 0
        self.slots = 1                     # jobs it may hold at once (more once it takes request ids)
        self.multiplexed = False           # it asked for request ids: every frame names its job
        self.websocket = False             # ... and WebSocket events (wire/websocket.py)
        self.jobs: Dict[int, object] = {}  # request id -> the job (opaque); id 0 on the plain wire
        self.last_id = 0                   # the request id given last (ids are 1 and up)
        self.deadline_at = 0.0             # STARTING: handshake; STOPPING: kill (a job's own deadline is the job's)
        self.reason: Optional[Reason] = None   # set when its retirement is decided
        self.generation = 0                # bumped by reset: older generations are replaced
        self.channel: object = None        # owned by the backend

    @property
    def live(self) -> bool:
        return self.state in LIVE

    def __repr__(self) -> str:
        return f"worker {self.id} (pid {self.pid or '?'})"


def _advance(worker: Worker, event: str, on_move=None) -> WorkerState:
    """The one place a worker's state changes; `on_move(worker, event, the state it left)`
    is told when given ([logs] trace_frames)."""
    was = worker.state
    new = TRANSITIONS.get((was, event))
    if new is None:
        raise MinirrError(f"{worker}: event {event!r} is not allowed in state {was.name}")
    worker.state = new
    if on_move is not None:
        on_move(worker, event, was)
    return new


def failed_start(worker: Worker, was: WorkerState) -> bool:
    """It exited, or was killed for a fault (a bad handshake, a start timeout), before it
    was ever ready: the start failed, and the next one waits (back-off). A starting worker
    stopped for a soft reason (a shutdown, a reset) did not fail."""
    return not worker.ready_at and (was is STARTING or worker.reason in FAULTS)


class Pool:
    """Decisions about a fixed-size set of workers. Time comes in as `now`."""

    def __init__(self, size: int, max_jobs: int = 0, allocate_timeout_s: float = 60.0,
                 destroy_timeout_s: float = 60.0, rng: Optional[random.Random] = None,
                 on_move: Optional[Callable[["Worker", str, "WorkerState"], None]] = None) -> None:
        self.size = size
        self.surge = 0                     # extra workers allowed for now (a reload's replacement)
        self.max_jobs = max_jobs
        self.allocate_timeout_s = allocate_timeout_s
        self.destroy_timeout_s = destroy_timeout_s
        self.rng = rng or random.Random()
        self.workers: Dict[int, Worker] = {}
        self.generation = 0
        self.boot_failures = 0             # consecutive failed starts
        self.next_start_at = 0.0           # back-off: no start before this
        self._next_id = 1
        self._ready: Deque[Worker] = deque()
        self._shared = False               # some worker holds several jobs at once: look past idle ones
        self.websockets: Optional[bool] = None   # the last worker ready took WebSocket events (None: none yet)
        self.on_move = on_move             # told of every move ([logs] trace_frames)

    # ---- lifecycle -------------------------------------------------------------
    def new_worker(self, now: float) -> Worker:
        max_jobs = self.max_jobs
        if max_jobs:
            max_jobs += int(self.rng.uniform(0, MAX_JOBS_JITTER) * max_jobs)
        worker = Worker(self._next_id, now, max_jobs)
        worker.generation = self.generation
        worker.deadline_at = now + self.allocate_timeout_s if self.allocate_timeout_s else 0.0
        self._next_id += 1
        self.workers[worker.id] = worker
        return worker

    def hello(self, worker: Worker, pid: int, now: float, slots: int = 0) -> None:
        """The worker finished its bootstrap and answered the handshake; `slots` > 0: it
        takes request ids, and that many jobs at once."""
        _advance(worker, "hello", self.on_move)
        worker.pid = pid or worker.pid
        worker.multiplexed = slots > 0
        worker.slots = max(1, slots)
        if slots > 1:
            self._shared = True
        worker.ready_at = now
        worker.last_done_at = now
        worker.deadline_at = 0.0
        self.boot_failures = 0
        self.next_start_at = 0.0
        self._ready.append(worker)

    def ready_worker(self) -> Optional[Worker]:
        """The worker that should take the next job, or None: the idle one that has waited
        longest, else the least loaded worker with a free slot."""
        while self._ready:
            worker = self._ready.popleft()
            if worker.state is READY:
                return worker
        if self._shared:
            free = [w for w in self.workers.values()
                    if w.state is WORKING and w.reason is None and len(w.jobs) < w.slots]
            if free:
                return min(free, key=lambda w: len(w.jobs))
        return None

    def assign(self, worker: Worker, job: object, job_id: int) -> None:
        if len(worker.jobs) >= worker.slots or job_id in worker.jobs:
            raise MinirrError(f"{worker}: no free slot for request id {job_id} ({len(worker.jobs)} of {worker.slots})")
        _advance(worker, "assign", self.on_move)
        worker.jobs[job_id] = job

    def job_done(self, worker: Worker, job_id: int, now: float, counted: bool = True) -> Fate:
        """Job `job_id` no longer holds the worker (`counted`: it was served, for max_jobs).
        When that was its last: STOP if it must now be retired (max_jobs, or a retirement
        decided while it was busy), else KEEP (it is ready again). While others are in
        flight: KEEP."""
        del worker.jobs[job_id]
        if counted:
            worker.jobs_done += 1
        worker.last_done_at = now
        if worker.max_jobs and worker.jobs_done >= worker.max_jobs and worker.reason is None:
            worker.reason = Reason.MAX_JOBS
        if worker.jobs:
            return Fate.KEEP
        if worker.reason is not None:
            return Fate.STOP
        _advance(worker, "done", self.on_move)
        self._ready.append(worker)
        return Fate.KEEP

    @staticmethod
    def next_id(worker: Worker) -> int:
        """The request id for a new job: 0 on the plain wire; else the next u32 after the
        last one given that is not in flight (ids wrap around; an id is used again only
        once its last job's final frame is in)."""
        if not worker.multiplexed:
            return 0
        request_id = worker.last_id
        while True:
            request_id = request_id % MAX_REQUEST_ID + 1
            if request_id not in worker.jobs:
                worker.last_id = request_id
                return request_id

    @staticmethod
    def drop_jobs(worker: Worker) -> list:
        """The worker is lost (killed, exited, broke its channel): its jobs no longer hold
        it. -> those jobs, for the caller to fail."""
        jobs = list(worker.jobs.values())
        worker.jobs = {}
        return jobs

    def retire(self, worker: Worker, reason: Reason, now: float) -> None:
        """Move a worker to STOPPING: the backend has sent it a stop frame or killed it."""
        _advance(worker, "retire", self.on_move)
        worker.reason = worker.reason or reason
        worker.deadline_at = now + self.destroy_timeout_s if self.destroy_timeout_s else 0.0

    def mark(self, worker: Worker, reason: Reason) -> None:
        """Decide to retire a busy worker once its current job is done (soft reasons)."""
        worker.reason = worker.reason or reason

    def exited(self, worker: Worker, now: float) -> WorkerState:
        """The process is gone. Returns the state it was in when it went."""
        was = worker.state
        _advance(worker, "exit", self.on_move)
        worker.jobs = {}                   # nothing may keep a dead worker's jobs (and their buffers) alive
        if failed_start(worker, was):
            self._boot_failed(now)
        del self.workers[worker.id]
        return was

    def _boot_failed(self, now: float) -> None:
        self.boot_failures += 1
        delay = min(BOOT_BACKOFF_MAX_S, BOOT_BACKOFF_FIRST_S * 2 ** (self.boot_failures - 1))
        self.next_start_at = now + delay

    def forget_backoff(self) -> None:
        """An operator asked for new workers (reset, SIGHUP): start them now."""
        self.next_start_at = 0.0

    # ---- questions ---------------------------------------------------------------
    def deficit(self) -> int:
        """How many workers must be started to bring the pool back to its size."""
        counted = sum(1 for w in self.workers.values() if w.live and w.reason is None)
        return max(0, self.size + self.surge - counted)

    def surplus(self) -> List[Worker]:
        """Workers beyond size + surge (a reload's extra one, once it is over), the ready
        ones of the oldest generation first: these are retired (softly)."""
        counted = [w for w in self.workers.values() if w.live and w.reason is None]
        extra = len(counted) - self.size - self.surge
        if extra <= 0:
            return []
        counted.sort(key=lambda w: (w.state is not READY, w.generation, w.id))
        return counted[:extra]

    def can_start(self, now: float) -> bool:
        return now >= self.next_start_at

    def serving(self) -> int:
        """Workers that are ready or working: if 0 while starts fail, requests get 503 now."""
        return sum(1 for w in self.workers.values() if w.state is READY or w.state is WORKING)

    def overdue(self, now: float) -> List[Worker]:
        """Starting past allocate_timeout, stopping past destroy_timeout."""
        return [w for w in self.workers.values() if w.deadline_at and now >= w.deadline_at]

    def overdue_jobs(self, now: float) -> List[tuple]:
        """(worker, job) for every job at a worker past its own deadline (exec_ttl, or
        destroy_timeout after its client left)."""
        return [(w, job) for w in self.workers.values() for job in w.jobs.values()
                if job.deadline_at and now >= job.deadline_at]

    def in_flight(self) -> int:
        return sum(len(w.jobs) for w in self.workers.values())

    def counts(self) -> Dict[str, int]:
        counts = {state.value: 0 for state in WorkerState if state is not DEAD}
        for worker in self.workers.values():
            counts[worker.state.value] += 1
        return counts
