"""The supervisor's soft limits (RoadRunner's `supervisor` plugin): which worker to retire.

Owns: the ttl, idle_ttl and max_worker_memory rules, the order they are checked in,
      the one-at-a-time rule, and the name of the reason a replaced worker is counted under.
Never: reads /proc or a clock, or stops a process. The master passes `now` and the RSS
       readings in every watch_tick, and retires the chosen worker (soft: at once when
       ready, after its response when working; pool.fate).

    limit               applies to                         reason
    max_worker_memory   ready or working, RSS > limit MB    memory
    ttl                 ready or working, age >= ttl        ttl
    idle_ttl            ready, served >= 1 request,         idle_ttl
                        idle >= idle_ttl
    exec_ttl (hard)     working too long: killed, 504       exec_ttl   (backend.py)

`reason` is a pool.Reason; its value is the word logs and metrics use.

One at a time: while a replacement is still starting, or a busy worker is already marked
for retirement, nothing more is retired, so capacity dips by at most one worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

from .pool import READY, STARTING, WORKING, Reason, Worker

MB = 1024 * 1024


@dataclass(frozen=True)
class SoftLimits:
    ttl_s: float = 0.0                 # 0 = no limit, for all three
    idle_ttl_s: float = 0.0
    max_memory_mb: int = 0

    @property
    def active(self) -> bool:
        return bool(self.ttl_s or self.idle_ttl_s or self.max_memory_mb)


def exceeded(worker: Worker, now: float, limits: SoftLimits,
             rss_bytes: Optional[int]) -> Optional[Tuple[Reason, str]]:
    """(reason, what happened) if `worker` is past one of the soft limits, else None."""
    if worker.state not in (READY, WORKING) or worker.reason is not None:
        return None
    if limits.max_memory_mb and rss_bytes is not None and rss_bytes > limits.max_memory_mb * MB:
        return Reason.MEMORY, f"uses {rss_bytes / MB:.1f} MB, over max_worker_memory ({limits.max_memory_mb} MB)"
    age = now - worker.created_at
    if limits.ttl_s and age >= limits.ttl_s:
        return Reason.TTL, f"is {age:.1f}s old, past ttl ({limits.ttl_s:g}s)"
    idle = now - worker.last_done_at
    if limits.idle_ttl_s and worker.state is READY and worker.jobs_done and idle >= limits.idle_ttl_s:
        return Reason.IDLE_TTL, f"has been idle {idle:.1f}s, past idle_ttl ({limits.idle_ttl_s:g}s)"
    return None


def retirement_in_progress(workers: Iterable[Worker]) -> bool:
    """A replacement is starting, or a busy worker waits to be retired after its response."""
    return any(w.state is STARTING or (w.state is WORKING and w.reason is not None) for w in workers)


def next_retirement(workers: Iterable[Worker], now: float, limits: SoftLimits,
                    rss_by_pid: Dict[int, int]) -> Optional[Tuple[Worker, Reason, str]]:
    """The one worker to retire now, with its reason and a log phrase; None if no worker
    is due or a retirement is still in progress. Memory first: it is the limit that
    protects the machine; then the oldest worker first."""
    workers = list(workers)
    if not limits.active or retirement_in_progress(workers):
        return None
    due: List[Tuple[int, float, Worker, Reason, str]] = []
    for worker in workers:
        found = exceeded(worker, now, limits, rss_by_pid.get(worker.pid))
        if found is not None:
            reason, detail = found
            due.append((0 if reason is Reason.MEMORY else 1, worker.created_at, worker, reason, detail))
    if not due:
        return None
    _, _, worker, reason, detail = min(due, key=lambda item: (item[0], item[1]))
    return worker, reason, detail
