"""A chunked request body (RFC 9112 §7.1), read out of the parser's buffer. Sans-IO.

Owns: the chunked coding's own state machine: chunk-size lines, chunk data, the CRLF
after each chunk, the trailer section; and the limits that apply to them (the body size,
the chunk line length, the bytes of chunk extensions).
Never: touches a socket; knows about request heads, keep-alive or 100-continue
(http11.RequestParser does: while its state is CHUNKED it hands its buffer here, and
decides what to do when more bytes are needed). h11 splits its readers off the same way.

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

    __slots__ = ("_limits", "_scan", "state", "_left", "_size", "_ext_bytes")

    def __init__(self, limits, scan) -> None:
        self._limits = limits
        self._scan = scan
        self.state = Chunk.SIZE
        self._left = 0       # bytes of the current chunk still to come
        self._size = 0       # de-chunked bytes so far, against max_request_size
        self._ext_bytes = 0  # chunk-extension bytes so far
        scan.start_section(request_line=False)

    def read(self, buf: bytearray, parts: List[bytes]) -> bool:
        """Take what `buf` holds of the body: chunk data is appended to `parts`, framing
        is deleted from `buf`. True once the body and its trailers are complete, False
        when more bytes are needed; raises ProtocolError."""
        while self.state is not Chunk.DONE:
            if not _STEPS[self.state](self, buf, parts):
                return False
        return True

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
        if size == 0:
            scan.start_section(request_line=False, trailers=True)
            self._advance("last_chunk")
            return True
        limit = self._limits.max_request_size
        if self._size + size > limit:
            raise ProtocolError(f"request body exceeds {limit} bytes", 413)
        self._size += size
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
