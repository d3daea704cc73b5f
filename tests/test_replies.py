"""A job's answer from its response frames (minirr.master.replies), driven through the real
Backend, Jobs, Pool and WorkerChannel with the worker played by the test on real pipes
(tests/backrig.py), a recording front, a fake selector and a fake clock."""

from __future__ import annotations

import json

import pytest

from backrig import Client
from fakes import READ
from minirr.wire import frame
from minirr.wire.frame import CODEC_JSON, ERROR, PING, PONG, STOP, STREAM
from minirr.master.pool import READY, STOPPING, WORKING, Reason


def frames_to_worker(proc) -> list:
    return frame.FrameDecoder().feed(proc.read_requests())


# ---- one frame: the usual answer -------------------------------------------------------------------

def test_the_one_frame_answer(rig):
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    job = r.submit("/hello", "POST", b"request body")
    head, body = r.request_of(proc)
    assert (head["method"], head["uri"], body) == ("POST", "http://x/hello", b"request body")
    assert worker.state is WORKING and job.worker is worker
    r.reply(proc, 201, b"hi", headers={"X-A": ["1"]})
    [call] = r.front.calls
    assert call[:4] == ("answer", job, 201, b"hi")
    assert worker.state is READY and worker.jobs_done == 1 and worker.job is None
    assert job.done and r.metrics.requests.get(("201",)) == 1


def test_a_queued_job_goes_to_the_worker_its_answer_frees(rig):
    r = rig()
    [proc] = r.start()
    first, second = r.submit("/1"), r.submit("/2")
    assert r.jobs.waiting == 1
    assert r.request_of(proc)[0]["uri"] == "http://x/1"
    r.reply(proc, 200, b"one")
    assert r.request_of(proc)[0]["uri"] == "http://x/2" and second.worker is first.worker


# ---- a stream of STREAM frames -------------------------------------------------------------------------

def test_a_stream_begins_then_goes_on_in_parts(rig):
    r = rig(exec_ttl=10.0)
    [proc] = r.start()
    worker = r.worker_of(proc)
    job = r.submit()
    r.reply(proc, 200, b"first", stream=STREAM)
    assert r.front.calls == [("begin", job, 200, None, b"first")]
    r.clock.advance(8.0)
    r.send(proc, frame.encode(CODEC_JSON, b"second", (), STREAM))            # no head: allowed later
    assert worker.deadline_at == r.clock() + 10.0                            # progress: exec_ttl counts anew
    r.reply(proc, 200, b"third", stream=STREAM)                              # a repeated head is skipped
    assert r.front.kinds() == ["begin", "part", "part"]
    assert r.front.body() == b"firstsecondthird"
    assert worker.state is WORKING and job.reply.stream_frames


def test_a_stream_with_content_length_says_so_at_its_begin(rig):
    r = rig()
    [proc] = r.start()
    job = r.submit()
    r.reply(proc, 200, b"ab", headers={"Content-Length": ["4"]}, stream=STREAM)
    assert r.front.calls == [("begin", job, 200, 4, b"ab")]


def test_the_final_frame_of_a_stream_frees_the_worker(rig):
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    r.submit()
    r.reply(proc, 200, b"a", stream=STREAM)
    r.send(proc, frame.encode(CODEC_JSON, b"b", (0,)))                       # no STREAM: the last one
    assert r.front.body() == b"ab"
    assert worker.state is READY and worker.jobs_done == 1


def test_the_final_frame_of_a_stream_ends_the_answer(rig):
    r = rig()
    [proc] = r.start()
    job = r.submit()
    r.reply(proc, 200, b"a", stream=STREAM)
    r.send(proc, frame.encode(CODEC_JSON, b"b", (0,)))
    assert r.front.kinds()[-1] == "end"
    assert job.done


def test_a_ping_is_answered_with_a_pong_written_to_the_worker(rig):
    r = rig()
    [proc] = r.start()
    r.submit()
    proc.read_requests()
    r.reply(proc, 200, b"a", stream=STREAM | PING)
    [pong] = frames_to_worker(proc)
    assert pong.stream == PONG and pong.payload == b"" and pong.flags == 0
    assert r.front.kinds() == ["begin"]


def test_a_stream_longer_than_its_content_length_is_broken_off_and_the_worker_kept(rig):
    """The app miscounted, its frames are fine: the client's answer is broken off, the
    stream told to STOP, the rest dropped, and the worker is free after its final frame."""
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    job = r.submit()
    proc.read_requests()
    r.front.part_fails_after = 3
    r.reply(proc, 200, b"", stream=STREAM)
    r.send(proc, frame.encode(CODEC_JSON, b"toolong", (), STREAM))
    assert r.front.calls[-1] == ("abort", job, "the body was longer than its Content-Length")
    assert [f.stream for f in frames_to_worker(proc)] == [STOP]
    r.send(proc, frame.encode(CODEC_JSON, b"dropped", (0,)))           # its final frame
    assert r.front.calls[-1][0] == "abort" and proc.kills == 0
    assert worker.state is READY and worker.jobs_done == 1


# ---- a frame too large to hold --------------------------------------------------------------------------

LARGE = bytes(range(256)) * ((frame.LARGE_PAYLOAD_BYTES + 5000) // 256)


def test_a_large_frame_is_handed_on_in_parts_with_its_body_length_as_content_length(rig):
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    job = r.submit()
    r.send(proc, r.response(200, LARGE))
    begin = r.front.calls[0]
    assert begin[:4] == ("begin", job, 200, len(LARGE))
    assert r.front.kinds()[1:-1] == ["part"] * (len(r.front.calls) - 2) and len(r.front.calls) > 3
    assert r.front.calls[-1] == ("end", job, b"")
    assert r.front.body() == LARGE
    assert worker.state is READY and job.done


def test_a_large_stream_frame_is_handed_on_without_ending_the_answer(rig):
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    job = r.submit()
    r.send(proc, r.response(200, LARGE, stream=STREAM))
    assert r.front.calls[0][:4] == ("begin", job, 200, None)      # the stream's length is not known
    assert r.front.body() == LARGE and "end" not in r.front.kinds()
    assert worker.state is WORKING
    r.send(proc, frame.encode(CODEC_JSON, b"!", (0,)))
    assert r.front.body() == LARGE + b"!" and worker.state is READY


def test_a_large_error_frame_is_a_soft_error(rig):
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    job = r.submit()
    r.send(proc, frame.encode(ERROR, b"E" * (frame.LARGE_PAYLOAD_BYTES + 1)))
    assert r.front.calls == [("error", job, 500, "the application raised an error")]
    assert worker.state is READY


def test_a_large_frame_with_a_stop_head_breaks_the_channel(rig):
    r = rig()
    [proc] = r.start()
    job = r.submit()
    r.send(proc, r.response(body=LARGE, head=b'{"stop":true}'))
    assert r.front.calls == [("error", job, 502, "the worker sent an invalid response")]
    assert proc.kills == 1


def test_a_large_frame_without_a_head_length_breaks_the_channel(rig):
    r = rig()
    [proc] = r.start()
    job = r.submit()
    r.send(proc, frame.encode(CODEC_JSON, LARGE))
    assert r.front.calls == [("error", job, 502, "the worker sent an invalid response")]
    assert proc.kills == 1


# ---- errors ---------------------------------------------------------------------------------------------

def test_an_error_frame_before_anything_was_sent_is_500_and_the_worker_kept(rig, caplog):
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    job = r.submit("/boom")
    r.send(proc, frame.encode(ERROR, b"ValueError: boom"))
    assert r.front.calls == [("error", job, 500, "the application raised an error")]
    assert worker.state is READY and proc.kills == 0
    assert f"{worker}: request GET /boom failed: 'ValueError: boom'" in caplog.text


def test_an_error_frame_after_the_stream_began_aborts_the_answer(rig):
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    job = r.submit()
    r.reply(proc, 200, b"a", stream=STREAM)
    r.send(proc, frame.encode(ERROR, b"boom"))
    assert r.front.calls[-1] == ("abort", job, "the application raised an error")
    assert worker.state is READY


def test_an_invalid_head_breaks_the_channel_and_the_client_gets_502(rig):
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    job = r.submit()
    r.send(proc, r.response(head=b'{"status": 99}'))
    assert r.front.calls == [("error", job, 502, "the worker sent an invalid response")]
    assert proc.kills == 1 and worker.state is STOPPING


def test_a_frame_without_its_head_length_breaks_the_channel(rig):
    r = rig()
    [proc] = r.start()
    job = r.submit()
    r.send(proc, frame.encode(CODEC_JSON, b'{"status":200}'))
    assert r.front.calls == [("error", job, 502, "the worker sent an invalid response")]


def test_a_second_final_frame_in_the_same_read_breaks_the_channel(rig, caplog):
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    job = r.submit()
    r.send(proc, r.response(200, b"mine") + r.response(200, b"for nobody"))
    assert r.front.calls == [("answer", job, 200, b"mine")]            # the answer went out ...
    assert proc.kills == 1 and worker.state is STOPPING               # ... and the worker is killed
    assert worker.reason is Reason.BROKEN_CHANNEL
    assert "sent a frame after its final response frame; killing it" in caplog.text


def test_half_a_frame_after_the_final_one_breaks_the_channel_too(rig):
    r = rig()
    [proc] = r.start()
    r.submit()
    r.send(proc, r.response(200, b"mine") + r.response(200, b"next")[:5])
    assert proc.kills == 1


def test_a_frame_while_ready_breaks_the_channel(rig, caplog):
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    r.reply(proc, 200, b"unasked")
    assert proc.kills == 1 and worker.state is STOPPING and r.front.calls == []
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
    assert first.state is STOPPING and first.reason is Reason.WORKER_REQUEST
    assert [f.payload for f in frames_to_worker(asked)] == [b'{"stop": true}']
    assert job.worker is r.worker_of(other) and r.request_of(other)[0]["method"] == "GET"
    assert len(r.launcher.started) == 3                                 # its replacement
    assert r.front.calls == []


# ---- backpressure -----------------------------------------------------------------------------------------

def test_a_backlogged_client_pauses_the_workers_pipe_and_its_deadline(rig):
    r = rig(exec_ttl=10.0)
    [proc] = r.start()
    worker = r.worker_of(proc)
    client = Client()
    client.backlogged = True
    job = r.submit(client=client)
    r.reply(proc, 200, b"a", stream=STREAM)
    assert not worker.channel.reading and r.loop.selector.events_of(proc.from_worker) == 0
    assert client.drain_waits == 1
    r.reply(proc, 200, b"b", stream=STREAM)                          # stays in the pipe
    assert r.front.kinds() == ["begin"]
    r.clock.advance(100.0)
    client.backlogged = False
    r.back.resume(job)                                               # the front's on_drain
    assert worker.channel.reading and r.loop.selector.events_of(proc.from_worker) == READ
    assert worker.deadline_at == r.clock() + 10.0
    r.round()
    assert r.front.kinds() == ["begin", "part"]


@pytest.mark.parametrize("payload", [b"a", LARGE], ids=["small", "large"])
def test_exec_ttl_does_not_count_while_the_client_is_backlogged(rig, payload):
    r = rig(exec_ttl=10.0)
    [proc] = r.start()
    client = Client()
    r.submit(client=client)
    data = r.response(200, payload, stream=STREAM)
    r.send(proc, data[:-1])
    client.backlogged = True                                         # as its last bytes arrive
    r.send(proc, data[-1:])
    assert r.worker_of(proc).deadline_at == 0.0
    r.clock.advance(60.0)
    r.back.expire(r.clock())
    assert proc.kills == 0


def test_a_backlogged_client_of_a_one_frame_large_answer_suspends_exec_ttl(rig):
    r = rig(exec_ttl=10.0)
    [proc] = r.start()
    worker = r.worker_of(proc)
    client = Client()
    client.backlogged = True
    r.submit(client=client)
    proc.send(r.response(200, LARGE)[:60000])
    r.round()
    assert worker.deadline_at == 0.0 and not worker.channel.reading
    r.clock.advance(60.0)
    r.back.expire(r.clock())
    assert proc.kills == 0


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

def test_abandon_tells_a_streaming_worker_to_stop_and_drops_its_frames_until_the_final_one(rig):
    r = rig(destroy_timeout=5.0)
    [proc] = r.start()
    worker = r.worker_of(proc)
    job = r.submit()
    proc.read_requests()
    r.reply(proc, 200, b"a", stream=STREAM)
    r.jobs.abandon(job, r.clock())
    [stop] = frames_to_worker(proc)
    assert stop.stream == STOP and stop.payload == b""
    assert worker.deadline_at == r.clock() + 5.0                     # destroy_timeout to wind down
    calls = len(r.front.calls)
    r.reply(proc, 200, b"dropped", stream=STREAM)
    assert len(r.front.calls) == calls and worker.state is WORKING
    r.send(proc, frame.encode(CODEC_JSON, b"", (0,)))
    assert len(r.front.calls) == calls and worker.state is READY


def test_abandon_before_the_answer_drops_it_without_a_stop(rig):
    r = rig(exec_ttl=10.0)
    [proc] = r.start()
    worker = r.worker_of(proc)
    job = r.submit()
    proc.read_requests()
    r.clock.advance(3.0)
    r.jobs.abandon(job, r.clock())
    assert frames_to_worker(proc) == []                              # it does not stream: no STOP
    assert worker.deadline_at == r.clock() + 10.0
    r.reply(proc, 200, b"nobody reads this")
    assert r.front.calls == [] and worker.state is READY and not job.done


def test_a_cancelled_large_answer_is_dropped_and_the_worker_freed(rig):
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    job = r.submit()
    r.jobs.abandon(job, r.clock())
    r.send(proc, r.response(200, LARGE))
    assert r.front.calls == [] and worker.state is READY


def test_soft_error_of_an_abandoned_job_is_not_answered(rig):
    r = rig()
    [proc] = r.start()
    worker = r.worker_of(proc)
    job = r.submit()
    r.jobs.abandon(job, r.clock())
    r.send(proc, frame.encode(ERROR, b"boom"))
    assert r.front.calls == [] and worker.state is READY


def test_the_request_frame_of_a_large_body_carries_all_of_it(rig):
    r = rig()
    [proc] = r.start()
    body = b"B" * (200 * 1024)
    r.submit("/upload", "POST", body)
    data = b""
    for _ in range(50):                                              # the pipe holds 64 KB at a time
        data += proc.read_requests()
        r.round()
    [item] = frame.FrameDecoder().feed(data)
    head = json.loads(item.payload[:item.options[0]])
    assert head["method"] == "POST" and bytes(item.payload[item.options[0]:]) == body
