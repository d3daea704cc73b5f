"""A Starlette app for tests/test_asgi_frameworks.py: JSON in and out, a lifespan with
state, and an endless StreamingResponse that must be stopped when its client leaves
(Starlette listens for http.disconnect beside it, as ASGI HTTP spec 2.3 has it); its
background task runs once the stream has ended, and says so.

Starlette is a test tool, never a dependency of minirr.
"""

import asyncio
import os
import sys
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route


@asynccontextmanager
async def lifespan(app):
    yield {"started_in": os.getpid()}


async def echo(request):
    return JSONResponse({"got": await request.json(), "started_in": request.state.started_in})


async def endless(request):
    async def pieces():
        number = 0
        while True:
            yield f"piece {number}\n"
            number += 1
            await asyncio.sleep(0)
    return StreamingResponse(pieces(), media_type="text/plain", background=BackgroundTask(ended))


def ended():
    print("the endless stream ended", file=sys.stderr, flush=True)


async def hello(request):
    return PlainTextResponse(f"hello {request.path_params['name']}")


app = Starlette(lifespan=lifespan, routes=[
    Route("/echo", echo, methods=["POST"]), Route("/endless", endless), Route("/hello/{name}", hello)])
