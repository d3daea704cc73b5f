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
from typing import List, NamedTuple, Optional, Sequence

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
# A payload at least this large is gathered in one bytearray of its own size (see
# FrameDecoder.payload_buffer); smaller ones arrive in a read or two and are joined.
# (An anonymous mmap would commit memory only as it is written, but costs a page fault
# per 4 KB and an munmap per frame, where malloc reuses warm memory: with mmap, 5 MB
# bodies ran a third slower.)
LARGE_PAYLOAD_BYTES = 256 * 1024


class Frame(NamedTuple):
    flags: int
    payload: bytes                     # or a bytearray: a large payload gathered over several reads
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
    next frame (`_need`), so a frame that arrives in a few reads is copied once, and a
    small frame that arrives whole is not copied into a buffer at all.

    A large payload (LARGE_PAYLOAD_BYTES or more, e.g. a 5 MB upload) is gathered in a
    bytearray of exactly its size, which becomes the Frame's payload.
    The caller may read straight into it, the way asyncio's BufferedProtocol does:

        view = decoder.payload_buffer()          # None unless a large payload is arriving
        if view is not None:
            frames = decoder.payload_received(os.readv(fd, [view]))
        else:
            frames = decoder.feed(os.read(fd, 65536))

    so its bytes are copied by the kernel and by nothing else. (feed() works too, at the
    cost of one copy.)

    Raises FrameError on a bad version, header length, CRC or an oversized payload; the
    channel is broken after that and the decoder must not be fed again.
    """

    def __init__(self, max_payload_bytes: int = 1 << 31) -> None:
        self.max_payload_bytes = max_payload_bytes
        self._chunks: List[bytes] = []
        self._have = 0                  # bytes in _chunks
        self._need = HEADER_SIZE        # bytes needed before the next frame can progress
        self._large: Optional[Frame] = None   # a large frame in progress; payload is its buffer
        self._filled = 0                # bytes of the large payload received so far

    @property
    def buffered(self) -> bytes:
        """What has been fed but not yet decoded (for diagnostics)."""
        return b"".join(self._chunks)

    def payload_buffer(self) -> Optional[memoryview]:
        """The part of a large payload still to come, to read into; None if none is arriving."""
        if self._large is None:
            return None
        return memoryview(self._large.payload)[self._filled:]

    def payload_received(self, nbytes: int) -> List[Frame]:
        """`nbytes` were written into payload_buffer(): -> [the frame] once it is complete."""
        large = self._large
        self._filled += nbytes
        if self._filled < len(large.payload):
            return []
        self._large = None
        return [large]

    def feed(self, data: bytes) -> List[Frame]:
        if self._large is not None:            # a large payload in progress: copy into it
            view = self.payload_buffer()
            take = min(len(view), len(data))
            view[:take] = memoryview(data)[:take]
            done = self.payload_received(take)
            return done + self.feed(data[take:]) if done and take < len(data) else done
        chunks = self._chunks
        if chunks:                             # a frame in progress: join once it can complete
            chunks.append(data)
            self._have += len(data)
            if self._have < self._need:
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
            words = (first & 0x0F) - 3
            if end > size and (length < LARGE_PAYLOAD_BYTES or start > size):
                # Wait for the whole frame, then join once (or, for a large one, for its
                # option words, then gather its payload in place).
                need = (end if length < LARGE_PAYLOAD_BYTES else start) - pos
                break
            options = _OPTIONS[words].unpack_from(data, pos + HEADER_SIZE) if words else ()
            if end > size:                     # a large payload has begun: gather it in place
                self._start_large(Frame(flags, bytearray(length), options, stream), data[start:])
                pos = size
                break
            frames.append(Frame(flags, data[start:end], options, stream))
            pos = end
        if pos == size:                        # the usual case: whole frames, nothing left over
            self._chunks = []
            self._have = 0
            self._need = HEADER_SIZE
            return frames
        rest = data[pos:] if pos else data
        self._chunks = [rest]
        self._have = len(rest)
        self._need = need
        return frames

    def _start_large(self, large: Frame, first_bytes: bytes) -> None:
        large.payload[:len(first_bytes)] = first_bytes
        self._large = large
        self._filled = len(first_bytes)

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
