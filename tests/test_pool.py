"""The worker state table and the pool's decisions, with time passed in."""

import random

import pytest

from minirr.errors import MinirrError
from minirr.master.pool import (BOOT_BACKOFF_MAX_S, DEAD, FATES, FAULTS, READY, STARTING, STOPPING, TRANSITIONS, WORKING,
                         Fate, Pool, Reason, Worker, WorkerState, _advance, fate, restart_label)
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
    assert not [pair for pair in TRANSITIONS if pair[0] is DEAD]


def test_lifecycle_and_assignment():
    pool = Pool(2, allocate_timeout_s=10)
    a, b = pool.new_worker(0.0), pool.new_worker(0.0)
    assert pool.deficit() == 0 and pool.ready_worker() is None
    pool.hello(a, 101, 1.0)
    assert pool.ready_worker() is a
    pool.assign(a, "job", 0)
    assert a.state is WORKING and pool.ready_worker() is None
    assert pool.job_done(a, 0, 2.0) is Fate.KEEP and a.state is READY
    assert b.state is STARTING and pool.ready_worker() is a
    assert pool.counts() == {"starting": 1, "ready": 1, "working": 0, "stopping": 0}


def test_max_jobs_with_jitter_retires_after_the_job():
    rng = random.Random(1)
    pool = Pool(1, max_jobs=100, rng=rng)
    worker = pool.new_worker(0.0)
    assert 100 <= worker.max_jobs <= 115
    pool.hello(worker, 1, 0.0)
    for i in range(worker.max_jobs - 1):
        pool.assign(pool.ready_worker(), i, 0)
        assert pool.job_done(worker, 0, 0.0) is Fate.KEEP
    pool.assign(pool.ready_worker(), "last", 0)
    assert pool.job_done(worker, 0, 0.0) is Fate.STOP
    assert worker.reason is Reason.MAX_JOBS
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
    pool.assign(pool.ready_worker(), "job", 0)
    pool.mark(worker, Reason.TTL)
    assert worker.state is WORKING
    assert pool.job_done(worker, 0, 1.0) is Fate.STOP


class Deadline:
    """A job as the pool sees it: opaque, but for its own deadline."""

    def __init__(self, deadline_at: float) -> None:
        self.deadline_at = deadline_at


def test_a_job_past_its_own_deadline_is_overdue_not_its_worker():
    pool = Pool(1)
    worker = pool.new_worker(0.0)
    pool.hello(worker, 1, 0.0)
    job = Deadline(15.0)
    pool.assign(pool.ready_worker(), job, 0)
    assert pool.overdue_jobs(14.9) == [] and pool.overdue(100.0) == []
    assert pool.overdue_jobs(15.0) == [(worker, job)]


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
        assert pool.exited(worker, now) is STARTING
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
    pool.assign(pool.ready_worker(), "job", 0)
    assert pool.exited(worker, 1.0) is WORKING
    assert worker.state is DEAD and not pool.workers and pool.deficit() == 1


# ---- a worker's fate: one table, state x kind of reason -----------------------------------

@pytest.mark.parametrize("state", [STARTING, READY, WORKING, STOPPING])
@pytest.mark.parametrize("reason", list(Reason))
def test_fate_follows_the_table(state, reason):
    expected = FATES[(state, reason in FAULTS)]
    assert fate(state, reason) is expected
    if reason in FAULTS:
        assert expected is Fate.KILL                 # a fault ends a worker, busy or not
    elif state is WORKING:
        assert expected is Fate.STOP_WHEN_FREE       # never killed for bookkeeping
    elif state is READY:
        assert expected is Fate.STOP


def test_restart_labels_are_the_metric_words():
    assert restart_label(STOPPING, Reason.MAX_JOBS) == "max_jobs"
    assert restart_label(STOPPING, Reason.EXEC_TTL) == "exec_ttl"
    assert restart_label(STOPPING, Reason.BROKEN_CHANNEL) == "crash"
    assert restart_label(WORKING, None) == "crash"
    assert restart_label(READY, Reason.TTL) == "crash"          # marked for ttl, but it died first
    assert restart_label(STOPPING, Reason.SHUTDOWN) is None


def test_surge_allows_one_more_worker_and_backoff_can_be_forgotten():
    pool = Pool(1)
    worker = pool.new_worker(0.0)
    pool.exited(worker, 0.0)
    assert not pool.can_start(0.0)
    pool.forget_backoff()
    assert pool.can_start(0.0)
    pool.hello(pool.new_worker(0.0), 1, 0.0)
    assert pool.deficit() == 0
    pool.surge = 1
    assert pool.deficit() == 1


def test_an_exited_worker_lets_go_of_its_job():
    pool = Pool(1)
    worker = pool.new_worker(0.0)
    pool.hello(worker, 1, 0.0)
    pool.assign(pool.ready_worker(), object(), 0)
    pool.exited(worker, 1.0)
    assert worker.jobs == {}


def test_surplus_workers_are_ready_ones_first_then_the_oldest_generation():
    pool = Pool(2)
    old = pool.new_worker(0.0)
    pool.hello(old, 1, 0.0)
    pool.generation += 1
    pool.surge = 1
    first, second = pool.new_worker(0.0), pool.new_worker(0.0)
    pool.hello(first, 2, 0.0)
    pool.hello(second, 3, 0.0)
    assert pool.ready_worker() is old
    pool.assign(old, "job", 0)                          # the old one works: it is not stopped first
    assert pool.surplus() == []
    pool.surge = 0
    assert pool.surplus() == [first]
    pool.job_done(old, 0, 1.0)
    assert pool.surplus() == [old]                        # all ready: the oldest generation goes


# ---- workers that hold several jobs (request ids) ------------------------------------------

def test_a_plain_worker_has_one_slot_and_a_second_job_is_refused():
    pool = Pool(1)
    worker = pool.new_worker(0.0)
    pool.hello(worker, 1, 0.0)
    pool.assign(pool.ready_worker(), "a", 0)
    assert pool.ready_worker() is None
    with pytest.raises(MinirrError, match="no free slot"):
        pool.assign(worker, "b", 1)


def test_the_next_job_goes_to_an_idle_worker_then_the_least_loaded():
    pool = Pool(2)
    a, b = pool.new_worker(0.0), pool.new_worker(0.0)
    pool.hello(a, 1, 0.0, slots=3)
    pool.hello(b, 2, 0.0, slots=3)
    pool.assign(pool.ready_worker(), "1", 1)                   # a: idle longest
    assert pool.ready_worker() is b                            # idle beats loaded
    pool.assign(b, "2", 1)
    pool.assign(b, "3", 2)
    assert pool.ready_worker() is a                            # a holds 1, b holds 2
    pool.assign(a, "4", 2)
    pool.assign(a, "5", 3)
    pool.assign(pool.ready_worker(), "6", 3)                   # b: 2 of 3
    assert pool.ready_worker() is None                         # every slot taken
    assert pool.in_flight() == 6 and a.state is WORKING


def test_a_worker_is_ready_again_only_when_its_last_job_ends():
    pool = Pool(1)
    worker = pool.new_worker(0.0)
    pool.hello(worker, 1, 0.0, slots=2)
    pool.assign(pool.ready_worker(), "a", 1)
    pool.assign(pool.ready_worker(), "b", 2)
    assert pool.job_done(worker, 1, 1.0) is Fate.KEEP and worker.state is WORKING
    assert pool.job_done(worker, 2, 2.0) is Fate.KEEP and worker.state is READY
    assert worker.jobs_done == 2


def test_a_worker_marked_for_retirement_takes_no_new_job_and_stops_after_its_last():
    pool = Pool(1)
    worker = pool.new_worker(0.0)
    pool.hello(worker, 1, 0.0, slots=2)
    pool.assign(pool.ready_worker(), "a", 1)
    pool.assign(pool.ready_worker(), "b", 2)
    pool.job_done(worker, 2, 1.0)
    pool.mark(worker, Reason.MAX_JOBS)
    assert pool.ready_worker() is None                         # it has a free slot, but is retiring
    assert pool.job_done(worker, 1, 2.0) is Fate.STOP


def test_a_job_that_did_not_count_is_not_a_served_request():
    pool = Pool(1, max_jobs=1)
    worker = pool.new_worker(0.0)
    pool.hello(worker, 1, 0.0)
    pool.assign(pool.ready_worker(), "recycled", 0)
    assert pool.job_done(worker, 0, 1.0, counted=False) is Fate.KEEP and worker.jobs_done == 0


def test_dropping_a_lost_workers_jobs_returns_them():
    pool = Pool(1)
    worker = pool.new_worker(0.0)
    pool.hello(worker, 1, 0.0, slots=2)
    pool.assign(worker, "a", 1)
    pool.assign(worker, "b", 2)
    assert sorted(pool.drop_jobs(worker)) == ["a", "b"] and worker.jobs == {}
