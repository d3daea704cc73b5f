"""The master's HTTP side: the listening socket and every client connection.

Owns: accepting (bounded per tick, max_connections, EMFILE back-off), reading into each
      connection's http11 parser, writing responses with backpressure, closing (with a
      lingering drain after an error), and the per-connection timeouts.
Never: talks to workers or decides a request's fate: a parsed request goes to
       `self._submit(client, request)` (server.py) and its answer comes back through
       `self._send_response(client, bytes, keep_alive, now)`.

`Frontend` is one half of `server.Server` (the other is `backend.Backend`); the two are
split by what they own, and share the loop's selector and clock.

    listener --accept--> Client(sock, http11.Connection)
    readable: recv -> conn.receive_data -> next_event -> Request -> _submit
    response: _send (kernel takes what it can) -> out buffer -> EVENT_WRITE -> _flush_client
    drained:  parse the next pipelined request, or close

One request at a time per connection. While a request is at the pool, or its response is
not fully written, pipelined bytes stay in the parser's buffer; once more than
PIPELINE_BUFFER_LIMIT of them pile up the connection is no longer read, and the kernel's
TCP window pushes back on the client. So a client that never reads holds at most one
response in the master, and is closed when none of it moves for body_timeout.

Timeouts, checked each tick by `_expire_connections`:

    waiting for the first request, nothing sent   header_timeout     close
    request head incomplete                       header_timeout     408, close
    body incomplete, no bytes received for        body_timeout       408, close
    response unsent, no write progress for        body_timeout       close
    idle between requests                         keepalive_timeout  close
    half-closed after an error, draining          LINGER_S           close
"""

from __future__ import annotations

import errno
import functools
import logging
import selectors
import socket
import time
from typing import TYPE_CHECKING, Callable, Optional

from . import http11
from .errors import ProtocolError
from .messages import Request

log = logging.getLogger("minirr")

if TYPE_CHECKING:
    from .pool import Worker

READ_SIZE = 64 * 1024                  # recv allocates this much per call: modest for heads ...
BODY_READ_SIZE = 1 << 20               # ... larger while a request body streams in
ACCEPTS_PER_TICK = 64                  # bounded, so a flood of connects cannot starve the loop
PIPELINE_BUFFER_LIMIT = 256 * 1024     # stop reading a busy client whose unparsed bytes pile up
ACCEPT_BACKOFF_S = 0.5                 # after EMFILE/ENFILE
LINGER_S = 2.0                         # after an error response: drain the peer this long at most
CONTINUE_RESPONSE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Client:
    """One accepted TCP connection."""

    __slots__ = ("sock", "fd", "peer", "conn", "out", "job", "callback", "registered", "close_after_write",
                 "rejected", "reading", "writing", "eof", "closed", "parsing", "idle_since", "last_read_at",
                 "last_write_at", "linger_until", "served")

    def __init__(self, sock: socket.socket, peer: str, conn: http11.Connection, now: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.conn = conn
        self.out = bytearray()         # response bytes not yet accepted by the kernel
        self.job: Optional[Job] = None  # the request being served; others wait in conn's buffer
        self.callback: Optional[Callable[[int], None]] = None  # the selector's data for this socket
        self.registered = False        # in the selector (for EVENT_READ, EVENT_WRITE or both)
        self.close_after_write = False
        self.rejected = False          # answered with an error: drain before closing
        self.reading = True            # registered for EVENT_READ
        self.writing = False           # registered for EVENT_WRITE
        self.eof = False               # the peer closed its sending side
        self.closed = False
        self.parsing = False           # inside _process_client (an immediate answer must not recurse)
        self.idle_since = now          # waiting for a request since
        self.last_read_at = now
        self.last_write_at = now       # last write progress while `out` is not empty
        self.linger_until = 0.0        # half-closed and draining until then; 0.0 = not
        self.served = 0                # responses sent on this connection


class Job:
    """One request on its way through the pool."""

    __slots__ = ("client", "request", "keep_alive", "head_only", "queued_at", "deadline_at", "worker")

    def __init__(self, client: Client, request: Request, keep_alive: bool, now: float, deadline_at: float) -> None:
        self.client = client
        self.request = request
        self.keep_alive = keep_alive
        self.head_only = request.method == "HEAD"
        self.queued_at = now
        self.deadline_at = deadline_at
        self.worker: Optional[Worker] = None


class Frontend:
    """Listener and clients; mixed into server.Server."""

    # ================================================================== accepting
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
                # Beyond max_connections, new connections wait in the kernel's backlog;
                # _close_client resumes accepting.
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
                    continue               # the peer gave up while in the backlog
                raise
            self._add_client(sock, addr[0], now)

    def _on_accept_exhausted(self, exc: OSError, now: float) -> None:
        """Out of descriptors: the connection stays in the backlog, and the listener
        (still readable) is unwatched for a while: a retry at once would spin."""
        if not self._emfile_logged:
            log.error("accept failed: %s; pausing accepts for %.1fs at a time (raise the open-files limit?)",
                      exc.strerror, ACCEPT_BACKOFF_S)
            self._emfile_logged = True
        self._pause_accepting()
        self._accept_paused_until = now + ACCEPT_BACKOFF_S

    def _add_client(self, sock: socket.socket, peer: str, now: float) -> None:
        try:
            sock.setblocking(False)        # (TCP_NODELAY comes from the listener: see bind())
        except OSError:                    # reset before we got to it
            sock.close()
            return
        conn = http11.Connection(self.limits, remote_addr=peer, scheme="http",
                                 trusted_proxies=self.config.http.trusted_proxies,
                                 default_host=self._default_host)
        client = Client(sock, peer, conn, now)
        client.callback = functools.partial(self._on_client_event, client)
        self.clients[client.fd] = client
        self.selector.register(client.fd, selectors.EVENT_READ, client.callback)
        client.registered = True

    # ================================================================== reading
    def _on_client_event(self, client: Client, mask: int) -> None:
        if client.closed:
            return
        if mask & selectors.EVENT_WRITE:
            self._flush_client(client)
        if mask & selectors.EVENT_READ and not client.closed:
            self._on_client_readable(client)

    def _on_client_readable(self, client: Client) -> None:
        try:
            data = client.sock.recv(BODY_READ_SIZE if client.conn.reading_body else READ_SIZE)
        except BlockingIOError:
            return
        except OSError:                    # ConnectionResetError, TimeoutError: the peer is gone
            self._close_client(client)
            return
        client.last_read_at = time.monotonic()
        client.conn.receive_data(data)
        if not data:
            client.eof = True              # EOF stays readable forever: _sync_reading stops watching
        self._process_client(client)
        if client.eof and not client.closed and client.job is None and not client.out:
            self._close_client(client)     # the peer is gone and nothing is owed to it

    def _process_client(self, client: Client) -> None:
        """Parse buffered bytes into requests while the connection is free, then decide
        whether to keep reading."""
        if client.parsing:
            return                         # re-entered through an immediate answer: the loop goes on
        client.parsing = True
        self._parse_requests(client)
        client.parsing = False
        if not client.closed:
            self._sync_reading(client)

    def _parse_requests(self, client: Client) -> None:
        """One request at a time: none while one is at the pool or a response is unsent."""
        conn = client.conn
        while client.job is None and not client.out and not client.close_after_write and not client.closed:
            try:
                event = conn.next_event()
            except ProtocolError as exc:
                self._reject(client, exc.status, exc.msg)
                return
            if event is http11.NEED_DATA or event is http11.PAUSED:
                return
            if event is http11.CONTINUE:
                self._send(client, CONTINUE_RESPONSE)
            elif event is http11.CLOSED:
                self._close_client(client)  # EOF between or inside requests: nothing to answer
                return
            else:
                self._submit(client, event)  # may answer at once (queue full): the loop goes on

    def _sync_reading(self, client: Client) -> None:
        """Read while a request may come; stop at EOF, once closing, and while a busy
        connection's unparsed pipelined bytes exceed PIPELINE_BUFFER_LIMIT."""
        if client.linger_until:
            return                         # half-closed: _on_lingering_readable reads until EOF
        busy = client.job is not None or client.out
        want = not (client.eof or client.close_after_write) and not (
            busy and client.conn.buffered_bytes > PIPELINE_BUFFER_LIMIT)
        if want != client.reading:
            client.reading = want
            self._update_client_registration(client)

    def _update_client_registration(self, client: Client) -> None:
        events = (selectors.EVENT_READ if client.reading else 0) | (selectors.EVENT_WRITE if client.writing else 0)
        if events and client.registered:
            self.selector.modify(client.fd, events, client.callback)
        elif events:
            self.selector.register(client.fd, events, client.callback)
        elif client.registered:
            self.selector.unregister(client.fd)
        client.registered = bool(events)

    def _reject(self, client: Client, status: int, message: str) -> None:
        """A protocol error or a timeout: answer, then close (the framing is lost now)."""
        log.info("%s: rejected with %d: %s", client.peer, status, message)
        client.rejected = True
        client.close_after_write = True
        self._send(client, http11.error_response(status, message, date=self._http_date()))
        if client.closed:
            return
        if client.out:
            self._sync_reading(client)     # stop reading while the answer drains
        else:
            self._end_connection(client, time.monotonic())

    # ================================================================== writing
    def _send_response(self, client: Client, data: bytes, keep_alive: bool, now: float) -> None:
        """The answer to the request in flight: write it, then go on with the connection."""
        if client.closed:
            return                         # the client went away: the answer is dropped
        client.job = None
        client.served += 1
        if keep_alive:
            client.conn.start_next_cycle()
        else:
            client.close_after_write = True
        self._send(client, data)
        if not client.closed and not client.out:
            self._on_output_drained(client, now)

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
        except OSError:                    # BrokenPipeError, ConnectionResetError: the peer is gone
            self._close_client(client)
            return
        if sent < len(data):
            client.out += memoryview(data)[sent:]
            client.last_write_at = time.monotonic()
            client.writing = True
            self._update_client_registration(client)

    def _flush_client(self, client: Client) -> None:
        try:
            sent = client.sock.send(client.out)
        except BlockingIOError:
            return
        except OSError:                    # BrokenPipeError, ConnectionResetError: the peer is gone
            self._close_client(client)
            return
        now = time.monotonic()
        client.last_write_at = now
        del client.out[:sent]
        if client.out:
            return
        client.writing = False
        self._update_client_registration(client)
        self._on_output_drained(client, now)

    def _on_output_drained(self, client: Client, now: float) -> None:
        """Everything owed is with the kernel: close, or serve the next pipelined request.
        (After a 100 Continue this is mid-body, where body_timeout applies, not idle_since.)"""
        if client.close_after_write:
            self._end_connection(client, now)
            return
        client.idle_since = now
        if client.conn.buffered_bytes or client.eof or not client.reading:
            self._process_client(client)   # a pipelined request, EOF, or reading to resume

    # ================================================================== closing
    def _end_connection(self, client: Client, now: float) -> None:
        """Close after the last response. If the peer may still be sending (an error
        answered mid-request, or pipelined requests past a "close"), half-close first and
        drain: closing with unread bytes makes the kernel send a reset, which can destroy
        the response before the peer reads it (RFC 9112 §9.6)."""
        if client.eof or not (client.rejected or client.conn.buffered_bytes):
            self._close_client(client)
            return
        try:
            client.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close_client(client)
            return
        client.linger_until = now + LINGER_S
        client.callback = functools.partial(self._on_lingering_readable, client)
        client.reading, client.writing = True, False
        self._update_client_registration(client)

    def _on_lingering_readable(self, client: Client, mask: int) -> None:
        try:
            data = client.sock.recv(READ_SIZE)   # discarded
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_client(client)     # the peer closed too: the response got through

    def _close_client(self, client: Client) -> None:
        if client.closed:
            return
        client.closed = True
        if client.registered:
            self.selector.unregister(client.fd)
            client.registered = False
        client.sock.close()
        client.out = bytearray()
        del self.clients[client.fd]
        if not self._listening and not self._accept_paused_until:
            self._resume_accepting()

    # ================================================================== timeouts
    def _expire_connections(self, now: float) -> None:
        """The timeouts in the module docstring. A client whose request is at the pool
        is left to the pool's own limits (allocate_timeout, exec_ttl)."""
        http_cfg = self.config.http
        for client in list(self.clients.values()):
            if client.linger_until:
                if now >= client.linger_until:
                    self._close_client(client)
            elif client.out:
                if http_cfg.body_timeout and now - client.last_write_at >= http_cfg.body_timeout:
                    log.info("%s: response not read for %gs; closed", client.peer, http_cfg.body_timeout)
                    self._close_client(client)
            elif client.job is None:
                self._expire_waiting_client(client, now)

    def _expire_waiting_client(self, client: Client, now: float) -> None:
        """Nothing at the pool, nothing to write: the client owes us bytes."""
        http_cfg = self.config.http
        if client.conn.reading_body:
            if http_cfg.body_timeout and now - client.last_read_at >= http_cfg.body_timeout:
                self._reject(client, 408, f"no request body bytes for {http_cfg.body_timeout:g}s")
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
