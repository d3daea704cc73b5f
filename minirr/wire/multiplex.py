"""The multiplexed wire: many requests in flight on one worker's pipes, every frame naming
its request (docs/external-workers.md, Many requests at once).

Owns: the handshake key that asks for it (`"ids": N`); the request id, every frame's
      second option; what a frame from the master means (`classify`); the table of a
      worker's requests in flight and of the ids it ended last (`RequestTable`), so that a
      STOP or CREDIT that crossed a request's final frame is told apart from a frame for
      no request at all; one request's CREDIT window (`Window`); the frames the master
      sends (for its side, and for tests that play it).
Never: reads or writes a descriptor, reads a clock, or knows what a request or a response
       says (the JSON heads are messages.py's).

Workers that do not ask keep RoadRunner's one-request-at-a-time wire, byte for byte:

    master                                            worker (asks: "ids")
      |-- CONTROL|JSON {"pid": master} ----------------->|
      |<---------------- CONTROL {"pid": own, "ids": N} --|  up to N requests at once
      |-- JSON [head_len, 7] head‖body ------------------>|  request 7
      |-- JSON [head_len, 9] head‖body ------------------>|  request 9, while 7 runs
      |<---------------- JSON [head_len, 9] head‖body ----|  9 answered in one frame
      |<---------- JSON STREAM [head_len, 7] head‖piece --|  7 streams ...
      |-- CREDIT [n, 7] -------------------------------->|  ... n bytes of it left the master
      |-- STOP [0, 7] ---------------------------------->|  7's client left
      |<--------------------------------- JSON [0, 7] ----|  final frame: id 7 is free again

A master that does not know the key ignores it and sends frames with one option: the
worker then serves one request at a time on the classic wire (`is_multiplexed`).
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Deque, Dict, Generic, NamedTuple, Optional, Set, TypeVar

from ..errors import FrameError
from . import frame
from .frame import CODEC_JSON, CREDIT, PONG, STOP, STREAM_WINDOW_BYTES, WEBSOCKET, Frame

IDS_KEY = "ids"                  # the worker's handshake answer: {"pid": ..., "ids": N}
MAX_ID = 0xFFFFFFFF              # ids are u32 > 0; 0 means "no id" (the classic wire)


class Kind(enum.Enum):
    """What a frame from the master is."""
    CONTROL = "control"          # the handshake, or {"stop": true}: no id
    REQUEST = "request"          # options [head_len, id]: a new request
    STOP = "stop"                # stream STOP, options [0, id]: the request's client left
    CREDIT = "credit"            # stream CREDIT, options [n, id]: n bytes of its window back
    PONG = "pong"                # an answer to a PING; this worker sends none: ignored
    WEBSOCKET = "websocket"      # stream WEBSOCKET, options [kind, id]: a WebSocket event (wire/websocket.py)


class Incoming(NamedTuple):
    kind: Kind
    request_id: int              # 0 on the classic wire and for CONTROL
    value: int                   # CREDIT: the bytes credited; REQUEST: the head length; WEBSOCKET: its kind


def options(head_len: int, request_id: int) -> tuple:
    """A frame's options: `[head_len]` on the classic wire (request_id 0), else `[head_len, id]`."""
    return (head_len, request_id) if request_id else (head_len,)


def is_multiplexed(item: Frame) -> bool:
    """The first frame from the master after the handshake says which wire it speaks:
    two options (the id) or one."""
    return len(item.options) == 2


def classify(item: Frame, multiplexed: bool) -> Incoming:
    """What `item` (a frame from the master) is; FrameError for a frame that does not fit
    the wire in use: the channel is broken, and the worker must not guess."""
    if item.flags & frame.CONTROL:
        return Incoming(Kind.CONTROL, 0, 0)
    count = len(item.options)
    if multiplexed and count != 2:
        raise FrameError(f"a frame with {count} options on the multiplexed wire, where every frame carries "
                         f"[head_len, id] (stream={frame.names(item.stream, frame.STREAM_NAMES)})")
    if not multiplexed and count > 1:
        raise FrameError(f"a frame with {count} options on the classic wire, which carries at most one")
    request_id = item.options[1] if multiplexed else 0
    if multiplexed and request_id == 0:
        raise FrameError("a frame for request id 0: ids are 1 and up")
    first = item.options[0] if count else 0
    stream = item.stream
    if stream == 0:
        return Incoming(Kind.REQUEST, request_id, first)
    if stream == STOP:
        return Incoming(Kind.STOP, request_id, 0)
    if stream == CREDIT and multiplexed:
        return Incoming(Kind.CREDIT, request_id, first)
    if stream == PONG:
        return Incoming(Kind.PONG, request_id, 0)
    if stream == WEBSOCKET and multiplexed:
        return Incoming(Kind.WEBSOCKET, request_id, first)
    raise FrameError(f"a frame with stream bits {frame.names(stream, frame.STREAM_NAMES)}, which the master "
                     f"does not send{'' if multiplexed else ' on the classic wire'}")


V = TypeVar("V")


class RequestTable(Generic[V]):
    """A worker's requests in flight, by id (`limit` at most, the N of its handshake),
    and the last `limit` ids it ended.

    Why remember ended ids: the master may send STOP or CREDIT for a request just as the
    worker sends its final frame; the two cross in the pipes. Such a frame is for an id the
    worker ended, and means nothing. A frame for an id that is neither in flight nor ended
    lately is a broken channel. `limit` remembered ids are enough: between the worker's
    final frame for id x and its reading a STOP the master sent for x before it had read
    that frame, only requests that were in flight at the master then can end, at most
    limit - 1 of them besides x. An id the master uses again leaves the memory: the master
    only reuses an id after reading its final frame, so nothing more for the old one follows.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight: Dict[int, V] = {}
        self._ended: Deque[int] = deque()
        self._ended_ids: Set[int] = set()

    def begin(self, request_id: int, value: V) -> None:
        if request_id in self.in_flight:
            raise FrameError(f"a second request with id {request_id}, which is still in flight")
        if len(self.in_flight) >= self.limit:
            raise FrameError(f"request {request_id} would be request {len(self.in_flight) + 1} in flight; "
                             f"this worker takes {self.limit} at once")
        self._forget(request_id)
        self.in_flight[request_id] = value

    def end(self, request_id: int) -> None:
        """Its final frame is out: the id is free for the master to use again."""
        del self.in_flight[request_id]
        self._ended.append(request_id)
        self._ended_ids.add(request_id)
        while len(self._ended) > self.limit:
            self._ended_ids.discard(self._ended.popleft())

    def find(self, request_id: int, what: str) -> Optional[V]:
        """The request a STOP or CREDIT (`what`) is for; None if it ended lately (the frames
        crossed); FrameError if it is for no request at all."""
        value = self.in_flight.get(request_id)
        if value is not None:
            return value
        if request_id in self._ended_ids:
            return None
        raise FrameError(f"{what} for request id {request_id}, which is not in flight")

    def _forget(self, request_id: int) -> None:
        if request_id in self._ended_ids:
            self._ended_ids.discard(request_id)
            self._ended.remove(request_id)


class Window:
    """One request's CREDIT window: how much of its streamed body the worker may have sent
    that the master has not credited back. It starts full; each piece spends from it;
    each CREDIT gives bytes back once they have left the master for the client."""

    def __init__(self, size: int = STREAM_WINDOW_BYTES) -> None:
        self.size = size
        self.outstanding = 0             # bytes sent, not yet credited

    @property
    def room(self) -> int:
        return self.size - self.outstanding

    def spend(self, nbytes: int) -> None:
        if nbytes > self.room:
            raise ValueError(f"{nbytes} bytes do not fit the {self.room} left in the window")
        self.outstanding += nbytes

    def credit(self, nbytes: int) -> None:
        if nbytes > self.outstanding:
            raise FrameError(f"CREDIT of {nbytes} bytes, but only {self.outstanding} are sent and not credited")
        self.outstanding -= nbytes


# ---- the master's frames (its side of the wire; tests play it) ---------------------------

def request_frame(head: bytes, body: bytes, request_id: int) -> bytes:
    return frame.encode(CODEC_JSON, head + body, options(len(head), request_id))


def stop_frame(request_id: int) -> bytes:
    return frame.encode(0, b"", (0, request_id), STOP)


def credit_frame(nbytes: int, request_id: int) -> bytes:
    return frame.encode(0, b"", (nbytes, request_id), CREDIT)


def offered_ids(hello: object) -> int:
    """The N of a worker's handshake answer (a decoded JSON object), or 0: it did not ask
    (or asked for something that is not a whole number from 1 to MAX_ID)."""
    if not isinstance(hello, dict):
        return 0
    value = hello.get(IDS_KEY)
    if type(value) is not int or not 1 <= value <= MAX_ID:
        return 0
    return value
