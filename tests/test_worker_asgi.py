"""The async worker's side of the wire, in a real worker process: the test plays the master.

`python -m minirr.worker asgi_testapp:app --interface asgi` runs with its stdin and stdout
on pipes (tests/asgiworker.py); the test writes the master's frames and reads the worker's.
On the classic wire (frames with one option) it must send what a sync worker sends, byte
for byte; on the multiplexed wire (every frame's second option is a request id) it holds
many requests at once, ends each with one final frame, honours STOP and CREDIT, and exits
with a clear line on a frame that fits no request. Apps that must wait, wait for another
request (/wait/KEY until /release/KEY), never for time to pass.

test_asgi_served.py checks the same app behind a real master and real clients.
"""

from __future__ import annotations

import json
import os

import pytest

from asgiworker import CLASSIC_STOP, AsgiWorker, body_of, request_head
from minirr.wire import frame, multiplex
from minirr.wire.frame import CODEC_JSON, ERROR, STREAM, STREAM_WINDOW_BYTES

WINDOW = STREAM_WINDOW_BYTES


@pytest.fixture
def worker():
    """Factory: worker(app=..., args=...) -> an AsgiWorker past its handshake; killed at teardown."""
    started = []

    def start(app: str = "asgi_testapp:app", handshake: bool = True, **kwargs) -> AsgiWorker:
        started.append(AsgiWorker(app, **kwargs))
        if handshake:
            started[-1].hello = started[-1].handshake()
        return started[-1]
    yield start
    for item in started:
        item.close()


# ---- the handshake and the lifespan ---------------------------------------------------------

def test_the_handshake_answer_offers_request_ids_after_the_lifespan_startup(worker):
    w = worker(args=["--max-concurrency", "7"])
    assert w.hello == {"pid": w.proc.pid, "ids": 7, "websocket": 1}   # WebSocket events too (wire/websocket.py)
    w.request("/scope")
    scope = json.loads(body_of(w.answer()))
    assert scope["state"] == {"started_in": w.proc.pid}      # startup ran in this process, before the answer


def test_the_default_is_a_thousand_requests_at_once(worker):
    assert worker().hello["ids"] == 1000


def test_stop_runs_the_lifespan_shutdown_and_exits_0(worker):
    w = worker()
    assert w.stop() == 0
    assert f"lifespan shutdown in {w.proc.pid}" in w.log


def test_eof_ends_the_worker_at_once_with_requests_in_flight(worker):
    w = worker()
    w.request("/wait/never", request_id=1)
    w.proc.stdin.close()
    assert w.wait_exit() == 0
    assert "lifespan shutdown" not in w.log         # the master is gone: nobody waits for a clean end


@pytest.mark.parametrize("app,headline", [
    ("asgi_testapp:startup_fails", "bootstrap failed: the database at db:5432 refused the connection"),
    ("asgi_testapp:startup_exits", "bootstrap failed: Vault at http://vault:8200: sealed"),
    ("asgi_testapp:startup_raises", "bootstrap failed: JSONDecodeError: Expecting property name enclosed in double "
                                    "quotes: line 1 column 2 (char 1) (at asgi_testapp.py:"),
])
def test_a_failed_lifespan_startup_is_a_failed_bootstrap(worker, app, headline):
    w = worker(app, handshake=False)
    w.send(frame.encode(frame.CONTROL | CODEC_JSON, b'{"pid":1}'))
    assert w.wait_exit() == 3
    assert w.proc.stdout.read() == b""             # no handshake answer: the master counts a failed start
    first = w.log.splitlines()[0]
    assert first.startswith(f"ERROR minirr.worker: {headline}"), w.log


def test_an_app_without_lifespan_is_served_without_it_and_that_is_logged_once(worker):
    w = worker("asgi_testapp:no_lifespan")
    for _ in range(2):
        w.request("/")
        assert body_of(w.answer()) == b"{}"
    assert w.stop() == 0
    lines = [line for line in w.log.splitlines() if "lifespan" in line]
    assert lines == ["INFO minirr.worker: the application does not take part in the ASGI lifespan protocol "
                     "(ValueError: this app only speaks http, not lifespan (at asgi_testapp.py:"
                     f"{lines[0].split('asgi_testapp.py:')[1]}"], w.log


def test_a_failed_lifespan_shutdown_is_logged_and_the_worker_still_exits_0(worker):
    w = worker("asgi_testapp:shutdown_fails")
    assert w.stop() == 0
    assert "ERROR minirr.worker: lifespan shutdown failed: could not flush the cache" in w.log


def test_stop_lets_the_requests_in_flight_finish_first(worker):
    piece = 512 * 1024
    w = worker()
    w.request(f"/stream/s?n=4&size={piece}", request_id=1)
    w.frames_of(1, 2)                              # its window is spent: it waits for CREDIT
    w.send(frame.encode(frame.CONTROL | CODEC_JSON, b'{"stop":true}'))
    w.send(multiplex.credit_frame(piece, 1))
    assert len(body_of(w.frames_of(1, 1))) == piece      # still serving it
    w.send(multiplex.credit_frame(piece, 1))
    assert len(body_of(w.answer(1))) == piece
    assert w.wait_exit() == 0
    assert f"lifespan shutdown in {w.proc.pid}" in w.log


def test_a_request_after_the_stop_frame_breaks_the_channel(worker):
    w = worker()
    w.request("/wait/k", request_id=1)
    w.send(frame.encode(frame.CONTROL | CODEC_JSON, b'{"stop":true}'))
    w.request("/release/k", request_id=2)
    assert w.wait_exit() == 1
    assert "the master broke the frame channel: a request after the stop frame; the worker exits" in w.log


def test_after_stop_the_last_answer_goes_out_then_the_shutdown(worker):
    w = worker()
    w.request("/background/k", request_id=1)
    assert body_of(w.answer(1)) == b"answered first"
    w.request("/release/background-k", request_id=2)
    w.send(frame.encode(frame.CONTROL | CODEC_JSON, b'{"stop":true}'))
    assert body_of(w.answer(2)) == b"released background-k"
    assert w.wait_exit() == 0
    log = w.log
    assert log.index("background done k") < log.index("lifespan shutdown")


# ---- the classic wire: what a sync worker sends, byte for byte ------------------------------

WSGI_TWIN = """
def app(environ, start_response):
    start_response("200 OK", [("content-type", "text/plain")])
    if environ["PATH_INFO"].startswith("/stream"):
        return (block for block in [b"AAAAA", b"BBBBB", b"CCCCC"])
    return [environ["wsgi.input"].read()]
"""


def test_on_the_classic_wire_an_answer_is_the_bytes_a_wsgi_worker_sends(worker, tmp_path):
    (tmp_path / "wsgi_twin.py").write_text(WSGI_TWIN)
    sync = worker("wsgi_twin:app", interface="wsgi", args=["--path", str(tmp_path)])
    assert sync.hello == {"pid": sync.proc.pid}
    w = worker()
    for target in ("/echo", "/stream/x?n=3&size=5"):
        answers = []
        for each in (sync, w):
            each.request(target, body=b"hello")
            answers.append([frame.encode(item.flags, bytes(item.payload), item.options, item.stream)
                            for item in each.answer()])
        assert answers[0] == answers[1]
    assert len(answers[1]) == 4 and w.nothing_more()


def test_on_the_classic_wire_a_failure_is_the_error_frame_a_sync_worker_sends(worker):
    w = worker()
    w.request("/raise")
    [error] = w.answer()
    assert frame.encode(error.flags, bytes(error.payload), error.options, error.stream) == \
        frame.encode(ERROR, b"RuntimeError: raised before the answer")


def test_on_the_classic_wire_a_second_request_in_flight_breaks_the_channel(worker):
    w = worker()
    w.request("/wait/k")
    w.request("/echo")
    assert w.wait_exit() == 1
    assert ("ERROR minirr.worker: the master broke the frame channel: a second request while one is in flight: "
            "the classic wire carries one at a time; the worker exits") in w.log


def test_on_the_classic_wire_stop_ends_the_stream_and_the_next_request_is_served(worker):
    w = worker()
    w.request("/until-disconnect/k")
    first = w.frame()
    assert first.stream == STREAM and body_of([first]) == b"first"
    w.send(CLASSIC_STOP)
    final = w.frame()
    assert (final.flags, final.stream, final.options, bytes(final.payload)) == (CODEC_JSON, 0, (0,), b"")
    w.wait_for_log("k got http.disconnect")
    w.request("/seen/k")
    assert body_of(w.answer()) == b"http.disconnect" and w.nothing_more()   # what it sent after STOP was dropped
    w.send(CLASSIC_STOP)                           # a STOP that crossed the final frame: nothing
    w.request("/echo", body=b"still here")
    assert body_of(w.answer()) == b"still here"


def test_on_the_classic_wire_credit_breaks_the_channel(worker):
    w = worker()
    w.send(frame.encode(0, b"", (5,), frame.CREDIT))
    assert w.wait_exit() == 1
    assert "stream bits CREDIT, which the master does not send on the classic wire" in w.log


# ---- many requests at once -----------------------------------------------------------------

def test_many_requests_are_in_flight_at_once_and_each_answer_names_its_request(worker):
    w = worker()
    for request_id in (11, 12, 13):
        w.request(f"/wait/k{request_id}", request_id=request_id)
    w.request("/release/k12", request_id=14)
    assert body_of(w.answer(14)) == b"released k12"
    assert body_of(w.answer(12)) == b"k12 released"
    for request_id in (13, 11):
        w.request(f"/release/k{request_id}", request_id=20 + request_id)
        assert body_of(w.answer(request_id)) == f"k{request_id} released".encode()
    assert body_of(w.answer(31)) == b"released k11" and body_of(w.answer(33)) == b"released k13"
    assert w.nothing_more()


def test_every_frame_of_an_answer_carries_its_id(worker):
    w = worker()
    w.request("/stream/s?n=3&size=4", request_id=9)
    frames = w.answer(9)
    assert [(item.stream, item.options) for item in frames] == [
        (STREAM, (len(head_of_first(frames)), 9)), (STREAM, (0, 9)), (STREAM, (0, 9)), (0, (0, 9))]
    assert body_of(frames) == b"AAAABBBBCCCC"
    w.request("/raise", request_id=10)
    [error] = w.answer(10)
    assert error.flags == ERROR and error.options == (0, 10)
    assert bytes(error.payload) == b"RuntimeError: raised before the answer"


def head_of_first(frames) -> bytes:
    return bytes(frames[0].payload[:frames[0].options[0]])


def test_an_id_is_free_again_after_its_final_frame(worker):
    w = worker(args=["--max-concurrency", "1"])
    for body in (b"one", b"two", b"three"):
        w.request("/echo", request_id=5, body=body)
        assert body_of(w.answer(5)) == body


def test_more_requests_in_flight_than_offered_break_the_channel(worker):
    w = worker(args=["--max-concurrency", "2"])
    for request_id in (1, 2, 3):
        w.request("/wait/k", request_id=request_id)
    assert w.wait_exit() == 1
    assert "request 3 would be request 3 in flight; this worker takes 2 at once" in w.log


@pytest.mark.parametrize("frames,line", [
    ([multiplex.request_frame(request_head("/wait/k"), b"", 4)] * 2,
     "a second request with id 4, which is still in flight"),
    ([multiplex.stop_frame(8)], "STOP for request id 8, which is not in flight"),
    ([multiplex.credit_frame(10, 8)], "CREDIT for request id 8, which is not in flight"),
    ([multiplex.request_frame(request_head("/wait/k"), b"", 4), frame.encode(0, b"", (), frame.STOP)],
     "a frame with 0 options on the multiplexed wire"),
    ([frame.encode(CODEC_JSON, b"{}", (2, 0))], "a frame for request id 0: ids are 1 and up"),
    ([multiplex.request_frame(request_head("/wait/k"), b"", 4), multiplex.credit_frame(1, 4)],
     "CREDIT of 1 bytes, but only 0 are sent and not credited"),
])
def test_a_frame_that_fits_no_request_breaks_the_channel(worker, frames, line):
    w = worker()
    for item in frames:
        w.send(item)
    assert w.wait_exit() == 1
    assert f"ERROR minirr.worker: the master broke the frame channel: {line}" in w.log


def test_a_stop_or_credit_that_crossed_the_final_frame_is_nothing(worker):
    w = worker()
    w.request("/echo", request_id=3, body=b"x")
    assert body_of(w.answer(3)) == b"x"
    w.send(multiplex.stop_frame(3) + multiplex.credit_frame(1, 3))
    w.request("/echo", request_id=3, body=b"again")
    assert body_of(w.answer(3)) == b"again"
    w.send(multiplex.stop_frame(3))
    w.request("/echo", request_id=4, body=b"and on")
    assert body_of(w.answer(4)) == b"and on"


def test_stop_ends_one_request_at_once_and_the_app_sees_http_disconnect(worker):
    w = worker()
    w.request("/until-disconnect/d", request_id=2)
    w.request("/wait/other", request_id=3)
    [first] = w.frames_of(2, 1)
    assert first.stream == STREAM and body_of([first]) == b"first"
    w.send(multiplex.stop_frame(2))
    [final] = w.frames_of(2, 1)
    assert (final.stream, final.options, bytes(final.payload)) == (0, (0, 2), b"")
    w.wait_for_log("d got http.disconnect")
    w.request("/release/other", request_id=2)          # id 2 is free again; 3 still waits
    assert body_of(w.answer(2)) == b"released other"
    assert body_of(w.answer(3)) == b"other released" and w.nothing_more()


def test_stop_before_the_answer_started_ends_the_request_with_an_empty_final_frame(worker):
    w = worker()
    w.request("/wait/s", request_id=6)
    w.send(multiplex.stop_frame(6))
    [final] = w.answer(6)
    assert (final.flags, final.stream, final.options, bytes(final.payload)) == (CODEC_JSON, 0, (0, 6), b"")
    w.request("/release/s", request_id=7)
    assert body_of(w.answer(7)) == b"released s" and w.nothing_more()   # /wait/s answered into the void


# ---- the CREDIT window ---------------------------------------------------------------------

def test_a_stream_waits_for_credit_once_its_window_is_spent(worker):
    piece = 64 * 1024
    w = worker()
    w.request(f"/stream/big?n=40&size={piece}", request_id=1)
    frames = w.frames_of(1, WINDOW // piece)
    assert len(body_of(frames)) == WINDOW
    w.request("/progress/big", request_id=2)            # the app is stuck in its next send()
    assert body_of(w.answer(2)) == str(WINDOW // piece).encode()
    w.send(multiplex.credit_frame(piece, 1))
    [more] = w.frames_of(1, 1)
    assert len(body_of([more])) == piece
    w.request("/progress/big", request_id=2)
    assert body_of(w.answer(2)) == str(WINDOW // piece + 1).encode()
    w.send(multiplex.credit_frame(WINDOW, 1))             # all of it back, and each piece as it comes:
    received = len(body_of(frames + [more]))              # the master's part, as its client reads
    while True:
        [item] = w.frames_of(1, 1)
        received += len(body_of([item]))
        if not item.stream & STREAM:
            break
        w.send(multiplex.credit_frame(len(body_of([item])), 1))
    assert received == 40 * piece


def test_a_piece_larger_than_the_window_goes_out_in_window_sized_frames(worker):
    w = worker()
    w.request(f"/stream/huge?n=1&size={WINDOW + 10}", request_id=1)
    [first] = w.frames_of(1, 1)
    assert first.stream == STREAM and len(body_of([first])) == WINDOW
    w.send(multiplex.credit_frame(WINDOW, 1))
    rest = w.answer(1)
    assert [len(body_of([item])) for item in rest] == [10, 0]


def test_a_slow_client_holds_up_its_own_request_only(worker):
    w = worker()
    w.request(f"/stream/slow?n=20&size={256 * 1024}", request_id=1)
    w.frames_of(1, 4)                                     # its window is spent; no CREDIT comes
    w.request("/stream/fast?n=30&size=4096", request_id=2)
    assert len(body_of(w.answer(2))) == 30 * 4096


def test_stop_frees_a_request_waiting_for_credit(worker):
    w = worker()
    w.request(f"/stream/stuck?n=10&size={512 * 1024}", request_id=1)
    w.frames_of(1, 2)
    w.send(multiplex.stop_frame(1))
    [final] = w.answer(1)
    assert (final.stream, final.options, bytes(final.payload)) == (0, (0, 1), b"")
    w.request("/echo", request_id=1, body=b"next")
    assert body_of(w.answer(1)) == b"next" and w.nothing_more()


def test_a_master_that_reads_nothing_makes_send_wait_not_the_worker(worker):
    w = worker()
    w.request(f"/stream/full?n=16&size={64 * 1024}", request_id=1)   # fills the pipe and the outbox
    w.request("/log?msg=the+loop+still+runs", request_id=2)
    w.wait_for_log("the loop still runs")                           # read from stderr, not the pipe
    assert len(body_of(w.answer(1))) == 16 * 64 * 1024 and body_of(w.answer(2)) == b"logged"


# ---- requests and answers ------------------------------------------------------------------

def test_a_large_body_arrives_whole(worker):
    w = worker()
    body = os.urandom(3 * 1024 * 1024)
    w.request("/echo", request_id=1, body=body, method="POST")
    frames = w.answer(1)
    assert len(frames) == 1 and body_of(frames) == body


@pytest.mark.parametrize("target,frames_seen", [
    ("/raise", [ERROR]),
    ("/raise-after-start", [ERROR]),
    ("/returns-nothing", [ERROR]),
    ("/returns-after-start", [ERROR]),
    ("/raise-mid-stream", [CODEC_JSON, ERROR]),
    ("/unfinished-stream", [CODEC_JSON, ERROR]),
    ("/bad-status", [ERROR]),
    ("/bad-header", [ERROR]),
])
def test_an_app_that_fails_gets_an_error_frame_and_the_worker_goes_on(worker, target, frames_seen):
    w = worker()
    w.request(target, request_id=1)
    frames = w.answer(1)
    assert [item.flags for item in frames] == frames_seen
    assert w.wait_for_log(f"ERROR minirr.worker: request GET {target} ")
    w.request("/echo", request_id=1, body=b"fine")
    assert body_of(w.answer(1)) == b"fine"


def test_the_error_lines_say_what_went_wrong(worker):
    w = worker()
    for number, target in enumerate(["/returns-nothing", "/bad-status", "/unfinished-stream"], 1):
        w.request(target, request_id=number)
        w.answer(number)
    w.wait_for_log("unfinished-stream returned before its body was complete")
    log = w.log
    assert "request GET /returns-nothing returned without a response (no http.response.start)" in log
    assert "ASGI: http.response.start status 99 is not a whole number 200..599" in log


def test_a_first_piece_as_long_as_the_content_length_is_the_whole_answer(worker):
    w = worker()
    w.request("/length-then-more", request_id=1)
    [whole] = w.answer(1)
    assert whole.stream == 0 and body_of([whole]) == b"12345"
    w.wait_for_log("went on past its Content-Length: 3 more bytes dropped")


def test_work_after_the_answer_does_not_hold_the_request(worker):
    w = worker(args=["--max-concurrency", "1"])
    w.request("/background/b", request_id=1)
    assert body_of(w.answer(1)) == b"answered first"
    w.request("/release/background-b", request_id=1)      # id 1 is free: its request ended
    assert body_of(w.answer(1)) == b"released background-b"
    w.wait_for_log("background done b")


def test_a_child_the_app_forks_never_answers(worker):
    w = worker()
    w.request("/fork", request_id=1)
    assert body_of(w.answer(1)) == b"parent answered"
    w.wait_for_log(r"forked by the app in worker pid \d+, returned into the worker loop")
    w.request("/echo", request_id=2, body=b"after")
    assert body_of(w.answer(2)) == b"after" and w.nothing_more()


def test_the_scope(worker):
    w = worker()
    head = request_head("/scope/a%20b/%C3%A9?x=1&y=%20", "POST", headers=[("X-Test", "1"), ("X-Test", "2"),
                                                                   ("Content-Type", "text/plain")],
                        remote_addr="10.1.2.3", protocol="HTTP/1.0", host="example.com:8443")
    w.send(multiplex.request_frame(head, b"body", 1))
    scope = json.loads(body_of(w.answer(1)))
    assert scope == {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.0", "method": "POST",
        "scheme": "http", "path": "/scope/a b/é", "raw_path": "/scope/a%20b/%C3%A9", "query_string": "x=1&y=%20",
        "root_path": "", "headers": [["host", "example.com:8443"], ["x-test", "1"], ["x-test", "2"],
                                     ["content-type", "text/plain"]],
        "client": ["10.1.2.3", 0], "server": ["example.com", 8443], "state": {"started_in": w.proc.pid},
        "first_receive": {"type": "http.request", "more_body": False, "length": 4}, "served_by": w.proc.pid}
