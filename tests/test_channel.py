"""A worker's pipes in the loop (minirr.master.channel.WorkerChannel): real pipes, a fake process,
a fake selector (readiness asked of the kernel) and a recording backend."""

from __future__ import annotations

import fcntl
import logging
import os

import pytest

from fakes import READ, WRITE, FakeClock, FakeProcess, FakeSelector, made_and_finished, spin
from minirr.wire import frame
from minirr.master.channel import EXIT_OUTPUT_BYTES, OUTPUT_LINE_LIMIT, OUTPUT_LINES_PER_ROUND, WorkerChannel
from minirr.wire.frame import CODEC_JSON, Frame, FramePart, FrameStart
from minirr.master.loop import Loop
from minirr.master.pool import Worker

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class Backend:
    """Records what the channel hands on."""

    def __init__(self) -> None:
        self.calls = []
        self.raise_on_frames = None

    def on_frames(self, worker, items) -> None:
        self.calls.append(("frames", worker, list(items)))
        if self.raise_on_frames is not None:
            raise self.raise_on_frames

    def on_broken_channel(self, worker, why) -> None:
        self.calls.append(("broken", worker, why))

    def on_channel_eof(self, worker) -> None:
        self.calls.append(("eof", worker))

    def on_exit(self, worker) -> None:
        self.calls.append(("exit", worker))

    def on_channel_failed(self, worker, exc) -> None:
        self.calls.append(("failed", worker, exc))

    def kinds(self) -> list:
        return [call[0] for call in self.calls]


class Setup:
    def __init__(self, **process) -> None:
        self.loop = Loop(selector=FakeSelector(real=True), clock=FakeClock())
        self.proc = FakeProcess(**process)
        self.worker = Worker(1, 0.0, 0)
        self.worker.pid = self.proc.pid
        self.backend = Backend()
        self.channel = WorkerChannel(self.loop, self.worker, self.proc, self.backend, 1 << 20)
        self.channel.open()

    def watched(self, fd) -> int:
        return self.loop.selector.events_of(fd)

    def round(self, count: int = 1) -> None:
        spin(self.loop, count)

    def finish(self) -> None:
        self.channel.close()
        self.proc.finish()


@pytest.fixture
def setup():
    yield from made_and_finished(Setup, Setup.finish)


def test_open_watches_frames_output_and_exit(setup):
    s = setup()
    assert s.watched(s.proc.from_worker) == READ
    assert s.watched(s.proc.output) == READ
    assert s.watched(s.proc.sentinel) == READ
    assert s.watched(s.proc.to_worker) == 0 and s.channel.reading and not s.channel.writing


# ---- frames to the worker ----------------------------------------------------------------------

def test_a_frame_the_pipe_takes_goes_out_at_once(setup):
    s = setup()
    data = frame.encode(CODEC_JSON, b'{"pid":1}')
    s.channel.write(data)
    assert s.proc.read_requests() == data
    assert not s.channel.out and s.watched(s.proc.to_worker) == 0


def test_what_a_full_pipe_does_not_take_is_queued_and_flushed_on_event_write(setup):
    s = setup()
    fcntl.fcntl(s.proc.to_worker, F_SETPIPE_SZ, 4096)
    first, second, tail = b"a" * 10000, b"b" * 3000, b"c" * 20000
    s.channel.write(first)
    s.channel.write(second, tail)                # a large body: queued as it is, never copied
    assert s.channel.writing and s.watched(s.proc.to_worker) == WRITE
    assert s.channel.out[-1].obj is tail
    got = b""
    for _ in range(100):
        got += s.proc.read_requests()
        s.round()
        if not s.channel.writing:
            break
    got += s.proc.read_requests()
    assert got == first + second + tail          # in order, nothing lost
    assert not s.channel.out and s.watched(s.proc.to_worker) == 0


def test_writing_to_a_worker_that_is_gone_is_quiet(setup):
    s = setup()
    fcntl.fcntl(s.proc.to_worker, F_SETPIPE_SZ, 4096)
    s.channel.write(b"x" * 10000)
    os.close(s.proc.requests_r)                  # the worker's end: gone
    s.proc.requests_r = None
    s.round()                                    # EPIPE on flush: the queue is dropped
    assert not s.channel.out and s.watched(s.proc.to_worker) == 0
    s.channel.write(b"more")                     # and a later write is dropped quietly
    assert not s.channel.out


def test_nothing_is_written_after_close(setup):
    s = setup()
    s.channel.close()
    s.channel.write(b"late")
    assert not s.channel.out


# ---- frames from the worker ----------------------------------------------------------------------

def test_frames_read_are_handed_to_the_backend(setup):
    s = setup()
    one, two = frame.encode(CODEC_JSON, b"first", (1,)), frame.encode(CODEC_JSON, b"second")
    s.proc.send(one + two)
    s.round()
    [(kind, worker, items)] = s.backend.calls
    assert kind == "frames" and worker is s.worker
    assert items == [Frame(CODEC_JSON, b"first", (1,), 0), Frame(CODEC_JSON, b"second", (), 0)]


def test_half_a_frame_waits_for_the_rest(setup):
    s = setup()
    data = frame.encode(CODEC_JSON, b"payload")
    s.proc.send(data[:7])
    s.round()
    assert s.backend.calls == []                      # nothing decoded yet: the backend is not told
    s.proc.send(data[7:])
    s.round()
    assert s.backend.calls == [("frames", s.worker, [Frame(CODEC_JSON, b"payload", (), 0)])]


def test_a_large_frame_is_handed_on_in_parts(setup):
    s = setup()
    payload = b"L" * (frame.LARGE_PAYLOAD_BYTES + 10)
    s.proc.send(frame.encode(CODEC_JSON, payload, (3,))[:60000])
    s.round()
    [(_, _, items)] = s.backend.calls
    assert items[0] == FrameStart(CODEC_JSON, (3,), 0, len(payload))
    assert all(type(item) is FramePart for item in items[1:]) and not items[-1].last
    assert s.channel.decoder.part_left > 0


def test_a_broken_frame_breaks_the_channel(setup):
    s = setup()
    s.proc.send(b"Traceback (most recent call last):\n")
    s.round()
    [(kind, worker, why)] = s.backend.calls
    assert kind == "broken" and worker is s.worker
    assert why.startswith("broke the frame channel (frame header CRC mismatch")
    assert why.endswith("it sent: 'Traceback (most recent call last):.'")


def test_eof_on_the_frame_pipe_pauses_reading_and_tells_the_backend(setup):
    s = setup()
    os.close(s.proc.responses_w)                 # the worker's end of the frame pipe closes
    s.proc.responses_w = None
    s.round()
    assert ("eof", s.worker) in s.backend.calls
    assert not s.channel.reading and s.watched(s.proc.from_worker) == 0


def test_pause_and_resume_reading_change_the_registration(setup):
    s = setup()
    s.channel.pause_reading()
    s.channel.pause_reading()                    # twice is harmless
    assert s.watched(s.proc.from_worker) == 0 and not s.channel.reading
    s.proc.send(frame.encode(CODEC_JSON, b"held"))
    s.round()
    s.channel.on_event(READ)                     # a stale event while paused reads nothing
    assert s.backend.calls == []
    s.channel.resume_reading()
    s.channel.resume_reading()
    assert s.watched(s.proc.from_worker) == READ
    s.round()
    assert s.backend.calls[0][2] == [Frame(CODEC_JSON, b"held", (), 0)]


def test_a_closed_channel_is_not_resumed(setup):
    s = setup()
    fd = s.proc.from_worker
    s.channel.pause_reading()
    s.channel.close()
    s.channel.resume_reading()
    assert not s.channel.reading and s.watched(fd) == 0


def test_a_failure_in_the_backend_is_contained_by_the_channel(setup):
    s = setup()
    s.backend.raise_on_frames = RuntimeError("backend bug")
    s.proc.send(frame.encode(CODEC_JSON, b"x"))
    s.round()
    assert s.backend.kinds() == ["frames", "failed"]
    assert str(s.backend.calls[1][2]) == "backend bug"


# ---- the worker's exit -----------------------------------------------------------------------------

def test_the_exit_sentinel_tells_the_backend(setup):
    s = setup()
    s.proc.exit(0)
    s.round()
    assert s.backend.calls == [("exit", s.worker)]


def test_close_unregisters_and_closes_everything(setup):
    s = setup()
    fds = s.proc.fds()
    s.channel.close()
    assert s.proc.closed and s.proc.output is None and s.channel.closed
    assert not any(s.watched(fd) for fd in fds)
    s.channel.close()                            # twice is harmless


# ---- its output ----------------------------------------------------------------------------------------

def relayed(caplog) -> list:
    """The worker's lines as the master logged them (not the master's own notices)."""
    return [(r.levelname, r.getMessage()) for r in caplog.records
            if r.getMessage().startswith("worker 1 (pid") and "of its output" not in r.getMessage()]


def test_output_lines_are_relayed_with_the_workers_pid(setup, caplog):
    s = setup()
    caplog.set_level(logging.DEBUG, logger="minirr")
    s.proc.print(b"hello from print()\nWARNING careful\nERROR it broke\nERROR |  File \"app.py\"\n"
                 b"DEBUG details\nINFO fine\nCRITICAL down\nwarning lower case is not a level\npartial")
    s.round()
    assert relayed(caplog) == [
        ("INFO", "worker 1 (pid 4242): hello from print()"),
        ("WARNING", "worker 1 (pid 4242): careful"),
        ("ERROR", "worker 1 (pid 4242): it broke"),
        ("ERROR", "worker 1 (pid 4242): |  File \"app.py\""),
        ("DEBUG", "worker 1 (pid 4242): details"),
        ("INFO", "worker 1 (pid 4242): fine"),
        ("CRITICAL", "worker 1 (pid 4242): down"),
        ("INFO", "worker 1 (pid 4242): warning lower case is not a level"),
    ]
    assert caplog.records[-1].worker == 1 and caplog.records[-1].pid == 4242
    # the last ERROR line that is not a traceback line: why a start failed
    assert s.channel.last_error == "down"
    s.proc.print(b" line\r\n")                   # the unfinished line, completed; CR dropped
    s.round()
    assert relayed(caplog)[-1] == ("INFO", "worker 1 (pid 4242): partial line")


def test_last_error_skips_traceback_lines(setup):
    s = setup()
    s.proc.print(b"ERROR the reason\nERROR |Traceback\nERROR |  raise\n")
    s.round()
    assert s.channel.last_error == "the reason"


def test_a_line_longer_than_the_limit_is_relayed_in_pieces(setup, caplog):
    s = setup()
    caplog.set_level(logging.INFO, logger="minirr")
    s.proc.print(b"x" * (OUTPUT_LINE_LIMIT + 1))
    s.round()
    assert [len(message) for _, message in relayed(caplog)] == [len("worker 1 (pid 4242): ") + OUTPUT_LINE_LIMIT + 1]
    assert s.channel._output_tail == b""


def test_at_most_output_lines_per_round_the_rest_via_soon_with_the_pipe_unwatched(setup, caplog):
    s = setup()
    caplog.set_level(logging.INFO, logger="minirr")
    count = 2 * OUTPUT_LINES_PER_ROUND + 50
    s.proc.print(b"".join(b"line %d\n" % i for i in range(count)))
    s.channel._on_output()                       # one read: every line is in it
    assert len(relayed(caplog)) == OUTPUT_LINES_PER_ROUND
    assert s.watched(s.proc.output) == 0         # the worker's writes block, not our loop
    s.loop.run_soon()
    assert len(relayed(caplog)) == 2 * OUTPUT_LINES_PER_ROUND
    assert s.watched(s.proc.output) == 0
    s.loop.run_soon()
    assert len(relayed(caplog)) == count
    assert s.watched(s.proc.output) == READ      # all relayed: watched again
    assert [m for _, m in relayed(caplog)] == [f"worker 1 (pid 4242): line {i}" for i in range(count)]


def test_eof_on_the_output_pipe_closes_it_and_relays_the_unfinished_line(setup, caplog):
    s = setup()
    caplog.set_level(logging.INFO, logger="minirr")
    fd = s.proc.output
    s.proc.print(b"no newline at the end")
    s.round()
    os.close(s.proc.output_w)
    s.proc.output_w = None
    s.round()
    assert relayed(caplog) == [("INFO", "worker 1 (pid 4242): no newline at the end")]
    assert s.proc.output is None and s.watched(fd) == 0


def test_drain_output_after_exit_relays_what_is_left(setup, caplog):
    s = setup()
    caplog.set_level(logging.INFO, logger="minirr")
    s.proc.print(b"one\ntwo\nthree without a newline")
    s.channel.drain_output()
    assert [m for _, m in relayed(caplog)] == ["worker 1 (pid 4242): one", "worker 1 (pid 4242): two",
                                               "worker 1 (pid 4242): three without a newline"]
    assert not [r for r in caplog.records if "not relayed" in r.getMessage()]
    assert s.proc.output is None


def fill_output(s: Setup, line: bytes, total: int) -> None:
    """Write `total` bytes of `line`s into the output pipe (grown to hold them)."""
    fcntl.fcntl(s.proc.output_w, F_SETPIPE_SZ, 1 << 20)
    s.proc.print(line * (total // len(line)))


def test_drain_output_is_bounded_and_says_how_many_lines_were_not_relayed(setup, caplog):
    s = setup()
    caplog.set_level(logging.INFO, logger="minirr")
    fill_output(s, b"short line\n", 4 * EXIT_OUTPUT_BYTES)   # a helper process writing forever
    s.channel.drain_output()
    lines = relayed(caplog)
    assert len(lines) == 10 * OUTPUT_LINES_PER_ROUND
    read_lines = -(-EXIT_OUTPUT_BYTES // len(b"short line\n"))   # what the bounded reads took, in lines
    [warning] = [r.getMessage() for r in caplog.records if "not relayed" in r.getMessage()]
    dropped = int(warning.split(": ")[1].split(" lines")[0])
    assert 0 < dropped <= read_lines - 10 * OUTPUT_LINES_PER_ROUND
    assert warning == (f"worker 1 (pid 4242): {dropped} lines of its output were not relayed (a process it "
                       f"started may still hold its stdout or stderr)")
    assert s.proc.output is None


def test_drain_output_says_when_the_rest_was_not_read(setup, caplog):
    s = setup()
    caplog.set_level(logging.INFO, logger="minirr")
    fill_output(s, b"y" * 999 + b"\n", 4 * EXIT_OUTPUT_BYTES)   # few lines, many bytes
    s.channel.drain_output()
    assert 0 < len(relayed(caplog)) < 10 * OUTPUT_LINES_PER_ROUND
    [warning] = [r.getMessage() for r in caplog.records if "not relayed" in r.getMessage()]
    assert warning == ("worker 1 (pid 4242): the rest of its output was not relayed (a process it started may "
                       "still hold its stdout or stderr)")


def test_drain_output_without_an_output_pipe_does_nothing(setup):
    s = setup(output=False)
    s.channel.drain_output()
    s.channel._on_output()
