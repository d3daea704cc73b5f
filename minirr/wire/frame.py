"""Goridge v3 frames: the envelope of every message between master and worker.

Owns: the 12-byte header layout, its CRC, option words, the incremental decoder.
Never: touches a file descriptor, a clock or a process. Bytes in, frames out.

Layout (all integers little-endian; see docs/external-workers.md, Frames):

    offset  size  field
    0       1     version (high nibble, = 1) | header length in 32-bit words (low nibble)
    1       1     flags (CONTROL, CODEC_*, ERROR)
    2       4     payload length (options not counted)
    6       4     CRC32 of bytes 0..5 only
    10      1     stream byte (STREAM, STOP, PING, PONG; CREDIT on the multiplexed wire)
    11      1     reserved, 0
    12      4*n   n option words (n <= 10)
    12+4n   len   payload

The decoder is incremental because a pipe read returns an arbitrary slice of the
stream: half a header, or three frames at once.
"""

from __future__ import annotations

import struct
import zlib
from typing import List, NamedTuple, Optional, Sequence, Union

from ..errors import FrameError

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
# The multiplexed wire only (wire/multiplex.py, docs/external-workers.md, Many requests at
# once): the master gives a request's stream back `n` bytes of its window, options [n, id].
# Goridge leaves this bit unused, so no classic peer ever sends or expects it.
CREDIT = 0x10
# The multiplexed wire with WebSocket events (wire/websocket.py): a frame of a WebSocket's
# life (connect, accept, a message, close, disconnect), options [kind, id]. Unused by Goridge too.
WEBSOCKET = 0x20

# With request ids, a worker may have at most this many bytes of one request's streamed
# body sent that the master has not credited back (CREDIT): a slow client holds up its own
# request only, and the master holds at most this much per request (both sides use it).
STREAM_WINDOW_BYTES = 1 << 20

FLAG_NAMES = ((CONTROL, "CONTROL"), (CODEC_RAW, "RAW"), (CODEC_JSON, "JSON"), (CODEC_MSGPACK, "MSGPACK"),
              (CODEC_GOB, "GOB"), (ERROR, "ERROR"), (CODEC_PROTO, "PROTO"))
STREAM_NAMES = ((STREAM, "STREAM"), (STOP, "STOP"), (PING, "PING"), (PONG, "PONG"), (CREDIT, "CREDIT"),
                (WEBSOCKET, "WEBSOCKET"))

_HEAD = struct.Struct("<BBI")  # version|hl, flags, length: the bytes the CRC covers
# CRC, stream byte, reserved byte, then n option words: one Struct per option count.
_TAILS = [struct.Struct(f"<IBB{n}I") for n in range(MAX_OPTIONS + 1)]
_OPTIONS = [struct.Struct(f"<{n}I") for n in range(MAX_OPTIONS + 1)]
_FIXED = struct.Struct("<BBIIB")    # the fixed part a decoder reads: bytes 0..10
_VALID_FIRST = frozenset((VERSION << 4) | words for words in range(3, 4 + MAX_OPTIONS))  # byte 0
# A payload at least this large is not joined from the reads that carry it: it is
# gathered in a buffer of its own size (a worker's request bodies), or handed on in
# parts as it arrives (a worker's responses, in the master). Smaller payloads arrive in
# a read or two and are joined once.
LARGE_PAYLOAD_BYTES = 256 * 1024

GATHER = "gather"   # large payloads: one bytearray of the frame's size, read into in place
PARTS = "parts"     # large payloads: FrameStart, then FramePart items as bytes arrive
JOIN = "join"       # every payload joined once complete (small, bounded frames only)


class Frame(NamedTuple):
    flags: int
    payload: bytes                     # or a bytearray: a large payload gathered over several reads
    options: tuple = ()
    stream: int = 0


class FrameStart(NamedTuple):
    """PARTS mode: a large frame has begun; its `length` payload bytes follow as FramePart items."""
    flags: int
    options: tuple
    stream: int
    length: int


class FramePart(NamedTuple):
    """PARTS mode: the next bytes of a large frame's payload; `last` on the final part."""
    data: bytes
    last: bool


Item = Union[Frame, FrameStart, FramePart]


def encode_header(flags: int, payload_len: int, options: Sequence[int] = (), stream: int = 0) -> bytes:
    """Return the header (with options) of a frame whose payload is `payload_len` bytes."""
    if len(options) > MAX_OPTIONS:
        raise FrameError(f"a frame carries at most {MAX_OPTIONS} options, not {len(options)}")
    head = _HEAD.pack((VERSION << 4) | (3 + len(options)), flags, payload_len)
    return head + _TAILS[len(options)].pack(zlib.crc32(head), stream, 0, *options)


def encode(flags: int, payload: bytes = b"", options: Sequence[int] = (), stream: int = 0) -> bytes:
    """Return one whole frame. Write it with one write: some peers read the header in one go."""
    return encode_header(flags, len(payload), options, stream) + payload


def names(value: int, table) -> str:
    """Flag bits as names, e.g. 'CONTROL|JSON' (for logs); '-' for none."""
    found = [name for bit, name in table if value & bit]
    return "|".join(found) or "-"


def describe(data: bytes) -> str:
    """A frame (or its first bytes) in words, for a reader watching the wire: version,
    flags and stream bits by name, payload length, whether the CRC checks, the options,
    the head (the first option's bytes of the payload, as text) and the body's length and
    first bytes. Never raises."""
    if len(data) < HEADER_SIZE:
        return f"{len(data)} bytes, not a whole frame header: {bytes(data)!r}"
    first, flags, length, crc, stream = _FIXED.unpack_from(data, 0)
    words = first & 0x0F
    crc_ok = "ok" if crc == zlib.crc32(bytes(data[:6])) else "BAD"
    count = max(0, min(words - 3, MAX_OPTIONS, (len(data) - HEADER_SIZE) // 4))
    options = list(_OPTIONS[count].unpack_from(data, HEADER_SIZE)) if count else []
    start = 4 * words
    payload = bytes(data[start:start + min(length, 4096)])
    head_len = options[0] if options and options[0] <= len(payload) else 0
    head = payload[:head_len].decode("utf-8", "replace")
    body = payload[head_len:]
    body_len = length - head_len
    text = (f"v{first >> 4} flags={names(flags, FLAG_NAMES)} stream={names(stream, STREAM_NAMES)} "
            f"length={length} crc={crc_ok} options={options}")
    if head:
        text += f" head={head[:300]}{'...' if len(head) > 300 else ''}"
    if body_len or not head:
        text += f" body={body_len} bytes {body[:40]!r}{'...' if body_len > 40 else ''}"
    return text


class FrameDecoder:
    """Incremental decoder: `feed(bytes)` returns the frames completed by those bytes.

    The loop in `feed` is the textbook one: while a whole header is buffered, check it;
    if its whole payload is there too, cut out a Frame; otherwise wait for more bytes.
    Reads are kept as a list and joined only once the next frame can complete, so a
    frame that arrives in a few reads is copied once.

    What happens to a payload of LARGE_PAYLOAD_BYTES or more depends on `large`:

    GATHER (the worker): one bytearray of exactly the payload's size becomes the Frame's
        payload. The caller may read straight into it, the way asyncio's BufferedProtocol
        does, so its bytes are copied by the kernel and by nothing else:

            view = decoder.payload_buffer()      # None unless a large payload is arriving
            if view is not None:
                frames = decoder.payload_received(os.readv(fd, [view]))
            else:
                frames = decoder.feed(os.read(fd, 65536))

        The announced size is allocated at once: only for a peer that is trusted (a
        worker trusts its master, which checked the request's size).
    PARTS (the master): a FrameStart, then FramePart items holding the bytes as they
        arrive; nothing is allocated for the frame as a whole, whatever it announces.
    JOIN: large payloads are joined like small ones (for a small `max_payload_bytes`).

    Raises FrameError on a bad version, header length, CRC or an oversized payload; the
    channel is broken after that and the decoder must not be fed again.
    """

    def __init__(self, max_payload_bytes: int = 1 << 31, large: str = GATHER) -> None:
        self.max_payload_bytes = max_payload_bytes
        self.large = large
        self._large_bytes = LARGE_PAYLOAD_BYTES if large != JOIN else max_payload_bytes + 1
        self._chunks: List[bytes] = []  # bytes fed but not yet decoded
        self.buffered_bytes = 0                  # bytes in _chunks
        self._need = HEADER_SIZE        # bytes needed before the next frame can progress
        self._gathering: Optional[Frame] = None   # GATHER: the frame whose payload is filling
        self._filled = 0                # GATHER: bytes of that payload received so far
        self.part_left = 0              # PARTS: payload bytes of the current large frame still to come

    @property
    def buffered(self) -> bytes:
        """What has been fed but not yet decoded (for diagnostics)."""
        return b"".join(self._chunks)

    @property
    def idle(self) -> bool:
        """Nothing is buffered and no frame is in progress: the stream is at a frame boundary."""
        return not self.buffered_bytes and self._gathering is None and not self.part_left

    def feed(self, data: bytes) -> List[Item]:
        items: List[Item] = []
        if self.part_left:
            data = self._continue_parts(data, items)
        elif self._gathering is not None:
            data = self._continue_gather(data, items)
        if not data:
            return items
        if self._chunks:                      # a frame in progress: join once it can complete
            self._chunks.append(data)
            self.buffered_bytes += len(data)
            if self.buffered_bytes < self._need:
                return items
            data = b"".join(self._chunks)
        pos = 0
        size = len(data)
        need = HEADER_SIZE
        while size - pos >= HEADER_SIZE:
            first, flags, length, crc, stream = _FIXED.unpack_from(data, pos)
            if crc != zlib.crc32(data[pos:pos + 6]) or first not in _VALID_FIRST or length > self.max_payload_bytes:
                self._chunks = [data[pos:]]   # kept for `buffered`: what broke the channel
                self._refuse(data, pos, first, length, crc)
            start = pos + 4 * (first & 0x0F)  # the header is 3 words plus one per option
            end = start + length
            if start > size:                  # wait for the option words
                need = start - pos
                break
            if end > size and length < self._large_bytes:
                need = end - pos              # wait for the whole frame, then join once
                break
            words = (first & 0x0F) - 3
            options = _OPTIONS[words].unpack_from(data, pos + HEADER_SIZE) if words else ()
            if length >= self._large_bytes:   # a large payload: gathered or handed on in parts
                pos = self._start_large(flags, options, stream, length, data, start, items)
                if pos < 0:
                    return items              # still arriving: later feeds carry it
                continue
            items.append(Frame(flags, data[start:end], options, stream))
            pos = end
        if pos == size:                       # the usual case: whole frames, nothing left over
            if self._chunks:
                self._chunks = []
                self.buffered_bytes = 0
                self._need = HEADER_SIZE
            return items
        self._keep(data, pos, need)
        return items

    def _keep(self, data: bytes, pos: int, need: int) -> None:
        """Remember what is left after the last whole frame."""
        rest = data[pos:] if pos else data
        self._chunks = [rest]
        self.buffered_bytes = len(rest)
        self._need = need

    def _start_large(self, flags: int, options: tuple, stream: int, length: int, data: bytes, start: int,
                     items: List[Item]) -> int:
        """A large payload begins at data[start:]: hand on or gather what is there. Returns
        where decoding goes on in `data`, or -1 when the payload needs more bytes."""
        self._chunks = []
        self.buffered_bytes = 0
        self._need = HEADER_SIZE
        if self.large == PARTS:
            items.append(FrameStart(flags, options, stream, length))
            self.part_left = length
            rest = self._continue_parts(data[start:], items)
        else:
            self._gathering = Frame(flags, bytearray(length), options, stream)
            self._filled = 0
            rest = self._continue_gather(data[start:], items)
        if self.part_left or self._gathering is not None:
            return -1
        return len(data) - len(rest)

    # ---- PARTS: a large payload handed on as it arrives ------------------------------
    def _continue_parts(self, data: bytes, items: List[Item]) -> bytes:
        """Hand on up to the rest of the current large payload; return what follows it."""
        take = min(len(data), self.part_left)
        if take:
            self.part_left -= take
            items.append(FramePart(data if take == len(data) else data[:take], not self.part_left))
        return data[take:] if take < len(data) else b""

    # ---- GATHER: a large payload collected in one buffer of its size -------------------
    def payload_buffer(self) -> Optional[memoryview]:
        """The part of a gathered payload still to come, to read into; None if none is arriving."""
        if self._gathering is None:
            return None
        return memoryview(self._gathering.payload)[self._filled:]

    def payload_received(self, nbytes: int) -> List[Frame]:
        """`nbytes` were written into payload_buffer(): -> [the frame] once it is complete."""
        gathering = self._gathering
        self._filled += nbytes
        if self._filled < len(gathering.payload):
            return []
        self._gathering = None
        return [gathering]

    def _continue_gather(self, data: bytes, items: List[Item]) -> bytes:
        """Copy up to the rest of the gathered payload from `data`; return what follows it."""
        view = self.payload_buffer()
        take = min(len(view), len(data))
        view[:take] = memoryview(data)[:take]
        items.extend(self.payload_received(take))
        return data[take:] if take < len(data) else b""

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


def printable(data: bytes) -> str:
    """Bytes from a peer, for a log line: latin-1, with anything unprintable shown as `.`."""
    text = bytes(data).decode("latin-1")
    return repr("".join(ch if 32 <= ord(ch) < 127 else "." for ch in text))
