"""The worker pool's bookkeeping: worker records, their state table, and decisions.

Owns: which workers exist, what state each is in, which one gets the next job, when a
      worker is retired or overdue, and the back-off after failed starts.
Never: touches a process, a pipe or a clock. The server does the I/O and passes `now`
       in; job payloads are opaque to the pool.

Worker state table (one `_advance` applies it and raises on a move it does not allow):

    STARTING --hello--> IDLE --assign--> BUSY --done--> IDLE
    IDLE | BUSY | STARTING --retire--> STOPPING      (stop frame sent, or killed)
    any live state --exit--> DEAD                     (DEAD is terminal)

Retirement is soft: a BUSY worker is only marked (`retire_reason`) and retired when its
job is done. Only a real fault (exec_ttl, a broken channel, a process exit) ends a busy
worker, and the server does that with the "retire" event after killing it.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from typing import Deque, Dict, List, Optional

from .errors import MinirrError


class WorkerState(enum.Enum):
    STARTING = "starting"
    IDLE = "ready"
    BUSY = "working"
    STOPPING = "stopping"
    DEAD = "dead"

    # Enum's own __hash__ is Python code; states are dict keys looked up a few times per
    # request, and members are singletons, so identity will do (as in http11.State).
    __hash__ = object.__hash__


S = WorkerState
TRANSITIONS = {
    (S.STARTING, "hello"): S.IDLE,
    (S.IDLE, "assign"): S.BUSY,
    (S.BUSY, "done"): S.IDLE,
    (S.STARTING, "retire"): S.STOPPING,
    (S.IDLE, "retire"): S.STOPPING,
    (S.BUSY, "retire"): S.STOPPING,
    (S.STARTING, "exit"): S.DEAD,
    (S.IDLE, "exit"): S.DEAD,
    (S.BUSY, "exit"): S.DEAD,
    (S.STOPPING, "exit"): S.DEAD,
}

BOOT_BACKOFF_FIRST_S = 0.5
BOOT_BACKOFF_MAX_S = 30.0
MAX_JOBS_JITTER = 0.15        # up to +15% per worker, so a pool never recycles all at once


class Worker:
    """One worker process as the pool sees it. `channel` is the server's (pipes, process)."""

    def __init__(self, worker_id: int, created_at: float, max_jobs: int) -> None:
        self.id = worker_id
        self.pid = 0
        self.state = WorkerState.STARTING
        self.created_at = created_at
        self.last_done_at = 0.0           # when it last finished a job (idle_ttl)
        self.max_jobs = max_jobs           # 0 = unlimited; already jittered
        self.jobs_done = 0
        self.job: object = None            # the job it is working on (opaque)
        self.deadline_at = 0.0             # BUSY: exec_ttl; STARTING: handshake; STOPPING: kill
        self.retire_reason = ""            # set when retirement is decided
        self.generation = 0                # bumped by reset: older generations are replaced
        self.channel: object = None        # owned by the server

    @property
    def live(self) -> bool:
        return self.state in (S.STARTING, S.IDLE, S.BUSY)

    def __repr__(self) -> str:
        return f"worker {self.id} (pid {self.pid or '?'})"


def _advance(worker: Worker, event: str) -> WorkerState:
    new = TRANSITIONS.get((worker.state, event))
    if new is None:
        raise MinirrError(f"{worker}: event {event!r} is not allowed in state {worker.state.name}")
    worker.state = new
    return new


class Pool:
    """Decisions about a fixed-size set of workers. Time comes in as `now`."""

    def __init__(self, size: int, max_jobs: int = 0, exec_ttl_s: float = 0.0,
                 allocate_timeout_s: float = 60.0, destroy_timeout_s: float = 60.0,
                 rng: Optional[random.Random] = None) -> None:
        self.size = size
        self.max_jobs = max_jobs
        self.exec_ttl_s = exec_ttl_s
        self.allocate_timeout_s = allocate_timeout_s
        self.destroy_timeout_s = destroy_timeout_s
        self.rng = rng or random.Random()
        self.workers: Dict[int, Worker] = {}
        self.generation = 0
        self.boot_failures = 0             # consecutive failed starts
        self.next_start_at = 0.0           # back-off: no start before this
        self._next_id = 1
        self._idle: Deque[Worker] = deque()

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

    def hello(self, worker: Worker, pid: int, now: float) -> None:
        """The worker finished its bootstrap and answered the handshake."""
        _advance(worker, "hello")
        worker.pid = pid or worker.pid
        worker.last_done_at = now
        worker.deadline_at = 0.0
        self.boot_failures = 0
        self.next_start_at = 0.0
        self._idle.append(worker)

    def idle_worker(self) -> Optional[Worker]:
        """The worker that should take the next job, or None."""
        while self._idle:
            worker = self._idle.popleft()
            if worker.state is S.IDLE:
                return worker
        return None

    def assign(self, worker: Worker, job: object, now: float) -> None:
        _advance(worker, "assign")
        worker.job = job
        worker.deadline_at = now + self.exec_ttl_s if self.exec_ttl_s else 0.0

    def job_done(self, worker: Worker, now: float) -> bool:
        """The worker's job is answered. True when it must now be retired (max_jobs, or a
        retirement decided while it was busy); otherwise it is idle again."""
        worker.jobs_done += 1
        worker.job = None
        worker.last_done_at = now
        if worker.max_jobs and worker.jobs_done >= worker.max_jobs and not worker.retire_reason:
            worker.retire_reason = "max_jobs"
        if worker.retire_reason:
            return True
        _advance(worker, "done")
        worker.deadline_at = 0.0
        self._idle.append(worker)
        return False

    def retire(self, worker: Worker, reason: str, now: float) -> None:
        """Move a worker to STOPPING: the server has sent it a stop frame or killed it."""
        _advance(worker, "retire")
        worker.retire_reason = worker.retire_reason or reason
        worker.deadline_at = now + self.destroy_timeout_s if self.destroy_timeout_s else 0.0

    def mark_retiring(self, worker: Worker, reason: str) -> None:
        """Decide to retire a busy worker once its current job is done (soft limits)."""
        worker.retire_reason = worker.retire_reason or reason

    def exited(self, worker: Worker, now: float) -> WorkerState:
        """The process is gone. Returns the state it was in when it went."""
        was = worker.state
        _advance(worker, "exit")
        if was is S.STARTING:
            self._boot_failed(now)
        del self.workers[worker.id]
        return was

    def _boot_failed(self, now: float) -> None:
        self.boot_failures += 1
        delay = min(BOOT_BACKOFF_MAX_S, BOOT_BACKOFF_FIRST_S * 2 ** (self.boot_failures - 1))
        self.next_start_at = now + delay

    # ---- questions ---------------------------------------------------------------
    def deficit(self) -> int:
        """How many workers must be started to bring the pool back to its size."""
        counted = sum(1 for w in self.workers.values() if w.live and not w.retire_reason)
        return max(0, self.size - counted)

    def can_start(self, now: float) -> bool:
        return now >= self.next_start_at

    def serving(self) -> int:
        """Workers that are ready or working: if 0 while starts fail, requests get 503 now."""
        return sum(1 for w in self.workers.values() if w.state in (S.IDLE, S.BUSY))

    def overdue(self, now: float) -> List[Worker]:
        """Busy past exec_ttl, starting past allocate_timeout, stopping past destroy_timeout."""
        return [w for w in self.workers.values()
                if w.deadline_at and now >= w.deadline_at and w.state is not S.IDLE]

    def counts(self) -> Dict[str, int]:
        counts = {state.value: 0 for state in WorkerState if state is not S.DEAD}
        for worker in self.workers.values():
            counts[worker.state.value] += 1
        return counts
