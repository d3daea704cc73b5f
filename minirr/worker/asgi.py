"""ASGI 3 inside a worker: the HTTP scope, one request's receive() and send(), the lifespan.

Owns: a Request as an ASGI HTTP connection scope (HTTP spec 2.3); one request's receive()
      and send(), the phases its response goes through (one table, TRANSITIONS) and which
      frame each send() becomes; what the client gets when the app fails or returns
      early; the lifespan protocol (lifespan spec 2.0) around the worker's life.
Never: touches a descriptor or the event loop's readers and writers (asyncloop.py writes
       the frames asked for here, through a RequestFrames), sees HTTP bytes.

Which frames a response becomes (as stream.py makes them for a minirr or WSGI body):

    http.response.start                         held: the head goes with the first piece
    http.response.body, more_body False         one frame, head ‖ body: the usual case
    http.response.body, more_body True, b""     nothing yet
    http.response.body, more_body True, piece   STREAM frame: head ‖ piece (the first), then piece
    http.response.body, more_body False         after pieces: the last piece, then the final frame
    the app raises, or returns without a body   ERROR: 500, or the answer broken off after pieces
    STOP (the client left)                      the final frame at once; later sends are dropped

A first piece exactly as long as the app's own Content-Length is the whole body: it goes
out as one ordinary frame (README, Streamed bodies), and what the app sends after it is
dropped, and logged.

send() after the client has left returns without raising, as uvicorn's does (it tried
raising an OSError, ASGI HTTP spec 2.4, in 0.28 and went back in 0.28.1): this worker says
spec_version 2.3, so Starlette (and FastAPI) listen for http.disconnect beside a
StreamingResponse and stop it when receive() returns it, and Django's ASGIHandler does
the same; a raise would surface in middleware that did not expect it. The send yields to
the event loop, so an app that keeps sending into the void cannot starve the others.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import traceback
from typing import Callable, List, Optional, Protocol, Tuple
from urllib.parse import unquote

from ..wire.messages import Request, Response
from .load import describe_failure
from .stream import declared_length
from .wsgi import scheme_host_port

log = logging.getLogger("minirr.worker")

ASGI_VERSION = "3.0"
HTTP_SPEC_VERSION = "2.3"        # 2.4 (send() raises once the client left): see above
LIFESPAN_SPEC_VERSION = "2.0"


# ---- the HTTP connection scope ----------------------------------------------------------

def http_scope(request: Request, state: dict) -> dict:
    """The scope of one request (ASGI HTTP spec, connection scope). The master already
    decided who the client is (trusted proxies) and the target URI; the client's port is
    not on the wire, so it is 0, as uvicorn gives it behind a proxy."""
    scheme, host, port = scheme_host_port(request.uri)
    return {
        "type": "http",
        "asgi": {"version": ASGI_VERSION, "spec_version": HTTP_SPEC_VERSION},
        "http_version": request.protocol.partition("/")[2] or "1.1",
        "method": request.method,
        "scheme": scheme,
        "path": unquote(request.path),           # percent-decoded, as UTF-8
        "raw_path": wire_bytes(request.path),
        "query_string": wire_bytes(request.query),
        "root_path": "",
        # every value in arrival order; names lower-cased (the head carries them canonical)
        "headers": [(wire_bytes(name.lower()), wire_bytes(value)) for name, value in request.headers],
        "client": (request.remote_addr, 0) if request.remote_addr else None,
        "server": (host, int(port) if port.isdigit() else None),
        "state": dict(state),                    # a shallow copy for each request (lifespan spec)
    }


def wire_bytes(text: str) -> bytes:
    """Back to the bytes the client sent: the master reads a head as latin-1. (A master
    whose head holds other characters, RoadRunner's, wrote them as UTF-8.)"""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


# ---- one request: its response's phases ---------------------------------------------------

class ResponsePhase(enum.Enum):
    AWAITING = "before http.response.start"
    STARTED = "after http.response.start, before any piece of its body"
    STREAMING = "while its body is streamed"
    COMPLETE = "after its whole answer was sent"
    LEFT = "after its client left"


# (phase, event) -> next phase; events: start, whole (the body in one frame with the head),
# piece (a STREAM frame), end (the final frame after pieces), fail (an ERROR frame, or
# nothing after a complete answer), left (STOP: the final frame at once).
TRANSITIONS = {
    (ResponsePhase.AWAITING, "start"): ResponsePhase.STARTED,
    (ResponsePhase.STARTED, "whole"): ResponsePhase.COMPLETE,
    (ResponsePhase.STARTED, "piece"): ResponsePhase.STREAMING,
    (ResponsePhase.STREAMING, "piece"): ResponsePhase.STREAMING,
    (ResponsePhase.STREAMING, "end"): ResponsePhase.COMPLETE,
    (ResponsePhase.AWAITING, "fail"): ResponsePhase.COMPLETE,
    (ResponsePhase.STARTED, "fail"): ResponsePhase.COMPLETE,
    (ResponsePhase.STREAMING, "fail"): ResponsePhase.COMPLETE,
    (ResponsePhase.AWAITING, "left"): ResponsePhase.LEFT,
    (ResponsePhase.STARTED, "left"): ResponsePhase.LEFT,
    (ResponsePhase.STREAMING, "left"): ResponsePhase.LEFT,
}
OVER = (ResponsePhase.COMPLETE, ResponsePhase.LEFT)       # the request's final frame is out


class RequestFrames(Protocol):
    """The role asyncloop.py plays for one request: its frames on the wire. Each method
    sends one frame (or, for a piece larger than the request's CREDIT window, several);
    whole(), end() and fail() send the request's final frame."""

    def whole(self, head: bytes, body: bytes) -> None: ...
    async def piece(self, head: bytes, body: bytes) -> None: ...
    def end(self) -> None: ...
    def fail(self, message: str) -> None: ...


class HTTPCycle:
    """One request: its scope, receive() and send(), and the phase of its response."""

    def __init__(self, request: Request, state: dict, frames: RequestFrames,
                 encode_head: Callable[[Response], bytes]) -> None:
        self.request = request
        self.scope = http_scope(request, state)
        self.frames = frames
        self.encode_head = encode_head   # wire.heads.response_head_encoder()
        self.phase = ResponsePhase.AWAITING
        self.response: Optional[Response] = None   # http.response.start's status and headers
        self.declared = -1                         # its Content-Length, or -1
        self.surplus_bytes = 0                     # body sent after a complete answer
        self._body_given = False
        self._over = asyncio.Event()               # set with the final frame: receive() says disconnect

    @property
    def label(self) -> str:
        return f"{self.request.method} {self.request.path}"

    def _advance(self, event: str) -> None:
        new = TRANSITIONS.get((self.phase, event))
        if new is None:
            raise RuntimeError(f"ASGI: {event} is not allowed {self.phase.value}")
        self.phase = new
        if new in OVER:
            self._over.set()

    # ---- what the app calls ----------------------------------------------------------
    async def receive(self) -> dict:
        """The body, whole (the master has read all of it), then, once the answer is over
        or the client has left, http.disconnect; until then a later call waits."""
        if not self._body_given:
            self._body_given = True
            return {"type": "http.request", "body": self.request.body, "more_body": False}
        await self._over.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        kind = message.get("type") if isinstance(message, dict) else None
        if self.phase in OVER:
            await self._after_the_end(kind, message)
        elif kind == "http.response.start":
            self._start(message)
        elif kind == "http.response.body":
            await self._body(message)
        else:
            raise RuntimeError(f"ASGI: unexpected message {kind!r} on an HTTP connection "
                               f"(expected http.response.start or http.response.body)")

    async def _after_the_end(self, kind: Optional[str], message: dict) -> None:
        """The final frame is out: the spec says later messages are ignored. Body bytes
        after a complete answer are counted (and logged); after the client left, the
        send yields to the loop (see the module's docstring)."""
        if self.phase is ResponsePhase.LEFT:
            await asyncio.sleep(0)
        elif kind == "http.response.body":
            body = message.get("body", b"")
            self.surplus_bytes += len(body) if isinstance(body, (bytes, bytearray, memoryview)) else 0

    def _start(self, message: dict) -> None:
        if self.phase is not ResponsePhase.AWAITING:
            raise RuntimeError("ASGI: http.response.start sent twice")
        status = message.get("status")
        if type(status) is not int or not 200 <= status <= 599:
            # checked here, not only by the master: a bad head there breaks the channel,
            # and with it every request this worker holds
            raise RuntimeError(f"ASGI: http.response.start status {status!r} is not a whole number 200..599")
        self.response = Response(status, response_headers(message.get("headers") or ()))
        self.declared = declared_length(self.response)
        self._advance("start")

    async def _body(self, message: dict) -> None:
        body = message.get("body", b"")
        if type(body) is not bytes:
            if not isinstance(body, (bytearray, memoryview)):
                raise TypeError(f"ASGI: http.response.body's body must be bytes, not {type(body).__name__}")
            body = bytes(body)
        more = bool(message.get("more_body", False))
        phase = self.phase
        if phase is ResponsePhase.AWAITING:
            raise RuntimeError("ASGI: http.response.body sent before http.response.start")
        if phase is ResponsePhase.STARTED:
            await self._first_body(body, more)
            return
        if body:
            await self.frames.piece(b"", body)
        if not more and self.phase is ResponsePhase.STREAMING:
            self._advance("end")
            self.frames.end()

    async def _first_body(self, body: bytes, more: bool) -> None:
        head = self.encode_head(self.response)
        if not more or len(body) == self.declared:
            self._advance("whole")
            self.frames.whole(head, body)
        elif body:
            self._advance("piece")
            await self.frames.piece(head, body)

    # ---- what the worker calls ---------------------------------------------------------
    def client_left(self) -> None:
        """The master said STOP: the final frame goes now, receive() returns http.disconnect,
        and what the app still sends is dropped. (A STOP that crossed the end is nothing.)"""
        if self.phase not in OVER:
            self._advance("left")
            self.frames.end()

    async def run(self, app) -> None:
        """Call the app with this request; however it ends, the request's final frame is
        out when this returns (the app may still have work of its own running: a
        background task after the answer)."""
        try:
            await app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:       # the worker is ending (its master went away)
            if self.phase not in OVER:
                self._advance("fail")
                self.frames.fail("the request was cancelled: the worker is ending")
            raise
        except Exception as exc:
            self._fail(f"failed {self.phase.value}:\n{traceback.format_exc().rstrip()}",
                       f"{type(exc).__name__}: {exc}", describe_failure(exc))
        else:
            self._returned()

    def _returned(self) -> None:
        if self.phase is ResponsePhase.AWAITING:
            self._fail("returned without a response (no http.response.start)", "no response from the application")
        elif self.phase is ResponsePhase.STARTED:
            self._fail("returned after http.response.start without its body", "no response body from the application")
        elif self.phase is ResponsePhase.STREAMING:
            self._fail("returned before its body was complete (no http.response.body with more_body False)",
                       "the response body was not complete")
        if self.surplus_bytes:
            log.error("request %s: the response body went on past its Content-Length: %d more bytes dropped",
                      self.label, self.surplus_bytes)

    def _fail(self, what: str, message: str, headline: str = "") -> None:
        """The request failed: an ERROR frame (500, or the answer broken off after pieces),
        unless its final frame is out already; then the failure is only logged."""
        if self.phase is ResponsePhase.LEFT:
            log.info("request %s failed after its client left: %s", self.label, headline or message)
            return
        log.error("request %s %s", self.label, what)
        if self.phase is not ResponsePhase.COMPLETE:
            self._advance("fail")
            self.frames.fail(message)


def response_headers(headers) -> List[Tuple[str, str]]:
    """http.response.start's [[name, value], ...] (bytes, as the spec says; str accepted)
    -> (str, str) pairs for the JSON head. A CR, LF or NUL is refused here: in the head it
    would make the master break the channel, failing every request this worker holds."""
    pairs = []
    for item in headers:
        name, value = item
        pair = (_header_text(name), _header_text(value))
        if not pair[0] or any(ch in part for part in pair for ch in "\r\n\0"):
            raise RuntimeError(f"ASGI: response header {item!r} holds a CR, LF or NUL, or has no name")
        pairs.append(pair)
    return pairs


def _header_text(value) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("latin-1")
    if isinstance(value, str):
        return value
    raise TypeError(f"ASGI: a response header name or value must be bytes, not {type(value).__name__}")


# ---- the lifespan -----------------------------------------------------------------------

class LifespanFailed(Exception):
    """The app's lifespan startup failed: `message` is what it sent with
    lifespan.startup.failed (or ""), `cause` the exception it raised (or None)."""

    def __init__(self, message: str, cause: Optional[BaseException]) -> None:
        super().__init__(message)
        self.message = message
        self.cause = cause


class Lifespan:
    """The lifespan protocol around one worker's life: startup() before the handshake (it
    is the worker's bootstrap), shutdown() when the master says stop. `state` is the
    namespace the app fills at startup; each request's scope gets a shallow copy.

    An app that raises before it takes lifespan.startup, or returns at once, does not take
    part (Django's ASGIHandler raises on any scope but http): it is served without, and
    that is logged once. One that raises after taking it has failed to start."""

    def __init__(self, app) -> None:
        self.app = app
        self.state: dict = {}
        self.supported = False
        self.failure: Optional[BaseException] = None   # what the app's lifespan raised
        self._inbox: asyncio.Queue = asyncio.Queue()    # to the app: startup, shutdown
        self._answers: List[dict] = []                  # from the app
        self._answered = asyncio.Event()
        self._waiting = asyncio.Event()                 # the app waits in receive()
        self._took_startup = False
        self._task: Optional[asyncio.Future] = None

    async def startup(self) -> None:
        """Returns once the app is ready (or does not take part); raises LifespanFailed."""
        scope = {"type": "lifespan", "asgi": {"version": ASGI_VERSION, "spec_version": LIFESPAN_SPEC_VERSION},
                 "state": self.state}
        self._task = asyncio.ensure_future(self._run(scope))
        self._inbox.put_nowait({"type": "lifespan.startup"})
        answer = await self._next_answer()
        kind = answer.get("type") if answer is not None else None
        if kind == "lifespan.startup.complete":
            self.supported = True
        elif kind == "lifespan.startup.failed":
            await self._settle()
            raise LifespanFailed(str(answer.get("message") or ""), self.failure)
        elif answer is not None:
            raise LifespanFailed(f"the application answered lifespan.startup with {kind!r}", None)
        elif self._took_startup and self.failure is not None:
            raise LifespanFailed("", self.failure)
        else:
            why = describe_failure(self.failure) if self.failure is not None else "it returned at once"
            log.info("the application does not take part in the ASGI lifespan protocol (%s); serving it without",
                     why)

    async def shutdown(self) -> None:
        """lifespan.shutdown, and the app's answer (a failure is logged; the worker exits
        anyway). Not timed here: the master kills a worker that outstays destroy_timeout."""
        if not self.supported or self._task is None or self._task.done():
            return
        self._inbox.put_nowait({"type": "lifespan.shutdown"})
        answer = await self._next_answer()
        if answer is not None and answer.get("type") == "lifespan.shutdown.failed":
            log.error("lifespan shutdown failed: %s", answer.get("message") or "(no message)")
        elif answer is None and self.failure is not None:
            log.error("lifespan shutdown failed: %s", describe_failure(self.failure))

    async def _run(self, scope: dict) -> None:
        try:
            await self.app(scope, self._receive, self._send)
        except asyncio.CancelledError:
            raise
        except (Exception, SystemExit) as exc:   # SystemExit("why"): as in a factory, one line
            self.failure = exc

    async def _receive(self) -> dict:
        if self._inbox.empty():
            self._waiting.set()
        message = await self._inbox.get()
        self._waiting.clear()
        if message["type"] == "lifespan.startup":
            self._took_startup = True
        return message

    async def _send(self, message: dict) -> None:
        self._answers.append(message)
        self._answered.set()

    async def _next_answer(self) -> Optional[dict]:
        """The app's next message, or None once its lifespan coroutine has ended without one."""
        while not self._answers and not self._task.done():
            self._answered.clear()
            waiter = asyncio.ensure_future(self._answered.wait())
            await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        return self._answers.pop(0) if self._answers else None

    async def _settle(self) -> None:
        """After lifespan.startup.failed: let the app raise what it will (Starlette sends the
        message, then raises), but not wait on an app that waits on us."""
        waiter = asyncio.ensure_future(self._waiting.wait())
        await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if not self._task.done():
            self._task.cancel()
            await asyncio.wait({self._task})
