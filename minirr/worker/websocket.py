"""ASGI WebSockets inside an async worker: the scope, one connection's receive() and send(),
and the WebSocket events each becomes on the wire (wire/websocket.py).

Owns: a connect event's request as an ASGI WebSocket scope (the www spec, websocket
      connection scope); one connection's phases (one table, TRANSITIONS), what receive()
      returns and what each send() becomes; its windows: the master's credit for what the
      app sends, and the credit this worker gives back for what the app received.
Never: sees the client's socket or RFC 6455 frames (the master holds them and checks them
       whatever the app does), touches a descriptor (asyncloop.py's Outbox writes), or
       decides when a message is too large (the master's max_message_size).

    master: CONNECT ──> websocket.connect      app: websocket.accept ──> ACCEPT (the master answers 101)
            TEXT|BINARY ──> websocket.receive       websocket.send ──> TEXT|BINARY pieces
            DISCONNECT ──> websocket.disconnect     websocket.close ──> CLOSE (403 before accept)
            STOP ──> websocket.disconnect 1006      it returns ──> the final frame (ERROR if it raised)

The connection's phases:

    CONNECTING ──connected──> HANDSHAKE ──accept──> OPEN ──close──> CLOSED      (the app's close)
    HANDSHAKE ──close──> CLOSED                     (before accepting: the client gets 403)
    HANDSHAKE | OPEN | CONNECTING ──disconnect──> CLOSED                          (the client's end)

After CLOSED, receive() returns websocket.disconnect and send() raises ClientDisconnected
(an OSError, as ASGI www spec 2.4 says a server should).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import traceback
from collections import deque
from typing import Deque, Optional
from urllib.parse import unquote

from ..errors import ClientDisconnected, FrameError
from ..wire import frame, multiplex, websocket as wire
from ..wire.frame import CODEC_JSON, ERROR, CREDIT
from ..wire.messages import Request
from .asgi import ASGI_VERSION, response_headers, wire_bytes
from .load import describe_failure
from .wsgi import scheme_host_port

log = logging.getLogger("minirr.worker")

WEBSOCKET_SPEC_VERSION = "2.4"
MESSAGE_COST_BYTES = 64          # as master/websocket.py counts: each message costs this much of a window too
ERROR_MESSAGE_BYTES = 4096       # an app's failure, as sent to the master


def websocket_scope(request: Request, state: dict) -> dict:
    """The scope of one WebSocket (ASGI www spec, websocket connection scope)."""
    scheme, host, port = scheme_host_port(request.uri)
    offered = [item.strip() for name, value in request.headers if name.lower() == "sec-websocket-protocol"
               for item in value.split(",") if item.strip()]
    return {
        "type": "websocket",
        "asgi": {"version": ASGI_VERSION, "spec_version": WEBSOCKET_SPEC_VERSION},
        "http_version": request.protocol.partition("/")[2] or "1.1",
        "scheme": "wss" if scheme == "https" else "ws",
        "path": unquote(request.path),
        "raw_path": wire_bytes(request.path),
        "query_string": wire_bytes(request.query),
        "root_path": "",
        "headers": [(wire_bytes(name.lower()), wire_bytes(value)) for name, value in request.headers],
        "client": (request.remote_addr, 0) if request.remote_addr else None,
        "server": (host, int(port) if port.isdigit() else None),
        "subprotocols": offered,
        "state": dict(state),
    }


class SocketPhase(enum.Enum):
    CONNECTING = "before websocket.connect was received"
    HANDSHAKE = "before websocket.accept"
    OPEN = "while the WebSocket is open"
    CLOSED = "after the WebSocket closed"


TRANSITIONS = {
    (SocketPhase.CONNECTING, "connected"): SocketPhase.HANDSHAKE,
    (SocketPhase.HANDSHAKE, "accept"): SocketPhase.OPEN,
    (SocketPhase.HANDSHAKE, "close"): SocketPhase.CLOSED,
    (SocketPhase.OPEN, "close"): SocketPhase.CLOSED,
    (SocketPhase.CONNECTING, "disconnect"): SocketPhase.CLOSED,
    (SocketPhase.HANDSHAKE, "disconnect"): SocketPhase.CLOSED,
    (SocketPhase.OPEN, "disconnect"): SocketPhase.CLOSED,
}


class WebSocketCycle:
    """One WebSocket: its scope, receive() and send(), its frames (see the module docstring)."""

    def __init__(self, request: Request, state: dict, frames: "WebSocketFrames") -> None:
        self.request = request
        self.scope = websocket_scope(request, state)
        self.frames = frames
        self.phase = SocketPhase.CONNECTING
        self.inbox: Deque[dict] = deque()          # messages from the client, not received yet
        self.disconnect = {"type": "websocket.disconnect", "code": 1006, "reason": ""}
        self._arrived = asyncio.Event()

    @property
    def label(self) -> str:
        return f"WebSocket {self.request.path}"

    def _advance(self, event: str) -> bool:
        new = TRANSITIONS.get((self.phase, event))
        if new is None:
            return False
        self.phase = new
        return True

    # ---- what the app calls ------------------------------------------------------------------
    async def receive(self) -> dict:
        if self.phase is SocketPhase.CONNECTING:
            self._advance("connected")
            return {"type": "websocket.connect"}
        while not self.inbox and self.phase is not SocketPhase.CLOSED:
            self._arrived.clear()
            await self._arrived.wait()
        if self.inbox:
            message = self.inbox.popleft()
            self.frames.received(message)
            return message
        return dict(self.disconnect)

    async def send(self, message: dict) -> None:
        kind = message.get("type") if isinstance(message, dict) else None
        if self.phase is SocketPhase.CLOSED:
            raise ClientDisconnected(f"ASGI: {kind} on a WebSocket that is closed")
        if kind == "websocket.accept":
            self._accept(message)
        elif kind == "websocket.send":
            await self._send(message)
        elif kind == "websocket.close":
            self._close(message)
        else:
            raise RuntimeError(f"ASGI: unexpected message {kind!r} on a WebSocket (expected websocket.accept, "
                               f"websocket.send or websocket.close)")

    def _accept(self, message: dict) -> None:
        if self.phase is not SocketPhase.HANDSHAKE:
            raise RuntimeError(f"ASGI: websocket.accept {self.phase.value}")
        subprotocol = message.get("subprotocol")
        if subprotocol is not None and not isinstance(subprotocol, str):
            raise TypeError("ASGI: websocket.accept's subprotocol must be a str or None")
        headers = response_headers(message.get("headers") or ())
        self._advance("accept")
        self.frames.event(wire.ACCEPT, wire.accept_payload(subprotocol, headers))

    async def _send(self, message: dict) -> None:
        if self.phase is not SocketPhase.OPEN:
            raise RuntimeError(f"ASGI: websocket.send {self.phase.value}")
        data, text = message.get("bytes"), message.get("text")
        if data is not None and text is None:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"ASGI: websocket.send's bytes must be bytes, not {type(data).__name__}")
            await self.frames.message(wire.BINARY, bytes(data))
        elif text is not None and data is None:
            if not isinstance(text, str):
                raise TypeError(f"ASGI: websocket.send's text must be a str, not {type(text).__name__}")
            await self.frames.message(wire.TEXT, text.encode("utf-8"))
        else:
            raise RuntimeError("ASGI: websocket.send needs exactly one of bytes and text")

    def _close(self, message: dict) -> None:
        code = message.get("code", 1000)
        reason = message.get("reason") or ""
        if type(code) is not int:
            raise TypeError(f"ASGI: websocket.close's code must be an int, not {type(code).__name__}")
        if not isinstance(reason, str):
            reason = str(reason)         # FastAPI's validation errors (a list); the master cuts it to fit
        self._advance("close")
        self.disconnect = {"type": "websocket.disconnect", "code": code, "reason": reason}
        self._arrived.set()
        self.frames.event(wire.CLOSE, wire.close_payload(code, reason))

    # ---- what the worker calls --------------------------------------------------------------------
    def deliver(self, kind: int, payload: bytes) -> None:
        """An event from the master for this connection."""
        if kind == wire.TEXT or kind == wire.BINARY:
            if self.phase is not SocketPhase.OPEN:
                self.frames.received_bytes(len(payload) + MESSAGE_COST_BYTES)   # dropped: still credited
                return
            if kind == wire.TEXT:
                message = {"type": "websocket.receive", "text": bytes(payload).decode("utf-8")}
            else:
                message = {"type": "websocket.receive", "bytes": bytes(payload)}
            self.inbox.append(message)
            self._arrived.set()
        elif kind == wire.DISCONNECT:
            code, reason = wire.read_close(payload, "DISCONNECT")
            self.client_left(code, reason)
        else:
            raise FrameError(f"a WebSocket event of kind {kind} from the master")

    def client_left(self, code: int = 1006, reason: str = "") -> None:
        """The connection is over (DISCONNECT, or STOP: it dropped): receive() says so."""
        if self._advance("disconnect"):
            self.disconnect = {"type": "websocket.disconnect", "code": code, "reason": reason}
        self.frames.window_closed()
        self._arrived.set()

    async def run(self, app) -> None:
        """Call the app; however it ends, this connection's final frame is out after."""
        try:
            await app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            self.frames.fail("the WebSocket was cancelled: the worker is ending")
            raise
        except Exception as exc:
            if self.phase is SocketPhase.CLOSED and isinstance(exc, ClientDisconnected):
                self.frames.end()
                return
            log.error("%s failed %s:\n%s", self.label, self.phase.value, traceback.format_exc().rstrip())
            self.frames.fail(f"{type(exc).__name__}: {exc}"[:ERROR_MESSAGE_BYTES] or describe_failure(exc))
        else:
            self.frames.end()


class WebSocketFrames:
    """One WebSocket's frames (options [kind, id]), its window for what the app sends,
    the credit it owes the master for what the app received, and its final frame."""

    def __init__(self, worker, request_id: int) -> None:
        self.worker = worker
        self.request_id = request_id
        self.window = multiplex.Window(wire.WINDOW_BYTES)
        self.cycle: Optional[WebSocketCycle] = None
        self.ended = False
        self.owed = 0                        # received by the app, not credited to the master yet
        self._credited = asyncio.Event()
        self._sending = asyncio.Lock()       # one message's pieces at a time (an app may send from many tasks)

    def event(self, kind: int, payload: bytes) -> None:
        if not self.ended:
            self.worker.outbox.put(wire.event_frame(kind, self.request_id, payload))

    async def message(self, kind: int, data: bytes) -> None:
        """The app's message, in pieces of at most PIECE_BYTES, each waiting for room in
        the window (a slow client makes send() wait); MORE on all but the last. Messages
        sent from several tasks at once go out one after the other, never interleaved."""
        async with self._sending:
            await self._pieces(kind, data)

    async def _pieces(self, kind: int, data: bytes) -> None:
        outbox = self.worker.outbox
        rest = memoryview(data)
        while True:
            size = min(len(rest), wire.PIECE_BYTES)
            cost = size + MESSAGE_COST_BYTES
            while self.window.room < cost and not self.ended:
                self._credited.clear()
                await self._credited.wait()
            if self.ended or self.cycle.phase is SocketPhase.CLOSED:
                raise ClientDisconnected("the WebSocket closed while the message was being sent")
            self.window.spend(cost)
            last = size == len(rest)
            piece_kind = kind if last else kind | wire.MORE
            outbox.put(wire.event_header(piece_kind, self.request_id, size), rest[:size])
            rest = rest[size:]
            await outbox.drain()
            if last:
                return

    def received(self, message: dict) -> None:
        body = message.get("text")
        size = len(body.encode("utf-8")) if body is not None else len(message["bytes"])
        self.received_bytes(size + MESSAGE_COST_BYTES)

    def received_bytes(self, nbytes: int) -> None:
        """Credit the master for what the app took, in batches: it reads the client on."""
        self.owed += nbytes
        if self.owed >= wire.CREDIT_BATCH_BYTES and not self.ended:
            self.worker.outbox.put(frame.encode(0, b"", (self.owed, self.request_id), CREDIT))
            self.owed = 0

    def credit(self, nbytes: int) -> None:
        self.window.credit(nbytes)
        self._credited.set()

    def window_closed(self) -> None:
        self._credited.set()

    def left(self) -> None:
        """STOP: the client went before the connection was accepted (or without a close)."""
        if self.cycle is not None:
            self.cycle.client_left()

    def deliver(self, kind: int, payload: bytes) -> None:
        self.cycle.deliver(kind, payload)

    def end(self) -> None:
        self._final(CODEC_JSON, b"")

    def fail(self, message: str) -> None:
        self._final(ERROR, message.encode("utf-8", "replace"))

    def _final(self, flags: int, payload: bytes) -> None:
        if self.ended:
            return
        self.ended = True
        self._credited.set()
        self.worker.outbox.put(frame.encode(flags, payload, (0, self.request_id)))
        self.worker.request_ended(self)
