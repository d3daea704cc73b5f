"""WebSocket events between the master and an async worker, on the multiplexed wire
(docs/external-workers.md, WebSockets) (no I/O).

Owns: the handshake key a worker offers them with (`"websocket": 1`, beside `"ids"`), the
      stream bit that marks their frames (frame.WEBSOCKET), the event kinds carried as a
      frame's first option, the JSON payloads of accept, close and disconnect (built, and
      read back checked: neither side trusts the other's bytes), and the limits of the
      wire (`PIECE_BYTES`, `WINDOW_BYTES`).
Never: reads or writes a descriptor, or speaks RFC 6455: the master holds the client's
       socket and its frames (http/websocket.py, master/websocket.py); the worker sees
       only these events (worker/websocket.py).

    master                                               worker (offered "websocket": 1)
      |-- WEBSOCKET [CONNECT, 7] request head ------------->|  websocket.connect
      |<-------------- WEBSOCKET [ACCEPT, 7] {"subprotocol"} -|  websocket.accept: the master sends the 101
      |-- WEBSOCKET [TEXT, 7] "hello" --------------------->|  websocket.receive (a whole message)
      |<------------------------- CREDIT [5, 7] ------------|  the app took 5 bytes: read on
      |<------------------------- WEBSOCKET [TEXT, 7] "hi" -|  websocket.send (pieces of PIECE_BYTES,
      |-- CREDIT [2, 7] ----------------------------------->|    MORE on all but the last)
      |<------------- WEBSOCKET [CLOSE, 7] {"code": 1000} --|  websocket.close
      |-- WEBSOCKET [DISCONNECT, 7] {"code": 1000} -------->|  websocket.disconnect
      |<--------------------------------- JSON [0, 7] -------|  the final frame: id 7 is free
"""

from __future__ import annotations

import json
from typing import List, Optional, Tuple

from ..errors import FrameError
from . import frame
from .frame import CODEC_JSON, CODEC_RAW, WEBSOCKET

OFFER_KEY = "websocket"          # the worker's handshake answer: {"pid", "ids": N, "websocket": 1}

# Event kinds: a WEBSOCKET frame's first option (its second is the request id).
CONNECT = 1                      # master -> worker: the request head; the app gets websocket.connect
ACCEPT = 2                       # worker -> master: {"subprotocol": str|null, "headers": [[name, value]]}
TEXT = 3                         # both ways: a message (a piece of one from the worker), UTF-8
BINARY = 4                       # both ways: a message (a piece of one from the worker)
CLOSE = 5                        # worker -> master: {"code": int, "reason": str}, the app's websocket.close
DISCONNECT = 6                   # master -> worker: {"code": int, "reason": str}, the connection is over
MORE = 0x100                     # on TEXT and BINARY from the worker: more pieces of this message follow
KIND_NAMES = {CONNECT: "CONNECT", ACCEPT: "ACCEPT", TEXT: "TEXT", BINARY: "BINARY", CLOSE: "CLOSE",
              DISCONNECT: "DISCONNECT"}

# A worker's piece of a message is at most this long: each piece becomes one WebSocket
# frame (a fragment, §5.4), and stays well below frame.LARGE_PAYLOAD_BYTES, so the master
# never holds a piece in parts. A longer one is a broken channel.
PIECE_BYTES = 64 * 1024
# Each way, at most this many bytes of one connection's messages are sent and not credited
# back (CREDIT [n, id]): the worker credits what the app has received, the master what has
# left it for the client. A fast client with a slow app stops being read; a slow client
# makes the app's send() wait.
WINDOW_BYTES = frame.STREAM_WINDOW_BYTES
CREDIT_BATCH_BYTES = 64 * 1024   # credit is given back in batches this large (or at a drain)


def offered(hello: object) -> bool:
    """Did a worker's handshake answer offer WebSocket events? (It needs request ids too.)"""
    return isinstance(hello, dict) and type(hello.get(OFFER_KEY)) is int and hello[OFFER_KEY] == 1


def event_frame(kind: int, request_id: int, payload: bytes = b"") -> bytes:
    """A WEBSOCKET frame: options [kind, id]; JSON for the control kinds, raw bytes for messages."""
    flags = CODEC_RAW if kind & 0xFF in (TEXT, BINARY) else CODEC_JSON
    return frame.encode(flags, payload, (kind, request_id), WEBSOCKET)


def event_header(kind: int, request_id: int, length: int) -> bytes:
    """The header of a WEBSOCKET frame whose `length`-byte payload is written after it."""
    flags = CODEC_RAW if kind & 0xFF in (TEXT, BINARY) else CODEC_JSON
    return frame.encode_header(flags, length, (kind, request_id), WEBSOCKET)


def accept_payload(subprotocol: Optional[str], headers: List[Tuple[str, str]]) -> bytes:
    return json.dumps({"subprotocol": subprotocol, "headers": [list(pair) for pair in headers]}).encode()


def read_accept(payload: bytes) -> Tuple[Optional[str], List[Tuple[str, str]]]:
    """An ACCEPT's payload -> (subprotocol, header pairs); FrameError if it has another shape."""
    obj = _json_object(payload, "ACCEPT")
    subprotocol = obj.get("subprotocol")
    headers = obj.get("headers") or []
    if subprotocol is not None and not isinstance(subprotocol, str):
        raise FrameError("a WebSocket ACCEPT whose subprotocol is not a string")
    if not isinstance(headers, list) or not all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(part, str) for part in pair)
            for pair in headers):
        raise FrameError("a WebSocket ACCEPT whose headers are not [[name, value], ...] strings")
    return subprotocol, [(name, value) for name, value in headers]


def close_payload(code: int, reason: str = "") -> bytes:
    return json.dumps({"code": code, "reason": reason}).encode()


def read_close(payload: bytes, what: str) -> Tuple[int, str]:
    """A CLOSE's or DISCONNECT's payload -> (code, reason); FrameError if it has another shape."""
    obj = _json_object(payload, what)
    code, reason = obj.get("code", 1000), obj.get("reason") or ""
    if type(code) is not int or not isinstance(reason, str):
        raise FrameError(f"a WebSocket {what} whose code is not a whole number or reason not a string")
    return code, reason


def _json_object(payload: bytes, what: str) -> dict:
    try:
        obj = json.loads(bytes(payload).decode("utf-8"))
    except (ValueError, RecursionError):
        obj = None
    if not isinstance(obj, dict):
        raise FrameError(f"a WebSocket {what} whose payload is not a JSON object")
    return obj
