"""Goridge v3 frames: the envelope of every message between master and worker.

Owns: the 12-byte header layout, its CRC, option words, the incremental decoder.
Never: touches a file descriptor, a clock or a process. Bytes in, frames out.

Layout (all integers little-endian; see shared/reference/wire-protocol.md §1):

    offset  size  field
    0       1     version (high nibble, = 1) | header length in 32-bit words (low nibble)
    1       1     flags (CONTROL, CODEC_*, ERROR)
    2       4     payload length (options not counted)
    6       4     CRC32 of bytes 0..5 only
    10      1     stream byte (STREAM, STOP, PING, PONG)
    11      1     reserved, 0
    12      4*n   n option words (n <= 10)
    12+4n   len   payload

The decoder is incremental because a pipe read returns an arbitrary slice of the
stream: half a header, or three frames at once.
"""

from __future__ import annotations

import struct
import zlib
from typing import List, NamedTuple, Sequence

from .errors import FrameError

VERSION = 1
HEADER_SIZE = 12
MAX_OPTIONS = 10

# flags (byte 1)
CONTROL = 0x01
CODEC_RAW = 0x04
CODEC_JSON = 0x08
CODEC_MSGPACK = 0x10
CODEC_GOB = 0x20
ERROR = 0x40
CODEC_PROTO = 0x80

# stream byte (byte 10)
STREAM = 0x01
STOP = 0x02
PING = 0x04
PONG = 0x08

_HEAD = struct.Struct("<BBI")  # version|hl, flags, length: the bytes the CRC covers
# CRC, stream byte, reserved byte, then n option words: one Struct per option count.
_TAILS = [struct.Struct(f"<IBB{n}I") for n in range(MAX_OPTIONS + 1)]
_OPTIONS = [struct.Struct(f"<{n}I") for n in range(MAX_OPTIONS + 1)]
_FIXED = struct.Struct("<BBIIB")    # the fixed part a decoder reads: bytes 0..10
_VALID_FIRST = frozenset((VERSION << 4) | words for words in range(3, 4 + MAX_OPTIONS))  # byte 0


class Frame(NamedTuple):
    flags: int
    payload: bytes
    options: tuple = ()
    stream: int = 0


def encode_header(flags: int, payload_len: int, options: Sequence[int] = (), stream: int = 0) -> bytes:
    """Return the header (with options) of a frame whose payload is `payload_len` bytes."""
    if len(options) > MAX_OPTIONS:
        raise FrameError(f"a frame carries at most {MAX_OPTIONS} options, not {len(options)}")
    head = _HEAD.pack((VERSION << 4) | (3 + len(options)), flags, payload_len)
    return head + _TAILS[len(options)].pack(zlib.crc32(head), stream, 0, *options)


def encode(flags: int, payload: bytes = b"", options: Sequence[int] = (), stream: int = 0) -> bytes:
    """Return one whole frame. Write it with one write: some peers read the header in one go."""
    return encode_header(flags, len(payload), options, stream) + payload


class FrameDecoder:
    """Incremental decoder: `feed(bytes)` returns the frames completed by those bytes.

    Reads are kept as a list of chunks and joined only once enough bytes are in for the
    next frame (`_need`), so a 5 MB payload arriving in 64 KB reads is copied once, not
    once per read, and a small frame that arrives whole is not copied into a buffer at all.

    Raises FrameError on a bad version, header length, CRC or an oversized payload; the
    channel is broken after that and the decoder must not be fed again.
    """

    def __init__(self, max_payload_bytes: int = 1 << 31) -> None:
        self.max_payload_bytes = max_payload_bytes
        self._chunks: List[bytes] = []
        self._have = 0                  # bytes in _chunks
        self._need = HEADER_SIZE        # bytes needed before the next frame can progress
        self.missing = HEADER_SIZE      # _need - _have: a hint for the next read's size

    @property
    def buffered(self) -> bytes:
        """What has been fed but not yet decoded (for diagnostics)."""
        return b"".join(self._chunks)

    def feed(self, data: bytes) -> List[Frame]:
        chunks = self._chunks
        if chunks:                             # a frame in progress: join once it can complete
            chunks.append(data)
            self._have += len(data)
            if self._have < self._need:
                self.missing = self._need - self._have
                return []
            data = b"".join(chunks)
        frames = []
        pos = 0
        size = len(data)
        need = HEADER_SIZE
        while size - pos >= HEADER_SIZE:
            first, flags, length, crc, stream = _FIXED.unpack_from(data, pos)
            if crc != zlib.crc32(data[pos:pos + 6]) or first not in _VALID_FIRST or length > self.max_payload_bytes:
                self._chunks = [data[pos:]]    # kept for `buffered`: what broke the channel
                self._refuse(data, pos, first, length, crc)
            start = pos + 4 * (first & 0x0F)   # the header is 3 words plus one per option
            end = start + length
            if end > size:
                need = end - pos               # wait for the whole frame, then join once
                break
            words = (first & 0x0F) - 3
            options = _OPTIONS[words].unpack_from(data, pos + HEADER_SIZE) if words else ()
            frames.append(Frame(flags, data[start:end], options, stream))
            pos = end
        if pos == size:                        # the usual case: whole frames, nothing left over
            self._chunks = []
            self._have = 0
            self._need = self.missing = HEADER_SIZE
            return frames
        rest = data[pos:] if pos else data
        self._chunks = [rest]
        self._have = len(rest)
        self._need = need
        self.missing = max(0, need - len(rest))
        return frames

    def _refuse(self, buf: bytes, pos: int, first: int, length: int, crc: int) -> None:
        """Raise the FrameError that says what is wrong with the header at `pos`."""
        if crc != zlib.crc32(buf[pos:pos + 6]):
            raise FrameError(f"frame header CRC mismatch (got {buf[pos:pos + HEADER_SIZE].hex(' ')})")
        if first >> 4 != VERSION:
            raise FrameError(f"frame version {first >> 4}, expected {VERSION}")
        words = first & 0x0F
        if words < 3 or words - 3 > MAX_OPTIONS:
            raise FrameError(f"frame header length {words} words is out of range 3..{3 + MAX_OPTIONS}")
        raise FrameError(f"frame payload {length} bytes exceeds {self.max_payload_bytes}")
