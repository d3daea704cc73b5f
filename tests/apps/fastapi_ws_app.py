"""A FastAPI app with WebSocket endpoints, for tests/test_websocket_frameworks.py: a path
parameter and a required query parameter (its validation refuses the handshake: 403), a
dependency, iter_text, and an HTTP route beside them. Nothing in it knows minirr. FastAPI
is a test tool, never a dependency of minirr.
"""

import logging

from fastapi import Depends, FastAPI, Query, WebSocket, WebSocketDisconnect

log = logging.getLogger("fastapi_ws_app")
app = FastAPI()


def greeting() -> str:
    return "welcome"


@app.get("/hello")
async def hello():
    return {"hello": "http"}


@app.websocket("/rooms/{room}")
async def room(websocket: WebSocket, room: str, token: str = Query(...), greet: str = Depends(greeting)):
    await websocket.accept()
    await websocket.send_json({"room": room, "token": token, "greet": greet})
    try:
        async for text in websocket.iter_text():
            await websocket.send_text(f"{room}: {text}")
    except WebSocketDisconnect as exc:
        log.warning("fastapi room disconnect %s", exc.code)
    log.warning("fastapi room %s left", room)
