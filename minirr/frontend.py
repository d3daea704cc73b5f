"""The master's HTTP side: the listening socket and every client connection.

Owns: accepting (bounded per tick, max_connections, EMFILE back-off), reading into each
      connection's http11 parser, writing responses with backpressure, closing, and the
      per-connection timeouts (header, body, keep-alive).
Never: talks to workers or decides a request's fate: a parsed request goes to
       `self._submit(client, request)` (server.py) and its answer comes back through
       `self._send(client, bytes)`.

`Frontend` is one half of `server.Server` (the other is `backend.Backend`); the two are
split by what they own, and share the loop's selector and clock.

    listener --accept--> Client(sock, http11.Connection)
    readable: recv -> conn.receive_data -> next_event -> Request -> _submit
    response: _send (kernel takes what it can) -> out buffer -> EVENT_WRITE -> _flush_client
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import time
from typing import TYPE_CHECKING, Optional

from . import http11
from .errors import ProtocolError
from .messages import Request

log = logging.getLogger("minirr")

if TYPE_CHECKING:
    from .pool import Worker

READ_SIZE = 256 * 1024
ACCEPTS_PER_TICK = 64                  # bounded, so a flood of connects cannot starve the loop
PIPELINE_BUFFER_LIMIT = 256 * 1024     # stop reading a client whose unparsed bytes pile up
ACCEPT_BACKOFF_S = 0.5                 # after EMFILE/ENFILE
CONTINUE_RESPONSE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Client:
    """One accepted TCP connection."""

    def __init__(self, sock: socket.socket, peer: str, conn: http11.Connection, now: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.conn = conn
        self.out = bytearray()         # response bytes not yet accepted by the kernel
        self.job: Optional[Job] = None  # the request being served; others wait in conn's buffer
        self.close_after_write = False
        self.reading = True            # registered for EVENT_READ
        self.eof = False               # the peer closed its sending side
        self.writing = False           # registered for EVENT_WRITE
        self.closed = False
        self.idle_since = now          # waiting for a request since
        self.served = 0                # responses sent on this connection
        self.last_read_at = now


class Job:
    """One request on its way through the pool."""

    __slots__ = ("client", "request", "keep_alive", "head_only", "queued_at", "deadline_at", "worker", "started_at")

    def __init__(self, client: Client, request: Request, keep_alive: bool, now: float, deadline_at: float) -> None:
        self.client = client
        self.request = request
        self.keep_alive = keep_alive
        self.head_only = request.method == "HEAD"
        self.queued_at = now
        self.deadline_at = deadline_at
        self.worker: Optional[Worker] = None
        self.started_at = 0.0


class Frontend:
    """Listener and clients; mixed into server.Server."""

    def _resume_accepting(self) -> None:
        if not self._listening and self.listener is not None and not self._stopping:
            self.selector.register(self.listener, selectors.EVENT_READ, self._on_listener_readable)
            self._listening = True

    def _pause_accepting(self) -> None:
        if self._listening:
            self.selector.unregister(self.listener)
            self._listening = False

    def _resume_accepting_after_backoff(self, now: float) -> None:
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            if len(self.clients) < self.config.http.max_connections:
                self._resume_accepting()

    def _on_listener_readable(self, mask: int) -> None:
        now = time.monotonic()
        for _ in range(ACCEPTS_PER_TICK):
            if len(self.clients) >= self.config.http.max_connections:
                # Beyond max_connections, new connections wait in the kernel's backlog.
                self._pause_accepting()
                return
            try:
                sock, addr = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._on_accept_exhausted(exc, now)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
            self._add_client(sock, addr[0], now)

    def _on_accept_exhausted(self, exc: OSError, now: float) -> None:
        if not self._emfile_logged:
            log.error("accept failed: %s; pausing accepts for %.1fs (raise the open-files limit?)",
                      exc.strerror, ACCEPT_BACKOFF_S)
            self._emfile_logged = True
        self._pause_accepting()
        self._accept_paused_until = now + ACCEPT_BACKOFF_S

    def _add_client(self, sock: socket.socket, peer: str, now: float) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = http11.Connection(self.limits, remote_addr=peer, scheme="http",
                                 trusted_proxies=self.config.http.trusted_proxies,
                                 default_host=f"{self.address[0]}:{self.address[1]}")
        client = Client(sock, peer, conn, now)
        self.clients[client.fd] = client
        self.selector.register(sock, selectors.EVENT_READ, lambda mask: self._on_client_event(client, mask))

    def _on_client_event(self, client: Client, mask: int) -> None:
        if client.closed:
            return
        if mask & selectors.EVENT_WRITE:
            self._flush_client(client)
        if mask & selectors.EVENT_READ and not client.closed:
            self._on_client_readable(client)

    def _on_client_readable(self, client: Client) -> None:
        try:
            data = client.sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except (ConnectionResetError, TimeoutError, OSError):
            self._close_client(client)
            return
        client.last_read_at = time.monotonic()
        client.conn.receive_data(data)
        if not data:
            client.eof = True
            self._set_reading(client, False)   # EOF stays readable forever: stop watching
        self._process_client(client)
        if client.eof and client.job is None and not client.out:
            self._close_client(client)         # the peer is gone and nothing is owed to it

    def _process_client(self, client: Client) -> None:
        """Turn buffered bytes into requests while the connection is not busy."""
        conn = client.conn
        while client.job is None and not client.closed and not client.close_after_write:
            try:
                event = conn.next_event()
            except ProtocolError as exc:
                self._reject(client, exc.status, exc.msg)
                return
            if event is http11.NEED_DATA:
                break
            if event is http11.CONTINUE:
                self._send(client, CONTINUE_RESPONSE)
                continue
            if event is http11.CLOSED:
                if not client.out:
                    self._close_client(client)
                else:
                    client.close_after_write = True
                return
            if event is http11.PAUSED:
                break
            self._submit(client, event)
        if client.job is not None and conn.buffered_bytes > PIPELINE_BUFFER_LIMIT:
            self._set_reading(client, False)   # backpressure: resume after the response

    def _reject(self, client: Client, status: int, message: str) -> None:
        """A protocol error: answer, then close (the connection's framing is unknown now)."""
        log.info("%s: rejected with %d: %s", client.peer, status, message)
        self._send(client, http11.error_response(status, message, date=self._http_date()))
        client.close_after_write = True
        self._set_reading(client, False)
        if not client.out:
            self._close_client(client)

    def _set_reading(self, client: Client, reading: bool) -> None:
        if client.reading != reading:
            client.reading = reading
            self._update_client_registration(client)

    def _update_client_registration(self, client: Client) -> None:
        events = (selectors.EVENT_READ if client.reading else 0) | (selectors.EVENT_WRITE if client.writing else 0)
        registered = client.fd in self.selector.get_map()
        if events and registered:
            self.selector.modify(client.sock, events, self.selector.get_key(client.sock).data)
        elif events:
            self.selector.register(client.sock, events, lambda mask: self._on_client_event(client, mask))
        elif registered:
            self.selector.unregister(client.sock)

    def _send(self, client: Client, data: bytes) -> None:
        """Write now what the kernel takes; buffer the rest and wait for EVENT_WRITE."""
        if client.closed:
            return
        if client.out:
            client.out += data
            return
        try:
            sent = client.sock.send(data)
        except BlockingIOError:
            sent = 0
        except (BrokenPipeError, ConnectionResetError, OSError):
            self._close_client(client)
            return
        if sent < len(data):
            client.out += memoryview(data)[sent:]
            client.writing = True
            self._update_client_registration(client)

    def _flush_client(self, client: Client) -> None:
        try:
            sent = client.sock.send(client.out)
        except BlockingIOError:
            return
        except (BrokenPipeError, ConnectionResetError, OSError):
            self._close_client(client)
            return
        del client.out[:sent]
        if client.out:
            return
        client.writing = False
        self._update_client_registration(client)
        if client.close_after_write:
            self._close_client(client)
        elif client.job is None:
            self._process_client(client)

    def _close_client(self, client: Client) -> None:
        if client.closed:
            return
        client.closed = True
        if client.fd in self.selector.get_map():
            self.selector.unregister(client.sock)
        client.sock.close()
        del self.clients[client.fd]
        if not self._listening and not self._accept_paused_until:
            self._resume_accepting()

    def _expire_connections(self, now: float) -> None:
        """header_timeout (408 when something was sent), body_timeout, keepalive_timeout."""
        http_cfg = self.config.http
        for client in list(self.clients.values()):
            if client.job is not None or client.out or client.close_after_write:
                continue
            if client.conn.reading_body:
                if http_cfg.body_timeout and now - client.last_read_at >= http_cfg.body_timeout:
                    self._reject(client, 408, f"no body bytes for {http_cfg.body_timeout:g}s")
            elif client.conn.has_partial_request:
                if http_cfg.header_timeout and now - client.idle_since >= http_cfg.header_timeout:
                    self._reject(client, 408, f"request header not complete within {http_cfg.header_timeout:g}s")
            else:
                # Idle between requests: the first request gets header_timeout, later ones keepalive_timeout.
                limit = http_cfg.keepalive_timeout if client.served else http_cfg.header_timeout
                if limit and now - client.idle_since >= limit:
                    self._close_client(client)

    def _http_date(self) -> bytes:
        now = time.time()
        second = int(now)
        if second != self._date_second:      # formatting a date costs more than a request's parse
            self._date_second = second
            self._date = http11.http_date(now)
        return self._date


