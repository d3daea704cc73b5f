"""The WebSocket's tables and its pure decision: the session's close handshake
(minirr.master.websocket.TRANSITIONS) and the ASGI side's phases
(minirr.worker.websocket.TRANSITIONS) walked pair by pair, and
`lifecycle.websocket_expiry` for every row of its table, the times passed in."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from minirr.errors import FrameError
from minirr.master import websocket as session_module
from minirr.master.lifecycle import CLOSE_TIMEOUT_S, WebSocketDue, WebSocketLimits, websocket_expiry
from minirr.worker import websocket as worker_module

LIMITS = WebSocketLimits(max_message_size=1000, ping_interval=20.0, ping_timeout=10.0, body_timeout=30.0)


def session(now=1000.0, last_read=None, ping_sent=0.0, closing=0.0, unsent=0, last_write=None):
    conn = SimpleNamespace(last_read_at=now if last_read is None else last_read, unsent=unsent,
                           last_write_at=now if last_write is None else last_write)
    return SimpleNamespace(conn=conn, ping_sent_at=ping_sent, closing_since=closing)


@pytest.mark.parametrize("state", list(session_module.SessionState), ids=lambda s: s.name)
@pytest.mark.parametrize("event", sorted({event for _, event in session_module.TRANSITIONS}))
def test_the_close_handshake_table_moves_or_raises(state, event):
    s = SimpleNamespace(state=state, conn="a client")
    new = session_module.TRANSITIONS.get((state, event))
    if new is None:
        with pytest.raises(FrameError, match=f"event {event!r} is not allowed in state {state.name}"):
            session_module.advance(s, event)
        assert s.state is state
    else:
        assert session_module.advance(s, event) is new and s.state is new


def test_closed_is_the_end_of_a_close_handshake():
    assert not [pair for pair in session_module.TRANSITIONS if pair[0] is session_module.CLOSED]
    assert set(session_module.TRANSITIONS.values()) | {session_module.OPEN} == set(session_module.SessionState)


def test_the_asgi_side_moves_by_its_table_and_refuses_the_rest():
    phases = worker_module.SocketPhase
    assert {new for new in worker_module.TRANSITIONS.values()} | {phases.CONNECTING} == set(phases)
    assert not [pair for pair in worker_module.TRANSITIONS if pair[0] is phases.CLOSED]
    cycle = worker_module.WebSocketCycle.__new__(worker_module.WebSocketCycle)
    cycle.phase = phases.CLOSED
    assert cycle._advance("accept") is False and cycle.phase is phases.CLOSED
    cycle.phase = phases.HANDSHAKE
    assert cycle._advance("accept") is True and cycle.phase is phases.OPEN


@pytest.mark.parametrize("given,now,expected", [
    (dict(), 1000.0, None),                                                     # just read: nothing due
    (dict(last_read=980.0), 1000.0, WebSocketDue("ping", "")),                  # 20 s of silence
    (dict(last_read=981.0), 1000.0, None),
    (dict(last_read=970.0, ping_sent=990.0), 1000.0,
     WebSocketDue("fail", "no pong within ping_timeout (10s)")),
    (dict(last_read=970.0, ping_sent=991.0), 1000.0, None),                     # the pong may still come
    (dict(closing=995.0), 1000.0, None),
    (dict(closing=990.0), 1000.0, WebSocketDue("drop", "the close frame was not answered within 10s")),
    (dict(last_read=900.0, closing=995.0), 1000.0, None),                       # closing: no more pings
    (dict(unsent=10, last_write=970.0), 1000.0, WebSocketDue("drop", "frames not read for 30s")),
    (dict(unsent=10, last_write=971.0), 1000.0, None),
])
def test_websocket_expiry_row_by_row(given, now, expected):
    assert websocket_expiry(session(**given), LIMITS, now) == expected


def test_with_ping_interval_0_an_idle_peer_is_never_pinged_and_close_has_its_own_timeout():
    limits = WebSocketLimits(ping_interval=0.0, ping_timeout=0.0)
    assert websocket_expiry(session(last_read=0.0), limits, 1e6) is None
    assert websocket_expiry(session(closing=1000.0), limits, 1000.0 + CLOSE_TIMEOUT_S).action == "drop"


# ---- the worker's side of one WebSocket's frames (no pipe: a recording outbox) ----------------------

class RecordingOutbox:
    def __init__(self) -> None:
        self.frames: list = []

    def put(self, data: bytes, body=b"") -> None:
        self.frames.append(bytes(data) + bytes(body))

    async def drain(self) -> None:
        import asyncio
        await asyncio.sleep(0)              # the pipe took it: other coroutines run now


def test_messages_sent_from_two_tasks_at_once_are_never_interleaved():
    import asyncio
    from minirr.wire import frame, websocket as wire

    async def scenario():
        worker = SimpleNamespace(outbox=RecordingOutbox(), request_ended=lambda frames: None)
        frames = worker_module.WebSocketFrames(worker, 7)
        frames.cycle = SimpleNamespace(phase=worker_module.SocketPhase.OPEN)
        piece = wire.PIECE_BYTES + worker_module.MESSAGE_COST_BYTES
        frames.window.outstanding = frames.window.size - piece      # room for one piece only
        sends = [asyncio.ensure_future(frames.message(wire.BINARY, bytes([name]) * (3 * wire.PIECE_BYTES)))
                 for name in (1, 2)]
        while len(worker.outbox.frames) < 1:
            await asyncio.sleep(0)
        for _ in range(5):
            await asyncio.sleep(0)          # both wait for room now
        frames.credit(frames.window.outstanding)                     # a drain gives back much at once
        await asyncio.gather(*sends)
        return worker.outbox.frames

    sent = asyncio.run(scenario())
    decoder = frame.FrameDecoder()
    items = [item for data in sent for item in decoder.feed(data)]
    owners = [item.payload[0] for item in items]
    kinds = [item.options[0] for item in items]
    assert owners == [1, 1, 1, 2, 2, 2]                                           # one message, then the other
    assert kinds == [wire.BINARY | wire.MORE] * 2 + [wire.BINARY] + [wire.BINARY | wire.MORE] * 2 + [wire.BINARY]
