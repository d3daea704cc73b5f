"""Sans-IO HTTP/1.1, server side: request bytes in, Request events out.

Owns: the per-connection parser state machine: finding request heads and bodies in
the byte stream, message-body framing (Content-Length and chunked), the size limits,
the keep-alive decision, the 100-continue signal. A chunked body's own framing is
read by `chunked.ChunkedReader`, which this parser hands its buffer to.
Never: touches a socket, a clock or a process; percent-decodes the target; looks inside
bodies; writes responses (responses.py does: h11's split of readers and writers); knows
the server's address or which proxies it trusts (the frontend finishes each Request).
The syntax rules live in `grammar` (pure functions, called from here).

Theory of operation
-------------------
The server owns the socket. It hands every read to `receive_data()` (b"" = the peer
closed its side) and then calls `next_event()` until it gets NEED_DATA or PAUSED:

    bytes ──receive_data──► [ buffer ] ──next_event──► Request | CONTINUE | NEED_DATA | YIELD
                                                        | PAUSED | CLOSED | raises ProtocolError

YIELD bounds the work of one call: a chunked body of tiny chunks costs microseconds a
chunk, so after chunked.FRAMING_BYTES_PER_READ of framing next_event() stops with the rest
still buffered. The server lets its other connections have their turn, then asks again
(and reads nothing more from this peer meanwhile).

One RequestParser parses one request at a time. After handing out a Request it answers
PAUSED until the server calls `start_next_cycle()` (the response is fully sent), so
pipelined requests stay in the buffer and responses leave in request order.

    HEAD ──request_without_body──────────────────► PAUSED
     │ ──content_length──► BODY ──body_complete──────► ▲
     │ ──chunked──► CHUNKED ──body_complete────────────┘ (chunked.py reads the chunks)
     ▲                                                 │
     └──────────────────── next_cycle ◄────────────────┘
    any reading state --eof--> CLOSED;  PAUSED --close--> CLOSED (request said close)
    any reading state --error--> FAILED (poisoned: next_event raises the error again)

Speed: a request head normally arrives in one read. The head is found with one
`bytes.find(b"\\r\\n\\r\\n")`, decoded once, checked with two precompiled regexes and cut
with `str.split`; no Python loop runs per byte. While a head is incomplete, the parser
remembers how far it has searched and which lines it has already checked, so feeding a
request one byte at a time costs O(n), and the size limits are enforced while bytes
are still arriving.

Consistency: whatever way the bytes are split, the result is the same. Line-level
checks (bare LF, line lengths, field count, section size) run in stream order on the
partial head; syntax checks run on the complete head, after the line-level checks.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from .chunked import COMPLETE, SPENT, ChunkedReader
from ..errors import ProtocolError
from .grammar import (EMPTY_LINES_RE, HEAD_RE, SINGLE_VALUE_FIELDS, asks_to_close, check_host,
                      check_single_values, check_transfer_coding, content_length, head_error,
                      http_version, split_target)
from ..wire.messages import Request
from .sections import SectionScan


class _Sentinel:
    """A named marker object: `next_event() is NEED_DATA` reads well and prints well."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA = _Sentinel("NEED_DATA")  # feed more bytes (or b"" at EOF), then ask again
YIELD = _Sentinel("YIELD")          # a call's work is done, bytes remain: ask again after others' turn
PAUSED = _Sentinel("PAUSED")        # a Request is out; call start_next_cycle() after its response
CLOSED = _Sentinel("CLOSED")        # nothing more will come: close the connection
CONTINUE = _Sentinel("CONTINUE")    # send b"HTTP/1.1 100 Continue\r\n\r\n", then keep reading


@dataclass(frozen=True)
class RequestLimits:
    """Size limits; the numbers and the answers follow gunicorn's settings of the same name."""

    max_request_size: int = 10 * 1024 * 1024   # body bytes; larger -> 413
    limit_request_line: int = 8190             # request line longer -> 414
    limit_request_fields: int = 100            # more header (+ trailer) fields -> 431
    limit_request_field_size: int = 8190       # one field line (name: value) longer -> 431 (also chunk lines)
    limit_request_headers: int = 65536         # header (+ trailer) section larger -> 431


# --- the state table (STYLE.md §4) --------------------------------------------------

class State(str, enum.Enum):             # str: hashes in C (see master/pool.py, WorkerState)
    HEAD = "reading a request line and header section"
    BODY = "reading a Content-Length body"
    CHUNKED = "reading a chunked body and its trailers (chunked.ChunkedReader)"
    PAUSED = "a Request is out, waiting for start_next_cycle()"
    CLOSED = "done: the peer closed or the last request asked to close"
    FAILED = "poisoned by a protocol error"


_READING = (State.HEAD, State.BODY, State.CHUNKED)

TRANSITIONS: Dict[Tuple[State, str], State] = {
    (State.HEAD, "request_without_body"): State.PAUSED,
    (State.HEAD, "content_length"): State.BODY,
    (State.HEAD, "chunked"): State.CHUNKED,
    (State.BODY, "body_complete"): State.PAUSED,
    (State.CHUNKED, "body_complete"): State.PAUSED,
    (State.PAUSED, "next_cycle"): State.HEAD,
    (State.PAUSED, "close"): State.CLOSED,
    # terminal states absorb a late start_next_cycle() from the server
    (State.CLOSED, "next_cycle"): State.CLOSED,
    (State.FAILED, "next_cycle"): State.FAILED,
}
for _state in _READING:
    TRANSITIONS[(_state, "eof")] = State.CLOSED
    TRANSITIONS[(_state, "error")] = State.FAILED


def _advance(conn: "RequestParser", event: str) -> None:
    """The only place that changes `conn._state`; an illegal move is a bug in this module."""
    try:
        conn._state = TRANSITIONS[(conn._state, event)]
    except KeyError:
        raise RuntimeError(f"HTTP parser: no move for {event!r} in state {conn._state.name}") from None
    if conn._state is State.CLOSED or conn._state is State.FAILED:
        conn._buf.clear()  # nothing more will be parsed; don't hold the bytes


# Header fields the parser itself reads; everything else only goes to the application.
_PARSER_FIELDS = frozenset(("host", "content-length", "transfer-encoding", "connection", "expect", "upgrade"))
# ... and the fields it collects: those, and the single-value fields whose repeats it checks.
_SPECIAL_FIELDS = _PARSER_FIELDS | SINGLE_VALUE_FIELDS


class RequestParser:
    """The parser state of one client connection (see the module docstring).

    Public attributes: `keep_alive`, `close_requested`, `host` (the Host value, or
    None) and `upgrade` (the Upgrade values, or None) of the last Request returned. After a ProtocolError every later `next_event()` raises an equal
    ProtocolError again and received bytes are dropped; the server answers with
    `status` and closes.
    """

    def __init__(self, limits: RequestLimits) -> None:
        self._limits = limits
        # A head no longer than this cannot break a line or section limit: skip the
        # line-by-line limit walk for it (the common case).
        self._small_head = min(limits.limit_request_line, limits.limit_request_field_size,
                               limits.limit_request_headers)
        self._buf = bytearray()
        self._scan = SectionScan(limits)   # the head (and trailer) limits, as bytes arrive
        self._state = State.HEAD
        self._eof = False
        self._error: Optional[Tuple[str, int]] = None
        self.keep_alive = False
        self.host: Optional[str] = None
        self.upgrade: Optional[List[str]] = None   # the Upgrade values of the last Request (RFC 9110 §7.8)
        self._new_request()

    def _new_request(self) -> None:
        """Forget everything about the previous request."""
        self._request: Optional[Request] = None
        # The request itself asked to close (`Connection: close`, or HTTP/1.0 without
        # keep-alive; RFC 9112 §9.3). Unlike `keep_alive`, a peer that merely half-closed
        # does not count: its complete pipelined requests are still owed answers.
        self.close_requested = False
        self._expect_continue = False  # CONTINUE still owed (RFC 9110 §10.1.1)
        self._body_parts: List[bytes] = []
        self._body_left = 0            # bytes still owed by Content-Length
        self._chunks: Optional[ChunkedReader] = None  # the reader of a chunked body
        self._scan.new_request()

    # --- public API ------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the peer; b"" means it closed its sending side."""
        if self._state is State.FAILED or self._state is State.CLOSED:
            return  # nothing more will be parsed: keep nothing
        if not data:
            self._eof = True
            self.keep_alive = False
            return
        if self._eof:
            raise RuntimeError("receive_data() called with bytes after EOF")
        if self._state is State.BODY and not self._buf:
            # Body bytes of a Content-Length body go straight into the body: a large
            # upload is then copied once (the final join), not three times.
            take = min(len(data), self._body_left)
            self._body_parts.append(data if take == len(data) else data[:take])
            self._body_left -= take
            data = data[take:]
        self._buf += data

    def next_event(self):
        """-> Request | CONTINUE | NEED_DATA | YIELD | PAUSED | CLOSED; raises ProtocolError."""
        if self._error is not None:
            raise ProtocolError(*self._error)
        try:
            while True:
                event = _STEPS[self._state](self)
                if event is not None:
                    return event
        except ProtocolError as exc:
            self._error = (exc.msg, exc.status)
            _advance(self, "error")
            raise

    def start_next_cycle(self) -> None:
        """The response to the last Request is fully sent: parse the next one.

        RFC 9112 §9.6: after a request that asked to close, no further request on the
        connection is processed, so the connection goes to CLOSED instead."""
        _advance(self, "close" if self._state is State.PAUSED and self.close_requested else "next_cycle")
        self._new_request()

    @property
    def has_partial_request(self) -> bool:
        """Bytes of an incomplete request are buffered (408 rather than a silent close)."""
        if self._state is State.HEAD:
            return bool(self._buf.strip(b"\r\n"))
        return self._state in _READING

    @property
    def reading_body(self) -> bool:
        """The head of the current request is parsed, its body is not complete."""
        return self._state in _READING and self._state is not State.HEAD

    def take_buffered(self) -> bytes:
        """The bytes received after the last Request, handed over and forgotten: after a
        101 they belong to the protocol switched to (RFC 9110 §7.8), a WebSocket's first
        frames that came with the handshake."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet part of a returned Request (body bytes in progress
        are moved out of the buffer as they arrive, so this counts only framing lines
        and pipelined requests)."""
        return len(self._buf)

    # --- the request head (RFC 9112 §2-§5) --------------------------------------------

    def _step_head(self):
        buf = self._buf
        scan = self._scan
        if scan.line_at == 0 and buf[:1] == b"\r":
            # RFC 9112 §2.2: a server SHOULD ignore at least one empty line (CRLF)
            # received prior to the request-line. We drop any number of them.
            match = EMPTY_LINES_RE.match(buf)
            if match is not None:
                del buf[:match.end()]
                scan.search_at = 0
        end = buf.find(b"\r\n\r\n", scan.search_at)
        if end < 0:
            scan.check_partial(buf)
            if self._eof:
                _advance(self, "eof")
                return CLOSED
            scan.search_at = max(0, len(buf) - 3)
            return NEED_DATA
        if end + 4 > self._small_head:
            scan.check_complete(buf, end)
        return self._parse_head(end)

    def _parse_head(self, end: int):
        text = self._buf[:end].decode("latin-1")
        match = HEAD_RE.fullmatch(text)
        if match is None:
            self._scan.check_complete(self._buf, end)  # a limit broken first is reported first
            raise head_error(text)
        method, target, path, query, major, minor, fields = match.groups()
        lines = fields.split("\r\n") if fields is not None else []
        if len(lines) > self._limits.limit_request_fields:
            # A line-level limit, so it comes before the syntax checks, as it does when
            # the head arrives in pieces (a head this small skipped the line checks).
            raise ProtocolError(f"more than {self._limits.limit_request_fields} header fields", 431)
        protocol = http_version(major, minor)
        if path is None or method == "CONNECT":
            path, query = split_target(method, target)  # the other target forms, and their errors
        elif query is None:
            query = ""
        headers = []
        special: Dict[str, List[str]] = {}
        if lines:
            repeated = False
            for field_line in lines:
                name, _, value = field_line.partition(":")
                value = value.strip(" \t")  # RFC 9112 §5: OWS around the value is not part of it
                headers.append((name, value))
                lname = name.lower()
                if lname in _SPECIAL_FIELDS:
                    values = special.get(lname)
                    if values is None:
                        special[lname] = [value]
                    else:
                        values.append(value)
                        repeated = True
            if repeated:  # rare: only then look for single-value fields that disagree
                check_single_values(special)
            self._scan.fields_seen = len(lines)
        del self._buf[:end + 4]
        self._scan.section_used = end + 2 - match.end(6)
        return self._start_body(method, target, path, query, protocol, headers, special)

    def _start_body(self, method, target, path, query, protocol, headers, special):
        self.host = check_host(special.get("host"), protocol)
        self.upgrade = special.get("upgrade")     # (a WebSocket handshake is told by it: master/websocket.py)
        # The target URI (RFC 9112 §3.3) needs what only the server knows: its scheme (or a
        # trusted proxy's), its own address for a request without Host, and who the client
        # really is. So `uri` is the request-target as sent, and `remote_addr` is empty,
        # until the server fills them in (frontend.Frontend.on_request).
        self._request = Request(method, path, query, headers, b"", "", protocol, target)
        self.close_requested = asks_to_close(special.get("connection"), protocol)
        if "content-length" not in special and "transfer-encoding" not in special and "expect" not in special:
            return self._complete("request_without_body")  # no framing fields: the usual GET
        if protocol == "HTTP/1.1" and "expect" in special:
            # RFC 9110 §10.1.1; a 100-continue in an HTTP/1.0 request MUST be ignored.
            self._expect_continue = any(v.lower() == "100-continue" for v in special["expect"])
        codings = special.get("transfer-encoding")
        if codings is not None:
            check_transfer_coding(codings, protocol, "content-length" in special)
            self._chunks = ChunkedReader(self._limits, self._scan)
            _advance(self, "chunked")
            return None
        lengths = special.get("content-length")
        self._body_left = content_length(lengths, self._limits.max_request_size) if lengths else 0
        if self._body_left:
            _advance(self, "content_length")
            return None
        return self._complete("request_without_body")

    def _complete(self, event: str) -> Request:
        request = self._request
        if self._body_parts:
            request.body = b"".join(self._body_parts)
        self.keep_alive = not (self.close_requested or self._eof)
        _advance(self, event)
        return request

    # --- the message body (RFC 9112 §6) -----------------------------------------------

    def _wait_for_body(self):
        if self._eof:
            _advance(self, "eof")  # EOF inside a request: nothing to answer
            return CLOSED
        if self._expect_continue:
            self._expect_continue = False
            return CONTINUE
        return NEED_DATA

    def _step_body(self):
        buf = self._buf
        if buf:  # body bytes still in the buffer (receive_data moves most straight into the body)
            take = min(len(buf), self._body_left)
            self._body_parts.append(bytes(memoryview(buf)[:take]))
            del buf[:take]
            self._body_left -= take
        if self._body_left:
            return self._wait_for_body()
        return self._complete("body_complete")

    def _step_chunked(self):
        outcome = self._chunks.read(self._buf, self._body_parts)
        if outcome is COMPLETE:
            return self._complete("body_complete")
        if outcome is SPENT:
            return YIELD
        return self._wait_for_body()

    def _step_paused(self):
        return PAUSED

    def _step_closed(self):
        return CLOSED


# One step function per state; each returns an event, or None after moving to a state
# whose step should run at once.
_STEPS: Dict[State, Callable[[RequestParser], object]] = {
    State.HEAD: RequestParser._step_head,
    State.BODY: RequestParser._step_body,
    State.CHUNKED: RequestParser._step_chunked,
    State.PAUSED: RequestParser._step_paused,
    State.CLOSED: RequestParser._step_closed,
}
