"""Supervisor soft limits: the pure decisions with time and RSS passed in, /proc parsing,
then ttl, idle_ttl and max_worker_memory against a live server."""

from __future__ import annotations

import os


from minirr.master import procfs
from minirr.master import supervisor
from minirr.master.pool import Pool, Reason
from minirr.master.supervisor import SoftLimits as Limits, exceeded, next_retirement
from serverproc import RequestLoop, pid_alive, wait_until

MB = 1024 * 1024


def ready_pool(n: int, created_at: float = 0.0) -> Pool:
    pool = Pool(n)
    for i in range(n):
        pool.hello(pool.new_worker(created_at), 100 + i, created_at)
    return pool


# ---- pure decisions ------------------------------------------------------------------------

def test_no_limits_no_retirement():
    pool = ready_pool(2)
    assert not Limits().active
    assert next_retirement(pool.workers.values(), 1e9, Limits(), {100: 10 ** 12}) is None


def test_ttl_applies_to_ready_and_working_workers():
    pool = ready_pool(2)
    a, b = pool.workers.values()
    pool.assign(pool.ready_worker(), "job", 0)
    limits = Limits(ttl_s=10)
    assert exceeded(a, 9.9, limits, None) is None
    assert exceeded(a, 10.0, limits, None)[0] is Reason.TTL
    assert exceeded(b, 10.0, limits, None)[0] is Reason.TTL


def test_idle_ttl_only_after_a_first_request():
    pool = ready_pool(1)
    (worker,) = pool.workers.values()
    limits = Limits(idle_ttl_s=5)
    assert exceeded(worker, 100.0, limits, None) is None           # never served: kept
    pool.assign(pool.ready_worker(), "job", 0)
    assert exceeded(worker, 100.0, limits, None) is None           # busy is not idle
    pool.job_done(worker, 0, 20.0)
    assert exceeded(worker, 24.9, limits, None) is None
    reason, detail = exceeded(worker, 25.0, limits, None)
    assert reason is Reason.IDLE_TTL and "idle_ttl (5s)" in detail


def test_memory_limit_uses_the_rss_reading():
    pool = ready_pool(1)
    (worker,) = pool.workers.values()
    limits = Limits(max_memory_mb=64)
    assert exceeded(worker, 0.0, limits, 64 * MB) is None
    assert exceeded(worker, 0.0, limits, None) is None              # no reading: no decision
    reason, detail = exceeded(worker, 0.0, limits, 64 * MB + 1)
    assert reason is Reason.MEMORY and "max_worker_memory (64 MB)" in detail


def test_one_at_a_time_memory_first_then_oldest():
    pool = Pool(3)
    old, older, big = (pool.new_worker(t) for t in (5.0, 1.0, 9.0))
    for i, w in enumerate((old, older, big)):
        pool.hello(w, 100 + i, w.created_at)
    limits = Limits(ttl_s=1, max_memory_mb=10)
    rss = {102: 11 * MB}
    assert next_retirement(pool.workers.values(), 50.0, limits, rss)[:2] == (big, Reason.MEMORY)
    assert next_retirement(pool.workers.values(), 50.0, limits, {})[:2] == (older, Reason.TTL)
    # While a replacement starts, nothing more is retired: capacity dips by one at most.
    pool.new_worker(50.0)
    assert next_retirement(pool.workers.values(), 50.0, limits, rss) is None


def test_a_busy_worker_marked_for_retirement_blocks_the_next():
    pool = ready_pool(2)
    busy = pool.ready_worker()
    pool.assign(busy, "job", 0)
    pool.mark(busy, Reason.TTL)
    assert supervisor.retirement_in_progress(pool.workers.values())
    assert next_retirement(pool.workers.values(), 100.0, Limits(ttl_s=1), {}) is None


# ---- /proc ---------------------------------------------------------------------------------------

def test_parse_proc_files():
    assert procfs.parse_rss_bytes("Name:\tpython\nVmRSS:\t   2048 kB\nThreads: 1\n") == 2048 * 1024
    assert procfs.parse_rss_bytes("Name:\tzombie\nState:\tZ (zombie)\n") is None
    stat = "4121 (odd) name)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100 0 0"
    assert procfs.parse_cpu_ticks(stat) == 300
    assert procfs.parse_cpu_ticks("garbage") is None
    assert procfs.cpu_percent(procfs.CpuSample(100, 10.0), procfs.CpuSample(150, 11.0), clk_tck=100) == 50.0
    assert procfs.cpu_percent(procfs.CpuSample(100, 10.0), procfs.CpuSample(100, 10.0)) == 0.0


def test_read_this_process():
    assert procfs.read_rss_bytes(os.getpid()) > MB
    assert procfs.read_cpu_sample(os.getpid(), 1.0).ticks >= 0
    assert procfs.read_rss_bytes(2 ** 22 + 12345) is None              # beyond pid_max: gone


# ---- against a live server -------------------------------------------------------------------------

def config(workers: int, supervisor_keys: str) -> str:
    return (f"[server]\napp = minirr_testapp:create_app\nfactory = true\n[pool]\nnum_workers = {workers}\n"
            f"[supervisor]\nwatch_tick = 100ms\n{supervisor_keys}")


def get(srv, path, **kw):
    return srv.request("GET", path, **kw)


def test_ttl_replaces_workers_without_failing_requests(serve):
    srv = serve(config(2, "ttl = 1s\n"))
    old = srv.wait_workers(2)
    with RequestLoop(srv, threads=2) as loop:
        srv.wait_for_log(r"past ttl \(1s\); replacing it")
        srv.wait_workers(2, timeout=20, exclude=old)
    assert loop.failures == []
    srv.wait_for_log(r"stopped \(ttl\)", count=2)


def test_ttl_lets_a_busy_worker_finish_its_request(serve):
    srv = serve(config(1, "ttl = 1s\n"))
    status, _, body = get(srv, "/sleep?2", timeout=30)            # outlives the ttl
    assert (status, body) == (200, b"slept")
    pid = int(srv.wait_for_log(r"sleeping in \d+")[0].rsplit(" ", 1)[1])
    srv.wait_for_log(rf"\(pid {pid}\) is [\d.]+s old, past ttl \(1s\); replacing it after its request")
    srv.wait_for_log(rf"\(pid {pid}\) stopped \(ttl\)")
    assert "exceeded exec_ttl" not in srv.log and "killed" not in srv.log


def test_idle_ttl_replaces_only_workers_that_served(serve):
    srv = serve(config(2, "idle_ttl = 300ms\n"))
    first, second = srv.wait_workers(2)
    served = int(get(srv, "/pid")[2])
    untouched = second if served == first else first
    srv.wait_for_log(rf"\(pid {served}\) has been idle [\d.]+s, past idle_ttl \(0.3s\)")
    srv.wait_for_log(rf"\(pid {served}\) stopped \(idle_ttl\)")
    wait_until(lambda: not pid_alive(served), message="the idle worker to exit")
    assert pid_alive(untouched) and f"(pid {untouched}) has been idle" not in srv.log


def test_max_worker_memory_replaces_a_grown_worker(serve):
    srv = serve(config(1, "max_worker_memory = 80\n"))
    status, _, body = get(srv, "/grow?120")
    assert status == 200
    pid = int(body.split()[0])
    srv.wait_for_log(rf"\(pid {pid}\) uses [\d.]+ MB, over max_worker_memory \(80 MB\); replacing it")
    srv.wait_for_log(rf"\(pid {pid}\) stopped \(memory\)")
    new = int(get(srv, "/pid")[2])
    assert new != pid
