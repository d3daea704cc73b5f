"""One accepted connection (minirr.master.connection) on a real socketpair, with a fake selector
(readiness asked of the kernel, timeout 0), a fake clock and a recording owner."""

from __future__ import annotations

import os
import socket

import pytest

from fakes import READ, WRITE, FakeClock, FakeSelector, made_and_finished, read_available, spin
from minirr.master import control
from minirr.wire import frame
from minirr.master.connection import CONTINUE_RESPONSE, HIGH_WATER_BYTES, LOW_WATER_BYTES, Connection
from minirr.master.control import Call, CallParser, ControlError
from minirr.errors import MinirrError, ProtocolError
from minirr.http.parser import RequestLimits, RequestParser
from minirr.master.lifecycle import (CLOSED, IDLE, LINGER_S, LINGERING, READING, SENDING, STREAMING, WAITING,
                              ConnectionLimits)
from minirr.master.loop import Loop
from minirr.wire.messages import Request

GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
GET_B = b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
LIMITS = ConnectionLimits(header_timeout=10.0, body_timeout=30.0, keepalive_timeout=5.0)
BIG = 4 * 1024 * 1024                  # far more than a socketpair's buffers hold


class Owner:
    """Records what the connection tells its owner; answers rejections with a marker."""

    def __init__(self) -> None:
        self.calls = []
        self.raise_on_request = None

    def on_request(self, conn, request) -> None:
        self.calls.append(("request", request))
        if self.raise_on_request is not None:
            raise self.raise_on_request

    def on_bad_request(self, conn, error) -> None:
        self.calls.append(("bad", error))

    def rejection(self, status: int, message: str) -> bytes:
        return b"REJECTED %d %s\n" % (status, message.encode())

    def on_closed(self, conn) -> None:
        self.calls.append(("closed",))

    def on_eof(self, conn) -> None:
        self.calls.append(("eof",))

    def on_drain(self, conn) -> None:
        self.calls.append(("drain", len(conn.out)))

    def requests(self) -> list:
        return [call[1] for call in self.calls if call[0] == "request"]


class FakeListener:
    def __init__(self) -> None:
        self.forgotten = []

    def forget(self, conn) -> None:
        self.forgotten.append(conn)


class Setup:
    def __init__(self, parser=None, limits: ConnectionLimits = LIMITS) -> None:
        self.ours, self.peer = socket.socketpair()
        self.ours.setblocking(False)
        self.peer.setblocking(False)
        self.clock = FakeClock()
        self.loop = Loop(selector=FakeSelector(real=True), clock=self.clock)
        self.owner = Owner()
        self.listener = FakeListener()
        self.conn = Connection(self.loop, self.ours, "192.0.2.1", parser or RequestParser(RequestLimits()),
                               self.owner, limits, self.listener, self.clock())
        self.conn.start()

    def round(self, count: int = 1) -> None:
        spin(self.loop, count)

    def send(self, data: bytes) -> None:
        self.peer.sendall(data)
        self.round()

    def received(self) -> bytes:
        """What the peer can read now (without waiting)."""
        return read_available(lambda: self.peer.recv(1 << 20))

    def peer_sees_eof(self) -> bool:
        try:
            return self.peer.recv(1) == b""
        except BlockingIOError:
            return False

    def watched(self) -> int:
        return self.loop.selector.events_of(self.conn.fd)

    def close(self) -> None:
        self.conn.close()
        self.peer.close()


@pytest.fixture
def setup():
    yield from made_and_finished(Setup, Setup.close)


def assert_closed(s: Setup) -> None:
    assert s.conn.phase is CLOSED
    assert s.ours.fileno() == -1
    assert s.listener.forgotten == [s.conn]
    assert s.owner.calls[-1] == ("closed",)
    assert s.watched() == 0


# ---- a request, its answer, the next one ---------------------------------------------------------

def test_a_request_goes_to_the_owner_and_the_connection_waits(setup):
    s = setup()
    assert s.watched() == READ
    s.send(GET)
    [request] = s.owner.requests()
    assert isinstance(request, Request) and request.path == "/a"
    assert s.conn.phase is WAITING


def test_respond_sends_the_bytes_and_keeps_the_connection_alive(setup):
    s = setup()
    s.send(GET)
    s.clock.advance(3.0)
    s.conn.respond(b"ANSWER A", keep_alive=True)
    assert s.received() == b"ANSWER A"
    assert s.conn.phase is IDLE and s.conn.served == 1
    assert s.conn.idle_since == s.clock()
    assert s.watched() == READ
    s.send(GET_B)
    assert [r.path for r in s.owner.requests()] == ["/a", "/b"]
    assert s.conn.phase is WAITING


def test_respond_without_keep_alive_closes(setup):
    s = setup()
    s.send(GET)
    s.conn.respond(b"LAST", keep_alive=False)
    assert s.received() == b"LAST" and s.peer_sees_eof()
    assert_closed(s)


def test_respond_without_keep_alive_lingers_when_bytes_are_unread(setup):
    """Pipelined bytes past a last answer: half-close and drain the peer, so that the
    kernel does not answer them with a reset that could destroy the answer."""
    s = setup()
    s.send(GET + GET_B)
    assert s.conn.parser.buffered_bytes == len(GET_B)
    s.conn.respond(b"LAST", keep_alive=False)
    assert s.conn.phase is LINGERING
    assert s.conn.linger_until == s.clock() + LINGER_S
    assert s.received() == b"LAST" and s.peer_sees_eof()     # our side is shut for writing
    s.peer.sendall(b"more the peer sends")                    # drained and dropped
    s.round()
    assert s.conn.phase is LINGERING
    s.peer.shutdown(socket.SHUT_WR)                           # the peer closes too: done
    s.round()
    assert_closed(s)
    assert s.owner.requests()[-1].path == "/a"                # /b was never parsed


def test_lingering_ends_after_linger_s(setup):
    s = setup()
    s.send(GET + GET_B)
    s.conn.respond(b"LAST", keep_alive=False)
    s.clock.advance(LINGER_S - 0.01)
    s.conn.expire(s.clock())
    assert s.conn.phase is LINGERING
    s.clock.advance(0.01)
    s.conn.expire(s.clock())
    assert_closed(s)


def test_pipelined_requests_wait_until_the_answer_is_out(setup):
    s = setup()
    s.send(GET + GET_B)
    assert [r.path for r in s.owner.requests()] == ["/a"]
    s.conn.respond(b"x" * BIG, keep_alive=True)                # the peer does not read yet
    assert s.conn.phase is SENDING and s.conn.out
    s.round(3)
    assert [r.path for r in s.owner.requests()] == ["/a"]     # /b waits for /a's answer
    got = b""
    for _ in range(1000):
        got += s.received()
        s.round()
        if len(s.owner.requests()) == 2:
            break
    got += s.received()
    assert got == b"x" * BIG and not s.conn.out
    assert [r.path for r in s.owner.requests()] == ["/a", "/b"]
    s.conn.respond(b"ANSWER B", keep_alive=True)
    assert s.received() == b"ANSWER B"


def test_the_next_pipelined_request_is_parsed_at_the_end_of_the_round_not_inside_respond(setup):
    s = setup()
    s.send(GET + GET_B)
    s.conn.respond(b"A", keep_alive=True)
    assert [r.path for r in s.owner.requests()] == ["/a"]     # not re-entered from respond()
    s.loop.run_soon()
    assert [r.path for r in s.owner.requests()] == ["/a", "/b"]


def test_pipelined_bytes_past_pipeline_limit_are_not_read(setup):
    s = setup(limits=ConnectionLimits(pipeline_limit=16))
    s.send(GET + GET_B + GET)
    assert s.conn.phase is WAITING and s.conn.parser.buffered_bytes > 16
    assert s.watched() == 0                                   # the kernel holds the rest
    s.conn.respond(b"A", keep_alive=True)
    s.round()
    assert [r.path for r in s.owner.requests()] == ["/a", "/b"]
    assert s.watched() == 0                                   # the third is still buffered
    s.conn.respond(b"B", keep_alive=True)
    s.round()
    assert [r.path for r in s.owner.requests()] == ["/a", "/b", "/a"]
    assert s.watched() == READ                                # nothing buffered: it reads again


def test_a_request_answered_whole_within_the_round_stays_readable(setup):
    s = setup(limits=ConnectionLimits(pipeline_limit=1 << 20))
    s.send(GET)
    assert s.watched() == READ                                # WAITING still reads (pipelining)


def test_expect_100_continue_is_answered_and_the_body_read(setup):
    s = setup()
    s.send(b"POST /u HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    assert s.received() == CONTINUE_RESPONSE
    assert s.conn.phase is READING and not s.owner.requests()
    s.send(b"hello")
    assert s.owner.requests()[0].body == b"hello"


# ---- refusals ----------------------------------------------------------------------------------------

def test_a_protocol_error_goes_to_the_owner(setup):
    s = setup()
    s.send(b"BAD\r\n\r\n")
    [(kind, error)] = s.owner.calls
    assert kind == "bad" and isinstance(error, ProtocolError) and error.status == 400


def test_reject_answers_and_closes_after_lingering(setup):
    s = setup()
    s.send(b"GET / HTTP/1.1\r\nHo")                          # a partial head
    assert s.conn.phase is READING
    s.conn.reject(408, "too slow")
    assert s.received() == b"REJECTED 408 too slow\n" and s.peer_sees_eof()
    assert s.conn.phase is LINGERING
    s.peer.close()
    s.round()
    assert_closed(s)


def test_reject_with_own_bytes(setup):
    s = setup()
    s.send(b"GET / HTTP/1.1\r\nHo")
    s.conn.reject(400, "no", data=b"custom")
    assert s.received() == b"custom"


def test_a_bad_request_followed_by_eof_is_answered_then_closed(setup):
    s = setup()
    s.peer.sendall(b"BAD\r\n\r\n")
    s.peer.shutdown(socket.SHUT_WR)
    s.round()
    [(_, error)] = s.owner.calls
    s.conn.reject(error.status, error.msg)                    # as the frontend does
    assert s.conn.phase is LINGERING
    s.round()                                                 # the peer's EOF
    assert s.received() == b"REJECTED 400 " + error.msg.encode() + b"\n"
    assert_closed(s)


# ---- backpressure -------------------------------------------------------------------------------------

def test_a_large_answer_the_peer_does_not_read_waits_in_out_then_drains(setup):
    s = setup()
    s.send(GET)
    s.conn.start_stream(b"HEAD ")
    assert s.conn.phase is STREAMING
    s.conn.write(b"y" * BIG)
    assert s.conn.unsent > HIGH_WATER_BYTES and s.conn.backlogged
    assert s.watched() == READ | WRITE
    s.conn.wait_for_drain()
    s.round(3)
    assert ("drain", 0) not in s.owner.calls and not [c for c in s.owner.calls if c[0] == "drain"]
    got = b""
    for _ in range(1000):
        got += s.received()
        s.round()
        if [c for c in s.owner.calls if c[0] == "drain"]:
            break
    [(_, left)] = [c for c in s.owner.calls if c[0] == "drain"]
    assert left < LOW_WATER_BYTES and not s.conn.backlogged
    s.conn.respond(b" END", keep_alive=True)
    for _ in range(1000):
        got += s.received()
        s.round()
        if s.conn.phase is IDLE:
            break
    got += s.received()
    assert got == b"HEAD " + b"y" * BIG + b" END"
    assert s.conn.phase is IDLE and s.watched() == READ
    assert len([c for c in s.owner.calls if c[0] == "drain"]) == 1   # once per wait_for_drain


def test_not_backlogged_below_high_water(setup):
    s = setup()
    s.send(GET)
    s.conn.start_stream(b"HEAD")
    s.conn.write(b"z" * 1000)
    assert not s.conn.backlogged and s.conn.unsent == 0


def test_an_answer_not_read_for_body_timeout_is_closed(setup):
    s = setup()
    s.send(GET)
    s.conn.respond(b"x" * BIG, keep_alive=True)
    s.clock.advance(29.9)
    s.conn.expire(s.clock())
    assert s.conn.phase is SENDING
    s.clock.advance(0.1)
    s.conn.expire(s.clock())
    assert_closed(s)
    assert not s.conn.out                                     # the unsent bytes are let go


# ---- time -----------------------------------------------------------------------------------------------

def test_an_idle_connection_without_a_request_closes_after_header_timeout(setup):
    s = setup()
    s.clock.advance(9.9)
    s.conn.expire(s.clock())
    assert s.conn.phase is IDLE
    s.clock.advance(0.1)
    s.conn.expire(s.clock())
    assert s.received() == b"" and s.peer_sees_eof()          # closed without a word
    assert_closed(s)


def test_an_idle_keep_alive_connection_closes_after_keepalive_timeout(setup):
    s = setup()
    s.send(GET)
    s.clock.advance(100.0)                                    # the worker took its time
    s.conn.respond(b"A", keep_alive=True)
    s.clock.advance(4.9)
    s.conn.expire(s.clock())
    assert s.conn.phase is IDLE
    s.clock.advance(0.1)
    s.conn.expire(s.clock())
    assert_closed(s)


def test_a_head_not_complete_within_header_timeout_is_answered_408(setup):
    s = setup()
    s.send(b"GET / HTTP/1.1\r\nHo")
    s.clock.advance(10.0)
    s.conn.expire(s.clock())
    assert s.received() == b"REJECTED 408 request header not complete within 10s\n"
    assert s.conn.phase is LINGERING


def test_a_waiting_connection_does_not_expire(setup):
    s = setup()
    s.send(GET)
    s.clock.advance(1e6)
    s.conn.expire(s.clock())
    assert s.conn.phase is WAITING


# ---- containment and the peer's end -------------------------------------------------------------------------

def test_contain_answers_500_when_nothing_was_sent(setup):
    s = setup()
    s.owner.raise_on_request = RuntimeError("the owner failed")
    s.send(GET)                                               # the loop contains it
    assert s.received() == b"REJECTED 500 internal server error\n"
    assert_closed(s)


def test_contain_after_a_streamed_head_only_closes(setup):
    s = setup()
    s.send(GET)
    s.conn.start_stream(b"HEAD")
    s.conn.contain(RuntimeError("mid-answer"))
    assert s.received() == b"HEAD" and s.peer_sees_eof()
    assert_closed(s)


def test_eof_from_an_idle_peer_closes(setup):
    s = setup()
    s.peer.shutdown(socket.SHUT_WR)
    s.round()
    assert_closed(s)


def test_a_half_closed_peer_still_gets_its_answer(setup):
    s = setup()
    s.peer.sendall(GET)
    s.peer.shutdown(socket.SHUT_WR)
    s.round(2)                                                # the request, then the EOF
    assert s.conn.phase is WAITING and s.conn.peer_closed
    assert s.watched() == 0                                   # EOF stays readable: not watched
    s.conn.respond(b"A", keep_alive=True)
    s.round()
    assert s.received() == b"A"
    assert_closed(s)


def test_a_half_closed_peer_gets_every_pipelined_answer(setup):
    s = setup()
    s.peer.sendall(GET + GET_B)
    s.peer.shutdown(socket.SHUT_WR)
    s.round()
    s.conn.respond(b"A", keep_alive=True)
    s.round()
    assert [r.path for r in s.owner.requests()] == ["/a", "/b"]
    s.conn.respond(b"B", keep_alive=True)
    s.round()
    assert s.received() == b"AB"
    assert_closed(s)


def test_eof_mid_head_closes_without_an_answer(setup):
    s = setup()
    s.peer.sendall(b"GET / HTTP/1.1\r\nHo")
    s.peer.shutdown(socket.SHUT_WR)
    s.round(2)
    assert s.received() == b""
    assert_closed(s)


def test_writing_to_a_peer_that_is_gone_closes(setup):
    s = setup()
    s.send(GET)
    s.peer.close()
    s.conn.respond(b"A" * 1000, keep_alive=True)
    assert s.conn.phase is CLOSED and s.listener.forgotten == [s.conn]


def test_an_answer_for_a_closed_connection_is_dropped(setup):
    s = setup()
    s.send(GET)
    s.conn.close()
    s.conn.respond(b"late", keep_alive=True)
    s.conn.start_stream(b"late")
    s.conn.write(b"late")
    assert s.conn.phase is CLOSED and s.owner.calls.count(("closed",)) == 1


# ---- a body of tiny chunks: a budget a round, others in between ------------------------------------------

TINY_CHUNKED = (b"POST /tiny HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                + b"5\r\nabcde\r\n" * 6000 + b"0\r\n\r\n")          # 30,000 bytes of framing


def test_a_body_of_tiny_chunks_is_parsed_a_budget_at_a_time_while_other_clients_are_served(setup):
    """The parser yields after chunked.FRAMING_BYTES_PER_READ of framing; the connection
    parses the rest at the end of the round (loop.soon), reading nothing more meanwhile,
    so a client whose request is ready in the same round is not kept waiting."""
    s = setup()
    other = socket.socketpair()
    other[0].setblocking(False)
    owner = Owner()
    conn = Connection(s.loop, other[0], "192.0.2.2", RequestParser(RequestLimits()), owner, LIMITS,
                      s.listener, s.clock())
    conn.start()
    try:
        s.peer.sendall(TINY_CHUNKED)
        other[1].sendall(GET_B)
        s.round()
        assert [r.path for r in owner.requests()] == ["/b"]         # served in the first round
        assert s.owner.requests() == [] and s.conn.phase is READING  # the tiny chunks: not yet
        assert s.conn.deferred and s.watched() == 0                   # ... nor read meanwhile
        rounds = 1
        while not s.owner.requests():
            s.round()
            rounds += 1
            assert rounds < 50
        [request] = s.owner.requests()
        assert request.body == b"abcde" * 6000 and rounds > 1
        assert not s.conn.deferred and s.watched() == READ
    finally:
        conn.close()
        other[1].close()


def test_a_connection_closed_while_its_parsing_is_deferred_is_left_alone(setup):
    s = setup()
    s.peer.sendall(TINY_CHUNKED)
    s.loop.run_once(0)                     # (run_once runs the deferred parse at its end)
    assert s.conn.deferred
    s.conn.close()
    s.round(3)
    assert_closed(s) is None and s.owner.requests() == []


# ---- the operator's control connection (control.CallParser) ----------------------------------------------------

def test_a_control_call_goes_to_the_owner_and_its_answer_back(setup):
    s = setup(parser=CallParser())
    s.send(control.encode_call(7, "workers", {}))
    assert s.owner.requests() == [Call(7, "workers", {})]
    assert s.conn.phase is WAITING
    s.conn.respond(control.encode_answer(7, "workers", {"pid": 1}), keep_alive=True)
    [item] = frame.FrameDecoder().feed(s.received())
    assert control.decode_answer(item).result == {"pid": 1}
    assert s.conn.phase is IDLE
    s.send(control.encode_call(8, "stop", {"force": False}))
    assert s.owner.requests()[-1] == Call(8, "stop", {"force": False})


def test_two_control_calls_in_one_write_are_answered_in_turn(setup):
    s = setup(parser=CallParser())
    s.send(control.encode_call(1, "workers", {}) + control.encode_call(2, "workers", {}))
    assert [c.seq for c in s.owner.requests()] == [1]
    s.conn.respond(b"one", keep_alive=True)
    s.round()
    assert [c.seq for c in s.owner.requests()] == [1, 2]


def test_a_broken_control_frame_goes_to_the_owner(setup):
    s = setup(parser=CallParser())
    s.send(b"this is not a frame at all")
    [(kind, error)] = s.owner.calls
    assert kind == "bad" and isinstance(error, ControlError) and error.broken


def test_an_invalid_control_call_names_its_seq(setup):
    s = setup(parser=CallParser())
    s.send(frame.encode(frame.CODEC_JSON, b"workers[1]", (5, 7)))
    [(kind, error)] = s.owner.calls
    assert kind == "bad" and error.seq == 5 and not error.broken


def test_a_partial_control_frame_times_out_with_the_owners_rejection(setup):
    s = setup(parser=CallParser())
    s.send(control.encode_call(1, "workers", {})[:5])
    assert s.conn.phase is READING
    s.clock.advance(10.0)
    s.conn.expire(s.clock())
    assert s.received().startswith(b"REJECTED 408")


def test_control_calls_pipelined_behind_a_pending_one_stop_the_reading_at_pipeline_limit_bytes(setup):
    """While a call waits for its answer (a reset), the calls behind it are held decoded;
    past pipeline_limit bytes of them the connection is not read, however few calls that is."""
    s = setup(parser=CallParser(), limits=ConnectionLimits(pipeline_limit=64 * 1024))
    s.send(control.encode_call(1, "reset", {}))
    assert s.conn.phase is WAITING and s.watched() == READ
    big = control.encode_call(2, "workers", {"pad": "x" * 60_000})
    s.send(big)
    assert s.watched() == READ                                # 60 KB: under the limit
    s.send(big)
    assert s.conn.parser.buffered_bytes == 2 * len(big)
    assert s.watched() == 0                                   # two calls, 120 KB: not read


def test_eof_on_a_control_connection_closes(setup):
    s = setup(parser=CallParser())
    s.peer.shutdown(socket.SHUT_WR)
    s.round()
    assert_closed(s)


# ---- a file region after the head (respond_file, os.sendfile) ------------------------------------------

def file_of(tmp_path, data: bytes) -> int:
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    return os.open(str(path), os.O_RDONLY)


def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_a_file_region_follows_its_head_and_its_descriptor_is_closed(setup, tmp_path):
    s = setup()
    s.send(GET)
    fd = file_of(tmp_path, b"0123456789")
    s.conn.respond_file(b"HEAD\r\n\r\n", fd, 2, 5, keep_alive=True)
    assert s.received() == b"HEAD\r\n\r\n23456"
    assert not fd_is_open(fd) and s.conn.file_fd == -1
    assert s.conn.phase is IDLE and s.conn.served == 1 and s.watched() == READ
    s.send(GET_B)                                        # and the next request is read
    assert [r.path for r in s.owner.requests()] == ["/a", "/b"]


def test_a_large_file_goes_out_as_the_peer_reads_and_counts_as_unsent(setup, tmp_path):
    s = setup()
    s.send(GET)
    data = bytes(range(256)) * (BIG // 256)
    fd = file_of(tmp_path, data)
    s.conn.respond_file(b"H\r\n\r\n", fd, 0, len(data), keep_alive=True)
    assert s.conn.phase is SENDING and s.watched() & WRITE
    assert 0 < s.conn.unsent <= len(data) and s.conn.descriptors() == [s.ours, fd]
    got = bytearray()
    for _ in range(1000):
        got += s.received()
        s.round()
        if s.conn.phase is IDLE:
            break
    got += s.received()
    assert bytes(got) == b"H\r\n\r\n" + data
    assert not fd_is_open(fd) and s.conn.unsent == 0 and s.watched() == READ


def test_a_head_that_waits_in_out_goes_before_the_file(setup, tmp_path):
    s = setup()
    s.send(GET)
    head = b"H" * BIG                                    # more than the socket takes at once
    fd = file_of(tmp_path, b"FILE")
    s.conn.respond_file(head, fd, 0, 4, keep_alive=True)
    assert s.conn.out and s.conn.file_left == 4
    got = bytearray()
    for _ in range(1000):
        got += s.received()
        s.round()
        if s.conn.phase is IDLE:
            break
    got += s.received()
    assert bytes(got) == head + b"FILE" and not fd_is_open(fd)


def test_without_keep_alive_the_connection_closes_after_the_file(setup, tmp_path):
    s = setup()
    s.send(GET)
    fd = file_of(tmp_path, b"abc")
    s.conn.respond_file(b"H\r\n\r\n", fd, 0, 3, keep_alive=False)
    assert s.received() == b"H\r\n\r\nabc" and s.peer_sees_eof()
    assert_closed(s)
    assert not fd_is_open(fd)


def test_a_reader_that_stops_is_closed_by_body_timeout_and_the_file_is_released(setup, tmp_path):
    s = setup()
    s.send(GET)
    fd = file_of(tmp_path, b"x" * BIG)
    s.conn.respond_file(b"H\r\n\r\n", fd, 0, BIG, keep_alive=True)
    s.clock.advance(LIMITS.body_timeout)
    s.conn.expire(s.clock())
    assert_closed(s)
    assert not fd_is_open(fd)


def test_a_slow_reader_is_held_to_min_send_rate_by_the_file_bytes_it_takes(setup, tmp_path):
    s = setup(limits=ConnectionLimits(body_timeout=10.0, min_send_rate=1 << 20))
    s.send(GET)
    fd = file_of(tmp_path, b"x" * BIG)
    s.conn.respond_file(b"H\r\n\r\n", fd, 0, BIG, keep_alive=True)
    for _ in range(10):                                  # a little progress every second ...
        s.clock.advance(1.0)
        s.peer.recv(4096)
        s.round()
        s.conn.expire(s.clock())
    assert s.conn.sent_since > 0
    assert s.conn.phase is CLOSED and not fd_is_open(fd)   # ... far below 1 MB/s


def test_the_peer_going_away_mid_file_closes_and_releases(setup, tmp_path):
    s = setup()
    s.send(GET)
    fd = file_of(tmp_path, b"x" * BIG)
    s.conn.respond_file(b"H\r\n\r\n", fd, 0, BIG, keep_alive=True)
    s.peer.close()
    s.round(5)
    assert s.conn.phase is CLOSED and not fd_is_open(fd)


def test_close_mid_file_releases_it(setup, tmp_path):
    s = setup()
    s.send(GET)
    fd = file_of(tmp_path, b"x" * BIG)
    s.conn.respond_file(b"H\r\n\r\n", fd, 0, BIG, keep_alive=True)
    s.conn.close()
    assert not fd_is_open(fd) and s.conn.unsent == 0


def test_a_file_that_shrank_while_sent_closes_the_connection(setup, tmp_path):
    """The head promised `count` bytes: fewer than that cannot be a whole answer."""
    s = setup()
    s.send(GET)
    fd = file_of(tmp_path, b"short")
    s.conn.respond_file(b"H\r\n\r\n", fd, 0, 100, keep_alive=True)
    assert s.received() == b"H\r\n\r\nshort"
    assert s.conn.phase is CLOSED and not fd_is_open(fd)


def test_nothing_may_be_written_while_a_file_is_being_sent(setup, tmp_path):
    s = setup()
    s.send(GET)
    fd = file_of(tmp_path, b"x" * BIG)
    s.conn.respond_file(b"H\r\n\r\n", fd, 0, BIG, keep_alive=True)
    with pytest.raises(MinirrError, match="while a file answer is being sent"):
        s.conn.write(b"more")


def test_an_empty_region_is_a_plain_answer(setup, tmp_path):
    s = setup()
    s.send(GET)
    fd = file_of(tmp_path, b"")
    s.conn.respond_file(b"H\r\n\r\n", fd, 0, 0, keep_alive=True)
    assert s.received() == b"H\r\n\r\n" and s.conn.phase is IDLE and not fd_is_open(fd)
