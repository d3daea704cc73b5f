"""A connection's lifecycle: its phases, the moves between them, and when it expires.

Owns: the Phase enum and its TRANSITIONS table (one `advance` applies it and raises on a
      move the table does not allow), the limits a connection lives under, and `expiry`,
      the pure decision of whether a connection has outstayed a limit.
Never: touches a socket or reads a clock: connection.py does the I/O and passes `now`.

Every connection the master accepts — an application client, a status or metrics
scraper, a control peer — goes through the same phases:

    IDLE ──data──> READING ──request──> WAITING ──respond──> SENDING ──answered──> IDLE
      │ └─────────request───────────────┘ │ │                                       ▲
      │                                   │ └──answered (all of it went out at once)──┤
      │                                   └─stream─> STREAMING ─respond / answered────┘
    IDLE | READING ──reject──> SENDING                      (a 4xx answer, then the end)
    WAITING | STREAMING | SENDING ──linger──> LINGERING     (the last answer is out: half-closed,
                                                             draining the peer)
    WAITING ──upgrade──> UPGRADED ──respond──> SENDING      (a 101: a WebSocket session owns the
                         UPGRADED ──linger──> LINGERING     bytes; its last frames, then the end)
    any ──close──> CLOSED                                   (CLOSED is terminal)

WAITING: a complete request is with the owner (queued for a worker, or at one).
STREAMING: the response head is out; the rest of the body is still coming from a worker.
SENDING: the whole answer is queued; the connection waits for the client to take it.
UPGRADED: after a 101, the bytes are a WebSocket's (master/websocket.py); its limits are
`websocket_expiry`'s, below.

What expires, and what the client gets (`expiry`):

    phase                      limit                                   answer
    IDLE, no request yet       header_timeout                          close
    IDLE, after a response     keepalive_timeout                       close
    READING the head           header_timeout (from going idle)        408
    READING the body           body_timeout without a byte             408
                               slower than min_body_rate once the      408
                               body is older than body_timeout
    any, with unsent bytes     body_timeout without write progress     close
                               slower than min_send_rate once the      close
                               bytes are older than body_timeout
    WAITING, STREAMING         the pool's own limits (allocate_timeout, exec_ttl)
    LINGERING                  LINGER_S                                close

Rates are averages over the whole body or the whole wait to send, as Kestrel's minimum
data rates are: a burst makes up for a pause, a steady trickle does not.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple, Optional

from ..errors import MinirrError

LINGER_S = 2.0                         # after the last response: drain the peer this long at most


class Phase(str, enum.Enum):             # str: see pool.WorkerState
    IDLE = "waiting for a request"
    READING = "reading a request"
    WAITING = "the request is with a worker"
    STREAMING = "a response is streaming from a worker"
    SENDING = "writing the response"
    LINGERING = "half-closed after the last response"
    UPGRADED = "a WebSocket"
    CLOSED = "closed"


IDLE, READING, WAITING, STREAMING, SENDING, LINGERING, CLOSED, UPGRADED = Phase

TRANSITIONS = {
    (IDLE, "data"): READING,
    (IDLE, "request"): WAITING,
    (READING, "request"): WAITING,
    (IDLE, "reject"): SENDING,
    (READING, "reject"): SENDING,
    (WAITING, "respond"): SENDING,
    (WAITING, "stream"): STREAMING,
    (STREAMING, "respond"): SENDING,
    (WAITING, "answered"): IDLE,
    (STREAMING, "answered"): IDLE,
    (SENDING, "answered"): IDLE,
    (WAITING, "linger"): LINGERING,
    (STREAMING, "linger"): LINGERING,
    (SENDING, "linger"): LINGERING,
    (WAITING, "upgrade"): UPGRADED,
    (UPGRADED, "respond"): SENDING,
    (UPGRADED, "linger"): LINGERING,
}
for _phase in Phase:
    TRANSITIONS[(_phase, "close")] = CLOSED


def advance(conn, event: str) -> Phase:
    """The only place a connection's phase changes; an illegal move is a bug."""
    new = TRANSITIONS.get((conn.phase, event))
    if new is None:
        raise MinirrError(f"connection {conn}: event {event!r} is not allowed in phase {conn.phase.name}")
    conn.phase = new
    return new


@dataclass(frozen=True)
class ConnectionLimits:
    """The limits of one listener's connections (0 disables one)."""
    header_timeout: float = 10.0       # s: request head, and the first request
    body_timeout: float = 30.0         # s: silence while reading a body or writing an answer
    keepalive_timeout: float = 5.0     # s: idle between requests
    min_body_rate: int = 0             # bytes/s a body must average once older than body_timeout
    min_send_rate: int = 0             # bytes/s a client must take once bytes wait longer than body_timeout
    pipeline_limit: int = 256 * 1024   # unparsed bytes a busy connection may hold before it is not read


class Expiry(NamedTuple):
    status: int                        # 408: answer, then close; 0: close without a word
    message: str


def expiry(conn, limits: ConnectionLimits, now: float) -> Optional[Expiry]:
    """Has `conn` outstayed a limit? (The table in the module docstring.) `conn` is read
    only: phase, its timestamps and counters, and its parser's position."""
    phase = conn.phase
    if phase is LINGERING:
        return Expiry(0, "lingered") if now >= conn.linger_until else None
    if conn.unsent:
        return _send_expiry(conn, limits, now)
    if phase is IDLE:
        limit = limits.keepalive_timeout if conn.served else limits.header_timeout
        if limit and now - conn.idle_since >= limit:
            return Expiry(0, "idle")
        return None
    if phase is READING:
        if conn.parser.reading_body:
            return _body_expiry(conn, limits, now)
        if limits.header_timeout and now - conn.idle_since >= limits.header_timeout:
            return Expiry(408, f"request header not complete within {limits.header_timeout:g}s")
    return None


def _body_expiry(conn, limits: ConnectionLimits, now: float) -> Optional[Expiry]:
    timeout = limits.body_timeout
    if not timeout:
        return None
    if now - conn.last_read_at >= timeout:
        return Expiry(408, f"no request body bytes for {timeout:g}s")
    elapsed = now - conn.body_started_at
    if limits.min_body_rate and elapsed >= timeout and conn.body_bytes < limits.min_body_rate * elapsed:
        return Expiry(408, f"request body arrived at {conn.body_bytes / elapsed:.0f} bytes/s, "
                           f"below min_body_rate ({limits.min_body_rate} bytes/s)")
    return None


def _send_expiry(conn, limits: ConnectionLimits, now: float) -> Optional[Expiry]:
    timeout = limits.body_timeout
    if not timeout:
        return None
    if now - conn.last_write_at >= timeout:
        return Expiry(0, f"response not read for {timeout:g}s")
    elapsed = now - conn.send_started_at
    if limits.min_send_rate and elapsed >= timeout and conn.sent_since < limits.min_send_rate * elapsed:
        return Expiry(0, f"response read at {conn.sent_since / elapsed:.0f} bytes/s, "
                         f"below min_send_rate ({limits.min_send_rate} bytes/s)")
    return None


# ---- a WebSocket's liveness (RFC 6455 §5.5.2, §7.1.1) ----------------------------------------
#
#     what                                        limit                 then
#     nothing read from the peer                  ping_interval         a ping
#     a ping not answered (nothing read since)    ping_timeout          close 1011, dropped
#     our close frame not answered                ping_timeout          dropped
#     frames we wrote not read by the peer        body_timeout          dropped (as an unread answer)
#
# Anything the peer sends counts as alive, not only a pong: a busy connection is never
# pinged. With ping_interval 0 nothing is pinged; an idle peer may then stay until it closes.

CLOSE_TIMEOUT_S = 5.0                  # our close frame's answer, when ping_timeout is 0


@dataclass(frozen=True)
class WebSocketLimits:
    """The limits of every WebSocket ([websocket] in rr.ini; 0 disables one)."""
    max_message_size: int = 1 << 20    # bytes of one message from a client (1009 beyond)
    ping_interval: float = 20.0        # s of silence from the peer before a ping
    ping_timeout: float = 20.0         # s for the pong (and for the answer to our close)
    body_timeout: float = 30.0         # s without write progress while frames wait unread


class WebSocketDue(NamedTuple):
    action: str                        # "ping", "fail" (close 1011, then drop) or "drop"
    message: str


def websocket_expiry(session, limits: WebSocketLimits, now: float) -> Optional[WebSocketDue]:
    """What a WebSocket's limits say now (the table above). `session` is read only: its
    `closing_since` and `ping_sent_at` (0: none), its connection's `last_read_at`,
    `last_write_at` and `unsent`."""
    conn = session.conn
    close_timeout = limits.ping_timeout or CLOSE_TIMEOUT_S
    if session.closing_since and now - session.closing_since >= close_timeout:
        return WebSocketDue("drop", f"the close frame was not answered within {close_timeout:g}s")
    if conn.unsent and limits.body_timeout and now - conn.last_write_at >= limits.body_timeout:
        return WebSocketDue("drop", f"frames not read for {limits.body_timeout:g}s")
    if session.ping_sent_at:
        if limits.ping_timeout and now - session.ping_sent_at >= limits.ping_timeout:
            return WebSocketDue("fail", f"no pong within ping_timeout ({limits.ping_timeout:g}s)")
        return None
    if limits.ping_interval and not session.closing_since and now - conn.last_read_at >= limits.ping_interval:
        return WebSocketDue("ping", "")
    return None
