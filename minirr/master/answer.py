"""Answers: what the master writes to a job's client, whole, streamed, or as an error.

Owns: turning a worker's reply head and body into HTTP/1.1 bytes on the job's
      connection — the usual answer in one write; a streamed answer's head, then its body
      through the body writer its framing picks (http.responses.WRITERS: Content-Length,
      chunked, close-delimited, none); error answers; breaking an answer off — and the
      job's fields that say what its client got (status, body bytes, the body writer).
Never: reads a frame or decides what an event means (reply.py and jobs.py do), or moves
       a job's state: each call returns the event of the job's table that follows from
       what was written, and jobs.py makes the move.

    whole(job, head, body)        one write: head, framing fields, body
    begin(job, head, first)  ──>  "streamed" | "answered_early" (first filled Content-Length) | "broken"
    part(job, piece)         ──>  None (written) | "broken" (past Content-Length)
    end(job, last)           ──>  "finished" | "broken" (not as long as announced)
    error(job, status, ...)       a small text answer
    abort(job, why)               the connection closes mid-answer (logged)
"""

from __future__ import annotations

import logging
import time

from ..http.responses import DateCache, complete_response, error_response, streamed_head

log = logging.getLogger("minirr")


class Answers:
    """Writes answers to clients. One per master; everything per answer is on the job."""

    def __init__(self, dates: DateCache) -> None:
        self.dates = dates

    def whole(self, job, head, body) -> None:
        """A whole answer in one piece: the usual case, one write."""
        request = job.request
        conn = job.conn
        status = job.status = head.status
        keep_alive = job.keep_alive and not conn.closing
        head_only = request.method == "HEAD"
        data = complete_response(head.http, status, body, keep_alive=keep_alive, head_only=head_only,
                                 date=self.dates.get(time.time()), protocol=request.protocol)
        job.body_bytes = 0 if head_only or status == 204 or status == 304 else len(body)
        conn.respond(data, keep_alive)

    def begin(self, job, head, first) -> str:
        """The head of an answer whose body is still coming, with its first piece."""
        job.status = head.status
        keep_alive = job.keep_alive and not job.conn.closing
        data, writer = streamed_head(head.http, head.status, head.content_length, keep_alive=keep_alive,
                                     head_only=job.head_only, date=self.dates.get(time.time()),
                                     protocol=job.request.protocol)
        job.writer = writer
        piece = writer.write(first)
        if piece is None:
            job.conn.start_stream(data)
            self.abort(job, "the body was longer than its Content-Length")
            return "broken"
        job.body_bytes += len(first) if piece else 0
        if writer.complete:
            # A first piece as long as the app's own Content-Length is the whole body
            # (a framework's response of one block): one ordinary answer, sent now.
            job.conn.respond(data + piece, keep_alive)
            return "answered_early"
        job.conn.start_stream(data + piece)
        return "streamed"

    def part(self, job, piece):
        """More body: written (-> None), or, past the app's own Content-Length, the answer
        broken off (-> "broken")."""
        data = job.writer.write(piece)
        if data is None:
            self.abort(job, "the body was longer than its Content-Length")
            return "broken"
        if data:
            job.body_bytes += len(piece)
            job.conn.write(data)
        return None

    def end(self, job, last) -> str:
        """The last piece: the answer is complete (-> "finished"), unless the body did not
        match the app's own Content-Length (-> "broken", the connection closed)."""
        writer = job.writer
        data = writer.end(last)
        if data is None:
            left = writer.left
            self.abort(job, f"the body was {'longer' if len(last) > left else 'shorter'} than its Content-Length")
            return "broken"
        if last and data:
            job.body_bytes += len(last)
        job.conn.respond(data, job.keep_alive and writer.keeps_alive and not job.conn.closing)
        return "finished"

    def error(self, job, status: int, message: str, headers: tuple, keep_alive: bool) -> None:
        job.status = status
        keep_alive = keep_alive and job.keep_alive and not job.conn.closing
        data = error_response(status, message, date=self.dates.get(time.time()), keep_alive=keep_alive,
                              extra_headers=headers)
        job.body_bytes = len(message) + 1
        job.conn.respond(data, keep_alive)

    @staticmethod
    def abort(job, why: str) -> None:
        """An answer broken off after its head went out: it cannot become an error answer
        any more, so the connection closes (a chunked body without its last chunk, or a
        short one, tells the client it is incomplete)."""
        request = job.request
        log.warning("%s: %s %s: answer broken off after %d body bytes: %s", job.conn, request.method,
                    request.path, job.body_bytes, why)
        job.conn.close()
