"""A worker's reply to one job, read frame by frame into reply events (no I/O).

Owns: what the frames a worker sends for a job mean — the usual answer in one frame; a
      stream of frames (STREAM); a frame too large to hold, its JSON head collected and its
      body passed on in parts; a soft error (ERROR); a request to be recycled (a head of
      `{"stop": true}`) — and the translation of the worker's JSON head into HTTP, checked
      and remembered (`ReplyHead`, `ReplyHeads`). Per job it keeps a `ReplyState` (in
      `job.reply`), made only when an answer does not come in one frame.
Never: writes to a client or a pipe, or decides what an event does to the job or the
       worker: `read()` returns an event, jobs.py applies it to the job, the backend to
       the worker (h11's `next_event()`: bytes in, events out, nothing called).

    one frame, no STREAM ──────────────────────────────> WHOLE(head, body)      final
    STREAM frame ──> BEGIN(head, its Content-Length, body) ──> BODY ... ──> END   final
    FrameStart (large) ──> (head collected) ──> BEGIN(head, length, first) ──> BODY ... ──> END
    ERROR frame ──> SOFT_ERROR(message)                                         final
    head {"stop": true} ──> RECYCLE                                              final
    a head that is not a JSON object ──> BROKEN(why)   (the channel can no longer be trusted)
    a head the app got wrong (CR LF in a header) ──> APP_ERROR(why)   the job's 500; the channel is
                                                       fine (a stream's later frames are read as usual)

An event is a tuple `(kind, head, data)`; `data` is bytes (a body piece) or str (why, or
the soft error's message). The wire is RoadRunner's (docs/external-workers.md, What a
worker must do, and Streamed responses): the first frame's head gives status and headers;
later pieces of a stream repeat it or carry none.
"""

from __future__ import annotations

import re
from typing import List, NamedTuple, Optional, Tuple

from ..http.responses import response_head
from ..wire import frame
from ..wire.frame import ERROR, STREAM, Frame, FrameStart, printable
from ..wire.heads import FAST, HeadCache, HeadSyntaxError, decode_response_head

MAX_HEAD_BYTES = frame.LARGE_PAYLOAD_BYTES   # a response frame's JSON head may be at most this long
SOFT_ERROR_MESSAGE_BYTES = 200               # of a soft error's message, this much is logged
_DIGITS_RE = re.compile(r"[0-9]{1,18}")


# The kinds of reply event (the first element of each event). FINAL ones end the job's
# reply: the worker is done with it.
WHOLE = "whole"              # (head, body): the whole answer in one frame
BEGIN = "begin"              # (head, first piece): the answer's head (head.content_length frames it)
BODY = "body"                # (None, piece): more of the body
END = "end"                  # (None, last piece): the body is complete
SOFT_ERROR = "soft_error"    # (None, message): the handler raised; the client gets 500
RECYCLE = "recycle"          # the worker asks to be recycled instead of answering
APP_ERROR = "app_error"      # (None, why): the app's head is not valid HTTP: 500, the worker is fine
BROKEN = "broken"            # (None, why): the frames break the protocol: the channel is broken
NOTHING = "nothing"          # a piece of a large frame's head, or of an ERROR message: wait for more
FINAL = frozenset((WHOLE, END, SOFT_ERROR, RECYCLE, BROKEN))   # and APP_ERROR unless pending(job)


class ReplyHead(NamedTuple):
    """A worker's JSON head as HTTP: status, the status line and the app's header lines
    (http.responses.response_head), and the app's own Content-Length if it gave one."""
    status: int                        # 0: the worker asks to be recycled instead
    http: bytes
    content_length: Optional[int]


STOP_HEAD = ReplyHead(0, b"", None)


def read_reply_head(head_json: bytes) -> ReplyHead:
    """A worker's JSON head -> ReplyHead. Raises HeadSyntaxError when it is not a JSON
    object at all (the worker's side of the channel is at fault), ValueError when it is
    one but its status or headers are wrong (a status outside 200..599, a header name
    that is not a token, a value with CR or LF, two Content-Length values that differ):
    that is the app's mistake on this one request."""
    status, headers, stop = decode_response_head(head_json)
    if stop:
        return STOP_HEAD
    return ReplyHead(status, response_head(status, headers), _content_length(headers))


def _content_length(headers: List[Tuple[str, str]]) -> Optional[int]:
    values = {value.strip() for name, value in headers if name.lower() == "content-length"}
    if not values:
        return None
    if len(values) > 1 or _DIGITS_RE.fullmatch(next(iter(values))) is None:
        raise ValueError(f"response Content-Length {sorted(values)!r} is not one whole number")
    return int(values.pop())


class ReplyHeads(HeadCache):
    """The fast twin of read_reply_head (wire/heads.py, Plain code and fast twins): an app
    sends the same few heads over and over, so each distinct head is checked and turned
    into HTTP once. Bounded in number and in size, as a head that changes per response (a
    Set-Cookie) would otherwise grow it. Only valid heads are kept."""

    CACHE_SIZE = 256
    CACHE_MAX_BYTES = 4096

    def __init__(self) -> None:
        super().__init__(self.CACHE_SIZE, self.CACHE_MAX_BYTES)

    def read(self, head_json: bytes) -> ReplyHead:
        head = self.get(head_json)
        if head is None:
            head = self.keep(head_json, read_reply_head(head_json), len(head_json))
        return head


class ReplyState:
    """What the reader keeps of a job's reply between frames: made when an answer does not
    come in one small frame (a stream, or a frame too large to hold). reply.py's alone."""

    __slots__ = ("begun", "streams", "head_len", "head_buf", "frame_left", "frame_streams", "error_frame")

    def __init__(self) -> None:
        self.begun = False                 # the head has been read: later frames need none
        self.streams = False               # the worker sent a STREAM frame: it understands STOP
        self.head_len = 0                  # a large frame: its JSON head's length ...
        self.head_buf = bytearray()        # ... collected until complete
        self.frame_left = 0                # payload bytes of that frame still to come
        self.frame_streams = False         # that frame has the STREAM bit: more frames follow it
        self.error_frame = False           # that frame is an ERROR (a soft error, a long message)


class ReplyReader:
    """Frames of a job's reply in, reply events out. One per master (it holds the head
    cache); the per-job state lives in `job.reply`."""

    def __init__(self) -> None:
        # Heads already checked, by their JSON (the fast twin; empty with FAST off), and
        # how a head not among them is read.
        self.heads = ReplyHeads() if FAST else {}
        self.read_head = self.heads.read if FAST else read_reply_head

    def read(self, job, item) -> tuple:
        """One decoded item (Frame, FrameStart or FramePart) of `job`'s reply -> an event."""
        if type(item) is not Frame:
            return self._large_start(job, item) if type(item) is FrameStart else self._large_part(job, item)
        # ---- a whole frame: the usual case
        streams = item.stream & STREAM
        state = job.reply
        if streams:
            if state is None:
                state = job.reply = ReplyState()
            state.streams = True
        if item.flags & ERROR:
            return SOFT_ERROR, None, printable(item.payload[:SOFT_ERROR_MESSAGE_BYTES])
        begun = state is not None and state.begun
        # The first frame's head gives status and headers; a later piece of a stream may
        # repeat it (skipped) or carry none (docs/external-workers.md, Streamed responses).
        head_len = item.options[0] if item.options else (0 if begun else -1)
        if not 0 <= head_len <= len(item.payload):
            return BROKEN, None, "a response frame without its head length option"
        body = memoryview(item.payload)[head_len:]
        if begun:
            return (BODY if streams else END), None, body
        head_json = bytes(item.payload[:head_len])
        try:
            head = self.heads.get(head_json) or self.read_head(head_json)
        except HeadSyntaxError as exc:
            return BROKEN, None, f"an invalid response head: {exc}"
        except ValueError as exc:
            if streams:
                state.begun = True         # its later pieces are read (and dropped) as usual
            return APP_ERROR, None, str(exc)
        if not head.status:
            return (RECYCLE, None, "") if not streams and not body else (BROKEN, None, "a stop request with a body")
        if not streams:
            return WHOLE, head, body
        state.begun = True
        return BEGIN, head, body

    # ---- a frame too large to hold: its head collected, its body passed on in parts --------------
    def _large_start(self, job, start: FrameStart) -> tuple:
        state = job.reply
        if state is None:
            state = job.reply = ReplyState()
        head_len = start.options[0] if start.options else (0 if state.begun else -1)
        if start.flags & ERROR:
            head_len = 0                   # an error message: its first bytes are kept for the log
        elif not (0 if state.begun else 1) <= head_len <= min(start.length, MAX_HEAD_BYTES):
            return BROKEN, None, f"a response frame of {start.length} bytes with head length {head_len}"
        state.head_len = head_len
        state.head_buf = bytearray()
        state.frame_left = start.length
        state.frame_streams = bool(start.stream & STREAM)
        state.streams = state.streams or state.frame_streams
        state.error_frame = bool(start.flags & ERROR)
        return NOTHING, None, b""

    def _large_part(self, job, part) -> tuple:
        state: ReplyState = job.reply
        data = part.data
        state.frame_left -= len(data)
        if state.error_frame:
            if len(state.head_buf) < SOFT_ERROR_MESSAGE_BYTES:
                state.head_buf += data[:SOFT_ERROR_MESSAGE_BYTES - len(state.head_buf)]
            if part.last:
                return SOFT_ERROR, None, printable(bytes(state.head_buf))
            return NOTHING, None, b""
        if len(state.head_buf) < state.head_len:   # still inside the JSON head
            take = state.head_len - len(state.head_buf)
            state.head_buf += data[:take]
            data = data[take:]
            if len(state.head_buf) < state.head_len:
                return NOTHING, None, b""
            if not state.begun:
                return self._large_head(job, state, data, part.last)
        if part.last and not state.frame_streams:
            return END, None, data
        return BODY, None, data

    def _large_head(self, job, state: ReplyState, first, last: bool) -> tuple:
        """The head of a large frame is complete: the answer's head, with the frame's body
        length as Content-Length unless more frames follow."""
        try:
            head = self.read_head(bytes(state.head_buf))
        except HeadSyntaxError as exc:
            return BROKEN, None, f"an invalid response head: {exc}"
        except ValueError as exc:
            state.begun = True             # the rest of the frame (and stream) is read as usual
            return APP_ERROR, None, str(exc)
        if not head.status:
            return BROKEN, None, "a stop request with a body"
        state.begun = True
        if last and not state.frame_streams:
            return WHOLE, head, first
        if not state.frame_streams:        # one frame: its own length is the answer's Content-Length
            head = head._replace(content_length=state.frame_left + len(first))
        return BEGIN, head, first

    @staticmethod
    def streams(job) -> bool:
        """Has the worker shown that it streams this reply (so that it understands STOP)?"""
        return job.reply is not None and job.reply.streams


def pending(job) -> bool:
    """After an APP_ERROR: are more frames of this reply still to come (a stream, or the
    rest of a large frame)? Then the worker is not done with the job yet."""
    state = job.reply
    return state is not None and (state.streams or state.frame_left > 0)
