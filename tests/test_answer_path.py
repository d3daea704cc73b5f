"""A job's answer from its worker's frames to its client's bytes, through the real Backend,
WorkerChannel, ReplyReader, Jobs, Answers and Pool, with the worker played by the test on
real pipes, recording client connections, a fake selector and a fake clock
(tests/backrig.py). The pieces alone: tests/test_reply.py (frames -> events),
tests/test_jobs.py (events -> the job's table), tests/test_answer.py (-> bytes)."""

from __future__ import annotations

import pytest

from backrig import BackRig
from minirr.master.jobs import AT_WORKER, DONE, DRAINING, QUEUED, STREAMING
from minirr.master.pool import READY, STOPPING, WORKING, Reason
from minirr.wire import frame
from minirr.wire.frame import CODEC_JSON, ERROR, PING, PONG, STOP, STREAM

LARGE = bytes(range(256)) * ((frame.LARGE_PAYLOAD_BYTES + 5000) // 256)


def frames_to_worker(proc) -> list:
    return frame.FrameDecoder().feed(proc.read_requests())


def assert_error(r, job, status: int, message: str) -> None:
    answer = r.answer(job)
    assert (answer.status, answer.body, answer.complete) == (status, message.encode() + b"\n", True)
    assert job.state is DONE


# ---- one frame: the usual answer -------------------------------------------------------------------

def test_the_one_frame_answer(rig):
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    job = r.submit("/hello", "POST", b"request body")
    head, body = r.request_of(proc)
    assert (head["method"], head["uri"], body) == ("POST", "http://x/hello", b"request body")
    assert worker.state is WORKING and job.worker is worker and job.state is AT_WORKER
    r.reply(proc, 201, b"hi", headers={"X-A": ["1"]})
    assert job.conn.calls == [("respond", b"HTTP/1.1 201 Created\r\nX-A: 1\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
                                          b"Content-Length: 2\r\n\r\nhi", True)]
    assert worker.state is READY and worker.jobs_done == 1 and worker.jobs == {}
    assert job.state is DONE and r.metrics.requests.get(("201",)) == 1


def test_a_queued_job_goes_to_the_worker_its_answer_frees(rig):
    r = rig()
    [proc] = r.start()
    first, second = r.submit("/1"), r.submit("/2")
    assert r.jobs.waiting == 1 and second.state is QUEUED
    assert r.request_of(proc)[0]["uri"] == "http://x/1"
    r.reply(proc, 200, b"one")
    assert r.request_of(proc)[0]["uri"] == "http://x/2" and second.worker is first.worker
    r.reply(proc, 200, b"two")
    assert [r.answer(job).body for job in (first, second)] == [b"one", b"two"]


# ---- a stream of STREAM frames -------------------------------------------------------------------------

def test_a_stream_begins_then_goes_on_in_parts(rig):
    r = rig(exec_ttl=10.0)
    [proc] = r.start()
    worker = r.worker_of(proc)
    job = r.submit()
    r.reply(proc, 200, b"first", stream=STREAM)
    assert job.state is STREAMING and job.conn.kinds() == ["start_stream"]
    assert r.answer(job) == (200, {"date": "Sun, 06 Nov 1994 08:49:37 GMT", "transfer-encoding": "chunked"},
                             b"first", False)
    r.clock.advance(8.0)
    r.send(proc, frame.encode(CODEC_JSON, b"second", (), STREAM))          # no head option: allowed later
    assert job.deadline_at == r.clock() + 10.0                             # progress: exec_ttl counts anew
    r.reply(proc, 200, b"third", stream=STREAM)                            # a repeated head is skipped
    assert job.conn.kinds() == ["start_stream", "write", "write"]
    assert r.answer(job).body == b"firstsecondthird"
    assert worker.state is WORKING and r.back.reader.streams(job)


def test_a_stream_with_content_length_says_so_in_its_head(rig):
    r = rig()
    [proc] = r.start()
    job = r.submit()
    r.reply(proc, 200, b"ab", headers={"Content-Length": ["4"]}, stream=STREAM)
    assert r.answer(job) == (200, {"date": "Sun, 06 Nov 1994 08:49:37 GMT", "content-length": "4"}, b"ab", False)
    r.send(proc, r.piece(b"cd"))
    assert r.answer(job).complete and job.state is DONE


def test_the_final_frame_of_a_stream_ends_the_answer_and_frees_the_worker(rig):
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    job = r.submit()
    r.reply(proc, 200, b"a", stream=STREAM)
    r.send(proc, r.piece(b"b"))                                            # no STREAM: the last one
    answer = r.answer(job)
    assert (answer.body, answer.complete) == (b"ab", True)
    assert job.conn.calls[-1] == ("respond", b"1\r\nb\r\n0\r\n\r\n", True)
    assert worker.state is READY and worker.jobs_done == 1 and job.state is DONE


def test_a_first_piece_that_fills_its_content_length_is_the_whole_answer_at_once(rig):
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    job = r.submit()
    r.reply(proc, 200, b"abc", headers={"Content-Length": ["3"]}, stream=STREAM)
    assert job.conn.kinds() == ["respond"] and r.answer(job).complete and job.state is DRAINING
    assert r.metrics.requests.get(("200",)) == 1                           # counted now, once
    assert not [f for f in frames_to_worker(proc) if f.stream]   # no STOP: its client has it all, the body runs to its end
    r.send(proc, r.piece())                                                # the worker's own end
    assert worker.state is READY and job.state is DONE and job.conn.kinds() == ["respond"]
    assert r.metrics.requests.get(("200",)) == 1


# ---- PING and PONG -------------------------------------------------------------------------------------------

def test_a_ping_is_answered_with_a_pong_written_to_the_worker(rig):
    r = rig()
    proc, _, job = r.one_job()
    r.reply(proc, 200, b"a", stream=STREAM | PING)
    [pong] = frames_to_worker(proc)
    assert pong.stream == PONG and pong.payload == b"" and pong.flags == 0
    assert r.answer(job).body == b"a"
    r.send(proc, r.piece(b"b", STREAM | PING))                             # it read the PONG: it may ping again
    assert [f.stream for f in frames_to_worker(proc)] == [PONG]


def test_a_ping_while_the_last_pong_is_unread_breaks_the_channel(rig, caplog):
    """A worker that pings and never reads cannot make the master queue PONGs without end."""
    r = rig()
    proc, _, job = r.one_job()
    r.reply(proc, 200, b"a", stream=STREAM | PING)
    r.send(proc, r.piece(b"b", STREAM | PING))                             # the PONG still lies in its pipe
    assert proc.kills == 1 and r.worker_of(proc).reason is Reason.BROKEN_CHANNEL
    assert "sent PING again before it read the last PONG; killing it" in caplog.text
    assert job.conn.closed and not r.answer(job).complete and job.state is DONE


def test_frames_behind_a_ping_that_broke_the_channel_are_not_read(rig, caplog):
    """The channel is broken at the PING: what follows it in the same read is not the
    job's any more (it failed with the worker). Reading on made its final frame move a
    job that was DONE already, which raised in the master."""
    r = rig()
    proc, _, job = r.one_job()
    r.reply(proc, 200, b"a", stream=STREAM | PING)
    r.send(proc, r.piece(b"b", STREAM | PING) + r.piece(b"c"))
    assert proc.kills == 1 and "handling its channel failed" not in caplog.text
    assert r.answer(job).body == b"a" and job.state is DONE


# ---- answers the app got wrong: broken off, the worker kept --------------------------------------------------

def test_a_stream_longer_than_its_content_length_is_broken_off_and_the_worker_kept(rig, caplog):
    """The app miscounted, its frames are fine: the client's answer is broken off, the
    stream told to STOP, the rest dropped, and the worker is free after its final frame."""
    r = rig()
    proc, worker, job = r.one_job()
    r.reply(proc, 200, b"ab", headers={"Content-Length": ["3"]}, stream=STREAM)
    r.send(proc, r.piece(b"toolong", STREAM))
    assert job.conn.calls[-1] == ("close",) and r.answer(job).body == b"ab" and job.state is DRAINING
    assert "answer broken off after 2 body bytes: the body was longer than its Content-Length" in caplog.text
    assert [f.stream for f in frames_to_worker(proc)] == [STOP]
    r.send(proc, r.piece(b"dropped", STREAM))
    r.send(proc, r.piece(b"dropped too"))                                  # its final frame
    assert r.answer(job).body == b"ab" and proc.kills == 0
    assert worker.state is READY and worker.jobs_done == 1 and job.state is DONE
    assert r.metrics.requests.get(("200",)) == 1


def test_a_first_piece_past_its_content_length_is_broken_off(rig):
    r = rig()
    proc, worker, job = r.one_job()
    r.reply(proc, 200, b"abcd", headers={"Content-Length": ["3"]}, stream=STREAM)
    assert job.conn.closed and r.answer(job).body == b"" and job.state is DRAINING
    assert [f.stream for f in frames_to_worker(proc)] == [STOP]
    r.send(proc, r.piece())
    assert worker.state is READY and job.state is DONE


def test_a_stream_shorter_than_its_content_length_is_broken_off(rig, caplog):
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    job = r.submit()
    r.reply(proc, 200, b"ab", headers={"Content-Length": ["5"]}, stream=STREAM)
    r.send(proc, r.piece(b"c"))
    assert job.conn.closed and not r.answer(job).complete and job.state is DONE
    assert "the body was shorter than its Content-Length" in caplog.text
    assert worker.state is READY and proc.kills == 0


@pytest.mark.parametrize("head", [b'{"status":99}', b'{"status":200,"headers":{"X":["a\\r\\nInjected: 1"]}}',
                                  b'{"status":200,"headers":{"Content-Length":["1","2"]}}'],
                         ids=["status_99", "crlf_in_a_header", "two_lengths"])
def test_a_head_the_app_got_wrong_is_its_500_and_the_worker_is_kept(rig, caplog, head):
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    job = r.submit("/bad")
    r.send(proc, r.response(head=head, body=b"body"))
    assert_error(r, job, 500, "the application sent an invalid response head")
    assert b"Injected" not in job.conn.sent()
    assert worker.state is READY and proc.kills == 0
    assert f"{worker}: request GET /bad: the application's response head is invalid" in caplog.text


def test_a_stream_whose_head_the_app_got_wrong_is_500_and_the_rest_is_dropped(rig):
    r = rig()
    proc, worker, job = r.one_job()
    r.send(proc, r.response(head=b'{"status":99}', body=b"a", stream=STREAM))
    answer = r.answer(job)
    assert (answer.status, answer.body) == (500, b"the application sent an invalid response head\n")
    assert job.state is DRAINING and worker.state is WORKING
    assert [f.stream for f in frames_to_worker(proc)] == [STOP]
    r.send(proc, r.piece(b"more", STREAM) + r.piece(b"end"))               # two frames, one read: both its own
    assert worker.state is READY and job.state is DONE and proc.kills == 0
    assert r.answer(job).status == 500 and job.conn.kinds() == ["respond"]


# ---- a frame too large to hold --------------------------------------------------------------------------

def test_a_large_frame_is_handed_on_in_parts_with_its_body_length_as_content_length(rig):
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    job = r.submit()
    r.send(proc, r.response(200, LARGE))
    answer = r.answer(job)
    assert answer.headers["content-length"] == str(len(LARGE)) and answer.body == LARGE and answer.complete
    assert job.conn.kinds()[0] == "start_stream" and job.conn.kinds().count("write") > 2
    assert job.conn.calls[-1][0] == "respond" and job.conn.calls[-1][2] is True   # the last part ends it
    assert worker.state is READY and job.state is DONE


def test_a_large_stream_frame_is_handed_on_without_ending_the_answer(rig):
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    job = r.submit()
    r.send(proc, r.response(200, LARGE, stream=STREAM))
    answer = r.answer(job)
    assert answer.headers["transfer-encoding"] == "chunked"                  # the stream's length is not known
    assert answer.body == LARGE and not answer.complete and worker.state is WORKING
    r.send(proc, r.piece(b"!"))
    answer = r.answer(job)
    assert answer.body == LARGE + b"!" and answer.complete and worker.state is READY


def test_a_large_error_frame_is_a_soft_error(rig):
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    job = r.submit()
    r.send(proc, frame.encode(ERROR, b"E" * (frame.LARGE_PAYLOAD_BYTES + 1)))
    assert_error(r, job, 500, "the application raised an error")
    assert worker.state is READY


@pytest.mark.parametrize("data", [
    frame.encode(CODEC_JSON, b'{"stop":true}' + LARGE, (13,)),             # a stop request with a body
    frame.encode(CODEC_JSON, LARGE),                                       # no head length
    frame.encode(CODEC_JSON, b"[1]" + LARGE, (3,)),                        # a head that is no JSON object
], ids=["stop_head", "no_head_length", "not_an_object"])
def test_a_large_frame_that_breaks_the_protocol_breaks_the_channel(rig, data):
    r = rig()
    [proc] = r.start()
    job = r.submit()
    r.send(proc, data)
    assert_error(r, job, 502, "the worker sent an invalid response")
    assert proc.kills == 1


# ---- errors ---------------------------------------------------------------------------------------------

def test_an_error_frame_before_anything_was_sent_is_500_and_the_worker_kept(rig, caplog):
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    job = r.submit("/boom")
    r.send(proc, frame.encode(ERROR, b"ValueError: boom"))
    assert_error(r, job, 500, "the application raised an error")
    assert job.conn.calls[-1][2] is True                                   # 500: the connection is kept
    assert worker.state is READY and proc.kills == 0
    assert f"{worker}: request GET /boom failed: 'ValueError: boom'" in caplog.text


def test_an_error_frame_after_the_stream_began_breaks_the_answer_off(rig, caplog):
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    job = r.submit()
    r.reply(proc, 200, b"a", stream=STREAM)
    r.send(proc, frame.encode(ERROR, b"boom"))
    assert job.conn.calls[-1] == ("close",) and not r.answer(job).complete and job.state is DONE
    assert "answer broken off after 1 body bytes: the application raised an error" in caplog.text
    assert worker.state is READY


@pytest.mark.parametrize("head", [b"[1]", b"not json", b"[" * 50000], ids=["list", "not_json", "deep"])
def test_a_head_that_is_no_json_object_breaks_the_channel_and_the_client_gets_502(rig, head):
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    job = r.submit()
    r.send(proc, r.response(head=head))
    assert_error(r, job, 502, "the worker sent an invalid response")
    assert proc.kills == 1 and worker.state is STOPPING and worker.reason is Reason.BROKEN_CHANNEL


def test_a_frame_without_its_head_length_breaks_the_channel(rig):
    r = rig()
    [proc] = r.start()
    job = r.submit()
    r.send(proc, frame.encode(CODEC_JSON, b'{"status":200}'))
    assert_error(r, job, 502, "the worker sent an invalid response")


def test_a_second_final_frame_in_the_same_read_breaks_the_channel(rig, caplog):
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    job = r.submit()
    r.send(proc, r.response(200, b"mine") + r.response(200, b"for nobody"))
    assert r.answer(job).body == b"mine" and job.conn.kinds() == ["respond"]   # the answer went out ...
    assert proc.kills == 1 and worker.state is STOPPING                    # ... and the worker is killed
    assert worker.reason is Reason.BROKEN_CHANNEL
    assert "sent a frame after its final response frame; killing it" in caplog.text


def test_half_a_frame_after_the_final_one_breaks_the_channel_too(rig):
    r = rig()
    [proc] = r.start()
    r.submit()
    r.send(proc, r.response(200, b"mine") + r.response(200, b"next")[:5])
    assert proc.kills == 1


def test_a_frame_after_the_end_of_a_stream_in_the_same_read_breaks_the_channel(rig):
    r = rig()
    [proc] = r.start()
    job = r.submit()
    r.send(proc, r.response(200, b"a", stream=STREAM) + r.piece(b"b") + r.response(200, b"extra"))
    assert r.answer(job).body == b"ab" and proc.kills == 1


def test_a_frame_while_ready_breaks_the_channel(rig, caplog):
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    r.reply(proc, 200, b"unasked")
    assert proc.kills == 1 and worker.state is STOPPING
    assert "sent a frame with no request in flight; killing it" in caplog.text


def test_a_stop_head_recycles_the_worker_and_the_job_runs_on_another(rig):
    r = rig(num_workers=2)
    procs = r.start()
    job = r.submit()
    first = job.worker
    [asked] = [p for p in procs if r.worker_of(p) is first]
    [other] = [p for p in procs if p is not asked]
    asked.read_requests()
    r.send(asked, r.response(head=b'{"stop":true}'))
    assert first.state is STOPPING and first.reason is Reason.WORKER_REQUEST and first.jobs_done == 0
    assert [f.payload for f in frames_to_worker(asked)] == [b'{"stop": true}']
    assert job.worker is r.worker_of(other) and r.request_of(other)[0]["method"] == "GET"
    assert len(r.launcher.started) == 3                                 # its replacement
    assert job.conn.calls == [] and r.metrics.requests.get(("200",)) == 0
    r.reply(other, 200, b"from the other one")
    assert r.answer(job).body == b"from the other one"


def test_a_recycled_job_goes_first_in_line(rig):
    r = rig()
    [proc] = r.start()
    job = r.submit("/first")
    waiting = r.submit("/second")
    proc.read_requests()
    r.send(proc, r.response(head=b'{"stop":true}'))
    assert list(r.jobs.queue) == [job, waiting] and job.state is QUEUED
    [new] = r.new_procs([proc])
    r.hello(new)
    assert r.request_of(new)[0]["uri"] == "http://x/first"


# ---- backpressure -----------------------------------------------------------------------------------------

def test_a_backlogged_client_pauses_the_workers_pipe_and_its_deadline(rig):
    r = rig(exec_ttl=10.0)
    proc, worker, job = r.one_job()
    job.conn.backlogged = True
    r.reply(proc, 200, b"a", stream=STREAM)
    assert not worker.channel.reading and r.loop.selector.events_of(proc.from_worker) == 0
    assert job.conn.drain_waits == 1 and job.deadline_at == 0.0
    r.reply(proc, 200, b"b", stream=STREAM)                          # stays in the pipe
    assert job.conn.kinds() == ["start_stream"]
    r.later(100.0)
    assert proc.kills == 0                                           # the wait is the client's
    job.conn.backlogged = False
    r.back.resume(job)                                               # the front's on_drain
    assert worker.channel.reading and job.deadline_at == r.clock() + 10.0
    r.round()
    assert job.conn.kinds() == ["start_stream", "write"] and r.answer(job).body == b"ab"


@pytest.mark.parametrize("payload", [b"a", LARGE], ids=["small", "large"])
def test_exec_ttl_does_not_count_while_the_client_is_backlogged(rig, payload):
    r = rig(exec_ttl=10.0)
    proc, _, job = r.one_job()
    data = r.response(200, payload, stream=STREAM)
    r.send(proc, data[:-1])
    job.conn.backlogged = True                                       # as its last bytes arrive
    r.send(proc, data[-1:])
    assert job.deadline_at == 0.0
    r.later(60.0)
    assert proc.kills == 0


def test_a_backlogged_client_of_a_one_frame_large_answer_suspends_exec_ttl(rig):
    r = rig(exec_ttl=10.0)
    proc, worker, job = r.one_job()
    job.conn.backlogged = True
    proc.send(r.response(200, LARGE)[:60000])
    r.round()
    assert job.deadline_at == 0.0 and not worker.channel.reading
    r.later(60.0)
    assert proc.kills == 0


def test_exec_ttl_counts_from_the_last_progress_of_a_stream(rig):
    r = rig(exec_ttl=10.0)
    [proc] = r.start()
    job = r.submit()
    r.clock.advance(9.0)
    r.reply(proc, 200, b"a", stream=STREAM)
    r.clock.advance(9.0)
    r.send(proc, r.piece(b"b", STREAM))
    r.later(9.99)
    assert proc.kills == 0                                           # 27.99s in all, never 10s without progress
    r.later(0.01)
    assert proc.kills == 1


def test_resume_for_a_job_the_worker_no_longer_has_does_nothing(rig):
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    job = r.submit()
    r.reply(proc, 200, b"done")
    worker.channel.pause_reading()
    r.back.resume(job)
    assert not worker.channel.reading


# ---- the client leaves ----------------------------------------------------------------------------------------

def test_a_client_gone_mid_stream_tells_the_worker_stop_and_drops_its_frames_until_the_final_one(rig):
    r = rig(destroy_timeout=5.0)
    proc, worker, job = r.one_job()
    r.reply(proc, 200, b"a", stream=STREAM)
    r.client_gone(job)
    [stop] = frames_to_worker(proc)
    assert stop.stream == STOP and stop.payload == b"" and job.stop_sent
    assert job.deadline_at == r.clock() + 5.0                        # destroy_timeout to wind down
    assert job.state is DRAINING and r.metrics.requests.get(("200",)) == 1
    calls = list(job.conn.calls)
    r.reply(proc, 200, b"dropped", stream=STREAM)
    assert job.conn.calls == calls and worker.state is WORKING
    assert frames_to_worker(proc) == []                              # STOP is sent once
    r.send(proc, r.piece())
    assert job.conn.calls == calls and worker.state is READY and job.state is DONE
    assert r.metrics.requests.get(("200",)) == 1


def test_a_client_gone_before_the_answer_drops_it_without_a_stop(rig):
    r = rig(exec_ttl=10.0)
    proc, worker, job = r.one_job()
    r.clock.advance(3.0)
    r.client_gone(job)
    assert frames_to_worker(proc) == []                              # it has not shown it streams: no STOP
    assert job.deadline_at == r.clock() - 3.0 + 10.0                 # exec_ttl is sooner than destroy_timeout
    assert r.metrics.requests.get(("499",)) == 1
    r.reply(proc, 200, b"nobody reads this")
    assert job.conn.kinds() == ["close"] and worker.state is READY and job.state is DONE


def test_a_client_gone_before_the_first_stream_frame_gets_stop_with_that_frame(rig):
    r = rig(destroy_timeout=5.0)
    proc, worker, job = r.one_job()
    r.client_gone(job)
    assert frames_to_worker(proc) == []
    r.clock.advance(1.0)
    r.reply(proc, 200, b"a", stream=STREAM)
    assert [f.stream for f in frames_to_worker(proc)] == [STOP]
    assert job.deadline_at == r.clock() - 1.0 + 5.0                  # destroy_timeout from when the client left
    r.send(proc, r.piece())
    assert worker.state is READY and job.conn.kinds() == ["close"]


@pytest.mark.parametrize("data", [BackRig.response(200, LARGE), frame.encode(ERROR, b"boom")],
                         ids=["large_answer", "soft_error"])
def test_the_answer_of_a_job_whose_client_left_is_dropped_and_the_worker_freed(rig, data):
    r = rig()
    proc, worker, job = r.one_job()
    r.client_gone(job)
    r.send(proc, data)
    assert job.conn.kinds() == ["close"] and worker.state is READY and job.state is DONE
    assert r.metrics.requests.get(("499",)) == 1 and r.metrics.requests.get(("500",)) == 0


def test_a_client_gone_while_queued_never_reaches_a_worker(rig):
    r = rig()
    [proc] = r.start()
    busy = r.submit("/busy")
    gone = r.submit("/gone")
    r.client_gone(gone)
    assert gone.state is DONE and r.jobs.waiting == 0
    proc.read_requests()
    r.reply(proc, 200, b"ok")
    assert proc.read_requests() == b"" and r.answer(busy).body == b"ok"
    assert r.metrics.requests.get(("499",)) == 1

