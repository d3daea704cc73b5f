"""A Starlette app with WebSocket endpoints, for tests/test_websocket_frameworks.py: a
function endpoint, a WebSocketEndpoint class with JSON encoding, the lifespan's state on a
WebSocket, a close with a code and reason, and a refusal before accepting. Nothing in it
knows minirr. Starlette is a test tool, never a dependency of minirr.
"""

import logging
import os
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.endpoints import WebSocketEndpoint
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

log = logging.getLogger("starlette_ws_app")


@asynccontextmanager
async def lifespan(app):
    yield {"started_in": os.getpid()}


async def echo(websocket: WebSocket):
    await websocket.accept(subprotocol="chat" if "chat" in websocket.scope["subprotocols"] else None)
    await websocket.send_json({"started_in": websocket.state.started_in, "path": websocket.url.path,
                               "query": websocket.query_params.get("q")})
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            if message.get("text") is not None:
                await websocket.send_text(message["text"].upper())
            else:
                await websocket.send_bytes(message["bytes"][::-1])
    except WebSocketDisconnect as exc:
        log.warning("starlette echo disconnect %s", exc.code)


class Counter(WebSocketEndpoint):
    encoding = "json"

    async def on_connect(self, websocket):
        self.count = 0
        await websocket.accept()

    async def on_receive(self, websocket, data):
        self.count += 1
        await websocket.send_json({"got": data, "count": self.count})

    async def on_disconnect(self, websocket, close_code):
        log.warning("starlette counter disconnect %s after %d", close_code, self.count)


async def closes(websocket: WebSocket):
    await websocket.accept()
    await websocket.send_bytes(b"last words")
    await websocket.close(code=4001, reason="done")


async def denies(websocket: WebSocket):
    await websocket.close(code=1008)


app = Starlette(lifespan=lifespan, routes=[WebSocketRoute("/echo", echo), WebSocketRoute("/count", Counter),
                                          WebSocketRoute("/closes", closes), WebSocketRoute("/denies", denies)])
