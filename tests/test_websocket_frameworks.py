"""What users use, unchanged: the `websockets` client library against Starlette's and
FastAPI's WebSocket endpoints behind a real minirr. The libraries are test tools, never
dependencies of minirr: each test skips, saying why, when one is not installed (.ci/run
installs them into its test venvs)."""

from __future__ import annotations

import asyncio
import json

import pytest

from serverproc import ServerProcess
from wire import stop_module_server


def needs(module: str, name: str):
    return pytest.importorskip(module, reason=f"{name} is not installed: `pip install {name.lower()}` to run the "
                                              f"{name} tests (.ci/run installs it)")


def client():
    """websockets' asyncio client (websockets 13 and later; its legacy one before)."""
    needs("websockets", "websockets")
    try:
        from websockets.asyncio.client import connect
    except ImportError:
        from websockets import connect
    return connect


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 20))


@pytest.fixture(scope="module")
def starlette_srv(tmp_path_factory):
    needs("starlette", "Starlette")
    srv = ServerProcess.start(tmp_path_factory.mktemp("starlette-ws"),
                              "[server]\napp = starlette_ws_app:app\n[pool]\nnum_workers = 2\n")
    yield srv
    stop_module_server(srv)


@pytest.fixture(scope="module")
def fastapi_srv(tmp_path_factory):
    needs("fastapi", "FastAPI")
    srv = ServerProcess.start(tmp_path_factory.mktemp("fastapi-ws"),
                              "[server]\napp = fastapi_ws_app:app\n[pool]\nnum_workers = 1\n")
    yield srv
    stop_module_server(srv)


# ---- Starlette ------------------------------------------------------------------------------------

def test_starlette_echo_with_a_subprotocol_and_the_lifespan_state(starlette_srv):
    connect = client()

    async def talk():
        async with connect(f"ws://{starlette_srv.host}:{starlette_srv.port}/echo?q=hi",
                           subprotocols=["chat"]) as ws:
            hello = json.loads(await ws.recv())
            await ws.send("shout")
            text = await ws.recv()
            await ws.send(b"\x01\x02\x03")
            data = await ws.recv()
            return ws.subprotocol, hello, text, data

    subprotocol, hello, text, data = run(talk())
    assert subprotocol == "chat" and hello["path"] == "/echo" and hello["query"] == "hi"
    assert hello["started_in"] in starlette_srv.workers()
    assert (text, data) == ("SHOUT", b"\x03\x02\x01")
    starlette_srv.wait_for_log("starlette echo disconnect 1000")


def test_starlette_a_websocket_endpoint_with_json(starlette_srv):
    connect = client()

    async def talk():
        async with connect(f"ws://{starlette_srv.host}:{starlette_srv.port}/count") as ws:
            answers = []
            for item in ({"a": 1}, [1, 2], "three"):
                await ws.send(json.dumps(item))
                answers.append(json.loads(await ws.recv()))
            return answers

    assert run(talk()) == [{"got": {"a": 1}, "count": 1}, {"got": [1, 2], "count": 2}, {"got": "three", "count": 3}]
    starlette_srv.wait_for_log("starlette counter disconnect 1000 after 3")


def test_starlette_closes_with_a_code_and_a_reason(starlette_srv):
    connect = client()
    from websockets.exceptions import ConnectionClosed

    async def talk():
        async with connect(f"ws://{starlette_srv.host}:{starlette_srv.port}/closes") as ws:
            first = await ws.recv()
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            return first, info.value.rcvd.code, info.value.rcvd.reason

    assert run(talk()) == (b"last words", 4001, "done")


def test_starlette_refuses_before_accepting_403(starlette_srv):
    connect = client()

    async def talk():
        async with connect(f"ws://{starlette_srv.host}:{starlette_srv.port}/denies"):
            pass

    with pytest.raises(Exception) as info:
        run(talk())
    assert "403" in str(info.value)


# ---- FastAPI --------------------------------------------------------------------------------------

def test_fastapi_a_room_with_a_path_and_query_parameter_and_a_dependency(fastapi_srv):
    connect = client()

    async def talk():
        async with connect(f"ws://{fastapi_srv.host}:{fastapi_srv.port}/rooms/lobby?token=t0k") as ws:
            hello = json.loads(await ws.recv())
            await ws.send("hi all")
            return hello, await ws.recv()

    hello, said = run(talk())
    assert hello == {"room": "lobby", "token": "t0k", "greet": "welcome"} and said == "lobby: hi all"
    fastapi_srv.wait_for_log("fastapi room lobby left")
    assert fastapi_srv.request("GET", "/hello")[2] == b'{"hello":"http"}'


def test_fastapi_a_missing_query_parameter_refuses_the_handshake(fastapi_srv):
    connect = client()

    async def talk():
        async with connect(f"ws://{fastapi_srv.host}:{fastapi_srv.port}/rooms/lobby"):
            pass

    with pytest.raises(Exception) as info:
        run(talk())
    assert "403" in str(info.value)


def test_many_websockets_at_once_on_one_async_worker(fastapi_srv):
    connect = client()

    async def one(index: int):
        async with connect(f"ws://{fastapi_srv.host}:{fastapi_srv.port}/rooms/r{index}?token=x") as ws:
            await ws.recv()
            await ws.send(str(index))
            return await ws.recv()

    async def many():
        return await asyncio.gather(*(one(index) for index in range(50)))

    assert run(many()) == [f"r{index}: {index}" for index in range(50)]
