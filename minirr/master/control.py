"""The control protocol: calls to a running master and its answers, as Goridge frames.

Owns: the wire format of the control socket (`[rpc] listen`), the list of methods and
      their answers' shape, and where a `listen` value points (unix path or tcp port).
Never: opens a socket or reads a clock. The master serves calls from its selector
       (endpoints.py, operations.py); the cli's blocking client is in remote.py.

Wire format, modelled on RoadRunner's goridge RPC codec (frame.py has the 12-byte header):

    call    flags = CODEC_JSON           options = (seq, len(method))
            payload = method ‖ JSON params                 e.g. b"stop" b'{"force":false}'
    answer  flags = CODEC_JSON [| ERROR]  options = (seq, len(method))
            payload = method ‖ JSON result                 ERROR: {"error": "message"}

`seq` is chosen by the caller and echoed, so answers can be matched to calls (a `reset`
is answered only when the reload has finished; other calls may be answered before it).

    method    params               result
    workers   {}                   {"pid": master pid, "workers": [row, ...]}
                                   row = {"id", "pid", "status", "execs", "memory_bytes",
                                          "cpu_percent", "created_at" (epoch s), "age_s"}
    reset     {}                   {"replaced": n, "seconds": s}   (when the reload is done)
    stop      {"force": bool}      {"pid": master pid, "force": bool}  (then the master exits)
"""

from __future__ import annotations

import collections
import json
import os
from typing import Deque, NamedTuple, Optional, Tuple, Union

from ..wire import frame
from ..errors import FrameError, MinirrError
from ..wire.frame import CODEC_JSON, ERROR
from ..http.parser import CLOSED, NEED_DATA   # CallParser's events are http11's: one connection class reads both

METHODS = ("workers", "reset", "stop")
MAX_PAYLOAD_BYTES = 1 << 20          # a workers table of thousands of rows still fits
UNIX_PATH_MAX_BYTES = 107            # sun_path is 108 bytes with the terminating NUL (unix(7))


class ControlError(MinirrError):
    """A control frame that does not follow the protocol, or an answer that is an error.
    `seq` is the call's sequence number when it is known (the error can be answered)."""

    def __init__(self, msg: str, seq: Optional[int] = None, broken: bool = False) -> None:
        super().__init__(msg)
        self.seq = seq
        self.broken = broken            # not even a frame: the stream cannot be answered


class Call(NamedTuple):
    seq: int
    method: str
    params: dict


class Answer(NamedTuple):
    seq: int
    method: str
    result: dict
    error: str          # "" unless the master answered with an error


# ---- calls and answers ------------------------------------------------------------------

def encode_call(seq: int, method: str, params: dict) -> bytes:
    return _encode(0, seq, method, params)


def encode_answer(seq: int, method: str, result: dict) -> bytes:
    return _encode(0, seq, method, result)


def encode_error(seq: int, method: str, message: str) -> bytes:
    return _encode(ERROR, seq, method, {"error": message})


def _encode(extra_flags: int, seq: int, method: str, body: dict) -> bytes:
    name = method.encode("utf-8")
    payload = name + json.dumps(body, separators=(",", ":")).encode("utf-8")
    return frame.encode(CODEC_JSON | extra_flags, payload, (seq, len(name)))


def decode_call(item: frame.Frame) -> Call:
    """A call frame -> Call. Raises ControlError; an unknown method is the server's to
    answer (it knows the seq), so it is not an error here."""
    seq, method, body = _split(item)
    return Call(seq, method, body)


def decode_answer(item: frame.Frame) -> Answer:
    seq, method, body = _split(item)
    if item.flags & ERROR:
        return Answer(seq, method, {}, str(body.get("error", "unknown error")))
    return Answer(seq, method, body, "")


def _split(item: frame.Frame) -> Tuple[int, str, dict]:
    if not item.flags & CODEC_JSON or len(item.options) != 2:
        raise ControlError("a control frame carries JSON and two options (seq, method length)")
    seq, name_len = item.options
    if name_len > len(item.payload):
        raise ControlError(f"method length {name_len} exceeds the payload ({len(item.payload)} bytes)", seq)
    try:
        method = item.payload[:name_len].decode("utf-8")
        body = json.loads(item.payload[name_len:] or b"{}")
    except (UnicodeDecodeError, ValueError) as exc:
        raise ControlError(f"control payload is not a method name and JSON: {exc}", seq) from None
    except RecursionError:
        raise ControlError("control payload JSON is nested too deeply", seq) from None
    if not isinstance(body, dict):
        raise ControlError("control payload JSON must be an object", seq)
    return seq, method, body


class CallParser:
    """Control-socket bytes in, Call events out: the same shape as http11's parser, so one
    connection class in the master serves both (receive_data, next_event,
    start_next_cycle). Events: a Call, NEED_DATA, or CLOSED once the peer has closed.

    A frame that is not a frame raises ControlError (the connection is broken); a frame
    that is not a valid call raises ControlError with the call's `seq` when it is known,
    so the server can answer it with an error.

    Frames are decoded as bytes arrive, so calls pipelined behind one still being answered
    (a `reset` waits for the whole reload) are held here, decoded; `buffered_bytes` counts
    their bytes as they came on the wire, so the connection's `pipeline_limit` bounds
    them in bytes, as it bounds an HTTP peer's (counted in calls, a peer could pile up
    thousands of calls of a megabyte each)."""

    def __init__(self) -> None:
        self._decoder = frame.FrameDecoder(MAX_PAYLOAD_BYTES, large=frame.JOIN)
        self._calls: Deque[frame.Frame] = collections.deque()
        self._calls_bytes = 0         # wire bytes of the frames in _calls
        self._eof = False
        self._broken: Optional[ControlError] = None

    def receive_data(self, data: bytes) -> None:
        if not data:
            self._eof = True
            return
        if self._broken is not None:
            return
        try:
            items = self._decoder.feed(data)
        except FrameError as exc:     # raised by next_event, after the calls before it
            self._broken = ControlError(f"broken frame: {exc}", broken=True)
            return
        for item in items:
            self._calls.append(item)
            self._calls_bytes += _wire_bytes(item)

    def next_event(self):
        if self._calls:
            item = self._calls.popleft()
            self._calls_bytes -= _wire_bytes(item)
            return decode_call(item)
        if self._broken is not None:
            raise self._broken
        return CLOSED if self._eof else NEED_DATA

    def start_next_cycle(self) -> None:
        """Calls are answered one at a time, like HTTP requests: nothing to reset."""

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet handed out as a Call: decoded frames waiting their
        turn, and the part of a frame still arriving."""
        return self._decoder.buffered_bytes + self._calls_bytes

    @property
    def reading_body(self) -> bool:
        return False

    @property
    def has_partial_request(self) -> bool:
        return not self._decoder.idle


def _wire_bytes(item: frame.Frame) -> int:
    """The size of `item` on the wire: the header, one word per option, the payload."""
    return frame.HEADER_SIZE + 4 * len(item.options) + len(item.payload)


# ---- where the control socket is ----------------------------------------------------------

class UnixAddress(NamedTuple):
    path: str

    def __str__(self) -> str:
        return f"unix:{self.path}"


class TCPAddress(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"tcp://{self.host}:{self.port}"


Address = Union[UnixAddress, TCPAddress]


def parse_listen(listen: str, base_dir: str) -> Address:
    """`unix:minirr.sock` (relative to the config file's folder) or `tcp://127.0.0.1:PORT`.
    The value was validated by config.parse_listen; raises ControlError for a unix path
    longer than the kernel accepts."""
    if listen.startswith("unix:"):
        path = os.path.normpath(os.path.join(base_dir, listen[len("unix:"):]))
        if len(os.fsencode(path)) > UNIX_PATH_MAX_BYTES:
            raise ControlError(f"control socket path {path} is longer than {UNIX_PATH_MAX_BYTES} bytes; "
                               f"set [rpc] listen to a shorter path")
        return UnixAddress(path)
    host, _, port = listen[len("tcp://"):].rpartition(":")
    return TCPAddress(host.strip("[]"), int(port))
