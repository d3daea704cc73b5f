"""The master's WebSockets: a client's socket after its 101, relayed to an async worker as
events, with RFC 6455 enforced here whatever the app does.

Owns: telling which request is a WebSocket handshake and checking it (http/websocket.py);
      each accepted socket's session (`WebSocketSession`: the connection's owner after the
      101, its frames read and written, pings, the close handshake as one table,
      `TRANSITIONS`); what each of the worker's WebSocket frames means (`on_worker_frame`:
      accept, a message's pieces, close, the app's end, its credit); the windows both
      ways; counting open sockets and messages.
Never: reads or writes a socket itself (the connection does, and keeps its backpressure),
       reads a pipe (channel.py), or decides a worker's fate: a frame that breaks the wire
       raises FrameError, and the backend acts on the verdict it is given, as for
       jobs.on_reply. A job moves only through jobs.Jobs (its table has the rows).

    client ──bytes──> Connection (UPGRADED) ──on_data──> FrameReader ──> text/binary ──> worker: TEXT|BINARY
                                                                    ──> ping ──> pong (here)
                                                                    ──> close ──> close echoed, TCP closed,
                                                                                  worker: DISCONNECT
    worker ──frames──> backend._on_multiplexed ──> on_worker_frame ──> ACCEPT: the 101, the session begins
                                                                  ──> TEXT|BINARY pieces ──> frames to the client
                                                                  ──> CLOSE ──> our close frame
                                                                  ──> CREDIT ──> the client is read again
                                                                  ──> the final frame ──> close 1000 (1011: it raised)

The close handshake of one socket (RFC 6455 §7), one table; `advance` applies it:

    OPEN ──peer_closed──> CLOSED        the client's close: echoed, then the TCP close (§5.5.1)
    OPEN ──closing──> CLOSING           ours (the app's, a stop's 1001, 1011): the peer answers ...
    CLOSING ──answered──> CLOSED        ... with its close: the TCP close
    OPEN | CLOSING ──failed──> CLOSED   a protocol error (1002, 1007, 1009) or no pong: close frame, TCP close
    any ──gone──> CLOSED                the TCP connection ended (a reset, EOF, a limit)
"""

from __future__ import annotations

import enum
import logging
import time
from typing import Optional

from ..errors import FrameError
from ..http import websocket as rfc
from ..http.responses import DateCache, error_response
from ..wire import multiplex, websocket as wire
from ..wire.frame import CREDIT, ERROR, STREAM, WEBSOCKET, Frame
from .jobs import AT_WORKER, CLOSING as JOB_CLOSING, DRAINING, FREE, MORE, OPEN as JOB_OPEN, Job, Jobs, Outcome
from .lifecycle import CLOSED as CONN_CLOSED, WebSocketLimits, websocket_expiry
from .metrics import ServerMetrics

log = logging.getLogger("minirr")

# Each message, each way, costs its length and this much of its connection's window: a
# flood of empty messages fills a window too.
MESSAGE_COST_BYTES = 64
CHECK_EVERY_S = 1.0                   # a session's limits are looked at this often (at most)


class SessionState(str, enum.Enum):      # str: see pool.WorkerState
    OPEN = "open"
    CLOSING = "closing: our close frame is out"
    CLOSED = "closed"


OPEN, CLOSING, CLOSED = SessionState

TRANSITIONS = {
    (OPEN, "peer_closed"): CLOSED,
    (OPEN, "closing"): CLOSING,
    (CLOSING, "answered"): CLOSED,
    (OPEN, "failed"): CLOSED,
    (CLOSING, "failed"): CLOSED,
    (OPEN, "gone"): CLOSED,
    (CLOSING, "gone"): CLOSED,
}


def advance(session: "WebSocketSession", event: str) -> SessionState:
    new = TRANSITIONS.get((session.state, event))
    if new is None:
        raise FrameError(f"WebSocket {session.conn}: event {event!r} is not allowed in state {session.state.name}")
    session.state = new
    return new


class _Upgraded:
    """The parser of a connection after its 101: nothing is parsed as HTTP any more (what
    connection.py and the frontend ask of a parser, answered for a WebSocket)."""

    __slots__ = ()
    buffered_bytes = 0
    has_partial_request = False
    reading_body = False


UPGRADED_PARSER = _Upgraded()


class WebSocketSession:
    """One upgrade request's WebSocket: made with its job (the handshake checked), the
    connection's owner from the 101 on (see the module docstring)."""

    __slots__ = ("part", "conn", "job", "handshake", "reader", "state", "opened_at", "ping_sent_at",
                 "closing_since", "check_at", "close_code", "closed_by", "unacked", "out_text", "out_started",
                 "messages_in", "messages_out", "ended")

    def __init__(self, part: "WebSockets", conn, job: Job, handshake: rfc.Handshake) -> None:
        self.part = part
        self.conn = conn
        self.job = job
        self.handshake = handshake
        self.reader: Optional[rfc.FrameReader] = None   # from the 101 on
        self.state = OPEN
        self.opened_at = 0.0                 # 0: not accepted (yet)
        self.ping_sent_at = 0.0              # a ping is out, nothing read since
        self.closing_since = 0.0             # our close frame went out then
        self.check_at = 0.0                  # expire() looks at the limits again then
        self.close_code = 0                  # the code of the first close frame, either way
        self.closed_by = ""                  # "client", "server", or "" (the connection dropped)
        self.unacked = 0                     # sent to the worker, not credited back by it
        self.out_text = None                 # an outgoing text message's UTF-8 check, between pieces
        self.out_started = False             # an outgoing message has pieces out, not its last
        self.messages_in = 0
        self.messages_out = 0
        self.ended = False                   # the socket's life is over (told to the job once)

    def __repr__(self) -> str:
        return f"WebSocket {self.job.request.path} of {self.conn}"

    # ---- the connection's owner (connection.py) ------------------------------------------
    @property
    def reading(self) -> bool:
        """Read the client while its messages fit the worker's window and our frames to
        it are not piling up (a fast client with a slow app stops being read). Once our
        close frame is out, always: what it sends is dropped, and its close is awaited."""
        if self.reader is not None and self.reader.more:
            return False                     # frames it sent are still to be read (loop.soon)
        if self.state is not OPEN:
            return True
        return self.unacked < wire.WINDOW_BYTES and not self.conn.backlogged

    def on_data(self, conn, data: bytes) -> None:
        if not data:                         # EOF: the peer is gone (a close handshake needs both ways)
            conn.close()
            return
        self.ping_sent_at = 0.0
        self._read(conn, data)

    def _read(self, conn, data: bytes) -> None:
        """What the reader makes of `data`; a read of more frames than it takes at once
        goes on at the end of the round (loop.soon), the peer unread meanwhile, so other
        connections get their turn first (as a chunked body of tiny chunks does)."""
        reader = self.reader
        for kind, payload in reader.feed(data):
            if self.state is CLOSED:
                break
            if kind == "fail":
                self.fail(payload.code, payload.reason)
                return
            self._on_event(kind, payload)
        if reader.more and self.state is not CLOSED:
            conn.loop.soon(conn, lambda: self._read(conn, b""))
        if conn.backlogged:
            conn.wait_for_drain()
        conn.reading_changed()

    def _on_event(self, kind: str, payload) -> None:
        if kind == "text" or kind == "binary":
            self._to_app(wire.TEXT if kind == "text" else wire.BINARY, payload)
        elif kind == "ping":
            if self.state is OPEN:
                self.conn.write(rfc.encode_frame(rfc.PONG, payload))   # §5.5.2: the same payload
        elif kind == "close":
            self._on_close(*payload)
        # a pong: the peer is alive (anything it sends says so)

    def _to_app(self, kind: int, payload: bytes) -> None:
        """A client's message to its app, unless the socket is closing or the app is done."""
        job = self.job
        if self.state is not OPEN or job.state is not JOB_OPEN:
            return
        self.messages_in += 1
        self.part.metrics.websocket_message("in")
        self.unacked += len(payload) + MESSAGE_COST_BYTES
        job.worker.channel.write(wire.event_header(kind, job.id, len(payload)), payload)

    def _on_close(self, code: int, reason: str) -> None:
        if self.state is OPEN:
            # §5.5.1: answer with a close frame, echoing the code (none if it sent none), then
            # the server closes the TCP connection first (§7.1.1).
            self.close_code, self.closed_by = code, "client"
            advance(self, "peer_closed")
            self._ended(code, reason)
            payload = rfc.close_payload(code) if code != rfc.NO_STATUS else b""
            self.conn.respond(rfc.encode_frame(rfc.CLOSE, payload), keep_alive=False)
        elif self.state is CLOSING:
            advance(self, "answered")
            self._ended(code, reason)
            self.conn.respond(b"", keep_alive=False)

    def on_drain(self, conn) -> None:
        """The client took most of what we wrote: its app's credit, and read it again."""
        self.part.credit(self.job)
        conn.reading_changed()

    def on_closed(self, conn) -> None:
        """The TCP connection is gone (closed by us after the handshake, or lost)."""
        if self.state is not CLOSED:
            advance(self, "gone")
        self._ended(rfc.ABNORMAL, "")

    def expire(self, conn, now: float) -> None:
        """The session's limits (lifecycle.websocket_expiry), looked at every CHECK_EVERY_S."""
        if now < self.check_at:
            return
        limits = self.part.limits
        self.check_at = now + self.part.check_every_s
        due = websocket_expiry(self, limits, now)
        if due is None:
            return
        if due.action == "ping":
            self.ping_sent_at = now
            conn.write(rfc.encode_frame(rfc.PING, b"minirr"))
        elif due.action == "fail":
            self.fail(rfc.INTERNAL_ERROR, due.message)
        else:
            log.info("%s: %s; closed", self, due.message)
            conn.close()

    # ---- the server's side of the close handshake -------------------------------------------
    def close(self, code: int, reason: str = "") -> None:
        """Begin the close handshake (the app's websocket.close, a stop, a crash)."""
        if self.state is not OPEN:
            return
        self.close_code, self.closed_by = code, "server"
        advance(self, "closing")
        self.closing_since = self.conn.loop.clock()
        self.check_at = 0.0
        self._end_message()
        self.conn.write(rfc.close_frame(code, reason))
        self.conn.reading_changed()

    def going_away(self) -> None:
        """A graceful stop, or its worker retired past destroy_timeout: close 1001."""
        self.close(rfc.GOING_AWAY, "the server is going away")

    def worker_lost(self) -> None:
        """Its worker died or broke the channel (jobs.worker_lost): close 1011."""
        self.close(rfc.INTERNAL_ERROR, "the application's worker failed")

    def fail(self, code: int, reason: str) -> None:
        """Fail the connection (§7.1.7): our close frame with `code`, then the TCP close,
        half-closed first so that the frame is read (connection.py lingers)."""
        if self.state is CLOSED:
            return
        log.info("%s: failed with close code %d: %s", self, code, reason)
        was_open = self.state is OPEN
        if was_open:
            self.close_code, self.closed_by = code, "server"
        advance(self, "failed")
        conn = self.conn
        conn.rejected = True
        self._end_message()
        self._ended(code, reason)
        conn.respond(rfc.close_frame(code, reason) if was_open else b"", keep_alive=False)

    def _end_message(self) -> None:
        self.out_text = None
        self.out_started = False

    def _ended(self, code: int, reason: str) -> None:
        """The socket's life is over: its job moves, its app is told websocket.disconnect."""
        if self.ended or not self.opened_at:
            return
        self.ended = True
        self.part.closed(self, code, reason)

    def log_fields(self) -> str:
        """The access log's words for this WebSocket (jobs._move writes the line)."""
        if not self.opened_at:
            return ""
        return f" websocket in={self.messages_in} out={self.messages_out} close={self.close_code or rfc.ABNORMAL}" \
               f" by={self.closed_by or 'nobody'}"

    # ---- the app's side ------------------------------------------------------------------------
    def send_piece(self, kind: int, data: bytes) -> None:
        """A piece of the app's message: one frame to the client (a fragment, §5.4, unless
        it is a whole message). Text is checked to be UTF-8 as it goes (§8.1)."""
        more = bool(kind & wire.MORE)
        kind &= 0xFF
        if not self.out_started:
            self.out_text = rfc.utf8_checker() if kind == wire.TEXT else None
            opcode = rfc.TEXT if kind == wire.TEXT else rfc.BINARY
        elif (kind == wire.TEXT) != (self.out_text is not None):
            raise FrameError("a WebSocket message whose pieces change between text and binary")
        else:
            opcode = rfc.CONTINUATION
        if self.out_text is not None:
            try:
                self.out_text.decode(data, not more)
            except UnicodeDecodeError:
                raise FrameError("a WebSocket text message that is not UTF-8") from None
        self.out_started = more
        if not more:
            self.out_text = None
            self.messages_out += 1
            self.part.metrics.websocket_message("out")
        self.job.body_bytes += len(data)
        self.conn.write(rfc.encode_header(opcode, len(data), fin=not more) + data)


class WebSockets:
    """Every WebSocket of the master (one part, built by server.py; the frontend offers it
    each request, the backend each WebSocket frame of a worker)."""

    def __init__(self, limits: WebSocketLimits, jobs: Jobs, metrics: ServerMetrics, dates: DateCache,
                 pool) -> None:
        self.limits = limits
        self.jobs = jobs
        self.metrics = metrics
        self.dates = dates
        self.pool = pool                     # its `websockets`: do the workers take WebSocket events?
        self.open = 0
        intervals = [s / 4 for s in (limits.ping_interval, limits.ping_timeout) if s]
        self.check_every_s = min([CHECK_EVERY_S] + intervals)

    # ---- the frontend's side --------------------------------------------------------------
    def offer(self, request) -> Optional[rfc.Handshake]:
        """An upgrade request, when the workers take WebSocket events, is a WebSocket's:
        its handshake checked (HandshakeError: 400, 426), for the session its job will
        carry. Any other request, and every request to workers that did not offer them,
        is an ordinary one. Before any worker has finished its handshake it is not known
        yet: a valid handshake waits to be a WebSocket (backend.dispatch decides, by the
        worker that takes it), an invalid one is an ordinary request, as it would be for
        a WSGI app."""
        websockets = self.pool.websockets
        if websockets is False or not rfc.upgrade_requested(request.headers):
            return None
        try:
            return rfc.check_handshake(request.method, request.protocol, request.headers)
        except rfc.HandshakeError:
            if websockets is None:
                return None
            raise

    def session(self, conn, job: Job, handshake: rfc.Handshake) -> WebSocketSession:
        return WebSocketSession(self, conn, job, handshake)

    def refusal(self, exc: rfc.HandshakeError) -> bytes:
        return error_response(exc.status, exc.msg, date=self.dates.get(time.time()), extra_headers=exc.headers)

    # ---- the backend's side: the worker's frames of a WebSocket's job --------------------------------
    def connect_frame(self, job: Job, head: bytes) -> bytes:
        return wire.event_frame(wire.CONNECT, job.id, head)

    def on_worker_frame(self, job: Job, item, now: float):
        """One frame of the worker for WebSocket `job` -> MORE, or FREE once it is the
        final one. FrameError for a frame the wire does not allow (a broken channel)."""
        if type(item) is not Frame:
            raise FrameError(f"a WebSocket frame larger than {wire.PIECE_BYTES} bytes")
        session: WebSocketSession = job.websocket
        stream = item.stream
        if stream & WEBSOCKET:
            self._on_event(job, session, item, now)
            return MORE
        if stream & CREDIT:
            self._on_acked(session, item.options[0])
            return MORE
        if stream & STREAM:
            raise FrameError("a STREAM frame for a WebSocket")
        return self._on_final(job, session, bool(item.flags & ERROR), item.payload, now)

    def _on_event(self, job: Job, session: WebSocketSession, item: Frame, now: float) -> None:
        kind = item.options[0]
        if kind & 0xFF in (wire.TEXT, wire.BINARY) and kind & ~(wire.MORE | 0xFF) == 0:
            if len(item.payload) > wire.PIECE_BYTES:
                raise FrameError(f"a WebSocket message piece of {len(item.payload)} bytes "
                                 f"(at most {wire.PIECE_BYTES})")
            if job.state is AT_WORKER:
                raise FrameError("a WebSocket message before websocket.accept")
            self._from_app(job, session, kind, item.payload)
        elif kind == wire.ACCEPT:
            subprotocol, headers = wire.read_accept(item.payload)
            if job.state is AT_WORKER:
                self._accept(job, session, subprotocol, headers, now)
        elif kind == wire.CLOSE:
            code, reason = wire.read_close(item.payload, "CLOSE")
            if job.state is AT_WORKER:
                self.jobs.fail(job, Outcome.WS_DENIED, now, early=True)
            elif job.state is JOB_OPEN:
                session.close(code if rfc.valid_close_code(code) else rfc.INTERNAL_ERROR, reason)
        else:
            raise FrameError(f"a WebSocket event of kind {kind} from the worker")

    def _from_app(self, job: Job, session: WebSocketSession, kind: int, data: bytes) -> None:
        """A piece of the app's message: to the client while the socket is open; its
        window credited back once it has left the master (or at once, if dropped)."""
        job.credit += len(data) + MESSAGE_COST_BYTES
        conn = session.conn
        if job.state is JOB_OPEN and session.state is OPEN:
            session.send_piece(kind, data)
            if conn.backlogged:
                conn.wait_for_drain()
                return
        if job.credit >= wire.CREDIT_BATCH_BYTES or session.state is not OPEN:
            self.credit(job)

    def credit(self, job: Job) -> None:
        worker = job.worker
        if job.credit and worker is not None and worker.jobs.get(job.id) is job and worker.channel is not None:
            worker.channel.write(multiplex.credit_frame(job.credit, job.id))
            job.credit = 0

    def _on_acked(self, session: WebSocketSession, nbytes: int) -> None:
        """The worker credits what its app received: the client may be read again."""
        if nbytes > session.unacked:
            raise FrameError(f"a WebSocket CREDIT of {nbytes} bytes, but {session.unacked} are unacknowledged")
        session.unacked -= nbytes
        if session.opened_at and not session.ended:
            session.conn.reading_changed()

    def _accept(self, job: Job, session: WebSocketSession, subprotocol, headers, now: float) -> None:
        """websocket.accept: the 101, and the connection is the session's from now on."""
        conn = session.conn
        try:
            data = rfc.accept_response(session.handshake, subprotocol, headers, self.dates.get(time.time()))
        except ValueError as exc:
            log.error("%s: request %s %s: the application's websocket.accept is invalid: %s; answered 500",
                      job.worker, job.request.method, job.request.path, exc)
            self.jobs.fail(job, Outcome.WS_NOT_ACCEPTED, now, early=True)
            self._tell_app(job, rfc.ABNORMAL, "")
            return
        if conn.phase is CONN_CLOSED:        # its client left in this very round: jobs.client_gone follows
            return
        session.reader = rfc.FrameReader(self.limits.max_message_size)
        session.opened_at = now
        job.status = 101
        job.deadline_at = 0.0                # no exec_ttl for an open WebSocket
        self.jobs.move(job, "upgraded", now)
        self.open += 1
        self.metrics.websockets_open.set(self.open)
        stopping = conn.closing              # the server began to stop while the app accepted
        early = conn.upgrade(data, session, UPGRADED_PARSER)
        if early or conn.peer_closed:
            session.on_data(conn, early)
            if conn.peer_closed and session.state is not CLOSED:
                session.on_data(conn, b"")
        if stopping:
            session.going_away()

    def _on_final(self, job: Job, session: WebSocketSession, error: bool, payload: bytes, now: float):
        """The app's coroutine is over: returned, or raised (`error`)."""
        if job.state is AT_WORKER:
            if error:
                log.warning("%s: WebSocket %s failed before it was accepted: %s", job.worker, job.request.path,
                            bytes(payload[:200]).decode("utf-8", "replace"))
            self.jobs.fail(job, Outcome.SOFT_ERROR if error else Outcome.WS_NOT_ACCEPTED, now)
            return FREE
        if job.state is JOB_OPEN:
            if error:
                log.warning("%s: WebSocket %s: the application raised: %s", job.worker, job.request.path,
                            bytes(payload[:200]).decode("utf-8", "replace"))
            session.close(rfc.INTERNAL_ERROR if error else rfc.NORMAL, "")
            job.credit = 0
            self.jobs.move(job, "finished", now)
            return FREE
        if job.state is DRAINING:
            self.jobs.move(job, "finished", now)
            return FREE
        raise FrameError(f"a final frame for a WebSocket in state {job.state.name}")

    def closed(self, session: WebSocketSession, code: int, reason: str) -> None:
        """A session's socket ended: its job moves, and its app gets websocket.disconnect."""
        job = session.job
        now = session.conn.loop.clock()
        self.open -= 1
        self.metrics.websockets_open.set(self.open)
        if job.state is JOB_OPEN:
            self.jobs.move(job, "ws_closed", now)
            self.jobs.stopped(job, now)      # destroy_timeout bounds what the app still does
            self._tell_app(job, code, reason)
        elif job.state is JOB_CLOSING:
            self.jobs.move(job, "ws_closed", now)

    def _tell_app(self, job: Job, code: int, reason: str) -> None:
        worker = job.worker
        if worker is not None and worker.jobs.get(job.id) is job and worker.channel is not None:
            worker.channel.write(wire.event_frame(wire.DISCONNECT, job.id, wire.close_payload(code, reason)))
            job.credit = 0
