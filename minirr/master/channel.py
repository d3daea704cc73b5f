"""The master's side of one worker: its pipes in the loop, frames each way, its log lines.

Owns: writing request frames without blocking (what the pipe does not take waits for
      EVENT_WRITE), reading and decoding frames (frame.FrameDecoder in PARTS mode: a large
      payload is handed on as it arrives, never held whole), pausing those reads when the
      backend says so (backpressure), relaying the worker's stdout and stderr to the log
      within a budget, and noticing the process's exit (its pidfd).
Never: decides what a frame means or what happens to the worker: everything goes to its
       owner (the backend, a `ChannelOwner`): frames to `on_frames(worker, items)`, an exit
       to `on_exit(worker)`, a pipe the worker broke to `on_broken_channel(worker, why)`,
       and a failure of our own code to `on_channel_failed(worker, exc)`.

    to_worker   <── write(frame)      pipe full? queued, written on EVENT_WRITE; a write that
                                      fails (the worker closed its end) is a broken channel
    from_worker ──> FrameDecoder ──> owner.on_frames     (not read while paused)
    output      ──> lines ──> log      (at most OUTPUT_LINES_PER_ROUND a round; the rest waits,
                                        and the pipe is not read meanwhile)
    sentinel    ──> owner.on_exit      (a pidfd; see launch.py)
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
import struct
import termios
from collections import deque
from typing import Deque, List, Protocol

from ..wire import frame
from ..wire.frame import printable
from ..errors import FrameError
from .loop import READ, WRITE, Handler, Loop

log = logging.getLogger("minirr")

READ_SIZE = 64 * 1024                  # os.read allocates this much per call
PART_READ_SIZE = 256 * 1024            # inside a large frame: bigger reads, fewer wake-ups
OUTPUT_LINE_LIMIT = 8192               # a longer line is relayed in pieces of this size
OUTPUT_LINES_PER_ROUND = 100           # lines relayed per loop round and worker; the rest wait
EXIT_OUTPUT_BYTES = 64 * 1024          # read at most this much more once the worker has exited
_RELAY_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING,
                 "ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL}


class ChannelOwner(Protocol):
    """Who is told what happens on a worker's channel (backend.Backend)."""

    def on_frames(self, worker, items: list) -> None: ...

    def on_exit(self, worker) -> None: ...

    def on_channel_eof(self, worker) -> None: ...

    def on_broken_channel(self, worker, why: str) -> None: ...

    def on_channel_failed(self, worker, exc: BaseException) -> None: ...


class _Watch(Handler):
    """One of a worker's descriptors in the loop: its callback, contained by the channel."""

    __slots__ = ("callback", "channel")

    def __init__(self, callback, channel: "WorkerChannel") -> None:
        self.callback = callback
        self.channel = channel

    def on_event(self, mask: int) -> None:
        self.callback()

    def contain(self, exc: BaseException) -> None:
        self.channel.contain(exc)


class WorkerChannel(Handler):
    """The master's ends of one worker's pipes (see the module docstring). The loop calls
    `on_event` for frames from the worker; the other descriptors have a _Watch each."""

    def __init__(self, loop: Loop, worker, proc, owner: ChannelOwner, max_frame_bytes: int,
                 trace: bool = False) -> None:
        self.loop = loop
        self.worker = worker
        self.proc = proc                   # launch.WorkerProcess
        self.owner = owner
        self.decoder = frame.FrameDecoder(max_frame_bytes, large=frame.PARTS)
        self.out: Deque[memoryview] = deque()   # frames (or parts) not yet taken by the pipe
        self.reading = False               # from_worker is watched (not while paused)
        self.writing = False               # to_worker is watched (while `out` waits)
        self.closed = False
        self.failure = ""                  # why the master gave up on it (for the exit log line)
        self.last_error = ""               # the last ERROR line it logged (why a start failed)
        self.trace = trace                 # [logs] trace_frames: log every frame both ways
        self.write_error = ""              # why a write to the worker failed (reported once)
        self._poll = None                  # a poll of the request pipe's write end (reader_gone)
        self._pong_sent = False            # a PONG went in, and the worker may not have read it yet ...
        self._after_pong = 0               # ... with this many bytes written behind it
        self._output_tail = b""            # an unfinished line of its output
        self._backlog: Deque[bytes] = deque()   # output lines read but not relayed yet
        self._watches = {name: _Watch(callback, self) for name, callback in (
            ("to", self._flush), ("output", self._on_output), ("exit", self._on_exit))}

    def open(self) -> None:
        proc = self.proc
        self.resume_reading()
        if proc.output is not None:
            self.loop.register(proc.output, READ, self._watches["output"])
        if proc.sentinel is not None:
            self.loop.register(proc.sentinel, READ, self._watches["exit"])

    def contain(self, exc: BaseException) -> None:
        self.owner.on_channel_failed(self.worker, exc)

    # ---- frames to the worker ------------------------------------------------------------
    def write(self, data: bytes, tail: bytes = b"") -> None:
        """Write `data` (and `tail`, a large body, never copied) without blocking; what the
        pipe does not take now is queued and goes out on EVENT_WRITE. `data` starts with
        the frame header, and a pipe with room takes it whole: one write per header."""
        if self.closed:
            return
        if self.trace:
            self._trace("master → %s" % self.worker, frame.describe(bytes(data) + bytes(tail[:64])))
        if self._pong_sent:
            self._after_pong += len(data) + len(tail)
        if not self.out:
            # The usual case: nothing queued, and the pipe takes the whole frame at once.
            try:
                written = os.write(self.proc.to_worker, data)
            except BlockingIOError:
                written = 0
            except OSError as exc:         # BrokenPipeError: it closed its end (or is gone)
                self._write_failed(exc)
                return
            if written == len(data) and not tail:
                return
            data = memoryview(data)[written:]
        if data:
            self.out.append(memoryview(data))
        if tail:
            self.out.append(memoryview(tail))
        if not self.writing:
            self._flush()

    def _flush(self) -> None:
        if self.closed:
            return
        fd = self.proc.to_worker
        out = self.out
        while out:
            try:
                written = os.write(fd, out[0])
            except BlockingIOError:
                break
            except OSError as exc:         # BrokenPipeError: it closed its end (or is gone)
                out.clear()
                self._write_failed(exc)
                break
            if written < len(out[0]):
                out[0] = out[0][written:]
                break                      # the pipe is full: wait for EVENT_WRITE
            out.popleft()
        want = bool(out)
        if want != self.writing:
            self.writing = want
            if want:
                self.loop.register(fd, WRITE, self._watches["to"])
            else:
                self.loop.unregister(fd)

    def _write_failed(self, exc: OSError) -> None:
        """The worker's request pipe refused a write: it closed its end (a worker that is
        alive but reads no more) or it is exiting. Either way the job written to it can
        never be answered: a broken channel. Told at the end of the round, never inside
        the write (which may be the dispatch of a job still being set up)."""
        if not self.write_error:
            self.write_error = f"closed its request pipe ({exc.strerror or exc})"
            self.loop.soon(self, self._report_write_error)

    def _report_write_error(self) -> None:
        if not self.closed:
            self.owner.on_broken_channel(self.worker, self.write_error)

    def reader_gone(self) -> bool:
        """Has the worker closed its end of the request pipe? (poll reports POLLERR on the
        write end of a pipe that has no reader, pipe(7).) A request written just before it
        closed is lost in the pipe without an EPIPE: the backend asks this every tick of a
        worker with jobs, so such a job is failed, not left to wait for ever."""
        if self.closed:
            return False
        if self._poll is None:
            self._poll = select.poll()
            self._poll.register(self.proc.to_worker, select.POLLOUT)
        return any(events & select.POLLERR for _, events in self._poll.poll(0))

    def pong_unread(self) -> bool:
        """Is the last PONG still in the pipe, unread by the worker? FIONREAD on the write
        end counts the bytes the worker has not read; the pipe is FIFO, so the PONG is
        unread while more is unread than was written after it (a STOP, say)."""
        if not self._pong_sent:
            return False
        if self.out:
            return True
        unread = struct.unpack("i", fcntl.ioctl(self.proc.to_worker, termios.FIONREAD, b"\0\0\0\0"))[0]
        if unread <= self._after_pong:
            self._pong_sent = False
        return self._pong_sent

    def pong_written(self) -> None:
        self._pong_sent = True
        self._after_pong = 0

    # ---- frames from the worker ------------------------------------------------------------
    def pause_reading(self) -> None:
        """Stop reading frames: the client cannot take more yet (the pipe pushes back)."""
        if self.reading:
            self.loop.unregister(self.proc.from_worker)
            self.reading = False

    def resume_reading(self) -> None:
        if not self.reading and not self.closed:
            self.loop.register(self.proc.from_worker, READ, self)
            self.reading = True

    def on_event(self, mask: int) -> None:
        """from_worker is readable: read, decode, hand the frames to the backend."""
        if self.closed or not self.reading:
            return
        size = PART_READ_SIZE if self.decoder.part_left else READ_SIZE
        try:
            data = os.read(self.proc.from_worker, size)
        except BlockingIOError:
            return
        if not data:
            # EOF: the process is exiting, or it closed its end and is of no use any more.
            # Either way its pidfd reports the exit; kill() makes sure it comes.
            self.pause_reading()
            self.owner.on_channel_eof(self.worker)
            return
        try:
            items = self.decoder.feed(data)
        except FrameError as exc:
            self.owner.on_broken_channel(self.worker, f"broke the frame channel ({exc}); it sent: "
                                                      f"{printable(self.decoder.buffered[:64])}")
            return
        if self.trace:
            self._trace_items(items)
        if items:                          # (a read may hold half a frame: nothing yet)
            self.owner.on_frames(self.worker, items)

    # ---- watching the wire ([logs] trace_frames) ---------------------------------------------
    def _trace_items(self, items: list) -> None:
        source = "%s → master" % self.worker
        for item in items:
            if type(item) is frame.Frame:
                header = frame.encode_header(item.flags, len(item.payload), item.options, item.stream)
                self._trace(source, frame.describe(header + bytes(item.payload[:4096])))
            elif type(item) is frame.FrameStart:
                header = frame.encode_header(item.flags, item.length, item.options, item.stream)
                self._trace(source, frame.describe(header) + " (a large payload: it follows in parts)")
            else:
                self._trace(source, f"  ... {len(item.data)} more payload bytes{' (the last)' if item.last else ''}")

    @staticmethod
    def _trace(direction: str, text: str) -> None:
        log.info("frame %s: %s", direction, text)

    # ---- its output ------------------------------------------------------------------------
    def _on_output(self) -> None:
        if self.closed or self.proc.output is None:
            return
        try:
            data = os.read(self.proc.output, READ_SIZE)
        except BlockingIOError:
            return
        if not data:
            self._close_output()
            return
        self._backlog.extend(self._lines(data))
        self._relay_some()

    def _relay_some(self) -> None:
        """Log at most OUTPUT_LINES_PER_ROUND lines; while more wait, the pipe is not read
        (the worker's writes block, not the master's loop) and the rest goes next round."""
        backlog = self._backlog
        for _ in range(min(len(backlog), OUTPUT_LINES_PER_ROUND)):
            self._log_line(backlog.popleft())
        output = self.proc.output
        if backlog:
            if output is not None and self.loop.registered(output):
                self.loop.unregister(output)
            self.loop.soon(self._watches["output"], self._relay_some)
        elif output is not None and not self.closed and not self.loop.registered(output):
            self.loop.register(output, READ, self._watches["output"])

    def _lines(self, data: bytes, final: bool = False) -> List[bytes]:
        lines = (self._output_tail + data).split(b"\n")
        self._output_tail = lines.pop()
        if len(self._output_tail) > OUTPUT_LINE_LIMIT or (final and self._output_tail):
            lines.append(self._output_tail)
            self._output_tail = b""
        return lines

    def _log_line(self, line: bytes) -> None:
        """A worker's own log lines start with their level (worker.LevelPerLineFormatter):
        the line is logged at that level, and the word is not repeated. Anything else it
        prints (print(), a PHP warning) is relayed at INFO."""
        worker = self.worker
        text = line.decode("utf-8", "replace").rstrip("\r")
        first, _, rest = text.partition(" ")
        level = _RELAY_LEVELS.get(first)
        if level is None:
            level = logging.INFO
        else:
            text = rest
            if level >= logging.ERROR and not rest.startswith("|"):
                self.last_error = rest
        log.log(level, "worker %d (pid %d): %s", worker.id, worker.pid, text,
                extra={"worker": worker.id, "pid": worker.pid})

    def drain_output(self) -> None:
        """The worker has exited: relay what it left in the pipe (EXIT_OUTPUT_BYTES at most:
        a process it started may hold the pipe and write forever), then close the pipe."""
        fd = self.proc.output
        if fd is None:
            return
        read = 0
        while read < EXIT_OUTPUT_BYTES:
            try:
                data = os.read(fd, READ_SIZE)
            except OSError:                # BlockingIOError: nothing more for now
                break
            if not data:
                break
            read += len(data)
            self._backlog.extend(self._lines(data))
        more = read >= EXIT_OUTPUT_BYTES
        self._backlog.extend(self._lines(b"", final=True))
        dropped = max(0, len(self._backlog) - 10 * OUTPUT_LINES_PER_ROUND)
        for _ in range(len(self._backlog) - dropped):
            self._log_line(self._backlog.popleft())
        self._backlog.clear()
        if dropped or more:
            log.warning("%s: %s of its output %s not relayed (a process it started may still hold its "
                        "stdout or stderr)", self.worker, f"{dropped} lines" if dropped else "the rest",
                        "were" if dropped else "was")
        self._close_output()

    def _close_output(self) -> None:
        fd = self.proc.output
        if fd is None:
            return
        self.loop.unregister(fd)
        os.close(fd)
        self.proc.output = None
        if self._output_tail:
            self._log_line(self._output_tail)
            self._output_tail = b""

    # ---- its exit ---------------------------------------------------------------------------
    def _on_exit(self) -> None:
        if not self.closed:
            self.owner.on_exit(self.worker)

    def close(self) -> None:
        """Unregister and close every descriptor (after the process has been reaped)."""
        if self.closed:
            return
        self.closed = True
        for fd in self.proc.fds():
            self.loop.unregister(fd)
        self.out.clear()
        self.proc.close()
        self.proc.output = None
        self._backlog.clear()
