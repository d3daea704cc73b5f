"""What the master writes to a job's client (minirr.master.answer.Answers), over a recording
connection (fakes.FakeConnection): the bytes of a whole answer, of a streamed one in each
framing (Content-Length, chunked, HTTP/1.0 close-delimited, HEAD, 204), an answer whose
first piece is all of it, answers broken off, and error answers; and the table event each
call returns."""

from __future__ import annotations

import json

import pytest

from fakes import DATE, FakeConnection, FixedDates, read_answer
from minirr.master.answer import Answers
from minirr.master.jobs import Job
from minirr.master.reply import read_reply_head
from minirr.wire.messages import Request

DATE_LINE = b"Date: " + DATE + b"\r\n"


ANSWERS = Answers(FixedDates())


def job_for(method: str = "GET", protocol: str = "HTTP/1.1", keep_alive: bool = True, closing: bool = False) -> Job:
    return Job(FakeConnection(closing=closing), Request(method, "/p", protocol=protocol), keep_alive, 0.0)


def head(status: int = 200, content_length=None, **headers):
    """A worker's reply head as reply.py reads it; X_A="1" is the header X-A: 1."""
    fields = {name.replace("_", "-"): [value] for name, value in headers.items()}
    if content_length is not None:
        fields["Content-Length"] = [str(content_length)]
    return read_reply_head(json.dumps({"status": status, "headers": fields}).encode())


# ---- a whole answer: one write ------------------------------------------------------------------

def test_a_whole_answer_is_one_write_with_its_length():
    job = job_for()
    assert ANSWERS.whole(job, head(201, X_A="1"), b"hello") is None
    assert job.conn.calls == [("respond", b"HTTP/1.1 201 Created\r\nX-A: 1\r\n" + DATE_LINE +
                               b"Content-Length: 5\r\n\r\nhello", True)]
    assert (job.status, job.body_bytes) == (201, 5)


def test_the_apps_own_framing_fields_give_way_to_the_masters():
    job = job_for()
    ANSWERS.whole(job, head(200, 99, Connection="close", Transfer_Encoding="chunked"), b"ab")
    assert job.conn.sent() == b"HTTP/1.1 200 OK\r\n" + DATE_LINE + b"Content-Length: 2\r\n\r\nab"


def test_a_whole_answer_to_head_has_the_length_and_no_body():
    job = job_for("HEAD")
    ANSWERS.whole(job, head(), b"hello")
    assert job.conn.sent() == b"HTTP/1.1 200 OK\r\n" + DATE_LINE + b"Content-Length: 5\r\n\r\n"
    assert job.body_bytes == 0


@pytest.mark.parametrize("status", [204, 304])
def test_a_whole_answer_without_content_has_no_length_and_no_body(status):
    job = job_for()
    ANSWERS.whole(job, head(status), b"dropped")
    assert job.conn.sent().endswith(DATE_LINE + b"\r\n") and job.body_bytes == 0


@pytest.mark.parametrize("keep_alive,closing,protocol,connection,kept", [
    (True, False, "HTTP/1.1", b"", True),
    (False, False, "HTTP/1.1", b"Connection: close\r\n", False),             # the client asked to close
    (True, True, "HTTP/1.1", b"Connection: close\r\n", False),               # the server is stopping
    (True, False, "HTTP/1.0", b"Connection: keep-alive\r\n", True),
    (False, False, "HTTP/1.0", b"Connection: close\r\n", False),
], ids=["kept", "client_closes", "server_closing", "http10_kept", "http10_closes"])
def test_a_whole_answer_keeps_the_connection_alive_unless_either_side_closes(keep_alive, closing, protocol,
                                                                             connection, kept):
    job = job_for(protocol=protocol, keep_alive=keep_alive, closing=closing)
    ANSWERS.whole(job, head(), b"x")
    [(kind, data, keep)] = job.conn.calls
    assert data == b"HTTP/1.1 200 OK\r\n" + DATE_LINE + b"Content-Length: 1\r\n" + connection + b"\r\nx"
    assert (kind, keep) == ("respond", kept)


# ---- a streamed answer, in each framing -----------------------------------------------------------------

def test_a_stream_with_the_apps_content_length():
    job = job_for()
    assert ANSWERS.begin(job, head(200, 5), b"ab") == "streamed"
    assert ANSWERS.part(job, b"cd") is None
    assert ANSWERS.end(job, b"e") == "finished"
    assert job.conn.calls == [("start_stream", b"HTTP/1.1 200 OK\r\n" + DATE_LINE + b"Content-Length: 5\r\n\r\nab"),
                              ("write", b"cd"), ("respond", b"e", True)]
    assert (job.status, job.body_bytes) == (200, 5)


def test_a_stream_without_a_length_is_chunked_and_ends_with_the_last_chunk():
    job = job_for()
    assert ANSWERS.begin(job, head(), b"ab") == "streamed"
    assert ANSWERS.part(job, b"") is None                                   # nothing: an empty chunk would end it
    assert ANSWERS.part(job, b"cde") is None
    assert ANSWERS.end(job, b"") == "finished"
    assert job.conn.calls == [
        ("start_stream", b"HTTP/1.1 200 OK\r\n" + DATE_LINE + b"Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n"),
        ("write", b"3\r\ncde\r\n"), ("respond", b"0\r\n\r\n", True)]
    answer = read_answer(job.conn.sent())
    assert (answer.body, answer.complete, job.body_bytes) == (b"abcde", True, 5)


def test_a_stream_whose_first_piece_is_empty_sends_its_head_alone():
    job = job_for()
    ANSWERS.begin(job, head(), b"")
    assert job.conn.calls == [("start_stream", b"HTTP/1.1 200 OK\r\n" + DATE_LINE +
                               b"Transfer-Encoding: chunked\r\n\r\n")]


def test_an_http10_stream_without_a_length_ends_with_the_connection():
    job = job_for(protocol="HTTP/1.0")
    assert ANSWERS.begin(job, head(), b"ab") == "streamed"
    ANSWERS.part(job, b"cd")
    assert ANSWERS.end(job, b"e") == "finished"
    assert job.conn.calls == [("start_stream", b"HTTP/1.1 200 OK\r\n" + DATE_LINE + b"Connection: close\r\n\r\nab"),
                              ("write", b"cd"), ("respond", b"e", False)]
    assert job.conn.closing and read_answer(job.conn.sent(), closed=True).body == b"abcde"


@pytest.mark.parametrize("length,field", [(5, b"Content-Length: 5\r\n"), (None, b"Transfer-Encoding: chunked\r\n")],
                         ids=["length", "chunked"])
def test_a_stream_to_head_gets_the_head_a_get_would_and_no_body(length, field):
    job = job_for("HEAD")
    assert ANSWERS.begin(job, head(200, length), b"ab") == "streamed"
    assert ANSWERS.part(job, b"cd") is None
    assert ANSWERS.end(job, b"e") == "finished"
    assert job.conn.calls == [("start_stream", b"HTTP/1.1 200 OK\r\n" + DATE_LINE + field + b"\r\n"),
                              ("respond", b"", True)]
    assert job.body_bytes == 0


def test_a_stream_of_a_204_has_no_framing_and_no_body():
    job = job_for()
    assert ANSWERS.begin(job, head(204), b"x") == "streamed"
    ANSWERS.part(job, b"y")
    assert ANSWERS.end(job, b"z") == "finished"
    assert job.conn.sent() == b"HTTP/1.1 204 No Content\r\n" + DATE_LINE + b"\r\n" and job.body_bytes == 0


def test_a_stream_on_a_closing_connection_ends_it():
    job = job_for(closing=True)
    ANSWERS.begin(job, head(200, 2), b"a")
    ANSWERS.end(job, b"b")
    assert b"Connection: close\r\n" in job.conn.calls[0][1] and job.conn.calls[-1] == ("respond", b"b", False)


# ---- a first piece that is all of it; answers broken off ---------------------------------------------------

def test_a_first_piece_that_fills_the_content_length_is_one_ordinary_answer():
    job = job_for()
    assert ANSWERS.begin(job, head(200, 3), b"abc") == "answered_early"
    assert job.conn.calls == [("respond", b"HTTP/1.1 200 OK\r\n" + DATE_LINE + b"Content-Length: 3\r\n\r\nabc", True)]
    assert job.body_bytes == 3


def test_an_empty_first_piece_of_a_zero_length_is_answered_early_too():
    job = job_for()
    assert ANSWERS.begin(job, head(200, 0), b"") == "answered_early"
    assert job.conn.kinds() == ["respond"]


def test_a_first_piece_past_the_content_length_sends_the_head_and_closes(caplog):
    job = job_for()
    assert ANSWERS.begin(job, head(200, 3), b"abcd") == "broken"
    assert job.conn.calls == [("start_stream", b"HTTP/1.1 200 OK\r\n" + DATE_LINE + b"Content-Length: 3\r\n\r\n"),
                              ("close",)]
    assert job.body_bytes == 0
    assert "GET /p: answer broken off after 0 body bytes: the body was longer than its Content-Length" in caplog.text


def test_a_piece_past_the_content_length_breaks_the_answer_off():
    job = job_for()
    ANSWERS.begin(job, head(200, 3), b"ab")
    assert ANSWERS.part(job, b"cd") == "broken"
    assert job.conn.kinds() == ["start_stream", "close"] and job.body_bytes == 2
    assert not read_answer(job.conn.sent()).complete


@pytest.mark.parametrize("last,word", [(b"", "shorter"), (b"cd", "longer")])
def test_an_end_that_does_not_meet_the_content_length_breaks_the_answer_off(caplog, last, word):
    job = job_for()
    ANSWERS.begin(job, head(200, 3), b"ab")
    assert ANSWERS.end(job, last) == "broken"
    assert job.conn.kinds() == ["start_stream", "close"]
    assert f"the body was {word} than its Content-Length" in caplog.text


def test_abort_closes_the_connection_and_says_why(caplog):
    job = job_for()
    ANSWERS.begin(job, head(), b"abc")
    ANSWERS.abort(job, "the worker died")
    assert job.conn.calls[-1] == ("close",)
    assert "192.0.2.7: GET /p: answer broken off after 3 body bytes: the worker died" in caplog.text


# ---- error answers ------------------------------------------------------------------------------------------

def test_an_error_answer_with_retry_after_closes():
    job = job_for()
    ANSWERS.error(job, 503, "the request queue is full", (("Retry-After", "1"),), keep_alive=False)
    assert job.conn.calls == [("respond", b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; "
                                          b"charset=utf-8\r\nRetry-After: 1\r\n" + DATE_LINE +
                               b"Content-Length: 26\r\nConnection: close\r\n\r\nthe request queue is full\n", False)]
    assert (job.status, job.body_bytes) == (503, 26)


@pytest.mark.parametrize("keep_alive,closing,kept", [(True, False, True), (False, False, False), (True, True, False)],
                         ids=["kept", "client_closes", "server_closing"])
def test_an_error_answer_keeps_the_connection_only_if_everyone_may(keep_alive, closing, kept):
    job = job_for(keep_alive=keep_alive, closing=closing)
    ANSWERS.error(job, 500, "the application raised an error", (), keep_alive=True)
    [(_, data, keep)] = job.conn.calls
    assert keep is kept and (b"Connection: close\r\n" in data) is not kept
    assert read_answer(data).body == b"the application raised an error\n"
