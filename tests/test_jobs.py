"""The queue between front and back (minirr.master.jobs): submit, the queue's limits, the one
table from outcome to answer, and the bookkeeping of an answered job; a real Pool, fake
front and back, a fake clock."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest

from fakes import FakeClock
from minirr.master.jobs import ANSWERS, Job, Jobs, Outcome
from minirr.logs import AccessLog, LogWriter
from minirr.wire.messages import Request
from minirr.master.metrics import ServerMetrics
from minirr.master.pool import Pool


class Front:
    """Records error answers; `loop.now()` is what Retry-After is counted from."""

    def __init__(self, clock: FakeClock) -> None:
        self.loop = SimpleNamespace(now=clock)
        self.errors = []

    def answer_error(self, job, status, message, headers, keep_alive) -> None:
        job.status = status
        self.errors.append((job, status, message, headers, keep_alive))


class Back:
    def __init__(self) -> None:
        self.dispatched = []
        self.abandoned = []

    def dispatch(self, worker, job, now) -> None:
        job.worker = worker
        self.dispatched.append((worker, job, now))

    def abandon(self, job, now) -> None:
        self.abandoned.append((job, now))


class Setup:
    def __init__(self, size: int = 2, max_queue_size: int = 0, allocate_timeout_s: float = 60.0,
                 exec_ttl_s: float = 30.0, access_log: bool = True) -> None:
        self.clock = FakeClock()
        self.pool = Pool(size, allocate_timeout_s=allocate_timeout_s)
        self.metrics = ServerMetrics()
        self.log_text = io.StringIO()
        log = AccessLog(LogWriter(self.log_text), "text", clock=lambda: 1700000000.25) if access_log else None
        self.jobs = Jobs(self.pool, max_queue_size, allocate_timeout_s, exec_ttl_s, self.metrics, log)
        self.front, self.back = Front(self.clock), Back()
        self.jobs.front, self.jobs.back = self.front, self.back

    def ready_worker(self, pid: int = 4242):
        worker = self.pool.new_worker(self.clock())
        self.pool.hello(worker, pid, self.clock())
        return worker

    def job(self, path: str = "/a", query: str = "") -> Job:
        request = Request("GET", path, query, remote_addr="192.0.2.7")
        return Job(SimpleNamespace(name="conn"), request, True, self.clock())


# ---- submit ---------------------------------------------------------------------------------------

def test_a_ready_worker_gets_the_job_at_once():
    s = Setup()
    worker = s.ready_worker()
    job = s.job()
    s.jobs.submit(job, s.clock())
    assert s.back.dispatched == [(worker, job, s.clock())]
    assert not s.jobs.queue


def test_without_a_ready_worker_the_job_is_queued_with_its_allocate_deadline():
    s = Setup(allocate_timeout_s=5.0)
    job = s.job()
    s.jobs.submit(job, s.clock())
    assert list(s.jobs.queue) == [job] and job.deadline_at == s.clock() + 5.0
    assert s.jobs.waiting == 1 and not s.back.dispatched


def test_a_zero_allocate_timeout_queues_without_a_deadline():
    s = Setup(allocate_timeout_s=0.0)
    job = s.job()
    s.jobs.submit(job, s.clock())
    assert job.deadline_at == 0.0
    s.clock.advance(1e6)
    s.jobs.expire(s.clock())
    assert list(s.jobs.queue) == [job]


def test_a_full_queue_answers_503_queue_full_with_retry_after():
    s = Setup(max_queue_size=2)
    for _ in range(2):
        s.jobs.submit(s.job(), s.clock())
    third = s.job()
    s.jobs.submit(third, s.clock())
    assert s.front.errors == [(third, 503, "the request queue is full", (("Retry-After", "1"),), False)]
    assert s.metrics.no_free_workers.get() == 1 and s.jobs.waiting == 2


def test_no_serving_workers_after_boot_failures_is_503_no_workers_with_the_back_off_as_retry_after():
    s = Setup()
    worker = s.pool.new_worker(s.clock())
    s.pool.exited(worker, s.clock())                     # failed before it was ready
    s.pool.exited(s.pool.new_worker(s.clock()), s.clock())
    s.pool.exited(s.pool.new_worker(s.clock()), s.clock())
    assert s.pool.boot_failures == 3 and s.pool.next_start_at == s.clock() + 2.0
    s.clock.advance(0.3)                                 # 1.7 s of back-off left: rounded up
    job = s.job()
    s.jobs.submit(job, s.clock())
    assert s.front.errors == [(job, 503, "no worker is running (workers fail to start)",
                               (("Retry-After", "2"),), False)]
    assert not s.jobs.queue and s.metrics.no_free_workers.get() == 1


def test_retry_after_for_no_workers_is_at_least_one_second():
    s = Setup()
    s.pool.exited(s.pool.new_worker(s.clock()), s.clock())
    s.clock.advance(100.0)                               # the back-off is over, no start yet
    s.jobs.submit(s.job(), s.clock())
    assert s.front.errors[0][3] == (("Retry-After", "1"),)


def test_boot_failures_with_a_worker_still_serving_queue_the_job():
    s = Setup()
    busy = s.ready_worker()
    s.pool.assign(s.pool.ready_worker(), "other", s.clock())
    s.pool.exited(s.pool.new_worker(s.clock()), s.clock())
    assert s.pool.boot_failures == 1 and busy.state.value == "working"
    s.jobs.submit(s.job(), s.clock())
    assert s.jobs.waiting == 1 and not s.front.errors


# ---- the queue ---------------------------------------------------------------------------------------

def test_drain_gives_queued_jobs_to_ready_workers_oldest_first():
    s = Setup()
    jobs = [s.job(f"/{i}") for i in range(3)]
    for job in jobs:
        s.jobs.submit(job, s.clock())
    first, second = s.ready_worker(1), s.ready_worker(2)
    s.jobs.drain(s.clock())
    assert [(w, j) for w, j, _ in s.back.dispatched] == [(first, jobs[0]), (second, jobs[1])]
    assert list(s.jobs.queue) == [jobs[2]]


def test_expire_fails_overdue_queued_jobs_in_order_and_keeps_the_rest():
    s = Setup(allocate_timeout_s=5.0)
    early = [s.job("/early1"), s.job("/early2")]
    for job in early:
        s.jobs.submit(job, s.clock())
    s.clock.advance(2.0)
    late = s.job("/late")
    s.jobs.submit(late, s.clock())
    s.clock.advance(2.99)
    s.jobs.expire(s.clock())
    assert not s.front.errors
    s.clock.advance(0.01)
    s.jobs.expire(s.clock())
    assert [(e[0], e[1], e[2]) for e in s.front.errors] == [
        (early[0], 503, "no free worker within allocate_timeout"),
        (early[1], 503, "no free worker within allocate_timeout")]
    assert list(s.jobs.queue) == [late]
    assert s.metrics.no_free_workers.get() == 2


def test_abandoned_queued_jobs_are_skipped():
    s = Setup(allocate_timeout_s=5.0)
    gone, kept = s.job("/gone"), s.job("/kept")
    s.jobs.submit(gone, s.clock())
    s.jobs.submit(kept, s.clock())
    s.jobs.abandon(gone, s.clock())
    assert gone.cancelled and s.jobs.waiting == 1 and not s.back.abandoned
    worker = s.ready_worker()
    s.jobs.drain(s.clock())
    assert [(w, j) for w, j, _ in s.back.dispatched] == [(worker, kept)]
    assert not s.jobs.queue


def test_abandoned_jobs_are_not_answered_when_they_expire_or_fail():
    s = Setup(allocate_timeout_s=5.0)
    gone = s.job()
    s.jobs.submit(gone, s.clock())
    s.jobs.abandon(gone, s.clock())
    s.clock.advance(10.0)
    s.jobs.expire(s.clock())
    assert not s.front.errors and not s.jobs.queue
    other = s.job()
    s.jobs.submit(other, s.clock())
    s.jobs.abandon(other, s.clock())
    s.jobs.fail_all(Outcome.SHUTDOWN)
    assert not s.front.errors


def test_abandon_of_a_job_at_a_worker_goes_to_the_back_and_a_streamed_one_is_counted():
    s = Setup()
    s.ready_worker()
    job = s.job()
    s.jobs.submit(job, s.clock())
    job.streaming, job.status = True, 200
    s.clock.advance(1.5)
    s.jobs.abandon(job, s.clock())
    assert s.back.abandoned == [(job, s.clock())]
    assert job.done and s.metrics.requests.get(("200",)) == 1


def test_retry_puts_the_job_first_in_line():
    s = Setup()
    waiting, retried = s.job("/waiting"), s.job("/retried")
    s.jobs.submit(waiting, s.clock())
    retried.worker = object()
    s.jobs.retry(retried, s.clock())
    assert retried.worker is None and list(s.jobs.queue) == [retried, waiting]
    worker = s.ready_worker()
    s.jobs.drain(s.clock())
    assert s.back.dispatched[0][:2] == (worker, retried)


def test_fail_all_answers_every_queued_job():
    s = Setup()
    jobs = [s.job() for _ in range(3)]
    for job in jobs:
        s.jobs.submit(job, s.clock())
    s.jobs.fail_all(Outcome.SHUTDOWN)
    assert [e[0] for e in s.front.errors] == jobs and not s.jobs.queue
    assert {e[1:] for e in s.front.errors} == {(503, "the server is shutting down", (("Retry-After", "1"),), False)}
    assert s.metrics.no_free_workers.get() == 0           # a shutdown is not a lack of workers


# ---- fail(): the ANSWERS table ------------------------------------------------------------------------

# (status, message, extra headers, keep the connection open, counted as no free worker);
# everything from 502 up closes the connection.
EXPECTED = {
    Outcome.SOFT_ERROR: (500, "the application raised an error", (), True, 0),
    Outcome.BAD_RESPONSE: (502, "the worker sent an invalid response", (), False, 0),
    Outcome.WORKER_DIED: (502, "the worker died while handling the request", (), False, 0),
    Outcome.EXEC_TTL: (504, "the request exceeded exec_ttl (30s)", (), False, 0),
    Outcome.ALLOCATE_TIMEOUT: (503, "no free worker within allocate_timeout", (("Retry-After", "1"),), False, 1),
    Outcome.QUEUE_FULL: (503, "the request queue is full", (("Retry-After", "1"),), False, 1),
    Outcome.NO_WORKERS: (503, "no worker is running (workers fail to start)", (("Retry-After", "1"),), False, 1),
    Outcome.SHUTDOWN: (503, "the server is shutting down", (("Retry-After", "1"),), False, 0),
}


def test_every_outcome_has_an_answer():
    assert set(ANSWERS) == set(Outcome) == set(EXPECTED)


@pytest.mark.parametrize("outcome", list(Outcome))
def test_fail_maps_each_outcome_through_the_table(outcome):
    s = Setup()
    job = s.job()
    s.jobs.fail(job, outcome)
    status, message, headers, keep_alive, counted = EXPECTED[outcome]
    assert s.front.errors == [(job, status, message, headers, keep_alive)]
    assert s.metrics.no_free_workers.get() == counted


# ---- finished(): metrics and the access log -----------------------------------------------------------------

def test_finished_counts_the_answer_and_writes_the_access_log_line():
    s = Setup()
    worker = s.ready_worker(pid=4121)
    job = s.job("/path", "q=1")
    s.jobs.submit(job, s.clock())
    job.status, job.body_bytes = 201, 17
    s.clock.advance(0.0125)
    s.jobs.finished(job, s.clock())
    assert job.done and job.worker is worker
    assert s.metrics.requests.get(("201",)) == 1
    assert s.metrics.duration.count == 1 and s.metrics.duration.sum == pytest.approx(0.0125)
    line = s.log_text.getvalue()
    assert line.endswith(' INFO minirr.access: 192.0.2.7 "GET /path?q=1 HTTP/1.1" 201 17 12.5ms pid=4121\n')
    assert line.count("\n") == 1 and ",250 INFO" in line


def test_the_access_log_shows_a_dash_for_a_job_no_worker_took():
    s = Setup()
    job = s.job("/x")
    s.jobs.fail(job, Outcome.QUEUE_FULL)
    s.jobs.finished(job, s.clock())
    assert s.log_text.getvalue().endswith('"GET /x HTTP/1.1" 503 0 0.0ms pid=-\n')


def test_without_an_access_log_only_the_metrics_move():
    s = Setup(access_log=False)
    job = s.job()
    job.status = 200
    s.jobs.finished(job, s.clock())
    assert s.metrics.requests.get(("200",)) == 1 and s.log_text.getvalue() == ""
