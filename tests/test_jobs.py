"""A job's life (minirr.master.jobs): its table walked pair by pair, every row of it reached
through the Jobs methods (with what the client got, the verdict for the worker, and the
answer counted and logged once), the queue and its limits, the table from a failure to
its answer, and the deadlines. A real Pool and ReplyReader, the real Answers over
recording connections, a fake clock; no worker and no backend (the test plays both)."""

from __future__ import annotations

import io
import re

import pytest

from fakes import FakeClock, FakeConnection, FixedDates, read_answer
from minirr.errors import MinirrError
from minirr.logs import AccessLog, LogWriter
from minirr.master import jobs as jobs_module
from minirr.master.answer import Answers
from minirr.master.jobs import (AT_WORKER, CLIENT_GONE_STATUS, CLOSING, DONE, DRAINING, ERROR_ANSWERS, OPEN, QUEUED,
                                REFUSALS, STREAMING, TRANSITIONS, ErrorAnswer, Job, Jobs, JobState, Outcome, Verdict, advance)
from minirr.master.metrics import ServerMetrics
from minirr.master.pool import Pool
from minirr.master.reply import ReplyReader
from minirr.wire import frame
from minirr.wire.frame import CODEC_JSON, ERROR, STREAM
from minirr.wire.messages import Request

EVENTS = sorted({event for _, event in TRANSITIONS})


class RecordingAnswers(Answers):
    """The real Answers, each call recorded as (what, the main argument) before it runs."""

    def __init__(self) -> None:
        super().__init__(FixedDates())
        self.calls: list = []

    def whole(self, job, head, body):
        self.calls.append(("whole", head.status))
        return super().whole(job, head, body)

    def begin(self, job, head, first):
        self.calls.append(("begin", head.status))
        return super().begin(job, head, first)

    def part(self, job, piece):
        self.calls.append(("part", bytes(piece)))
        return super().part(job, piece)

    def end(self, job, last):
        self.calls.append(("end", bytes(last)))
        return super().end(job, last)

    def error(self, job, status, message, headers, keep_alive):
        self.calls.append(("error", status, message, headers, keep_alive))
        return super().error(job, status, message, headers, keep_alive)

    def abort(self, job, why):
        self.calls.append(("abort", why))
        return super().abort(job, why)


class Setup:
    def __init__(self, size: int = 2, max_queue_size: int = 0, allocate_timeout_s: float = 60.0,
                 exec_ttl_s: float = 30.0, destroy_timeout_s: float = 5.0, access_log: bool = True) -> None:
        self.clock = FakeClock()
        self.pool = Pool(size, allocate_timeout_s=allocate_timeout_s)
        self.metrics = ServerMetrics()
        self.log_text = io.StringIO()
        log = AccessLog(LogWriter(self.log_text), "text", clock=lambda: 1700000000.25) if access_log else None
        self.answers = RecordingAnswers()
        self.jobs = Jobs(self.pool, self.answers, max_queue_size, allocate_timeout_s, exec_ttl_s, destroy_timeout_s,
                         self.metrics, log)
        self.reader = ReplyReader()
        self.moves: list = []

    def ready_worker(self, pid: int = 4242):
        worker = self.pool.new_worker(self.clock())
        self.pool.hello(worker, pid, self.clock())
        return worker

    def job(self, path: str = "/a", query: str = "", method: str = "GET") -> Job:
        request = Request(method, path, query, remote_addr="192.0.2.7")
        return Job(FakeConnection(), request, True, self.clock())

    def at_worker(self, path: str = "/a") -> Job:
        """A job a ready worker took (what frontend.on_request and backend.dispatch do)."""
        worker = self.ready_worker()
        job = self.job(path)
        assert self.jobs.submit(job, self.clock()) is worker
        job.worker = worker
        self.pool.assign(worker, job, job.id)
        return job

    def reply(self, job: Job, data: bytes) -> list:
        """The worker's frames for `job` -> the verdicts, as the backend reads them."""
        decoder = frame.FrameDecoder(large=frame.PARTS)
        return [self.jobs.on_reply(job, self.reader.read(job, item), self.clock()) for item in decoder.feed(data)]

    # ---- what was counted and logged ----------------------------------------------------------------
    def counted(self) -> dict:
        """minirr_requests_total, by status, as it stands."""
        return {int(labels[0]): value for labels, value in self.metrics.requests.values.items() if value}

    def logged(self) -> list:
        """The statuses of the access log's lines."""
        return [int(m.group(1)) for m in re.finditer(r'" (\d{3}) \d+ ', self.log_text.getvalue())]

    def assert_answered_once(self, status: int) -> None:
        assert self.counted() == {status: 1} and self.logged() == [status]

    def assert_not_answered(self) -> None:
        assert self.counted() == {} and self.logged() == []


@pytest.fixture
def s(monkeypatch):
    """A Setup whose `moves` lists every (state, event) a job moved by, through jobs.advance."""
    setup = Setup()

    def recording_advance(job, event):
        setup.moves.append((job.state, event))
        return advance(job, event)

    monkeypatch.setattr(jobs_module, "advance", recording_advance)
    return setup


def head(status: int = 200, headers: str = "{}") -> bytes:
    return b'{"status":%d,"headers":%s}' % (status, headers.encode())


def response(status: int = 200, body: bytes = b"", stream: int = 0, headers: str = "{}") -> bytes:
    json_head = head(status, headers)
    return frame.encode(CODEC_JSON, json_head + body, (len(json_head),), stream)


def piece(body: bytes = b"", stream: int = 0) -> bytes:
    return frame.encode(CODEC_JSON, body, (0,), stream)


def client_of(job: Job):
    return read_answer(job.conn.sent(), head_only=job.head_only, closed=job.conn.closed)


# ================================================================ the table, pair by pair

def test_done_is_terminal_and_every_state_but_done_has_a_way_out():
    assert not [pair for pair in TRANSITIONS if pair[0] is DONE]
    assert {state for state, _ in TRANSITIONS} == set(JobState) - {DONE}
    assert set(TRANSITIONS.values()) <= set(JobState)


@pytest.mark.parametrize("event", EVENTS)
@pytest.mark.parametrize("state", list(JobState), ids=lambda state: state.name)
def test_each_pair_of_the_table_moves_or_raises(state, event):
    job = Job(FakeConnection(), Request("GET", "/t"), True, 0.0)
    job.state = state
    new = TRANSITIONS.get((state, event))
    if new is None:
        with pytest.raises(MinirrError) as info:
            advance(job, event)
        assert str(info.value) == f"job GET /t: event {event!r} is not allowed in state {state.name}"
        assert job.state is state
    else:
        assert advance(job, event) is new and job.state is new


# ================================================================ every row, reached through Jobs

ROWS_REACHED = set()


def reaches(state: JobState, event: str):
    """Marks a test as the one that reaches this row (see the last test of this part)."""
    ROWS_REACHED.add((state, event))
    return lambda test: test


@reaches(QUEUED, "dispatched")
def test_a_ready_worker_gets_the_job_at_once(s):
    worker = s.ready_worker()
    job = s.job()
    assert s.jobs.submit(job, s.clock()) is worker
    assert (QUEUED, "dispatched") in s.moves and job.state is AT_WORKER
    assert job.deadline_at == s.clock() + 30.0 and not s.jobs.queue
    assert s.answers.calls == [] and s.counted() == {}


@reaches(QUEUED, "refused")
def test_a_full_queue_answers_503_queue_full_with_retry_after():
    s = Setup(max_queue_size=2)
    for _ in range(2):
        s.jobs.submit(s.job(), s.clock())
    third = s.job()
    assert s.jobs.submit(third, s.clock()) is None
    assert s.answers.calls == [("error", 503, "the request queue is full", (("Retry-After", "1"),), False)]
    assert third.state is DONE and third.outcome is Outcome.QUEUE_FULL
    assert s.metrics.no_free_workers.get() == 1 and s.jobs.waiting == 2
    assert client_of(third).headers["retry-after"] == "1" and third.conn.closing
    s.assert_answered_once(503)


@reaches(QUEUED, "client_gone")
def test_a_client_gone_while_queued_leaves_the_queue_and_is_logged_499(s):
    gone, kept = s.job("/gone"), s.job("/kept")
    s.jobs.submit(gone, s.clock())
    s.jobs.submit(kept, s.clock())
    assert s.jobs.client_gone(gone, s.clock()) is False           # no worker to tell
    assert (QUEUED, "client_gone") in s.moves and gone.state is DONE
    assert list(s.jobs.queue) == [kept] and s.answers.calls == []
    s.assert_answered_once(CLIENT_GONE_STATUS)
    assert s.log_text.getvalue().endswith('"GET /gone HTTP/1.1" 499 0 0.0ms pid=-\n')


@reaches(AT_WORKER, "answered")
def test_one_frame_answers_and_frees_the_worker(s):
    job = s.at_worker()
    assert s.reply(job, response(201, b"hi")) == [Verdict.FREE]
    assert (AT_WORKER, "answered") in s.moves and job.state is DONE
    assert s.answers.calls == [("whole", 201)] and client_of(job).body == b"hi"
    s.assert_answered_once(201)


@reaches(AT_WORKER, "streamed")
@reaches(STREAMING, "finished")
def test_a_stream_is_counted_when_it_ends(s):
    job = s.at_worker()
    assert s.reply(job, response(200, b"a", STREAM)) == [Verdict.MORE]
    assert (AT_WORKER, "streamed") in s.moves and job.state is STREAMING
    s.assert_not_answered()
    assert s.reply(job, piece(b"b", STREAM) + piece(b"c")) == [Verdict.MORE, Verdict.FREE]
    assert (STREAMING, "finished") in s.moves and job.state is DONE
    assert s.answers.calls == [("begin", 200), ("part", b"b"), ("end", b"c")]
    assert client_of(job).body == b"abc" and client_of(job).complete
    s.assert_answered_once(200)


@reaches(AT_WORKER, "answered_early")
@reaches(DRAINING, "finished")
def test_a_first_piece_that_fills_content_length_is_answered_at_once(s):
    job = s.at_worker()
    assert s.reply(job, response(200, b"abc", STREAM, '{"Content-Length":["3"]}')) == [Verdict.MORE]
    assert (AT_WORKER, "answered_early") in s.moves and job.state is DRAINING
    assert job.conn.kinds() == ["respond"] and client_of(job).complete
    s.assert_answered_once(200)
    assert s.reply(job, piece(b"", 0)) == [Verdict.FREE]           # the worker's own end, dropped
    assert (DRAINING, "finished") in s.moves and job.state is DONE
    assert s.answers.calls == [("begin", 200)]
    s.assert_answered_once(200)


@reaches(AT_WORKER, "failed")
def test_a_soft_error_is_500_and_frees_the_worker(s):
    job = s.at_worker("/boom")
    assert s.reply(job, frame.encode(ERROR, b"ValueError: boom")) == [Verdict.FREE]
    assert (AT_WORKER, "failed") in s.moves and job.outcome is Outcome.SOFT_ERROR
    assert s.answers.calls == [("error", 500, "the application raised an error", (), True)]
    assert not job.conn.closing                                     # a 500 keeps the connection
    s.assert_answered_once(500)


@reaches(AT_WORKER, "failed_early")
def test_a_stream_whose_head_the_app_got_wrong_is_500_and_drains(s):
    job = s.at_worker()
    assert s.reply(job, response(99, b"a", STREAM)) == [Verdict.MORE]     # more of it is to come
    assert (AT_WORKER, "failed_early") in s.moves and job.state is DRAINING
    assert s.answers.calls == [("error", 500, "the application sent an invalid response head", (), True)]
    assert s.reply(job, piece(b"b", STREAM) + piece(b"")) == [Verdict.MORE, Verdict.FREE]
    assert job.state is DONE and s.answers.calls[1:] == []
    s.assert_answered_once(500)


@reaches(AT_WORKER, "recycled")
def test_a_recycle_request_puts_the_job_first_in_line(s):
    waiting = s.job("/waiting")
    job = s.at_worker("/recycled")
    s.jobs.submit(waiting, s.clock())
    s.clock.advance(2.0)
    assert s.reply(job, frame.encode(CODEC_JSON, b'{"stop":true}', (13,))) == [Verdict.RECYCLE]
    assert (AT_WORKER, "recycled") in s.moves and job.state is QUEUED
    assert list(s.jobs.queue) == [job, waiting] and job.deadline_at == job.queued_at + 60.0   # counted from its arrival
    assert s.answers.calls == []
    s.assert_not_answered()


@reaches(AT_WORKER, "client_gone")
def test_a_client_gone_at_the_worker_is_logged_499_and_its_answer_dropped(s):
    job = s.at_worker()
    assert s.jobs.client_gone(job, s.clock()) is True              # the backend tells its worker
    assert (AT_WORKER, "client_gone") in s.moves and job.state is DRAINING
    s.assert_answered_once(CLIENT_GONE_STATUS)
    assert s.reply(job, response(200, b"for nobody")) == [Verdict.FREE]
    assert job.state is DONE and s.answers.calls == []
    s.assert_answered_once(CLIENT_GONE_STATUS)


@reaches(AT_WORKER, "broken")
def test_a_first_piece_past_its_content_length_is_broken_off(s):
    job = s.at_worker()
    assert s.reply(job, response(200, b"abcd", STREAM, '{"Content-Length":["3"]}')) == [Verdict.MORE]
    assert (AT_WORKER, "broken") in s.moves and job.state is DRAINING
    assert s.answers.calls == [("begin", 200), ("abort", "the body was longer than its Content-Length")]
    assert job.conn.closed and job.body_bytes == 0
    s.assert_answered_once(200)
    s.reply(job, piece())
    assert job.state is DONE
    s.assert_answered_once(200)


@reaches(STREAMING, "broken")
def test_a_piece_past_its_content_length_breaks_the_stream_off(s):
    job = s.at_worker()
    s.reply(job, response(200, b"ab", STREAM, '{"Content-Length":["3"]}'))
    assert s.reply(job, piece(b"cd", STREAM)) == [Verdict.MORE]
    assert (STREAMING, "broken") in s.moves and job.state is DRAINING
    assert s.answers.calls[-1] == ("abort", "the body was longer than its Content-Length")
    assert client_of(job).body == b"ab" and job.conn.closed
    s.assert_answered_once(200)
    assert s.reply(job, piece(b"ignored")) == [Verdict.FREE]
    assert job.state is DONE and s.answers.calls[-1][0] == "abort"
    s.assert_answered_once(200)


@reaches(STREAMING, "worker_lost")
def test_a_worker_lost_mid_stream_breaks_the_answer_off(s):
    job = s.at_worker()
    s.reply(job, response(200, b"a", STREAM))
    s.jobs.worker_lost(job, Outcome.WORKER_DIED, s.clock())
    assert (STREAMING, "worker_lost") in s.moves and job.state is DONE
    assert s.answers.calls[-1] == ("abort", "the worker died while handling the request")
    assert job.conn.closed and not client_of(job).complete
    s.assert_answered_once(200)


@reaches(STREAMING, "client_gone")
def test_a_client_gone_mid_stream_drains_and_is_counted_with_the_status_it_got(s):
    job = s.at_worker()
    s.reply(job, response(200, b"a", STREAM))
    assert s.jobs.client_gone(job, s.clock()) is True
    assert (STREAMING, "client_gone") in s.moves and job.state is DRAINING
    s.assert_answered_once(200)                                     # its head went out: 200, not 499
    assert s.reply(job, piece(b"b", STREAM)) == [Verdict.MORE]
    assert s.answers.calls == [("begin", 200)]


@reaches(DRAINING, "worker_lost")
def test_a_worker_lost_while_draining_ends_the_job_without_another_answer(s):
    job = s.at_worker()
    s.jobs.client_gone(job, s.clock())
    s.jobs.worker_lost(job, Outcome.WORKER_DIED, s.clock())
    assert (DRAINING, "worker_lost") in s.moves and job.state is DONE
    assert s.answers.calls == []
    s.assert_answered_once(CLIENT_GONE_STATUS)


# ---- a WebSocket's rows: master/websocket.py decides each move (tests/test_websocket_served.py
# reaches each through a real server); here, what the job's table does with them

class StandInSession:
    """What jobs.py asks of a WebSocket session: its log words, and a 1011 when its worker is lost."""

    def __init__(self) -> None:
        self.lost = 0

    def worker_lost(self) -> None:
        self.lost += 1

    @staticmethod
    def log_fields() -> str:
        return " websocket in=2 out=3 close=1000 by=client"


def open_websocket(s) -> Job:
    job = s.at_worker("/ws")
    job.websocket = StandInSession()
    job.status = 101
    s.jobs.move(job, "upgraded", s.clock())
    return job


@reaches(AT_WORKER, "upgraded")
def test_an_accepted_websocket_is_open_and_not_yet_counted(s):
    job = open_websocket(s)
    assert (AT_WORKER, "upgraded") in s.moves and job.state is OPEN
    s.assert_not_answered()


@reaches(OPEN, "ws_closed")
def test_a_websocket_closed_by_its_socket_first_is_logged_with_its_messages_then_drains(s):
    job = open_websocket(s)
    s.clock.advance(2.5)
    s.jobs.move(job, "ws_closed", s.clock())
    assert job.state is DRAINING
    s.assert_answered_once(101)
    assert '"GET /ws HTTP/1.1" 101 0 2500.0ms pid=4242 websocket in=2 out=3 close=1000 by=client' in s.log_text.getvalue()
    s.jobs.move(job, "finished", s.clock())
    assert job.state is DONE
    s.assert_answered_once(101)


@reaches(OPEN, "finished")
@reaches(CLOSING, "ws_closed")
def test_a_websocket_whose_app_ended_first_is_logged_when_its_socket_closes(s):
    job = open_websocket(s)
    s.jobs.move(job, "finished", s.clock())
    assert job.state is CLOSING
    s.assert_not_answered()
    s.jobs.move(job, "ws_closed", s.clock())
    assert job.state is DONE
    s.assert_answered_once(101)


@reaches(OPEN, "worker_lost")
def test_a_websocket_whose_worker_is_lost_is_closed_1011_by_its_session(s):
    job = open_websocket(s)
    s.jobs.worker_lost(job, Outcome.WORKER_DIED, s.clock())
    assert (OPEN, "worker_lost") in s.moves and job.state is CLOSING and job.websocket.lost == 1
    assert s.answers.calls == []
    s.assert_not_answered()


def test_every_row_of_the_table_is_reached_by_a_test_above():
    assert ROWS_REACHED == set(TRANSITIONS)


# ================================================================ more ways to the same rows

@pytest.mark.parametrize("outcome,status,message", [
    (Outcome.WORKER_DIED, 502, "the worker died while handling the request"),
    (Outcome.EXEC_TTL, 504, "the request exceeded exec_ttl (30s)"),
    (Outcome.BAD_RESPONSE, 502, "the worker sent an invalid response"),
])
def test_a_worker_lost_before_the_answer_is_its_error_answer(s, outcome, status, message):
    job = s.at_worker()
    s.jobs.worker_lost(job, outcome, s.clock())
    assert (AT_WORKER, "failed") in s.moves and job.state is DONE
    assert s.answers.calls == [("error", status, message, (), False)] and job.conn.closing
    s.assert_answered_once(status)


@pytest.mark.parametrize("json_head", [b"[1]", b"nope"], ids=["list", "not_json"])
def test_a_head_that_is_no_json_object_is_a_broken_channel_and_502(s, json_head):
    job = s.at_worker()
    data = frame.encode(CODEC_JSON, json_head, (len(json_head),))
    assert s.reply(job, data) == [Verdict.BROKEN]
    assert s.answers.calls == [("error", 502, "the worker sent an invalid response", (), False)]
    s.assert_answered_once(502)


def test_a_one_frame_answer_whose_head_the_app_got_wrong_is_500_and_frees_the_worker(s):
    job = s.at_worker()
    assert s.reply(job, response(200, b"x", 0, '{"X":["a\\r\\nb"]}')) == [Verdict.FREE]
    assert (AT_WORKER, "failed") in s.moves and job.outcome is Outcome.APP_ERROR
    assert s.answers.calls == [("error", 500, "the application sent an invalid response head", (), True)]
    s.assert_answered_once(500)


def test_a_soft_error_mid_stream_breaks_it_off_and_frees_the_worker(s):
    job = s.at_worker()
    s.reply(job, response(200, b"a", STREAM))
    assert s.reply(job, frame.encode(ERROR, b"boom")) == [Verdict.FREE]
    assert [m for m in s.moves if m[0] is not QUEUED] == [
        (AT_WORKER, "streamed"), (STREAMING, "broken"), (DRAINING, "finished")]
    assert s.answers.calls[-1] == ("abort", "the application raised an error")
    s.assert_answered_once(200)


def test_a_stream_shorter_than_its_content_length_breaks_off_at_its_end(s):
    job = s.at_worker()
    s.reply(job, response(200, b"a", STREAM, '{"Content-Length":["3"]}'))
    assert s.reply(job, piece(b"b")) == [Verdict.FREE]
    assert (STREAMING, "broken") in s.moves and (DRAINING, "finished") in s.moves and job.state is DONE
    assert s.answers.calls[-1] == ("abort", "the body was shorter than its Content-Length")
    s.assert_answered_once(200)


@pytest.mark.parametrize("data", [frame.encode(ERROR, b"boom"), frame.encode(CODEC_JSON, b'{"stop":true}', (13,))],
                         ids=["soft_error", "recycle"])
def test_a_final_frame_of_a_job_whose_client_left_is_dropped(s, data):
    job = s.at_worker()
    s.jobs.client_gone(job, s.clock())
    assert s.reply(job, data)[-1] in (Verdict.FREE, Verdict.RECYCLE)
    assert job.state is DONE and s.answers.calls == [] and not s.jobs.queue
    s.assert_answered_once(CLIENT_GONE_STATUS)


def test_client_gone_of_a_job_whose_answer_ended_does_nothing(s):
    job = s.at_worker()
    s.reply(job, response(200, b"a", STREAM, '{"Content-Length":["1"]}'))   # DRAINING: answered early
    assert s.jobs.client_gone(job, s.clock()) is False
    s.reply(job, piece())
    assert s.jobs.client_gone(job, s.clock()) is False                # DONE
    s.assert_answered_once(200)


# ================================================================ the queue

def test_without_a_ready_worker_the_job_is_queued_with_its_allocate_deadline():
    s = Setup(allocate_timeout_s=5.0)
    job = s.job()
    assert s.jobs.submit(job, s.clock()) is None
    assert list(s.jobs.queue) == [job] and job.deadline_at == s.clock() + 5.0 and job.state is QUEUED
    assert s.jobs.waiting == 1


def test_a_zero_allocate_timeout_queues_without_a_deadline():
    s = Setup(allocate_timeout_s=0.0)
    job = s.job()
    s.jobs.submit(job, s.clock())
    assert job.deadline_at == 0.0
    s.clock.advance(1e6)
    s.jobs.expire(s.clock())
    assert list(s.jobs.queue) == [job]


def test_a_zero_exec_ttl_dispatches_without_a_deadline():
    s = Setup(exec_ttl_s=0.0)
    s.ready_worker()
    job = s.job()
    s.jobs.submit(job, s.clock())
    assert job.state is AT_WORKER and job.deadline_at == 0.0


def test_no_serving_workers_after_boot_failures_is_503_no_workers_with_the_back_off_as_retry_after():
    s = Setup()
    for _ in range(3):
        s.pool.exited(s.pool.new_worker(s.clock()), s.clock())     # failed before it was ready
    assert s.pool.boot_failures == 3 and s.pool.next_start_at == s.clock() + 2.0
    s.clock.advance(0.3)                                            # 1.7 s of back-off left: rounded up
    job = s.job()
    s.jobs.submit(job, s.clock())
    assert s.answers.calls == [("error", 503, "no worker is running (workers fail to start)",
                                (("Retry-After", "2"),), False)]
    assert not s.jobs.queue and s.metrics.no_free_workers.get() == 1 and job.state is DONE


def test_retry_after_for_no_workers_is_at_least_one_second():
    s = Setup()
    s.pool.exited(s.pool.new_worker(s.clock()), s.clock())
    s.clock.advance(100.0)                                          # the back-off is over, no start yet
    s.jobs.submit(s.job(), s.clock())
    assert s.answers.calls[0][3] == (("Retry-After", "1"),)


def test_boot_failures_with_a_worker_still_serving_queue_the_job():
    s = Setup()
    busy = s.ready_worker()
    s.pool.assign(s.pool.ready_worker(), "other", 0)
    s.pool.exited(s.pool.new_worker(s.clock()), s.clock())
    assert s.pool.boot_failures == 1 and busy.state.value == "working"
    s.jobs.submit(s.job(), s.clock())
    assert s.jobs.waiting == 1 and not s.answers.calls


def test_next_pair_gives_queued_jobs_to_ready_workers_oldest_first():
    s = Setup()
    jobs = [s.job(f"/{i}") for i in range(3)]
    for job in jobs:
        s.jobs.submit(job, s.clock())
    assert s.jobs.next_pair(s.clock()) is None                      # no worker yet
    first, second = s.ready_worker(1), s.ready_worker(2)
    assert s.jobs.next_pair(s.clock()) == (first, jobs[0])
    assert s.jobs.next_pair(s.clock()) == (second, jobs[1])
    assert s.jobs.next_pair(s.clock()) is None and list(s.jobs.queue) == [jobs[2]]
    assert jobs[0].state is AT_WORKER and jobs[0].deadline_at == s.clock() + 30.0


def test_next_pair_of_an_empty_queue_takes_no_worker():
    s = Setup()
    worker = s.ready_worker()
    assert s.jobs.next_pair(s.clock()) is None
    assert s.pool.ready_worker() is worker


@reaches(QUEUED, "refused")
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
    assert not s.answers.calls
    s.clock.advance(0.01)
    s.jobs.expire(s.clock())
    assert [call[1:3] for call in s.answers.calls] == [
        (503, "no free worker within allocate_timeout"), (503, "no free worker within allocate_timeout")]
    assert [job.state for job in early] == [DONE, DONE] and list(s.jobs.queue) == [late]
    assert s.metrics.no_free_workers.get() == 2 and s.counted() == {503: 2}


def test_refuse_all_answers_every_queued_job():
    s = Setup()
    jobs = [s.job() for _ in range(3)]
    for job in jobs:
        s.jobs.submit(job, s.clock())
    s.jobs.refuse_all(Outcome.SHUTDOWN, s.clock())
    assert [job.state for job in jobs] == [DONE] * 3 and not s.jobs.queue
    assert {call[1:] for call in s.answers.calls} == {
        (503, "the server is shutting down", (("Retry-After", "1"),), False)}
    assert s.metrics.no_free_workers.get() == 0                   # a shutdown is not a lack of workers
    assert s.counted() == {503: 3} and s.logged() == [503] * 3


# ================================================================ fail(): the ERROR_ANSWERS table

# (status, message, extra headers, keep the connection open, counted as no free worker);
# everything from 502 up closes the connection.
EXPECTED = {
    Outcome.SOFT_ERROR: (500, "the application raised an error", (), True, 0),
    Outcome.APP_ERROR: (500, "the application sent an invalid response head", (), True, 0),
    Outcome.BAD_RESPONSE: (502, "the worker sent an invalid response", (), False, 0),
    Outcome.WORKER_DIED: (502, "the worker died while handling the request", (), False, 0),
    Outcome.EXEC_TTL: (504, "the request exceeded exec_ttl (30s)", (), False, 0),
    Outcome.ALLOCATE_TIMEOUT: (503, "no free worker within allocate_timeout", (("Retry-After", "1"),), False, 1),
    Outcome.QUEUE_FULL: (503, "the request queue is full", (("Retry-After", "1"),), False, 1),
    Outcome.NO_WORKERS: (503, "no worker is running (workers fail to start)", (("Retry-After", "1"),), False, 1),
    Outcome.SHUTDOWN: (503, "the server is shutting down", (("Retry-After", "1"),), False, 0),
    Outcome.WS_DENIED: (403, "the application refused the WebSocket", (), True, 0),
    Outcome.WS_NOT_ACCEPTED: (500, "the application did not accept the WebSocket", (), True, 0),
}


def test_every_outcome_has_an_answer():
    assert set(ERROR_ANSWERS) == set(Outcome) == set(EXPECTED)
    assert all(isinstance(answer, ErrorAnswer) for answer in ERROR_ANSWERS.values())
    assert REFUSALS == {outcome for outcome, answer in ERROR_ANSWERS.items() if answer.status == 503}


@pytest.mark.parametrize("outcome", list(Outcome), ids=lambda outcome: outcome.value)
def test_fail_maps_each_outcome_through_the_table(outcome):
    s = Setup()
    job = s.job() if outcome in REFUSALS else s.at_worker()
    s.jobs.fail(job, outcome, s.clock())
    status, message, headers, keep_alive, counted = EXPECTED[outcome]
    assert s.answers.calls == [("error", status, message, headers, keep_alive)]
    assert job.outcome is outcome and job.state is DONE
    assert s.metrics.no_free_workers.get() == counted
    answer = client_of(job)
    assert (answer.status, answer.body) == (status, message.encode() + b"\n")
    assert job.conn.closing is not keep_alive
    s.assert_answered_once(status)


def test_an_error_answer_on_a_closing_connection_does_not_keep_it_alive():
    s = Setup()
    job = s.at_worker()
    job.conn.closing = True                                         # the server stops
    s.jobs.fail(job, Outcome.SOFT_ERROR, s.clock())
    assert job.conn.calls[-1][2] is False and b"Connection: close\r\n" in job.conn.sent()


# ================================================================ the bookkeeping of an answer

def test_an_answer_is_counted_and_logged_with_its_worker_bytes_and_duration():
    s = Setup()
    worker = s.ready_worker(pid=4121)
    job = s.job("/path", "q=1")
    s.jobs.submit(job, s.clock())
    job.worker = worker
    s.clock.advance(0.0125)
    s.reply(job, response(201, b"x" * 17))
    assert job.state is DONE and job.body_bytes == 17
    assert s.metrics.requests.get(("201",)) == 1
    assert s.metrics.duration.count == 1 and s.metrics.duration.sum == pytest.approx(0.0125)
    line = s.log_text.getvalue()
    assert line.endswith(' INFO minirr.access: 192.0.2.7 "GET /path?q=1 HTTP/1.1" 201 17 12.5ms pid=4121\n')
    assert line.count("\n") == 1 and ",250 INFO" in line


def test_the_access_log_shows_a_dash_for_a_job_no_worker_took():
    s = Setup(max_queue_size=1)
    s.jobs.submit(s.job("/first"), s.clock())
    job = s.job("/x")
    s.jobs.submit(job, s.clock())
    body_bytes = len("the request queue is full\n")
    assert s.log_text.getvalue().endswith(f'"GET /x HTTP/1.1" 503 {body_bytes} 0.0ms pid=-\n')


def test_without_an_access_log_only_the_metrics_move():
    s = Setup(access_log=False)
    job = s.at_worker()
    s.reply(job, response(200, b"ok"))
    assert s.metrics.requests.get(("200",)) == 1 and s.log_text.getvalue() == ""


# ================================================================ deadlines

def test_a_held_back_job_has_no_deadline_and_one_resumed_counts_exec_ttl_anew(s):
    job = s.at_worker()
    s.reply(job, response(200, b"a", STREAM))
    s.jobs.held_back(job)
    assert job.deadline_at == 0.0
    s.clock.advance(100.0)
    s.reply(job, piece(b"b", STREAM))                                # progress while held back: still none
    assert job.deadline_at == 0.0
    s.jobs.resumed(job, s.clock())
    assert job.deadline_at == s.clock() + 30.0


def test_resumed_is_for_streams_only(s):
    job = s.at_worker()
    s.jobs.client_gone(job, s.clock())
    bound = job.deadline_at
    s.clock.advance(1.0)
    s.jobs.resumed(job, s.clock())
    assert job.deadline_at == bound


def test_progress_of_a_stream_counts_exec_ttl_anew(s):
    job = s.at_worker()
    s.clock.advance(20.0)
    s.reply(job, response(200, b"a", STREAM))
    assert job.deadline_at == s.clock() + 30.0
    s.clock.advance(20.0)
    s.reply(job, piece(b"b", STREAM))
    assert job.deadline_at == s.clock() + 30.0


def test_stopped_bounds_what_the_worker_still_does_by_destroy_timeout_or_exec_ttl_if_sooner(s):
    job, late = s.at_worker(), s.at_worker("/late")                   # exec_ttl 30s, destroy_timeout 5s
    s.jobs.client_gone(job, s.clock())
    s.jobs.stopped(job, s.clock())                                    # (the backend's part of client_gone)
    assert job.deadline_at == s.clock() + 5.0
    s.clock.advance(1.0)
    s.reply(job, response(200, b"a", STREAM))                         # no progress counts once stopped
    assert job.deadline_at == s.clock() - 1.0 + 5.0
    s.clock.advance(27.0)
    s.jobs.client_gone(late, s.clock())
    s.jobs.stopped(late, s.clock())
    assert late.deadline_at == s.clock() - 28.0 + 30.0


def test_stopped_without_destroy_timeout_keeps_the_deadline():
    s = Setup(destroy_timeout_s=0.0)
    job = s.at_worker()
    s.jobs.stopped(job, s.clock())
    assert job.deadline_at == s.clock() + 30.0
