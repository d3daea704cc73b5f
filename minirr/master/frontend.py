"""The master's HTTP side: the application listener, its client connections, and the
answers they get.

Owns: binding and accepting on `[http] address`, a parser per connection, finishing each
      Request with what only the server knows (its address, proxy trust), and writing
      answers in HTTP/1.1: whole, streamed (Content-Length, chunked, or close-delimited),
      or as errors.
Never: talks to workers or decides a request's fate: a parsed request goes to
       `jobs.submit`, and the backend hands answers back through `answer`, `begin`,
       `part` and `end`. Never buffers more of a streamed answer than HIGH_WATER_BYTES
       (connection.py): past it, the backend stops reading the worker's pipe.

    listener ──accept──> Connection(RequestParser) ──Request──> on_request ──> jobs.submit
    backend ──answer(job, head, body)──────────────> one write (most answers)
            ──begin / part ... / end──────────────> head, body parts as they come, the end
    jobs ──answer_error(job, status, message)─────> a small text answer
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Optional, Tuple

from ..http import forwarded
from ..http.parser import RequestLimits, RequestParser
from ..http.grammar import target_uri
from ..config import HTTPConfig
from .connection import Connection
from .jobs import Job, Jobs
from .lifecycle import ConnectionLimits
from .listener import Listener, bind
from .loop import Loop
from ..http.responses import LAST_CHUNK, DateCache, ResponseHead, chunk, complete_response, error_response, streamed_head

log = logging.getLogger("minirr")


def finish_request(request, peer: str, host: Optional[str], default_host: str, trusted_proxies: tuple) -> None:
    """Fill in what the parser cannot know: who the client is (the peer, or for a trusted
    proxy what its X-Forwarded-For says) and the target URI (RFC 9112 §3.3: the scheme,
    http or the proxy's X-Forwarded-Proto, and Host, or our own address without one)."""
    scheme = "http"
    if trusted_proxies and forwarded.is_trusted(peer, trusted_proxies):
        request.remote_addr, scheme = forwarded.client_of(request.headers, peer, trusted_proxies)
    else:
        request.remote_addr = peer
    request.uri = target_uri(scheme, host or default_host, request.method, request.uri)


class Frontend:
    """The application listener and its clients. `back` is wired in by the server."""

    def __init__(self, loop: Loop, config: HTTPConfig, jobs: Jobs, dates: DateCache) -> None:
        self.loop = loop
        self.config = config
        self.jobs = jobs
        self.dates = dates
        self.back = None
        self.limits = ConnectionLimits(config.header_timeout, config.body_timeout, config.keepalive_timeout,
                                       config.min_body_rate, config.min_send_rate)
        self.request_limits = RequestLimits(
            max_request_size=config.max_request_size, limit_request_line=config.limit_request_line,
            limit_request_fields=config.limit_request_fields,
            limit_request_field_size=config.limit_request_field_size,
            limit_request_headers=config.limit_request_headers)
        self.listener: Optional[Listener] = None
        self.address: Tuple[str, int] = ("", 0)
        self.default_host = "localhost"    # the Host of an HTTP/1.0 request without one: our address
        self.stopping = False
        self.static = None                 # static.StaticFiles when [static] is set (wired by the server)

    # ---- listening -------------------------------------------------------------------------
    def bind(self) -> None:
        host, port = self.config.address
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        sock = bind((host, port), f"{shown} ([http] address)", nodelay=True)
        self.address = sock.getsockname()[:2]
        self.default_host = f"{self.address[0]}:{self.address[1]}"
        self.listener = Listener(self.loop, sock, "http", self._accept, self.config.max_connections)

    def _accept(self, sock: socket.socket, peer: str, now: float) -> Connection:
        return Connection(self.loop, sock, peer, RequestParser(self.request_limits), self, self.limits,
                          self.listener, now)

    @property
    def connections(self) -> dict:
        return self.listener.connections if self.listener is not None else {}

    # ---- the connection's owner ---------------------------------------------------------------
    def on_request(self, conn: Connection, request) -> None:
        parser = conn.parser
        finish_request(request, conn.peer, parser.host, self.default_host, self.config.trusted_proxies)
        now = self.loop.clock()
        keep_alive = not parser.close_requested and not self.stopping
        if self.static is not None and self.static.answer(conn, request, keep_alive, now):
            return                         # under a [static] mount: the master answers (master/static.py)
        job = conn.job = Job(conn, request, keep_alive, now)
        self.jobs.submit(job, now)

    def on_bad_request(self, conn: Connection, error) -> None:
        conn.reject(error.status, error.msg)

    def rejection(self, status: int, message: str) -> bytes:
        return error_response(status, message, date=self.http_date())

    def on_closed(self, conn: Connection) -> None:
        job = conn.job
        if job is not None and not job.done:
            self.jobs.abandon(job, self.loop.clock())

    def on_drain(self, conn: Connection) -> None:
        job = conn.job
        if job is not None and job.worker is not None:
            self.back.resume(job)

    # ---- answers -------------------------------------------------------------------------------
    def answer(self, job: Job, head: ResponseHead, body, now: float) -> None:
        """A whole answer in one piece: the usual case, one write."""
        status = job.status = head.status
        head_only = job.request.method == "HEAD"
        data = complete_response(head.http, status, body, keep_alive=job.keep_alive, head_only=head_only,
                                 date=self.dates.get(time.time()), protocol=job.request.protocol)
        job.body_bytes = 0 if head_only or status == 204 or status == 304 else len(body)
        self.jobs.finished(job, now)
        job.conn.respond(data, job.keep_alive)

    def answer_error(self, job: Job, status: int, message: str, headers: tuple, keep_alive: bool) -> None:
        job.status = status
        job.keep_alive = job.keep_alive and keep_alive and not self.stopping
        data = error_response(status, message, date=self.http_date(), keep_alive=job.keep_alive,
                              extra_headers=headers)
        job.body_bytes = len(message) + 1
        self.jobs.finished(job, self.loop.clock())
        job.conn.respond(data, job.keep_alive)

    def begin(self, job: Job, head: ResponseHead, content_length: Optional[int], first: bytes) -> bool:
        """The head of an answer whose body is still coming, and its first bytes. False if
        those bytes already pass the app's own Content-Length: then only the head goes out,
        and the answer is broken off (the client sees a body shorter than announced)."""
        job.status = head.status
        reply = job.reply
        data, reply.framing = streamed_head(head.http, head.status, content_length, keep_alive=job.keep_alive,
                                            date=self.http_date(), protocol=job.request.protocol)
        job.streaming = True
        if reply.framing == "close":
            job.keep_alive = False
        reply.length_left = content_length or 0
        if reply.framing == "length" and len(first) > content_length:
            job.conn.start_stream(data)
            self.abort(job, "the body was longer than its Content-Length", self.loop.clock())
            return False
        job.conn.start_stream(data + self._body(job, first) if first else data)
        return True

    def part(self, job: Job, data: bytes) -> bool:
        """More body. False, and nothing of it written, if it would pass the app's own
        Content-Length (the caller breaks the answer off)."""
        reply = job.reply
        if reply.framing == "length" and len(data) > reply.length_left:
            return False
        if data:
            job.conn.write(self._body(job, data))
        return True

    def end(self, job: Job, last: bytes, now: float) -> bool:
        """The last body bytes: the answer is complete. False (and the connection closed)
        if the body did not match the app's Content-Length."""
        reply = job.reply
        if reply.framing == "length" and len(last) != reply.length_left:
            self.abort(job, f"the body was {'longer' if len(last) > reply.length_left else 'shorter'} than its "
                            f"Content-Length", now)
            return False
        data = self._body(job, last) if last else b""
        if reply.framing == "chunked" and not job.head_only:
            data += LAST_CHUNK
        self.jobs.finished(job, now)
        job.conn.respond(data, job.keep_alive and reply.framing != "close")
        return True

    def abort(self, job: Job, why: str, now: float) -> None:
        """An answer broken off after its head went out: it cannot become an error answer
        any more, so the connection closes (a chunked body without its last chunk, or a
        short one, tells the client it is incomplete)."""
        log.warning("%s: %s %s: answer broken off after %d body bytes: %s", job.conn, job.request.method,
                    job.request.path, job.body_bytes, why)
        self.jobs.finished(job, now)
        job.conn.close()

    def _body(self, job: Job, data: bytes) -> bytes:
        """Body bytes as the framing wants them (nothing for HEAD)."""
        reply = job.reply
        if job.head_only or reply.framing == "none":
            return b""
        job.body_bytes += len(data)
        if reply.framing == "chunked":
            return chunk(data)
        if reply.framing == "length":
            reply.length_left -= len(data)
        return data

    def http_date(self) -> bytes:
        return self.dates.get(time.time())

    # ---- time and the end ------------------------------------------------------------------------
    def expire(self, now: float) -> None:
        if self.listener is not None:
            self.listener.expire(now)

    def stop_accepting(self) -> None:
        """A shutdown: close the listener; idle clients go now, busy ones after their answer."""
        self.stopping = True
        if self.listener is None:
            return
        self.listener.close()
        for conn in list(self.listener.connections.values()):
            if conn.job is None and not conn.unsent:
                conn.close()
            else:
                conn.closing = True
                if conn.job is not None:
                    conn.job.keep_alive = False

    def busy(self) -> bool:
        """An answer is still being made for some client."""
        return any(conn.job is not None and not conn.job.done for conn in self.connections.values())

    def unsent(self) -> bool:
        return any(conn.unsent for conn in self.connections.values())

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener.close_connections()

    def descriptors(self) -> list:
        return self.listener.descriptors() if self.listener is not None else []
