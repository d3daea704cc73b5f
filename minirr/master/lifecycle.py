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
    any ──close──> CLOSED                                   (CLOSED is terminal)

WAITING: a complete request is with the owner (queued for a worker, or at one).
STREAMING: the response head is out; the rest of the body is still coming from a worker.
SENDING: the whole answer is queued; the connection waits for the client to take it.

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
    CLOSED = "closed"


IDLE, READING, WAITING, STREAMING, SENDING, LINGERING, CLOSED = Phase

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
