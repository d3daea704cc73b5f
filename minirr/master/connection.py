"""One accepted connection in the loop: buffered, registered, limit-checked, expiring.

Owns: a socket's reads into its parser, the parse loop (one request at a time: pipelined
      bytes wait until the answer is out), writes with backpressure, the selector
      registration that follows from the connection's phase, answering a broken request,
      expiry (lifecycle.expiry), lingering after a last answer, and closing.
Never: decides what to answer. That is its owner's: the frontend for application
       clients, operations.py for status, metrics and control peers. Every connection
       the master accepts is one of these, so each gets the same protections.

    recv ─> parser.receive_data ─> next_event ─┬─> owner.on_request(conn, request)    (phase WAITING)
                                               ├─> owner.on_bad_request(conn, error)  (e.g. 400, then close)
                                               ├─> CONTINUE: b"HTTP/1.1 100 Continue"
                                               └─> YIELD: the rest is parsed at the end of the
                                                   round (loop.soon), nothing read meanwhile
    owner ─> conn.respond(bytes, keep_alive)       the whole answer            (SENDING)
          ─> conn.start_stream(head) / send(part)   an answer still arriving    (STREAMING)
          ─> conn.respond_file(head, fd, offset, count, keep_alive)
                                                    a head, then a file region  (SENDING)
    send() ─> what the kernel does not take waits in `out` for EVENT_WRITE ─> drained ─> IDLE
    a file region goes after `out`, with os.sendfile: the kernel copies it from the page
    cache to the socket, so the master holds none of it however large it is

The owner is any object with these methods:

    on_request(conn, request)     a complete request (http11) or call (control.CallParser)
    on_bad_request(conn, error)   the parser refused the bytes (ProtocolError, ControlError)
    rejection(status, message)    the bytes that answer a request the connection refuses (408, 500)
    on_closed(conn)               the connection is gone; a request it had is abandoned
    on_eof(conn)                  the peer sent EOF while its request waits for an answer
    on_drain(conn)                `out` fell below LOW_WATER_BYTES after wait_for_drain()

After a 101 (`upgrade`), the bytes are no longer HTTP: the connection's parser and owner
are handed to a WebSocket session (master/websocket.py), which gets what is read
(`on_data`), says whether to read on (`reading`) and applies its own limits (`expire`);
writes, their backpressure and closing stay the connection's.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import List, Optional
from . import lifecycle
from ..errors import MinirrError
from ..http.parser import CLOSED as PARSER_CLOSED, CONTINUE, NEED_DATA, YIELD
from .lifecycle import CLOSED, IDLE, LINGERING, READING, SENDING, UPGRADED, WAITING, ConnectionLimits, advance
from .loop import READ, WRITE, Handler, Loop

log = logging.getLogger("minirr")

READ_SIZE = 64 * 1024                  # recv allocates this much per call: modest for heads ...
BODY_READ_SIZE = 1 << 20               # ... larger while a request body streams in
HIGH_WATER_BYTES = 256 * 1024          # a streamed answer waits while this much is unsent ...
LOW_WATER_BYTES = 64 * 1024            # ... and goes on once less than this is
CONTINUE_RESPONSE = b"HTTP/1.1 100 Continue\r\n\r\n"
SENDFILE_BUDGET_BYTES = 4 << 20        # of a file, per write event: one fast reader cannot hold the loop


class Connection(Handler):
    """One accepted socket (see the module docstring)."""

    __slots__ = ("loop", "sock", "fd", "peer", "parser", "owner", "limits", "listener", "phase", "out", "events",
                 "closing", "rejected", "peer_closed", "draining", "deferred", "job", "idle_since", "last_read_at",
                 "last_write_at", "body_started_at", "body_bytes", "send_started_at", "sent_since",
                 "linger_until", "served", "file_fd", "file_offset", "file_left")

    def __init__(self, loop: Loop, sock: socket.socket, peer: str, parser, owner, limits: ConnectionLimits,
                 listener, now: float) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.parser = parser
        self.owner = owner
        self.limits = limits
        self.listener = listener
        self.phase = IDLE
        self.out = bytearray()          # bytes the kernel has not taken yet
        self.events = 0                 # what the selector watches for us now
        self.closing = False            # close once the current answer is out
        self.rejected = False           # answered with an error: linger before closing
        self.peer_closed = False        # the peer sent EOF
        self.draining = False           # the owner waits for `out` to drain (backpressure)
        self.deferred = False           # the parser yielded: the rest is parsed from `soon`
        self.job = None                 # the owner's handle on the request in flight
        self.idle_since = now           # IDLE began (header_timeout, keepalive_timeout)
        self.last_read_at = now
        self.last_write_at = now        # last progress writing `out`
        self.body_started_at = 0.0      # the current request's body began (min_body_rate)
        self.body_bytes = 0
        self.send_started_at = 0.0      # `out` became non-empty (min_send_rate) ...
        self.sent_since = 0             # ... and bytes taken by the kernel since
        self.linger_until = 0.0
        self.served = 0                 # answers completed on this connection
        self.file_fd = -1               # a file being sent after `out` (respond_file) ...
        self.file_offset = 0            # ... from here ...
        self.file_left = 0              # ... this many bytes still

    def __repr__(self) -> str:
        return self.peer or "a local peer"

    @property
    def unsent(self) -> int:
        """Bytes of the answer the kernel has not taken yet: `out`, and a file's rest."""
        return len(self.out) + self.file_left

    def descriptors(self) -> List[object]:
        """What of ours a forked worker must close: the socket, and a file being sent."""
        return [self.sock] if self.file_fd < 0 else [self.sock, self.file_fd]

    @property
    def backlogged(self) -> bool:
        """Enough is unsent that whoever produces more should wait (HIGH_WATER_BYTES)."""
        return len(self.out) >= HIGH_WATER_BYTES

    def start(self) -> None:
        self._sync_events()

    def unread_input(self) -> bool:
        """Bytes of the peer's wait in the kernel, not read yet (a peek, for a graceful stop:
        a request may have arrived in the same round as the signal)."""
        try:
            return bool(self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except OSError:                 # BlockingIOError: nothing; anything else: nothing to read
            return False

    # ---- the loop's callbacks ----------------------------------------------------------
    def on_event(self, mask: int) -> None:
        if mask & WRITE:
            self._flush()
        if mask & READ and self.phase is not CLOSED:
            if self.phase is LINGERING:
                self._on_lingering_readable()
            elif self.phase is UPGRADED:
                self._on_upgraded_readable()
            else:
                self._on_readable()

    def contain(self, exc: BaseException) -> None:
        """A callback of ours raised: a 500 if nothing of an answer went out yet, then close."""
        log.error("%s: the connection failed; closing it", self, exc_info=exc)
        if self.phase in (IDLE, READING, WAITING) and not self.out:
            try:
                self.sock.send(self.owner.rejection(500, "internal server error"))
            except Exception:          # the peer is gone, or the owner failed too: close is enough
                pass
        self.close()

    # ---- reading -------------------------------------------------------------------------
    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(BODY_READ_SIZE if self.body_started_at else READ_SIZE)
        except BlockingIOError:
            return
        except OSError:                 # ConnectionResetError, TimeoutError: the peer is gone
            self.close()
            return
        now = self.loop.clock()
        self.last_read_at = now
        if not data:
            self.peer_closed = True     # EOF stays readable forever: _sync_events stops watching
        self.parser.receive_data(data)
        phase = self.phase
        if phase is IDLE or phase is READING:
            self._parse(now)
            if self.phase is READING and self.parser.reading_body:
                self._count_body_bytes(len(data), now)
        if self.phase is not CLOSED:
            if self.peer_closed and self.phase is IDLE and not self.out:
                self.close()            # the peer is gone and nothing is owed to it
            else:
                self._sync_events()
                if not data and self.phase is WAITING:
                    self.owner.on_eof(self)   # its request may not be at a worker yet

    def _count_body_bytes(self, count: int, now: float) -> None:
        if not self.body_started_at:
            self.body_started_at = now
        self.body_bytes += count

    def _parse(self, now: float) -> None:
        """Parse buffered bytes into requests while the connection is free to take one."""
        parser = self.parser
        while self.phase is IDLE or self.phase is READING:
            try:
                event = parser.next_event()
            except MinirrError as exc:      # ProtocolError, ControlError: the owner answers
                self.owner.on_bad_request(self, exc)
                return
            if event is NEED_DATA:
                if self.phase is IDLE and parser.has_partial_request:
                    advance(self, "data")
                return
            if event is CONTINUE:
                if self.phase is IDLE:
                    advance(self, "data")
                self.write(CONTINUE_RESPONSE)
            elif event is PARSER_CLOSED:
                self.close()            # EOF between or inside requests: nothing to answer
                return
            elif event is YIELD:
                self._defer_parsing()
                return
            else:
                advance(self, "request")
                self.body_started_at = 0.0
                self.body_bytes = 0
                self.owner.on_request(self, event)

    def _defer_parsing(self) -> None:
        """The parser has done one call's worth of work (a body of tiny chunks) with bytes
        left: other connections have their turn first, the rest is parsed at the end of
        the round, and nothing more is read from this peer until those bytes are parsed
        (so its buffer never holds more than one read)."""
        if self.phase is IDLE:
            advance(self, "data")
        self.deferred = True
        self.loop.soon(self, self._parse_again)

    def _parse_again(self) -> None:
        """Run from `soon`: after an answer (the next pipelined request, or the peer's
        EOF), or after the parser yielded (the rest of the bytes it has)."""
        self.deferred = False
        if self.phase is IDLE or self.phase is READING:
            self._parse(self.loop.clock())
            if self.phase is IDLE and self.peer_closed and not self.out:
                self.close()
            elif self.phase is not CLOSED:
                self._sync_events()

    def _on_lingering_readable(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)   # discarded
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()                # the peer closed too: the answer got through

    # ---- answering -----------------------------------------------------------------------
    def respond(self, data: bytes, keep_alive: bool) -> None:
        """The answer to the request in flight (or the last part of a streamed one)."""
        if self.phase is CLOSED:
            return                      # the client went away: the answer is dropped
        self.served += 1
        if not keep_alive:
            self.closing = True
        self.write(data)
        if self.out:
            advance(self, "respond")    # the rest goes out on EVENT_WRITE
        elif self.phase is not CLOSED:
            self._answered()            # all of it went out at once: the usual case

    def start_stream(self, head: bytes) -> None:
        """The head (and maybe the first bytes) of an answer whose rest is still coming."""
        if self.phase is not CLOSED:
            advance(self, "stream")
            self.write(head)

    def reject(self, status: int, message: str, data: Optional[bytes] = None) -> None:
        """Answer a request we refuse (a protocol error, a timeout) with `data`, or the
        owner's rejection(status, message), then close: the framing of anything after it
        is lost."""
        log.info("%s: rejected with %d: %s", self, status, message)
        self.rejected = True
        self.closing = True
        advance(self, "reject")
        self.write(data if data is not None else self.owner.rejection(status, message))
        if self.phase is SENDING and not self.out:
            self._answered()
        elif self.phase is not CLOSED:
            self._sync_events()

    def write(self, data: bytes) -> None:
        """Send now what the kernel takes; keep the rest and wait for EVENT_WRITE."""
        if self.phase is CLOSED:
            return
        if self.file_left:
            raise MinirrError(f"{self}: bytes written while a file answer is being sent")
        if self.out:
            self.out += data
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:                 # BrokenPipeError, ConnectionResetError: the peer is gone
            self.close()
            return
        if sent < len(data):
            self.out += memoryview(data)[sent:]
            now = self.loop.clock()
            self.last_write_at = now
            self.send_started_at = now
            self.sent_since = 0
            self._sync_events()

    def wait_for_drain(self) -> None:
        """Call owner.on_drain(self) once `out` falls below LOW_WATER_BYTES."""
        self.draining = True

    def _flush(self) -> None:
        if self.out:
            try:
                sent = self.sock.send(self.out)
            except BlockingIOError:
                return
            except OSError:             # BrokenPipeError, ConnectionResetError: the peer is gone
                self.close()
                return
            del self.out[:sent]
            self.last_write_at = self.loop.clock()
            self.sent_since += sent
            if self.draining and len(self.out) < LOW_WATER_BYTES:
                self.draining = False
                self.owner.on_drain(self)
        if self.file_left and not self.out and self.phase is not CLOSED:
            self._send_file()
        if not self.out and not self.file_left and self.phase is not CLOSED:
            self._sync_events()
            if self.phase is SENDING:
                self._answered()

    # ---- a file region, with sendfile ---------------------------------------------------------
    def respond_file(self, head: bytes, fd: int, offset: int, count: int, keep_alive: bool) -> None:
        """The answer to the request in flight: `head`, then `count` bytes of the file `fd`
        from `offset`. The connection owns `fd` from here: it is closed however the
        connection ends (all sent, the peer gone, a limit, close())."""
        if self.phase is CLOSED or not count:
            _close_fd(fd)
            self.respond(head, keep_alive)
            return
        self.served += 1
        if not keep_alive:
            self.closing = True
        advance(self, "respond")
        self._write_head(head)
        if self.phase is CLOSED:
            _close_fd(fd)
            return
        if not self.out:                # the head went out at once: the wait to send starts now
            now = self.loop.clock()
            self.last_write_at = now
            self.send_started_at = now
            self.sent_since = 0
        self.file_fd, self.file_offset, self.file_left = fd, offset, count
        self._flush()                   # most of a small file goes now; the rest on EVENT_WRITE
        if self.phase is not CLOSED and (self.out or self.file_left):
            self._sync_events()

    def _write_head(self, head: bytes) -> None:
        """write(head), telling the kernel more follows (MSG_MORE): the head and the start
        of the file leave in one segment, not a small one and then the rest."""
        if self.out:
            self.out += head
            return
        try:
            sent = self.sock.send(head, socket.MSG_MORE)
        except BlockingIOError:
            sent = 0
        except OSError:                 # BrokenPipeError, ConnectionResetError: the peer is gone
            self.close()
            return
        if sent < len(head):
            self.write(head[sent:])

    def _send_file(self) -> None:
        """Hand the kernel what it takes of the file, up to SENDFILE_BUDGET_BYTES a round.
        Progress counts for body_timeout and min_send_rate as `out`'s does."""
        budget = SENDFILE_BUDGET_BYTES
        sent_total = 0
        while self.file_left and budget > 0:
            try:
                sent = os.sendfile(self.fd, self.file_fd, self.file_offset, min(self.file_left, budget))
            except BlockingIOError:
                break
            except OSError:             # BrokenPipeError, ConnectionResetError: the peer is gone
                self.close()
                return
            if not sent:                # the file is shorter than it was: the answer cannot be whole
                log.warning("%s: a file being sent ended %d bytes early (changed while sent?); closing",
                            self, self.file_left)
                self.close()
                return
            self.file_offset += sent
            self.file_left -= sent
            budget -= sent
            sent_total += sent
        if sent_total:
            self.last_write_at = self.loop.clock()
            self.sent_since += sent_total
        if not self.file_left:
            self._release_file()

    def _release_file(self) -> None:
        if self.file_fd >= 0:
            _close_fd(self.file_fd)
        self.file_fd, self.file_left = -1, 0

    def _answered(self) -> None:
        """The whole answer is with the kernel: close, or wait for the next request."""
        if self.closing:
            self._finish()
            return
        advance(self, "answered")
        self.idle_since = self.loop.clock()
        self.job = None
        self.parser.start_next_cycle()
        if self.parser.buffered_bytes or self.peer_closed:
            self.loop.soon(self, self._parse_again)   # not from here: we may be inside _parse
        elif self.events != READ:
            self._sync_events()         # (an idle connection only reads: usually so already)

    # ---- closing ---------------------------------------------------------------------------
    def _finish(self) -> None:
        """Close after the last answer. If the peer may still be sending (an error answered
        mid-request, or pipelined requests past a "close"), half-close first and drain:
        closing with unread bytes makes the kernel send a reset, which can destroy the
        answer before the peer reads it (RFC 9112 §9.6)."""
        if self.peer_closed or not (self.rejected or self.parser.buffered_bytes):
            self.close()
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()
            return
        advance(self, "linger")
        self.linger_until = self.loop.clock() + lifecycle.LINGER_S
        self._sync_events()

    def close(self) -> None:
        if self.phase is CLOSED:
            return
        advance(self, "close")
        if self.events:
            self.loop.unregister(self.fd)
            self.events = 0
        self.sock.close()
        self.out = bytearray()          # let go of unsent bytes now
        self._release_file()
        self.listener.forget(self)
        self.owner.on_closed(self)
        # The job names this connection and the connection its job: a cycle only the
        # garbage collector would break, holding the request's body meanwhile (a queued
        # upload whose client left). The owner has been told; let go of it now.
        self.job = None

    def expire(self, now: float) -> None:
        """Apply the connection's limits (lifecycle.expiry; a WebSocket's are its session's)."""
        if self.phase is UPGRADED:
            self.owner.expire(self, now)
            return
        found = lifecycle.expiry(self, self.limits, now)
        if found is None:
            return
        if found.status:
            self.reject(found.status, found.message)
            return
        if found.message:
            log.info("%s: %s; closed", self, found.message)
        self.close()

    # ---- after a 101: a WebSocket session's bytes (master/websocket.py) -----------------------
    def upgrade(self, data: bytes, session, parser) -> bytes:
        """Write the 101 `data` and hand the connection to `session` (its new owner) and
        `parser` (a stand-in: no HTTP is parsed any more). -> the bytes the peer sent
        after its handshake, which are the session's."""
        early = self.parser.take_buffered()
        advance(self, "upgrade")
        self.owner = session
        self.parser = parser
        self.job = None
        self.served += 1
        self.write(data)
        if self.phase is not CLOSED:
            self._sync_events()
        return early

    def _on_upgraded_readable(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError:                 # ConnectionResetError: the peer is gone
            self.close()
            return
        self.last_read_at = self.loop.clock()
        if not data:
            self.peer_closed = True
            self._sync_events()
        self.owner.on_data(self, data)

    def reading_changed(self) -> None:
        """The session began or stopped wanting the peer's bytes (its backpressure)."""
        if self.phase is UPGRADED:
            self._sync_events()

    # ---- what the selector watches -----------------------------------------------------------
    def _sync_events(self) -> None:
        """Read while a request may come (and, while one is being answered, until
        pipelined bytes pile past pipeline_limit); write while bytes wait."""
        phase = self.phase
        if phase is LINGERING:
            reading = True
        elif self.peer_closed:
            reading = False
        elif phase is UPGRADED:
            reading = self.owner.reading
        elif phase is IDLE or phase is READING:
            reading = not self.deferred
        else:
            reading = not self.closing and self.parser.buffered_bytes <= self.limits.pipeline_limit
        events = (READ if reading else 0) | (WRITE if self.out or self.file_left else 0)
        if events == self.events:
            return
        if not events:
            self.loop.unregister(self.fd)
        elif not self.events:
            self.loop.register(self.fd, events, self)
        else:
            self.loop.modify(self.fd, events, self)
        self.events = events


def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
