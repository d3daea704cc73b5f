"""The worker state table and the pool's decisions, with time passed in."""

import random

import pytest

from minirr.errors import MinirrError
from minirr.pool import BOOT_BACKOFF_MAX_S, TRANSITIONS, Pool, Worker, WorkerState, _advance

S = WorkerState
EVENTS = sorted({event for _, event in TRANSITIONS})


@pytest.mark.parametrize("state", list(WorkerState))
@pytest.mark.parametrize("event", EVENTS)
def test_every_pair_follows_the_table(state, event):
    worker = Worker(1, 0.0, 0)
    worker.state = state
    expected = TRANSITIONS.get((state, event))
    if expected is None:
        with pytest.raises(MinirrError, match="not allowed"):
            _advance(worker, event)
        assert worker.state is state
    else:
        assert _advance(worker, event) is expected


def test_dead_is_terminal():
    assert not [pair for pair in TRANSITIONS if pair[0] is S.DEAD]


def test_lifecycle_and_assignment():
    pool = Pool(2, allocate_timeout_s=10)
    a, b = pool.new_worker(0.0), pool.new_worker(0.0)
    assert pool.deficit() == 0 and pool.idle_worker() is None
    pool.hello(a, 101, 1.0)
    assert pool.idle_worker() is a
    pool.assign(a, "job", 1.0)
    assert a.state is S.BUSY and pool.idle_worker() is None
    assert pool.job_done(a, 2.0) is False and a.state is S.IDLE
    assert b.state is S.STARTING and pool.idle_worker() is a
    assert pool.counts() == {"starting": 1, "ready": 1, "working": 0, "stopping": 0}


def test_max_jobs_with_jitter_retires_after_the_job():
    rng = random.Random(1)
    pool = Pool(1, max_jobs=100, rng=rng)
    worker = pool.new_worker(0.0)
    assert 100 <= worker.max_jobs <= 115
    pool.hello(worker, 1, 0.0)
    for i in range(worker.max_jobs - 1):
        pool.assign(pool.idle_worker(), i, 0.0)
        assert pool.job_done(worker, 0.0) is False
    pool.assign(pool.idle_worker(), "last", 0.0)
    assert pool.job_done(worker, 0.0) is True
    assert worker.retire_reason == "max_jobs"
    # The replacement is due at once: the retiring worker no longer counts.
    assert pool.deficit() == 1


def test_jitter_spreads_workers():
    pool = Pool(20, max_jobs=1000, rng=random.Random(7))
    limits = {pool.new_worker(0.0).max_jobs for _ in range(20)}
    assert len(limits) > 10 and all(1000 <= n <= 1150 for n in limits)


def test_busy_worker_is_only_marked_for_retirement():
    pool = Pool(1)
    worker = pool.new_worker(0.0)
    pool.hello(worker, 1, 0.0)
    pool.assign(pool.idle_worker(), "job", 0.0)
    pool.mark_retiring(worker, "ttl")
    assert worker.state is S.BUSY
    assert pool.job_done(worker, 1.0) is True


def test_exec_ttl_overdue_uses_now():
    pool = Pool(1, exec_ttl_s=5)
    worker = pool.new_worker(0.0)
    pool.hello(worker, 1, 0.0)
    pool.assign(pool.idle_worker(), "job", 10.0)
    assert pool.overdue(14.9) == []
    assert pool.overdue(15.0) == [worker]


def test_start_timeout_overdue():
    pool = Pool(1, allocate_timeout_s=3)
    worker = pool.new_worker(0.0)
    assert pool.overdue(2.9) == [] and pool.overdue(3.0) == [worker]


def test_boot_failures_back_off_exponentially_and_cap():
    pool = Pool(1)
    delays = []
    now = 0.0
    for _ in range(10):
        worker = pool.new_worker(now)
        assert pool.exited(worker, now) is S.STARTING
        delays.append(pool.next_start_at - now)
        assert not pool.can_start(now)
        now = pool.next_start_at
        assert pool.can_start(now)
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert max(delays) == BOOT_BACKOFF_MAX_S
    worker = pool.new_worker(now)
    pool.hello(worker, 1, now)
    assert pool.boot_failures == 0 and pool.can_start(now)


def test_exit_removes_worker_and_reports_state():
    pool = Pool(1)
    worker = pool.new_worker(0.0)
    pool.hello(worker, 1, 0.0)
    pool.assign(pool.idle_worker(), "job", 0.0)
    assert pool.exited(worker, 1.0) is S.BUSY
    assert worker.state is S.DEAD and not pool.workers and pool.deficit() == 1
