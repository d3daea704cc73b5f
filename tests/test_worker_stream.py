"""The worker's side of streamed responses, in-process: no master, real pipes.

`worker.serve()` runs in a thread on a real pair of pipes; the test plays the master,
writing frames (requests, STOP, PONG) and reading the worker's frames as they come. Apps
that must wait for the test wait on threading.Events, so every interleaving is chosen
by the test, never by timing.

test_streaming.py checks the same through a real master and real clients.
"""

from __future__ import annotations

import json
import logging
import os
import select
import threading
import time
from typing import List, Optional

import pytest

from minirr.wire import frame
from minirr.worker import loop as worker
from minirr.errors import ClientDisconnected
from minirr.wire.frame import CODEC_JSON, CONTROL, ERROR, PONG, STOP, STREAM, Frame, FrameDecoder
from minirr.wire.messages import Request, Response
from minirr.wire.heads import encode_request_head
from minirr.worker.wsgi import WSGIHandler

STOP_FRAME = frame.encode(0, b"", (), STOP)
PONG_FRAME = frame.encode(0, b"", (), PONG)
TIMEOUT_S = 10.0


def request_frame(path: str = "/", method: str = "GET") -> bytes:
    head = encode_request_head(Request(method, path, uri=f"http://test{path}"))
    return frame.encode(CODEC_JSON, head, (len(head),))


class Master:
    """The test's end of a worker's pipes, with worker.serve() running in a thread."""

    def __init__(self, handler) -> None:
        requests_r, self.to_worker = os.pipe()
        self.from_worker, responses_w = os.pipe()
        self.fds = [requests_r, self.to_worker, self.from_worker, responses_w]
        self.channel = worker.FramePipe(requests_r, responses_w)
        self.decoder = FrameDecoder()
        self.received: List[Frame] = []
        self.exit_status: Optional[int] = None
        self.thread = threading.Thread(target=self._serve, args=(handler,), daemon=True)
        self.thread.start()
        self.send(frame.encode(CONTROL | CODEC_JSON, b'{"pid":1}'))
        hello = self.receive()
        assert hello.flags == CONTROL and json.loads(hello.payload) == {"pid": os.getpid()}

    def _serve(self, handler) -> None:
        self.exit_status = worker.serve(self.channel, lambda: handler)

    def send(self, data: bytes) -> None:
        os.write(self.to_worker, data)

    def receive(self) -> Frame:
        """The worker's next frame (fails after TIMEOUT_S)."""
        deadline = time.monotonic() + TIMEOUT_S
        while not self.received:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "no frame from the worker in time"
            if select.select([self.from_worker], [], [], remaining)[0]:
                data = os.read(self.from_worker, 65536)
                assert data, "the worker closed its end"
                self.received.extend(self.decoder.feed(data))
        return self.received.pop(0)

    def response(self, path: str = "/"):
        """Ask for `path`; -> every frame of the answer, through the one without STREAM."""
        self.send(request_frame(path))
        frames = [self.receive()]
        while frames[-1].stream & STREAM:
            frames.append(self.receive())
        return frames

    def nothing_more(self) -> bool:
        """The worker sent nothing beyond what was received (checked after a full answer
        to a later request, so anything stray would have come before it)."""
        return not self.received and not select.select([self.from_worker], [], [], 0)[0]

    def stop(self) -> None:
        self.send(frame.encode(CONTROL | CODEC_JSON, b'{"stop":true}'))
        self.thread.join(TIMEOUT_S)
        assert not self.thread.is_alive(), "the worker loop did not end on stop"

    def close(self) -> None:
        if self.thread.is_alive():
            self.stop()
        for fd in self.fds:
            os.close(fd)


@pytest.fixture
def master():
    started = []

    def start(handler) -> Master:
        started.append(Master(handler))
        return started[-1]
    yield start
    for m in started:
        m.close()


def head_and_body(item: Frame):
    head_len = item.options[0]
    return bytes(item.payload[:head_len]), bytes(item.payload[head_len:])


def is_final(item: Frame) -> bool:
    """The frame that ends a streamed response: no STREAM, head length 0, nothing in it."""
    return item.flags == CODEC_JSON and item.stream == 0 and item.options == (0,) and item.payload == b""


def blocks_of(frames: List[Frame]) -> List[bytes]:
    return [head_and_body(item)[1] for item in frames]


def plain(request) -> Response:
    return Response(200, {"Content-Type": "text/plain"}, b"plain")


def routes(table: dict):
    """A handler answering each path from `table` (path -> function of request), else plain."""
    return lambda request: table.get(request.path, plain)(request)


# ---- whole bodies: one frame, as before ----------------------------------------------------

@pytest.mark.parametrize("body", [b"abc", [b"a", b"bc"], (b"ab", "c"), bytearray(b"abc")])
def test_a_whole_body_is_one_frame(master, body):
    m = master(lambda request: Response(200, {"X-A": "1"}, body))
    frames = m.response()
    assert len(frames) == 1 and frames[0].stream == 0 and frames[0].flags == CODEC_JSON
    head, data = head_and_body(frames[0])
    assert json.loads(head) == {"status": 200, "headers": {"X-A": ["1"]}} and data == b"abc"
    assert m.response("/next") and m.nothing_more()


@pytest.mark.parametrize("result", [[b"a", b"bc"], (b"ab", b"c")])
def test_a_wsgi_list_or_tuple_is_one_frame(master, result):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return result
    frames = master(WSGIHandler(app)).response()
    assert len(frames) == 1 and frames[0].stream == 0 and head_and_body(frames[0])[1] == b"abc"


# ---- streamed bodies ----------------------------------------------------------------------------

def test_a_generator_is_sent_a_frame_per_block_each_as_it_is_produced(master):
    produced = threading.Event()
    go = threading.Event()

    def body():
        yield b"first"
        produced.set()
        go.wait(TIMEOUT_S)
        yield b""                                  # nothing to send: no frame
        yield b"second"

    m = master(lambda request: Response(201, [("X-Stream", "yes")], body()))
    m.send(request_frame())
    first = m.receive()                             # while the generator waits for `go`
    assert first.stream == STREAM and first.flags == CODEC_JSON
    head, data = head_and_body(first)
    assert json.loads(head) == {"status": 201, "headers": {"X-Stream": ["yes"]}} and data == b"first"
    assert produced.wait(TIMEOUT_S)
    go.set()
    second = m.receive()
    assert second.stream == STREAM and second.options == (0,) and second.payload == b"second"
    assert is_final(m.receive())
    assert m.response("/next") and m.nothing_more()


@pytest.mark.parametrize("body", [iter([]), iter([b"", b""]), (b for b in [])])
def test_an_iterable_that_produces_nothing_is_one_ordinary_frame(master, body):
    frames = master(lambda request: Response(200, {}, body)).response()
    assert len(frames) == 1 and frames[0].stream == 0
    assert head_and_body(frames[0]) == (b'{"status":200,"headers":{}}', b"")


def test_native_blocks_may_be_str_sent_as_utf8(master):
    frames = master(lambda request: Response(200, {}, iter(["h\u00e9", b"!", bytearray(b"?")]))).response()
    assert blocks_of(frames) == ["h\u00e9".encode(), b"!", b"?", b""] and is_final(frames[-1])


def test_a_native_block_of_another_type_fails_the_request_by_name(master, caplog):
    frames = master(lambda request: Response(200, {}, iter([b"a", 5]))).response()
    assert [f.stream for f in frames] == [STREAM, 0] and frames[1].flags == ERROR
    assert frames[1].payload == b"TypeError: a response body's blocks must be bytes, bytearray, memoryview or str, not int"


# ---- a first block that is the whole body its Content-Length announces --------------------------

def test_a_first_block_that_fills_its_content_length_is_one_ordinary_frame(master, caplog):
    """A framework's response (Flask's, Django's) is an iterable of one block with its length."""
    events = []

    def body():
        try:
            yield b"whole"
        finally:
            events.append("finally")

    m = master(routes({"/one": lambda request: Response(200, {"Content-Length": "5"}, body())}))
    frames = m.response("/one")
    assert len(frames) == 1 and frames[0].stream == 0 and head_and_body(frames[0])[1] == b"whole"
    assert blocks_of(m.response("/next")) == [b"plain"] and m.nothing_more()
    assert events == ["finally"] and not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_body_going_on_past_a_complete_first_block_is_dropped_and_logged(master, caplog):
    closed = []

    class Body:
        def __iter__(self):
            return iter([b"12345", b"678", b"9"])

        def close(self):
            closed.append(True)

    m = master(routes({"/long": lambda request: Response(200, [("content-length", "5")], Body())}))
    frames = m.response("/long")
    assert len(frames) == 1 and head_and_body(frames[0])[1] == b"12345"
    assert blocks_of(m.response("/next")) == [b"plain"] and m.nothing_more()   # nothing stray in between
    assert closed == [True]
    assert "went on past its Content-Length: 4 more bytes dropped" in caplog.text


@pytest.mark.parametrize("fails_in", ["iteration", "close"])
def test_a_failure_after_a_complete_first_block_is_logged_and_nothing_more_is_sent(master, caplog, fails_in):
    class Body:
        def __iter__(self):
            yield b"12345"
            if fails_in == "iteration":
                raise ValueError("after the whole body")

        def close(self):
            if fails_in == "close":
                raise ValueError("in close")

    m = master(routes({"/one": lambda request: Response(200, {"Content-Length": "5"}, Body())}))
    frames = m.response("/one")
    assert len(frames) == 1 and frames[0].flags == CODEC_JSON and head_and_body(frames[0])[1] == b"12345"
    assert blocks_of(m.response("/next")) == [b"plain"] and m.nothing_more()
    assert "ValueError" in caplog.text
    if fails_in == "iteration":
        assert "request failed after its whole answer was sent" in caplog.text


@pytest.mark.parametrize("length", ["6", "4", "x", None])
def test_a_first_block_that_does_not_fill_its_content_length_is_streamed(master, length):
    headers = {"Content-Length": length} if length else {}
    frames = master(lambda request: Response(200, headers, iter([b"12345"]))).response()
    assert [f.stream for f in frames] == [STREAM, 0] and is_final(frames[1])


def test_a_wsgi_app_with_one_block_and_its_length_is_one_frame_as_a_list_would_be(master):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return iter([b"hello"])
    frames = master(WSGIHandler(app)).response()
    assert len(frames) == 1 and frames[0].stream == 0 and head_and_body(frames[0])[1] == b"hello"


# ---- the master says STOP -------------------------------------------------------------------------

class Watched:
    """An endless body that records how it ended; after its first block it waits for `go`."""

    def __init__(self) -> None:
        self.events: List[str] = []
        self.waiting = threading.Event()
        self.go = threading.Event()

    def __iter__(self):
        try:
            yield b"block 0"
            self.waiting.set()
            self.go.wait(TIMEOUT_S)
            n = 1
            while True:
                yield f"block {n}".encode()
                n += 1
        finally:
            self.events.append("finally")

    def close(self) -> None:
        self.events.append("close")


def test_stop_closes_the_body_at_its_next_block_and_ends_with_an_empty_frame(master):
    body = Watched()
    m = master(routes({"/stream": lambda request: Response(200, {}, body)}))
    m.send(request_frame("/stream"))
    assert head_and_body(m.receive())[1] == b"block 0"
    assert body.waiting.wait(TIMEOUT_S)             # the worker has looked for STOP and found none
    m.send(STOP_FRAME)                              # the client left
    body.go.set()
    assert m.receive().payload == b"block 1"        # the block in the making still goes out
    assert is_final(m.receive())
    assert body.events == ["close", "finally"] or body.events == ["finally", "close"]
    frames = m.response("/after")                   # the worker is free again
    assert blocks_of(frames) == [b"plain"] and m.nothing_more()


def test_a_generator_body_is_closed_on_stop_so_its_finally_runs(master):
    events = []
    waiting, go = threading.Event(), threading.Event()

    def endless():
        try:
            yield b"x"
            waiting.set()
            go.wait(TIMEOUT_S)
            while True:
                yield b"y"
        except GeneratorExit:
            events.append("closed")
            raise

    m = master(lambda request: Response(200, {}, endless()))
    m.send(request_frame())
    m.receive()
    assert waiting.wait(TIMEOUT_S)
    m.send(STOP_FRAME)
    go.set()
    assert m.receive().payload == b"y"
    assert is_final(m.receive()) and events == ["closed"]


def test_a_stop_that_crosses_the_end_of_its_stream_is_ignored(master):
    m = master(lambda request: Response(200, {}, iter([b"a", b"b"])))
    assert len(m.response()) == 3
    m.send(STOP_FRAME + PONG_FRAME)                 # sent by the master as the final frame left
    frames = m.response()                           # the next stream is not stopped by it
    assert blocks_of(frames) == [b"a", b"b", b""] and is_final(frames[-1])
    assert m.nothing_more()


def test_a_pong_mid_stream_is_dropped_and_the_stream_goes_on(master):
    body = Watched()
    m = master(routes({"/stream": lambda request: Response(200, {}, body)}))
    m.send(request_frame("/stream"))
    m.receive()
    assert body.waiting.wait(TIMEOUT_S)
    m.send(PONG_FRAME)
    body.go.set()
    for n in range(1, 4):
        assert m.receive().payload == f"block {n}".encode()
    m.send(STOP_FRAME)
    while not is_final(m.receive()):
        pass
    assert m.response() and m.nothing_more()


def test_a_request_frame_arriving_mid_stream_is_kept_and_answered_after_it(master):
    """The master never does this; if one did, no frame is lost or answered out of turn."""
    body = Watched()
    m = master(routes({"/stream": lambda request: Response(200, {}, body)}))
    m.send(request_frame("/stream"))
    m.receive()
    assert body.waiting.wait(TIMEOUT_S)
    m.send(request_frame("/later") + STOP_FRAME)    # in one write: one read takes both
    body.go.set()
    while not is_final(m.receive()):
        pass
    later = m.receive()
    assert later.stream == 0 and head_and_body(later)[1] == b"plain"
    assert m.response() and m.nothing_more()


def test_eof_mid_stream_closes_the_body_and_ends_the_loop(master):
    body = Watched()
    m = master(lambda request: Response(200, {}, body))
    m.send(request_frame())
    m.receive()
    assert body.waiting.wait(TIMEOUT_S)
    os.close(m.to_worker)                           # the master is gone
    m.fds.remove(m.to_worker)
    body.go.set()
    m.thread.join(TIMEOUT_S)
    assert not m.thread.is_alive() and m.exit_status == worker.EXIT_OK
    assert "close" in body.events and "finally" in body.events


def test_stop_requested_decodes_what_waits_and_keeps_other_frames(master):
    m = master(plain)
    m.stop()
    channel = m.channel
    assert channel.stop_requested() is False        # nothing waiting
    m.send(STOP_FRAME[:5])
    assert channel.stop_requested() is False        # half a header
    m.send(STOP_FRAME[5:] + PONG_FRAME + request_frame("/kept"))
    assert channel.stop_requested() is True
    assert channel.stop_requested() is False        # taken out: it counts once
    kept = channel.receive()
    assert kept.stream == 0 and b"/kept" in kept.payload
    os.close(m.to_worker)
    m.fds.remove(m.to_worker)
    assert channel.stop_requested() is True         # EOF: nobody is listening any more


# ---- the body fails ----------------------------------------------------------------------------------

def failing_after(n: int):
    for i in range(n):
        yield f"block {i}".encode()
    raise RuntimeError("boom mid-stream")


def test_an_exception_mid_stream_is_an_error_frame_and_the_worker_goes_on(master, caplog):
    m = master(routes({"/fail": lambda request: Response(200, {}, failing_after(2))}))
    frames = m.response("/fail")
    assert [f.stream for f in frames] == [STREAM, STREAM, 0]
    assert frames[2].flags == ERROR and frames[2].payload == b"RuntimeError: boom mid-stream"
    record = next(r for r in caplog.records if "while its response was streamed" in r.getMessage())
    assert record.levelno == logging.ERROR and "in failing_after" in record.getMessage()
    assert blocks_of(m.response("/next")) == [b"plain"] and m.nothing_more()


def test_an_exception_before_the_first_block_is_an_error_frame_alone(master):
    frames = master(lambda request: Response(200, {}, failing_after(0))).response()
    assert len(frames) == 1 and frames[0].flags == ERROR and frames[0].stream == 0


@pytest.mark.parametrize("fails_in", ["iteration", "close"])
def test_close_is_called_when_the_body_fails_and_a_failing_close_is_an_error(master, fails_in):
    events = []

    class Body:
        def __iter__(self):
            yield b"a"
            if fails_in == "iteration":
                raise ValueError("in the body")

        def close(self):
            events.append("close")
            if fails_in == "close":
                raise ValueError("in close")

    frames = master(lambda request: Response(200, {}, Body())).response()
    assert events == ["close"]
    assert frames[-1].flags == ERROR and frames[-1].payload == f"ValueError: in {'the body' if fails_in == 'iteration' else 'close'}".encode()


# ---- WSGI: iterables and write() ------------------------------------------------------------------

def test_wsgi_blocks_given_to_write_go_out_at_once_then_the_iterable(master):
    written = threading.Event()
    go = threading.Event()
    closed = []

    class Rest:
        def __iter__(self):
            return iter([b"c", b"d"])

        def close(self):
            closed.append(True)

    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"a")
        write(b"")
        write(b"b")
        written.set()
        go.wait(TIMEOUT_S)
        return Rest()

    m = master(WSGIHandler(app))
    m.send(request_frame())
    first = m.receive()
    assert first.stream == STREAM and json.loads(head_and_body(first)[0])["status"] == 200
    assert head_and_body(first)[1] == b"a" and m.receive().payload == b"b"     # before the app returns
    assert written.wait(TIMEOUT_S)
    go.set()
    assert [m.receive().payload for _ in range(3)] == [b"c", b"d", b""] and closed == [True]


def test_wsgi_write_then_a_list_is_streamed_too(master):
    def app(environ, start_response):
        start_response("200 OK", [])(b"a")
        return [b"b"]
    frames = master(WSGIHandler(app)).response()
    assert blocks_of(frames) == [b"a", b"b", b""] and is_final(frames[-1])


def test_wsgi_write_of_the_whole_body_then_an_empty_list_is_one_frame_and_nothing_more(master):
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/next":
            start_response("200 OK", [])
            return [b"next"]
        start_response("200 OK", [("Content-Length", "5")])(b"hello")
        return []
    m = master(WSGIHandler(app))
    frames = m.response()
    assert len(frames) == 1 and frames[0].stream == 0 and head_and_body(frames[0])[1] == b"hello"
    assert blocks_of(m.response("/next")) == [b"next"] and m.nothing_more()


def test_wsgi_generator_may_call_start_response_as_it_begins(master):
    def app(environ, start_response):
        yield b""
        start_response("202 Accepted", [("X-Late", "1")])
        yield b"late"

    frames = master(WSGIHandler(app)).response()
    assert json.loads(head_and_body(frames[0])[0]) == {"status": 202, "headers": {"X-Late": ["1"]}}
    assert blocks_of(frames) == [b"late", b""]


def test_wsgi_write_after_stop_raises_client_disconnected_and_the_answer_ends_quietly(master, caplog):
    waiting, go = threading.Event(), threading.Event()
    raised = []

    def app(environ, start_response):
        write = start_response("200 OK", [])
        if environ["PATH_INFO"] != "/stream":
            return [b"plain"]
        write(b"a")
        waiting.set()
        go.wait(TIMEOUT_S)
        try:
            while True:
                write(b"more")
        except ClientDisconnected as exc:
            raised.append(isinstance(exc, OSError))
            raise

    m = master(WSGIHandler(app))
    m.send(request_frame("/stream"))
    m.receive()
    assert waiting.wait(TIMEOUT_S)
    m.send(STOP_FRAME)
    go.set()
    while not is_final(m.receive()):
        pass
    assert raised == [True]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert m.response() and m.nothing_more()


def test_wsgi_str_block_fails_the_request_by_name(master):
    def app(environ, start_response):
        start_response("200 OK", [])
        yield b"a"
        yield "text"
    frames = master(WSGIHandler(app)).response()
    assert frames[-1].flags == ERROR
    assert frames[-1].payload == b"TypeError: a WSGI application must give bytes, not str: 'text'"


def test_wsgi_close_is_called_when_the_client_leaves(master):
    body = Watched()

    def app(environ, start_response):
        start_response("200 OK", [])
        return body

    m = master(WSGIHandler(app))
    m.send(request_frame())
    m.receive()
    assert body.waiting.wait(TIMEOUT_S)
    m.send(STOP_FRAME)
    body.go.set()
    while not is_final(m.receive()):
        pass
    assert "close" in body.events
