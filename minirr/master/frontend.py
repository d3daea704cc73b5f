"""The master's HTTP side: the application listener and its client connections.

Owns: binding and accepting on `[http] address`, a parser per connection, finishing each
      Request with what only the server knows (its address, proxy trust), making its Job
      and submitting it, telling the job's life when its client leaves or drains, and a
      graceful stop on the client side (idle clients go at once; a request still being
      read is read, answered and then closed).
Never: writes an answer (answer.py does, for jobs.py) or decides a request's fate: a
       parsed request goes to `jobs.submit`, and a worker it names gets it from
       `backend.dispatch`.

    listener ──accept──> Connection(RequestParser) ──Request──> on_request ──> Job ──> jobs.submit
                                                                          a free worker? ──> backend.dispatch
    connection closed ──on_closed──> (end of the round) jobs.client_gone ──a worker has it──> backend.client_gone
    EOF while queued ──on_eof──> the connection closed (as above): a queued job never waits for nobody
    connection drained ──on_drain──> backend.resume (read the worker's pipe again)
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Optional, Protocol, Tuple

from ..config import HTTPConfig
from ..http import forwarded
from ..http.grammar import target_uri
from ..http.parser import RequestLimits, RequestParser
from ..http.responses import DateCache, error_response
from ..http.websocket import HandshakeError
from .connection import Connection
from .jobs import DONE, QUEUED, Job, Jobs
from .lifecycle import IDLE, LINGERING, UPGRADED, ConnectionLimits
from .listener import Listener, bind
from .loop import Loop

log = logging.getLogger("minirr")


class Dispatch(Protocol):
    """What the frontend asks of the worker side (backend.Backend)."""

    def dispatch(self, worker, job: Job, now: float) -> None: ...

    def client_gone(self, job: Job, now: float) -> None: ...

    def resume(self, job: Job) -> None: ...


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
    """The application listener and its clients (connection.py's owner for each)."""

    def __init__(self, loop: Loop, config: HTTPConfig, jobs: Jobs, backend: Dispatch, dates: DateCache,
                 static=None, websockets=None) -> None:
        self.loop = loop
        self.config = config
        self.jobs = jobs
        self.backend = backend
        self.dates = dates
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
        self.static = static               # static.StaticFiles when [static] is set, else None
        self.websockets = websockets       # websocket.WebSockets: upgrade requests (None: ordinary requests)

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
        handshake = None
        if parser.upgrade is not None and self.websockets is not None:
            try:
                handshake = self.websockets.offer(request)    # an upgrade request: a WebSocket's job
            except HandshakeError as exc:
                conn.respond(self.websockets.refusal(exc), keep_alive=False)
                return
        job = conn.job = Job(conn, request, keep_alive, now)
        if handshake is not None:
            job.websocket = self.websockets.session(conn, job, handshake)
        worker = self.jobs.submit(job, now)
        if worker is not None:
            self.backend.dispatch(worker, job, now)
        elif conn.peer_closed and job.state is QUEUED:
            conn.close()                   # its client already left: it must not wait in the queue (on_eof)

    def on_bad_request(self, conn: Connection, error) -> None:
        conn.reject(error.status, error.msg)

    def rejection(self, status: int, message: str) -> bytes:
        return error_response(status, message, date=self.dates.get(time.time()))

    def on_closed(self, conn: Connection) -> None:
        """The client is gone. Its job, if still owed an answer, is told at the end of the
        round: never inside the callback that closed the connection, which may be the
        very write of that job's answer."""
        job = conn.job
        if job is not None and job.state is not DONE:
            self.loop.soon(conn, lambda: self._client_gone(job))

    def _client_gone(self, job: Job) -> None:
        now = self.loop.clock()
        if self.jobs.client_gone(job, now):
            self.backend.client_gone(job, now)

    def on_eof(self, conn: Connection) -> None:
        """The client sent EOF while waiting for its answer. One whose request is still
        queued has left (nginx and Go's net/http, RoadRunner's, take EOF as gone): it is
        closed, and its job removed from the queue at once. One whose request is at a
        worker may have only half-closed: it gets its answer."""
        job = conn.job
        if job is not None and job.state is QUEUED:
            conn.close()

    def on_drain(self, conn: Connection) -> None:
        job = conn.job
        if job is not None and job.worker is not None:
            self.backend.resume(job)

    # ---- time and the end ------------------------------------------------------------------------
    def expire(self, now: float) -> None:
        if self.listener is not None:
            self.listener.expire(now)

    def stop_accepting(self) -> None:
        """A graceful stop: close the listener; clients with nothing under way go now. A
        request still being read is read and answered (within its own timeouts), then its
        connection closes, as does every connection once its answer is out."""
        self.stopping = True
        if self.listener is None:
            return
        self.listener.close()
        for conn in list(self.listener.connections.values()):
            conn.closing = True
            if self._idle(conn):
                conn.close()
            elif conn.phase is UPGRADED:
                conn.owner.going_away()    # close 1001; the close handshake is awaited (busy)

    @staticmethod
    def _idle(conn: Connection) -> bool:
        """Nothing under way: no request being read (not even one whose bytes arrived in
        this very round, unread yet), none being answered."""
        return conn.phase is IDLE and not conn.unsent and not conn.parser.has_partial_request and not conn.unread_input()

    def busy(self) -> bool:
        """Some client is still owed an answer, or is still sending its request (a
        connection lingering after its last answer is owed nothing)."""
        return any(not self._idle(conn) and conn.phase is not LINGERING for conn in self.connections.values())

    def unsent(self) -> bool:
        return any(conn.unsent for conn in self.connections.values())

    def close_idle(self) -> None:
        for conn in list(self.connections.values()):
            if self._idle(conn):
                conn.close()

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener.close_connections()

    def descriptors(self) -> list:
        return self.listener.descriptors() if self.listener is not None else []
