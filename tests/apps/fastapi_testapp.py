"""A FastAPI app for tests/test_asgi_frameworks.py: a Pydantic body model, a dependency, a
background task, a StreamingResponse, a sync endpoint (FastAPI runs it in a thread), and a
lifespan context that opens a resource once per worker and closes it when the worker stops.

FastAPI is a test tool, never a dependency of minirr; this module is imported only in the
workers of servers the test starts, after it has checked that FastAPI is there.
"""

import os
import sys
import threading
from contextlib import asynccontextmanager

from fastapi import BackgroundTasks, Depends, FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel


@asynccontextmanager
async def lifespan(app):
    resource = {"opened_in": os.getpid(), "uses": 0}
    print(f"resource opened in {os.getpid()}", file=sys.stderr, flush=True)
    yield {"resource": resource}
    print(f"resource closed in {os.getpid()} after {resource['uses']} uses", file=sys.stderr, flush=True)


app = FastAPI(lifespan=lifespan)


class Item(BaseModel):
    name: str
    quantity: int


def the_resource(request: Request) -> dict:
    resource = request.state.resource
    resource["uses"] += 1
    return resource


@app.post("/items")
async def create_item(item: Item, resource: dict = Depends(the_resource)):
    return {"name": item.name, "double": item.quantity * 2, "opened_in": resource["opened_in"],
            "uses": resource["uses"]}


@app.get("/stream")
async def stream(n: int = 3):
    async def lines():
        for number in range(n):
            yield f"line {number}\n"
    return StreamingResponse(lines(), media_type="text/plain")


def record(message: str) -> None:
    print(f"background task: {message}", file=sys.stderr, flush=True)


@app.post("/notify")
async def notify(message: str, tasks: BackgroundTasks):
    tasks.add_task(record, message)
    return {"queued": message}


@app.get("/sync")
def sync_endpoint():
    return {"in_a_thread": threading.current_thread() is not threading.main_thread()}
