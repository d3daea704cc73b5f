"""Worker lifecycle in the master (minirr.master.backend): starts and handshakes, fate through
retire(), release after max_jobs, exits, timeouts, the reload; the back half wired as
server.py wires it, with a fake launcher whose processes are real pipes played by the
test, recording clients, a fake selector and clock (tests/backrig.py). What a worker's
frames become for its client is tests/test_answer_path.py's."""

from __future__ import annotations

import json
import logging
import os

import pytest

from fakes import READ
from minirr.master.jobs import AT_WORKER, DONE, QUEUED
from minirr.master.pool import BOOT_BACKOFF_FIRST_S, DEAD, READY, STARTING, STOPPING, WORKING, Reason
from minirr.wire import frame
from minirr.wire.frame import CODEC_JSON, CONTROL, STREAM

STOP_FRAME_PAYLOAD = b'{"stop": true}'


def control_frames(proc) -> list:
    return [item.payload for item in frame.FrameDecoder().feed(proc.read_requests()) if item.flags & CONTROL]


def assert_error(r, job, status: int, message: str) -> None:
    """The job's client got `status` with `message`, and its answer is over."""
    answer = r.answer(job)
    assert (answer.status, answer.body, answer.complete) == (status, message.encode() + b"\n", True)
    assert job.state is DONE


# ---- starting ---------------------------------------------------------------------------------------

def test_ensure_pool_starts_workers_and_sends_each_the_handshake(rig):
    r = rig(num_workers=2)
    r.back.ensure_pool(r.clock())
    assert len(r.launcher.started) == 2
    first, second = r.launcher.started
    [item] = frame.FrameDecoder().feed(first.read_requests())
    assert item.flags == CONTROL | CODEC_JSON and json.loads(item.payload) == {"pid": os.getpid()}
    # the second child is told to close the first one's pipes (STYLE.md §5)
    assert r.launcher.close_in_child[0] == [] and set(first.fds()) <= set(r.launcher.close_in_child[1])
    assert [w.state for w in r.pool.workers.values()] == [STARTING, STARTING]
    r.back.ensure_pool(r.clock())
    assert len(r.launcher.started) == 2                   # starting ones count


def test_the_handshake_answer_makes_the_worker_ready(rig, caplog):
    caplog.set_level(logging.INFO, logger="minirr")
    r = rig()
    r.back.ensure_pool(r.clock())
    [proc] = r.launcher.started
    r.clock.advance(0.25)
    r.hello(proc, json.dumps({"pid": 777}).encode())
    worker = r.worker_of(proc)
    assert worker.state is READY and worker.pid == 777
    assert r.ops.calls == [("ready", worker)]
    assert "worker 1 (pid 777) ready in 250ms" in caplog.text


def test_the_handshake_answer_gives_a_waiting_job_its_worker(rig):
    r = rig()
    r.back.ensure_pool(r.clock())
    [proc] = r.launcher.started
    job = r.submit("/early")
    assert job.state is QUEUED and r.jobs.waiting == 1
    r.hello(proc)
    assert r.request_of(proc)[0]["uri"] == "http://x/early" and job.worker is r.worker_of(proc)


@pytest.mark.parametrize("answer", [b"not json", b'{"pid": "x"}', b'{"pid": true}', b"[1]", b'{"nopid": 1}',
                                    b"[" * 50000], ids=["not_json", "str", "bool", "list", "no_pid", "deep"])
def test_a_bad_handshake_answer_kills_the_worker_and_counts_as_a_failed_start(rig, caplog, answer):
    r = rig()
    r.back.ensure_pool(r.clock())
    [proc] = r.launcher.started
    r.hello(proc, answer)
    worker = r.worker_of(proc)
    assert proc.kills == 1 and worker.state is STOPPING and worker.reason is Reason.BROKEN_CHANNEL
    assert "answered the handshake with" in caplog.text
    proc.exit(-9)
    r.round()
    assert r.pool.boot_failures == 1 and r.pool.next_start_at == r.clock() + BOOT_BACKOFF_FIRST_S


def test_a_handshake_that_is_not_a_control_frame_kills_the_worker(rig, caplog):
    r = rig()
    r.back.ensure_pool(r.clock())
    [proc] = r.launcher.started
    proc.read_requests()
    proc.send(frame.encode(CODEC_JSON, json.dumps({"pid": 5}).encode()))
    r.round()
    assert proc.kills == 1 and r.worker_of(proc).reason is Reason.BROKEN_CHANNEL
    assert "answered the handshake with '{\"pid\": 5}'" in caplog.text


def test_a_frame_behind_the_handshake_answer_breaks_the_channel(rig, caplog):
    r = rig()
    r.back.ensure_pool(r.clock())
    [proc] = r.launcher.started
    proc.read_requests()
    proc.send(frame.encode(CONTROL, json.dumps({"pid": 5}).encode()) + r.response(200, b"unasked"))
    r.round()
    assert proc.kills == 1 and "sent a frame with no request in flight; killing it" in caplog.text


def test_a_start_that_raises_is_a_failed_start_with_back_off(rig, caplog):
    r = rig()
    r.launcher.fail_with = OSError(24, "Too many open files")
    r.back.ensure_pool(r.clock())
    assert r.pool.workers == {} and r.pool.boot_failures == 1
    assert "worker 1 (pid ?) could not be started: [Errno 24] Too many open files; next start in 0.5s" in caplog.text
    r.back.ensure_pool(r.clock())
    assert r.launcher.started == []                       # the back-off holds
    r.later(BOOT_BACKOFF_FIRST_S)
    assert len(r.launcher.started) == 1


def test_only_the_first_failure_of_a_run_prints_its_traceback(rig):
    r = rig()
    r.back.ensure_pool(r.clock())
    r.launcher.started[0].exit(3)
    r.round()
    r.clock.advance(10.0)
    r.back.ensure_pool(r.clock())
    assert r.launcher.tracebacks == [True, False]


# ---- jobs and release ------------------------------------------------------------------------------------

def test_the_request_frame_carries_the_head_and_the_body(rig):
    r = rig()
    [proc] = r.start()
    r.submit("/hello", "POST", b"request body")
    [item] = frame.FrameDecoder().feed(proc.read_requests())
    assert item.flags == CODEC_JSON and item.stream == 0
    head = json.loads(item.payload[:item.options[0]])
    assert (head["method"], head["uri"], head["remoteAddr"], head["headers"]) == (
        "POST", "http://x/hello", "192.0.2.7", {"Host": ["x"]})
    assert bytes(item.payload[item.options[0]:]) == b"request body"


def test_the_request_frame_of_a_large_body_carries_all_of_it(rig):
    r = rig()
    [proc] = r.start()
    body = b"B" * (200 * 1024)
    r.submit("/upload", "POST", body)
    data = b""
    for _ in range(50):                                   # the pipe holds 64 KB at a time
        data += proc.read_requests()
        r.round()
    [item] = frame.FrameDecoder().feed(data)
    head = json.loads(item.payload[:item.options[0]])
    assert head["method"] == "POST" and bytes(item.payload[item.options[0]:]) == body


def test_release_after_max_jobs_stops_the_worker_and_starts_its_replacement(rig):
    r = rig(max_jobs=2)
    [proc] = r.start()
    worker = r.worker_of(proc)
    assert worker.max_jobs == 2
    for _ in range(2):
        r.submit()
        r.reply(proc, 200, b"ok")
    assert worker.state is STOPPING and worker.reason is Reason.MAX_JOBS and worker.jobs_done == 2
    assert STOP_FRAME_PAYLOAD in control_frames(proc)
    assert len(r.launcher.started) == 2


def test_release_moves_the_queue(rig):
    r = rig()
    [proc] = r.start()
    r.submit("/1")
    second = r.submit("/2")
    assert second.state is QUEUED
    proc.read_requests()
    r.reply(proc, 200, b"one")
    assert second.worker is r.worker_of(proc) and r.request_of(proc)[0]["uri"] == "http://x/2"


# ---- retire(): fate ----------------------------------------------------------------------------------------

def test_retire_a_ready_worker_for_a_soft_reason_stops_it_now(rig):
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    r.back.retire(worker, Reason.TTL, r.clock())
    assert worker.state is STOPPING and worker.reason is Reason.TTL and proc.kills == 0
    assert control_frames(proc)[-1] == STOP_FRAME_PAYLOAD
    assert len(r.launcher.started) == 2                   # replaced at once


def test_retire_a_working_worker_for_a_soft_reason_waits_until_it_is_free(rig):
    r = rig()
    proc, worker, job = r.one_job()
    r.back.retire(worker, Reason.MEMORY, r.clock())
    assert worker.state is WORKING and worker.reason is Reason.MEMORY
    assert control_frames(proc) == [] and proc.kills == 0
    assert len(r.launcher.started) == 2                   # its replacement starts now
    r.reply(proc, 200, b"ok")
    assert r.answer(job).body == b"ok"                    # the answer goes out first
    assert worker.state is STOPPING and control_frames(proc) == [STOP_FRAME_PAYLOAD]


@pytest.mark.parametrize("state", ["starting", "ready", "working"])
def test_retire_for_a_fault_kills_whatever_the_state(rig, state):
    r = rig()
    if state == "starting":
        r.back.ensure_pool(r.clock())
        proc = r.launcher.started[0]
    else:
        [proc] = r.start()
        if state == "working":
            r.submit()
    worker = r.worker_of(proc)
    r.back.retire(worker, Reason.EXEC_TTL, r.clock(), "why")
    assert proc.kills == 1 and worker.state is STOPPING and worker.channel.failure == "why"


def test_retire_a_starting_worker_for_a_soft_reason_kills_it(rig):
    r = rig()
    r.back.ensure_pool(r.clock())
    [proc] = r.launcher.started
    r.back.retire(r.worker_of(proc), Reason.SHUTDOWN, r.clock())
    assert proc.kills == 1


def test_retire_a_stopping_worker_for_a_soft_reason_does_nothing_more(rig):
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    r.back.retire(worker, Reason.TTL, r.clock())
    proc.read_requests()
    r.back.retire(worker, Reason.RESET, r.clock())
    assert worker.reason is Reason.TTL and control_frames(proc) == [] and proc.kills == 0


def test_eof_on_the_frame_pipe_kills_a_worker_not_stopping(rig):
    r = rig()
    [proc] = r.start()
    r.back.on_channel_eof(r.worker_of(proc))
    assert proc.kills == 1


def test_eof_on_the_frame_pipe_of_a_stopping_worker_waits_for_its_exit(rig):
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    r.back.retire(worker, Reason.TTL, r.clock())
    r.back.on_channel_eof(worker)
    assert proc.kills == 0


def test_a_failure_of_our_own_code_on_a_channel_kills_the_worker_and_answers_502(rig, caplog):
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    job = r.submit()
    r.back.on_channel_failed(worker, RuntimeError("master bug"))
    assert_error(r, job, 502, "the worker sent an invalid response")
    assert proc.kills == 1 and "handling its channel failed; killing it" in caplog.text


def test_a_request_pipe_the_worker_closed_breaks_the_channel_at_the_end_of_the_round(rig, caplog):
    r = rig()
    [proc] = r.start()
    os.close(proc.requests_r)
    proc.requests_r = None
    job = r.submit()                                      # the write fails inside dispatch ...
    assert job.worker is not None and proc.kills == 0     # ... and nothing is done there
    r.round()
    assert_error(r, job, 502, "the worker sent an invalid response")
    assert proc.kills == 1 and "closed its request pipe" in caplog.text


def test_a_request_pipe_closed_after_the_request_went_in_is_found_at_the_next_tick(rig, caplog):
    """The write succeeded (the bytes lie in the pipe), then the worker closed its end: no
    EPIPE will ever come. The tick asks the pipe (POLLERR: no reader) and fails the job."""
    r = rig()
    [proc] = r.start()
    job = r.submit()                                      # the request frame is in the pipe, unread
    os.close(proc.requests_r)
    proc.requests_r = None
    r.round()
    assert proc.kills == 0 and job.state is AT_WORKER     # nothing has told the master yet
    r.back.expire(r.clock())
    assert_error(r, job, 502, "the worker sent an invalid response")
    assert proc.kills == 1 and "closed its request pipe (it reads no more requests)" in caplog.text


# ---- exits ------------------------------------------------------------------------------------------------

def test_exit_while_busy_answers_502_logs_and_replaces(rig, caplog):
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    job = r.submit()
    proc.exit(7)
    r.round()
    assert_error(r, job, 502, "the worker died while handling the request")
    assert "worker 1 (pid 1001) exited with status 7 while busy; request answered 502" in caplog.text
    assert worker.state is DEAD and worker.channel is None and proc.closed
    assert r.ops.calls[-1] == ("gone", worker, WORKING)
    assert len(r.launcher.started) == 2


def test_exit_of_a_streaming_worker_breaks_the_answer_off(rig, caplog):
    r = rig()
    [proc] = r.start()
    job = r.submit()
    r.reply(proc, 200, b"a", stream=STREAM)
    proc.exit(-9)
    r.round()
    answer = r.answer(job)
    assert (answer.status, answer.body, answer.complete) == (200, b"a", False)
    assert job.conn.closed and job.state is DONE
    assert "answer broken off after 1 body bytes: the worker died while handling the request" in caplog.text


def test_exit_while_idle_is_logged_as_an_error(rig, caplog):
    r = rig()
    [proc] = r.start()
    proc.exit(0)
    r.round()
    assert [rec for rec in caplog.records
            if rec.levelname == "ERROR" and rec.getMessage() == "worker 1 (pid 1001) exited with status 0 while idle"]
    assert r.pool.boot_failures == 0                       # it had been ready: not a failed start


def test_exit_before_ready_backs_off_and_fails_queued_jobs_when_nothing_serves(rig, caplog):
    r = rig()
    r.back.ensure_pool(r.clock())
    [proc] = r.launcher.started
    job = r.submit()
    assert r.jobs.waiting == 1
    proc.print(b"ERROR ImportError: no module named app\n")
    proc.exit(3)
    r.round()
    assert "worker 1 (pid 1001) exited with status 3 before it was ready; next start in 0.5s" in caplog.text
    assert r.pool.boot_failures == 1 and r.pool.workers == {}
    assert_error(r, job, 503, "no worker is running (workers fail to start)")
    assert r.answer(job).headers["retry-after"] == "1"
    assert len(r.launcher.started) == 1                    # the back-off holds
    r.later(BOOT_BACKOFF_FIRST_S)
    assert len(r.launcher.started) == 2


def test_a_stopped_worker_exits_quietly(rig, caplog):
    caplog.set_level(logging.INFO, logger="minirr")
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    r.back.retire(worker, Reason.TTL, r.clock())
    proc.exit(0)
    r.round()
    assert "worker 1 (pid 1001) stopped (ttl)" in caplog.text
    assert r.ops.calls[-1] == ("gone", worker, STOPPING)


def test_a_killed_worker_exits_with_its_failure_in_the_log(rig, caplog):
    r = rig()
    [proc] = r.start()
    r.reply(proc, 200, b"unasked")                         # broken: killed
    proc.exit(-9)
    r.round()
    assert ("worker 1 (pid 1001) was killed by signal 9; the master had given up on it: sent a frame with no request in flight"
            in caplog.text)


def test_the_exit_relays_what_is_left_of_the_output(rig, caplog):
    caplog.set_level(logging.INFO, logger="minirr")
    r = rig()
    [proc] = r.start()
    proc.print(b"last words")
    proc.exit(1)
    r.back.on_exit(r.worker_of(proc))
    assert "worker 1 (pid 1001): last words" in caplog.text


# ---- time --------------------------------------------------------------------------------------------------

def test_exec_ttl_answers_504_and_kills_the_worker(rig, caplog):
    r = rig(exec_ttl=10.0)
    [proc] = r.start()
    worker = r.worker_of(proc)
    job = r.submit()
    assert job.deadline_at == r.clock() + 10.0
    r.later(9.99)
    assert proc.kills == 0
    r.later(0.01)
    assert_error(r, job, 504, "the request exceeded exec_ttl (10s)")
    assert proc.kills == 1 and worker.reason is Reason.EXEC_TTL
    assert "worker 1 (pid 1001) exceeded exec_ttl (10s); killing it" in caplog.text


def test_exec_ttl_of_a_stream_breaks_it_off(rig, caplog):
    r = rig(exec_ttl=10.0)
    [proc] = r.start()
    job = r.submit()
    r.reply(proc, 200, b"a", stream=STREAM)
    r.later(10.0)
    assert job.conn.closed and not r.answer(job).complete and job.state is DONE
    assert proc.kills == 1
    assert "answer broken off after 1 body bytes: the request exceeded exec_ttl" in caplog.text


def test_a_start_past_allocate_timeout_is_killed(rig, caplog):
    r = rig(allocate_timeout=5.0)
    r.back.ensure_pool(r.clock())
    [proc] = r.launcher.started
    r.later(5.0)
    assert proc.kills == 1 and r.worker_of(proc).reason is Reason.START_TIMEOUT
    assert "did not finish its start within allocate_timeout (5s); killing it" in caplog.text
    proc.exit(-9)
    r.round()
    assert r.pool.boot_failures == 1


def test_a_worker_that_does_not_stop_within_destroy_timeout_is_killed(rig, caplog):
    r = rig(destroy_timeout=3.0)
    [proc] = r.start()
    worker = r.worker_of(proc)
    r.back.retire(worker, Reason.TTL, r.clock())
    r.later(3.0)
    assert proc.kills == 1 and worker.channel.failure == "destroy_timeout"
    assert "did not stop within destroy_timeout (3s); killing it" in caplog.text


def test_a_worker_going_on_after_its_client_left_is_killed_after_destroy_timeout(rig, caplog):
    r = rig(destroy_timeout=3.0, exec_ttl=100.0)
    [proc] = r.start()
    job = r.submit()
    r.reply(proc, 200, b"a", stream=STREAM)
    r.client_gone(job)
    assert job.deadline_at == r.clock() + 3.0
    r.later(2.99)
    assert proc.kills == 0
    r.later(0.01)
    assert proc.kills == 1 and r.worker_of(proc).reason is Reason.DESTROY_TIMEOUT
    assert job.state is DONE
    assert "went on with a request whose answer is over, past its deadline (destroy_timeout 3s" in caplog.text


def test_without_a_pidfd_expire_polls_for_the_exit(rig):
    r = rig()
    r.back.ensure_pool(r.clock())
    [proc] = r.launcher.started
    r.loop.unregister(proc.sentinel)                       # as if there were no pidfd
    proc.sentinel = None
    r.hello(proc)
    worker = r.worker_of(proc)
    r.back.expire(r.clock())
    assert worker.state is READY
    proc.has_exited = True
    r.back.expire(r.clock())
    assert worker.state is DEAD and len(r.launcher.started) == 2


# ---- the reload ------------------------------------------------------------------------------------------------

def test_reload_replaces_one_worker_at_a_time_retiring_each_old_one_when_its_replacement_is_ready(rig):
    r = rig(num_workers=2)
    old = r.start()
    started = len(r.launcher.started)
    assert r.back.begin_reload(r.clock()) == 2 and r.back.reloading
    [new1] = r.new_procs(old)                              # one replacement at a time
    assert all(r.worker_of(p).state is READY and r.worker_of(p).reason is None for p in old)
    r.clock.advance(1.0)
    r.hello(new1)
    retired = [p for p in old if r.worker_of(p).state is STOPPING]
    assert len(retired) == 1 and r.worker_of(retired[0]).reason is Reason.RESET
    [new2] = r.new_procs(old + [new1])                     # the next replacement
    assert len(r.launcher.started) == started + 2
    assert r.ops.calls[-1][0] == "ready"                   # not done yet
    r.clock.advance(1.0)
    r.hello(new2)
    assert all(r.worker_of(p).state is STOPPING for p in old)
    assert r.ops.calls[-1] == ("reload_done", 2, 2.0, "")
    assert not r.back.reloading and r.pool.surge == 0
    assert {r.worker_of(p).generation for p in (new1, new2)} == {1}


def test_a_new_reload_supersedes_the_one_running(rig):
    """A second reset while the first is starting its replacement: that replacement would
    run the code being replaced, so it is stopped, and the new reload replaces every
    worker of an older generation, still one at a time."""
    r = rig(num_workers=2)
    old = r.start()
    r.back.begin_reload(r.clock())
    [first_new] = r.new_procs(old)
    assert r.back.begin_reload(r.clock()) == 2
    assert first_new.kills == 1 and r.worker_of(first_new).reason is Reason.RESET
    [second_new] = r.new_procs(old + [first_new])          # one replacement at a time, of the new generation
    assert r.worker_of(second_new).generation == 2 == r.pool.generation
    assert all(r.worker_of(p).state is READY for p in old)
    r.hello(second_new)
    [third_new] = r.new_procs(old + [first_new, second_new])
    r.hello(third_new)
    assert all(r.worker_of(p).state is STOPPING for p in old)
    assert [c for c in r.ops.calls if c[0] == "reload_done"] == [("reload_done", 2, 0.0, "")]
    assert not r.back.reloading


def test_a_failing_replacement_ends_the_reload_and_keeps_the_old_workers(rig, caplog):
    r = rig(num_workers=2)
    old = r.start()
    r.back.begin_reload(r.clock())
    [new1] = r.new_procs(old)
    new1.print(b"ERROR SyntaxError: invalid syntax\n")
    new1.exit(1)
    r.round()
    [done] = [c for c in r.ops.calls if c[0] == "reload_done"]
    assert done[1] == 0 and done[3] == "worker 3 (pid 1003) failed to start: SyntaxError: invalid syntax (exit status 1)"
    assert not r.back.reloading and r.pool.surge == 0
    assert all(r.worker_of(p).state is READY and r.worker_of(p).reason is None for p in old)
    assert "reload stopped: worker 3 (pid 1003) failed to start" in caplog.text
    assert r.new_procs(old) == [new1]                      # no further replacement is started


def test_a_reload_of_a_busy_pool_retires_the_working_old_worker_when_it_is_free(rig):
    r = rig(num_workers=1)
    [old] = r.start()
    job = r.submit()
    old.read_requests()
    r.back.begin_reload(r.clock())
    [new] = r.new_procs([old])
    r.hello(new)
    worker = r.worker_of(old)
    assert worker.state is WORKING and worker.reason is Reason.RESET
    assert r.ops.calls[-1][0] == "reload_done"
    r.reply(old, 200, b"done")
    assert r.answer(job).body == b"done" and worker.state is STOPPING


def test_ensure_pool_retires_a_worker_beyond_the_pools_size(rig):
    r = rig(num_workers=2)
    procs = r.start()
    r.pool.size = 1                                        # e.g. a reload's extra one, once it is over
    r.back.ensure_pool(r.clock())
    stopping = [p for p in procs if r.worker_of(p).state is STOPPING]
    assert len(stopping) == 1 and r.worker_of(stopping[0]).id == 1
    assert r.worker_of(stopping[0]).reason is Reason.RESET


# ---- shutdown ------------------------------------------------------------------------------------------------

def test_stop_idle_stops_ready_workers_and_kills_starting_ones(rig):
    r = rig(num_workers=1)
    [ready] = r.start()
    r.pool.size = 2
    r.back.ensure_pool(r.clock())
    starting = r.launcher.started[-1]
    r.back.stopping = True
    r.back.stop_idle(r.clock())
    assert r.worker_of(ready).state is STOPPING and STOP_FRAME_PAYLOAD in control_frames(ready)
    assert starting.kills == 1
    assert len(r.launcher.started) == 2                    # nothing new while stopping


def test_close_kills_reaps_and_closes_every_worker(rig):
    r = rig(num_workers=2)
    procs = r.start()
    r.back.close()
    assert all(p.kills == 1 and p.closed for p in procs)
    r.back.kill_all()


def test_descriptors_lists_every_workers_pipes(rig):
    r = rig(num_workers=2)
    procs = r.start()
    assert sorted(r.back.descriptors()) == sorted(fd for p in procs for fd in p.fds())
    assert r.loop.selector.events_of(procs[0].from_worker) == READ
