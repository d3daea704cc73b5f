"""A chunked request body (RFC 9112 §7.1), read out of the parser's buffer. Sans-IO.

Owns: the chunked coding's own state machine: chunk-size lines, chunk data, the CRLF
after each chunk, the trailer section; and the limits that apply to them (the body size,
the chunk line length, the bytes of chunk extensions, framing against data), and the work
one read() may do (FRAMING_BYTES_PER_READ).
Never: touches a socket; knows about request heads, keep-alive or 100-continue
(http11.RequestParser does: while its state is CHUNKED it hands its buffer here, and
decides what to do when more bytes are needed). h11 splits its readers off the same way.

Tiny chunks are cheap to send and dear to read: `1\r\nX\r\n` is six bytes on the wire and
a few microseconds of Python here, so a megabyte of them is about a second of the master's
one thread. Two bounds; the second is how HTTP/2 servers meet a flood of tiny DATA frames:

    a read() stops after FRAMING_BYTES_PER_READ of framing (SPENT), and the caller lets
        other connections have their turn before it asks again;
    a body whose framing passes CHUNK_FRAMING_MIN_BYTES and is more than
        CHUNK_FRAMING_FACTOR times its data is refused (400).

    SIZE ──chunk_started──► DATA ──chunk_read──► END ──chunk_closed──► SIZE
     └──last_chunk──► TRAILERS ──trailers_complete──► DONE

    1a;ext=1\\r\\n  <26 bytes of data>  \\r\\n  0\\r\\n  Trailer: x\\r\\n  \\r\\n
    └── SIZE ───┘ └────── DATA ──────┘ └END┘ └SIZE┘ └───── TRAILERS ─────┘
"""

from __future__ import annotations

import enum
from typing import Callable, Dict, List, Tuple

from ..errors import ProtocolError
from .grammar import CHUNK_LINE_RE, MAX_CHUNK_DIGITS, check_trailer_section

# At most ~800 chunks a read(), a few milliseconds: other clients wait no longer than
# that for a sender of tiny chunks (every chunk has at least 5 bytes of framing).
FRAMING_BYTES_PER_READ = 4 * 1024
# Framing (size lines, extensions, the CRLF after each chunk) may exceed the data this many
# times over, once there is more than CHUNK_FRAMING_MIN_BYTES of it. 1: chunks must average
# about 5 bytes or more (a client that streams lines sends 20 and up); a body of a few
# tiny chunks stays well within the allowance.
CHUNK_FRAMING_FACTOR = 1
CHUNK_FRAMING_MIN_BYTES = 16 * 1024


class Read(enum.Enum):
    """What a read() came to."""
    COMPLETE = "the body and its trailer section are read"
    NEED_DATA = "more bytes are needed"
    SPENT = "FRAMING_BYTES_PER_READ of framing were read; bytes remain: read again later"

    __hash__ = object.__hash__


COMPLETE, NEED_DATA, SPENT = Read


class Chunk(str, enum.Enum):             # str: hashes in C (see master/pool.py, WorkerState)
    SIZE = "reading a chunk-size line"
    DATA = "reading chunk data"
    END = "reading the CRLF after chunk data"
    TRAILERS = "reading the trailer section"
    DONE = "the body and its trailer section are read"


TRANSITIONS: Dict[Tuple[Chunk, str], Chunk] = {
    (Chunk.SIZE, "chunk_started"): Chunk.DATA,
    (Chunk.SIZE, "last_chunk"): Chunk.TRAILERS,
    (Chunk.DATA, "chunk_read"): Chunk.END,
    (Chunk.END, "chunk_closed"): Chunk.SIZE,
    (Chunk.TRAILERS, "trailers_complete"): Chunk.DONE,
}


class ChunkedReader:
    """One chunked body. `limits` is an http11.RequestLimits; `scan` the parser's
    sections.SectionScan (its `search_at` mark, and the trailer section's limits, which
    share the header section's budget)."""

    __slots__ = ("_limits", "_scan", "state", "_left", "_size", "_ext_bytes", "_framing", "_spent")

    def __init__(self, limits, scan) -> None:
        self._limits = limits
        self._scan = scan
        self.state = Chunk.SIZE
        self._left = 0       # bytes of the current chunk still to come
        self._size = 0       # de-chunked bytes so far, against max_request_size
        self._ext_bytes = 0  # chunk-extension bytes so far
        self._framing = 0    # framing bytes so far (size lines and the CRLF after each chunk)
        self._spent = 0      # framing bytes read in this read()
        scan.start_section(request_line=False)

    def read(self, buf: bytearray, parts: List[bytes]) -> Read:
        """Take what `buf` holds of the body, up to FRAMING_BYTES_PER_READ of framing:
        chunk data is appended to `parts`, framing is deleted from `buf`. -> COMPLETE once
        the body and its trailers are read, NEED_DATA when more bytes are needed, SPENT when
        the budget ran out with bytes left in `buf`; raises ProtocolError."""
        self._spent = 0
        while self.state is not Chunk.DONE:
            if self._spent >= FRAMING_BYTES_PER_READ and buf:
                return SPENT
            if not _STEPS[self.state](self, buf, parts):
                return NEED_DATA
        return COMPLETE

    def _advance(self, event: str) -> None:
        try:
            self.state = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise RuntimeError(f"chunked body: no move for {event!r} in state {self.state.name}") from None

    # --- the steps: each returns True when it moved on, False when it needs bytes ----------

    def _step_size(self, buf: bytearray, parts: List[bytes]) -> bool:
        scan = self._scan
        nl = buf.find(b"\n", scan.search_at)
        if nl < 0:
            self._check_line_length(len(buf) - buf.endswith(b"\r"))
            scan.search_at = len(buf)
            return False
        has_cr = nl > 0 and buf[nl - 1] == 13
        self._check_line_length(nl - has_cr)
        if not has_cr:
            raise ProtocolError("bare LF after chunk size (RFC 9112 §7.1: lines end with CRLF)")
        match = CHUNK_LINE_RE.fullmatch(buf, 0, nl - 1)
        if match is None:
            raise ProtocolError("malformed chunk size line (RFC 9112 §7.1)")
        digits = match.group(1)
        if len(digits) > MAX_CHUNK_DIGITS:
            raise ProtocolError(f"chunk size has more than {MAX_CHUNK_DIGITS} hex digits")
        self._count_extensions(nl - 1 - len(digits))
        size = int(digits, 16)
        del buf[:nl + 1]
        scan.search_at = 0
        self._spent += nl + 1
        if size == 0:
            scan.start_section(request_line=False, trailers=True)
            self._advance("last_chunk")
            return True
        limit = self._limits.max_request_size
        if self._size + size > limit:
            raise ProtocolError(f"request body exceeds {limit} bytes", 413)
        self._size += size
        self._count_framing(nl + 3)          # this line, and the CRLF after the chunk's data
        self._left = size
        self._advance("chunk_started")
        return True

    def _check_line_length(self, length: int) -> None:
        limit = self._limits.limit_request_field_size
        if length > limit:
            raise ProtocolError(f"chunk size line exceeds {limit} bytes", 431)

    def _count_extensions(self, ext_bytes: int) -> None:
        """Extensions are tolerated and ignored (RFC 9112 §7.1.1), but bounded per request:
        each costs parsing time and carries no body bytes."""
        self._ext_bytes += ext_bytes
        limit = self._limits.limit_request_field_size
        if self._ext_bytes > limit:
            raise ProtocolError(f"chunk extensions exceed {limit} bytes", 431)

    def _count_framing(self, framing_bytes: int) -> None:
        self._framing += framing_bytes
        if self._framing > CHUNK_FRAMING_MIN_BYTES and self._framing > CHUNK_FRAMING_FACTOR * self._size:
            raise ProtocolError(f"chunk framing exceeds {CHUNK_FRAMING_FACTOR} times the body's data "
                                f"(past {CHUNK_FRAMING_MIN_BYTES} bytes): chunks too small")

    def _step_data(self, buf: bytearray, parts: List[bytes]) -> bool:
        if buf:
            take = min(len(buf), self._left)
            parts.append(bytes(memoryview(buf)[:take]))
            del buf[:take]
            self._left -= take
        if self._left:
            return False
        self._advance("chunk_read")
        return True

    def _step_end(self, buf: bytearray, parts: List[bytes]) -> bool:
        if buf[:2] == b"\r\n":
            del buf[:2]
            self._spent += 2
            self._advance("chunk_closed")
            return True
        if len(buf) >= 2 or buf[:1] not in (b"", b"\r"):
            raise ProtocolError("chunk data not followed by CRLF (RFC 9112 §7.1)")
        return False

    def _step_trailers(self, buf: bytearray, parts: List[bytes]) -> bool:
        if buf[:2] == b"\r\n":
            del buf[:2]  # no trailer fields: the last-chunk is followed by the final CRLF
            self._advance("trailers_complete")
            return True
        scan = self._scan
        end = buf.find(b"\r\n\r\n", scan.search_at)
        if end < 0:
            scan.check_partial(buf)
            scan.search_at = max(0, len(buf) - 3)
            return False
        scan.check_complete(buf, end)
        check_trailer_section(buf[:end].decode("latin-1"))
        del buf[:end + 4]  # trailers are checked, then discarded
        self._advance("trailers_complete")
        return True


_STEPS: Dict[Chunk, Callable[[ChunkedReader, bytearray, List[bytes]], bool]] = {
    Chunk.SIZE: ChunkedReader._step_size,
    Chunk.DATA: ChunkedReader._step_data,
    Chunk.END: ChunkedReader._step_end,
    Chunk.TRAILERS: ChunkedReader._step_trailers,
}
