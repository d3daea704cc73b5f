"""The master's worker side: starting workers, their pipes, frames, output and exits.

Owns: the Channel of each worker (process handle, frame decoder, write buffer), writing
      request frames without blocking, reading response frames, relaying the worker's
      stdout/stderr to the log, stopping and killing, and what a worker's exit means.
Never: decides *when* a worker is due for retirement (pool.py does), or talks HTTP:
       a response frame becomes bytes through http11 and goes to `self._respond`.

`Backend` is one half of `server.Server` (the other is `frontend.Frontend`).

    start: launcher.start() -> WorkerProcess -> register from_worker, output, sentinel
           -> handshake frame {"pid": master}; worker answers {"pid": its own} -> IDLE
    job:   request frame (one write when it fits; the rest on EVENT_WRITE) -> response frame
    exit:  sentinel readable -> reap (bounded) -> log what it means -> replace
"""

from __future__ import annotations

import functools
import json
import logging
import os
import selectors
import time
from collections import deque
from typing import TYPE_CHECKING, Deque, Dict, Optional, Tuple

from . import frame, http11
from .errors import FrameError
from .frame import CODEC_JSON, CONTROL, ERROR, FrameDecoder
from .messages import HEAD_CACHE_MAX_BYTES, decode_response_head, encode_request_head
from .pool import Worker, WorkerState

log = logging.getLogger("minirr")

READ_SIZE = 64 * 1024                  # os.read allocates this much per call
MAX_FRAME_PAYLOAD = 1 << 31
OUTPUT_LINE_LIMIT = 8192
STOP_PAYLOAD = json.dumps({"stop": True}).encode()
_RELAY_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING,
                 "ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL}
S = WorkerState

if TYPE_CHECKING:
    from .frontend import Job


class Channel:
    """The master's side of one worker: process handle, frame decoder, write buffer."""

    def __init__(self, proc) -> None:
        self.proc = proc
        self.decoder = FrameDecoder(MAX_FRAME_PAYLOAD)
        self.out: Deque[memoryview] = deque()   # frames (or parts) not yet taken by the pipe
        self.writing = False
        self.output_tail = b""         # an unfinished line of the worker's stdout/stderr
        self.closed = False
        self.failure = ""              # why the master gave up on it (for the exit log line)


class Backend:
    """Worker processes and their channels; mixed into server.Server."""

    def _ensure_pool(self, now: float) -> None:
        if self._stopping:
            return
        while self.pool.deficit() and self.pool.can_start(now):
            self._start_worker(now)

    def _start_worker(self, now: float) -> Worker:
        worker = self.pool.new_worker(now)
        try:
            proc = self.launcher.start(self._descriptors_for_child())
        except OSError as exc:
            # The program vanished, or fds or processes ran out: a failed start, with back-off.
            self.pool.exited(worker, now)
            log.error("%s could not be started: %s; next start in %.1fs", worker, exc,
                      max(0.0, self.pool.next_start_at - now))
            if not self.pool.serving():
                self._fail_queue("no_workers")
            return worker
        worker.pid = proc.pid
        channel = Channel(proc)
        worker.channel = channel
        self.selector.register(proc.from_worker, selectors.EVENT_READ,
                               functools.partial(self._on_worker_readable, worker))
        if proc.output is not None:
            self.selector.register(proc.output, selectors.EVENT_READ, lambda mask: self._on_worker_output(worker))
        self.selector.register(proc.sentinel, selectors.EVENT_READ, lambda mask: self._on_worker_exit(worker))
        log.info("%s started", worker)
        self._write_to_worker(worker, frame.encode(CONTROL | CODEC_JSON, json.dumps({"pid": os.getpid()}).encode()))
        return worker

    def _descriptors_for_child(self) -> list:
        """Everything of the master's a new child must close, by name (STYLE §5)."""
        items: list = [self.selector]
        if self.listener is not None:
            items.append(self.listener)
        items += [self._wakeup_r, self._wakeup_w]
        items += [client.sock for client in self.clients.values()]
        for worker in self.pool.workers.values():
            channel = worker.channel
            if channel is not None and not channel.closed:
                items += channel.proc.fds()
        items += self._extra_child_descriptors()
        return [item for item in items if item is not None]

    def _extra_child_descriptors(self) -> list:
        """Descriptors of optional services (control socket, status, metrics)."""
        return []

    def _dispatch(self, worker: Worker, job, now: float) -> None:
        self.pool.assign(worker, job, now)
        job.worker = worker
        request = job.request
        head = encode_request_head(request)
        payload_len = len(head) + len(request.body)
        header = frame.encode_header(CODEC_JSON, payload_len, (len(head),))
        if len(request.body) < 65536:
            self._write_to_worker(worker, header + head + request.body)
        else:
            self._write_to_worker(worker, header + head, request.body)

    def _write_to_worker(self, worker: Worker, data: bytes, tail: bytes = b"") -> None:
        """Write `data` (and `tail`, a large body, never copied) without blocking; what the
        pipe does not take now is queued and goes out on EVENT_WRITE. `data` starts with
        the frame header, and a pipe with room takes it whole: one write per header."""
        channel: Channel = worker.channel
        if channel.closed:
            return
        if not channel.out:
            # The usual case: nothing queued, and the pipe takes the whole frame at once.
            try:
                written = os.write(channel.proc.to_worker, data)
            except BlockingIOError:
                written = 0
            except OSError:                # BrokenPipeError: the process is gone; its sentinel will tell
                return
            if written == len(data) and not tail:
                return
            data = memoryview(data)[written:]
        if data:
            channel.out.append(memoryview(data))
        if tail:
            channel.out.append(memoryview(tail))
        if not channel.writing:
            self._flush_worker(worker)

    def _flush_worker(self, worker: Worker) -> None:
        channel: Channel = worker.channel
        if channel.closed:
            return
        fd = channel.proc.to_worker
        out = channel.out
        while out:
            try:
                written = os.write(fd, out[0])
            except BlockingIOError:
                break
            except OSError:                # BrokenPipeError: the process is gone; its sentinel will tell
                out.clear()
                break
            if written < len(out[0]):
                out[0] = out[0][written:]
                break                      # the pipe is full: wait for EVENT_WRITE
            out.popleft()
        want = bool(out)
        if want != channel.writing:
            channel.writing = want
            if want:
                self.selector.register(fd, selectors.EVENT_WRITE, lambda mask: self._flush_worker(worker))
            else:
                self.selector.unregister(fd)

    def _on_worker_readable(self, worker: Worker, mask: int) -> None:
        channel: Channel = worker.channel
        if channel.closed:
            return
        decoder = channel.decoder
        view = decoder.payload_buffer()    # not None while a large payload is arriving
        try:
            if view is None:
                got = os.read(channel.proc.from_worker, READ_SIZE)          # bytes
            else:
                got = os.readv(channel.proc.from_worker, [view])   # a count: the bytes are in the payload
        except BlockingIOError:
            return
        if not got:
            # EOF: the process is exiting (its descriptors close a moment before its sentinel
            # fires) or it closed its end and is no use any more. Either way the sentinel
            # reports the exit with its real status and state; kill() makes sure it comes.
            self.selector.unregister(channel.proc.from_worker)
            if worker.state is not S.STOPPING:
                channel.proc.kill()
            return
        try:
            frames = decoder.feed(got) if view is None else decoder.payload_received(got)
        except FrameError as exc:
            leaked = _printable(decoder.buffered[:64])
            self._fail_worker(worker, f"broke the frame channel ({exc}); it sent: {leaked}")
            return
        now = time.monotonic()
        for item in frames:
            state = worker.state
            if state is S.BUSY:
                self._on_response_frame(worker, item, now)
            elif state is S.STARTING:
                self._on_handshake(worker, item, now)
            elif state is S.IDLE:
                self._fail_worker(worker, "sent a frame while IDLE")
            else:
                return                     # STOPPING or DEAD: nothing it sends matters now

    def _on_handshake(self, worker: Worker, item: frame.Frame, now: float) -> None:
        try:
            pid = json.loads(item.payload)["pid"] if item.flags & CONTROL else None
        except (ValueError, KeyError, TypeError):
            pid = None
        if not isinstance(pid, int):
            self._fail_worker(worker, f"answered the handshake with {_printable(item.payload[:64])}")
            return
        self.pool.hello(worker, pid, now)
        log.info("%s ready in %.0fms", worker, (now - worker.created_at) * 1000)
        self._on_worker_ready(worker, now)
        self._drain_queue(now)
        self._continue_reload(now)

    def _on_response_frame(self, worker: Worker, item: frame.Frame, now: float) -> None:
        job: Job = worker.job
        if item.stream & frame.STREAM:
            # wire-protocol.md §2.7: streamed responses are optional and not supported yet.
            self._fail_worker(worker, "sent a streamed response (STREAM bit), which minirr does not support")
            return
        if item.flags & ERROR:
            log.warning("%s: request %s %s failed: %s", worker, job.request.method, job.request.path,
                        _printable(item.payload[:200]))
            self._answer_job_failure_and_free(worker, job, "soft_error", now)
            return
        head_len = item.options[0] if item.options else -1
        try:
            if not 0 <= head_len <= len(item.payload):
                raise ValueError("response frame has no head length option")
            # bytes() is no copy for a bytes payload; a large one is a bytearray (frame.py)
            status, http_head = _http_head(bytes(item.payload[:head_len]))
            if http_head is None:
                self._requeue_from_stopping_worker(worker, job, now)
                return
            body = memoryview(item.payload)[head_len:]   # into the response without a copy of its own
            data = http11.complete_response(http_head, status, body, keep_alive=job.keep_alive,
                                            head_only=job.head_only, date=self._http_date(),
                                            protocol=job.request.protocol)
        except ValueError as exc:
            log.warning("%s: invalid response: %s", worker, exc)
            self._answer_job_failure_and_free(worker, job, "bad_response", now)
            return
        self._respond(job, data, status, now)
        self._release_worker(worker, now)

    def _answer_job_failure_and_free(self, worker: Worker, job: Job, reason: str, now: float) -> None:
        """A failed job whose worker is fine (soft error, bad response): keep the worker."""
        self._answer_job_failure(job, reason)
        self._release_worker(worker, now)

    def _requeue_from_stopping_worker(self, worker: Worker, job: Job, now: float) -> None:
        """The worker asked to be recycled instead of answering: run the job elsewhere."""
        worker.job = None
        self.pool.mark_retiring(worker, "worker_request")
        self._stop_worker(worker, "worker_request", now)
        job.worker = None
        self.queue.appendleft(job)
        self._ensure_pool(now)
        self._drain_queue(now)

    def _stop_worker(self, worker: Worker, reason: str, now: float) -> None:
        """Soft stop: the stop frame; destroy_timeout later it is killed."""
        self.pool.retire(worker, reason, now)
        self._write_to_worker(worker, frame.encode(CONTROL | CODEC_JSON, STOP_PAYLOAD))

    def retire_worker(self, worker: Worker, reason: str, now: float) -> None:
        """Soft retirement (max_jobs, ttl, memory, reset): now if idle, after its job if busy."""
        if worker.state is S.IDLE:
            self._stop_worker(worker, reason, now)
        elif worker.state is S.BUSY:
            self.pool.mark_retiring(worker, reason)
        elif worker.state is S.STARTING:
            self._kill_worker(worker, reason, now)
        self._ensure_pool(now)

    def _kill_worker(self, worker: Worker, reason: str, now: float) -> None:
        channel: Channel = worker.channel
        channel.failure = channel.failure or reason
        if worker.live:
            self.pool.retire(worker, reason, now)
        channel.proc.kill()

    def _fail_worker(self, worker: Worker, why: str) -> None:
        """A real fault: kill it now; its job (if any) is answered when it has exited."""
        log.error("%s %s", worker, why)
        self._kill_worker(worker, why, time.monotonic())

    def _handle_overdue_workers(self, now: float) -> None:
        for worker in self.pool.overdue(now):
            if worker.state is S.BUSY:
                log.error("%s exceeded exec_ttl (%gs); killing it", worker, self.config.supervisor.exec_ttl)
                job = worker.job
                worker.job = None
                self._kill_worker(worker, "exec_ttl", now)
                self._answer_job_failure(job, "exec_ttl")
            elif worker.state is S.STARTING:
                log.error("%s did not finish its start within allocate_timeout (%gs); killing it",
                          worker, self.config.pool.allocate_timeout)
                self._kill_worker(worker, "start timeout", now)
            elif worker.state is S.STOPPING and not worker.channel.failure:
                log.warning("%s did not stop within destroy_timeout (%gs); killing it",
                            worker, self.config.pool.destroy_timeout)
                self._kill_worker(worker, "destroy_timeout", now)
        self._ensure_pool(now)

    def _on_worker_output(self, worker: Worker) -> None:
        channel: Channel = worker.channel
        if channel.closed or channel.proc.output is None:
            return   # closed by an earlier callback of the same select() round
        try:
            data = os.read(channel.proc.output, READ_SIZE)
        except BlockingIOError:
            return
        if not data:
            self.selector.unregister(channel.proc.output)
            os.close(channel.proc.output)
            channel.proc.output = None
            self._log_output(worker, b"", final=True)
            return
        self._log_output(worker, data)

    def _log_output(self, worker: Worker, data: bytes, final: bool = False) -> None:
        channel: Channel = worker.channel
        lines = (channel.output_tail + data).split(b"\n")
        channel.output_tail = lines.pop()
        if len(channel.output_tail) > OUTPUT_LINE_LIMIT or (final and channel.output_tail):
            lines.append(channel.output_tail)
            channel.output_tail = b""
        for line in lines:
            text = line.decode("utf-8", "replace").rstrip("\r")
            # A worker's own log lines start with their level (worker.LevelPerLineFormatter);
            # anything else it prints (print(), a PHP warning) is relayed at INFO.
            level = _RELAY_LEVELS.get(text.split(" ", 1)[0], logging.INFO)
            log.log(level, "worker %d (pid %d): %s", worker.id, worker.pid, text,
                    extra={"worker": worker.id, "pid": worker.pid})

    def _on_worker_exit(self, worker: Worker) -> None:
        """The process is gone: clean up, then decide what its exit means."""
        channel: Channel = worker.channel
        if channel.closed:
            return
        now = time.monotonic()
        status = channel.proc.reap(timeout=1.0)
        if channel.proc.output is not None:   # the last words of a dying worker
            self._drain_output(worker)
        self._close_channel(worker)
        job = worker.job
        was = self.pool.exited(worker, now)
        self._log_exit(worker, was, status)
        self._on_worker_gone(worker, was)
        if job is not None:
            self._answer_job_failure(job, "worker_died")
        if was is S.STARTING and not self.pool.serving():
            self._fail_queue("no_workers")
        self._ensure_pool(now)

    def _log_exit(self, worker: Worker, was: WorkerState, status: Optional[int]) -> None:
        how = f"was killed by signal {-status}" if status is not None and status < 0 else f"exited with status {status}"
        failure = worker.channel.failure
        if was is S.STOPPING and not failure:
            log.info("%s stopped (%s)", worker, worker.retire_reason or "stop")
        elif was is S.STOPPING:
            log.warning("%s %s after %s", worker, how, failure)
        elif was is S.STARTING:
            log.error("%s %s before it was ready; next start in %.1fs", worker, how,
                      max(0.0, self.pool.next_start_at - time.monotonic()))
        elif was is S.BUSY:
            log.error("%s %s while busy; request answered 502", worker, how)
        else:
            log.error("%s %s while idle", worker, how)

    def _drain_output(self, worker: Worker) -> None:
        fd = worker.channel.proc.output
        while True:
            try:
                data = os.read(fd, READ_SIZE)
            except (BlockingIOError, OSError):
                break
            if not data:
                break
            self._log_output(worker, data)
        self._log_output(worker, b"", final=True)

    def _close_channel(self, worker: Worker) -> None:
        channel: Channel = worker.channel
        channel.closed = True
        registered = self.selector.get_map()
        for fd in channel.proc.fds():
            if fd in registered:
                self.selector.unregister(fd)
        channel.proc.close()



_HTTP_HEADS: Dict[bytes, Tuple[int, bytes]] = {}
_HTTP_HEADS_SIZE = 256                 # an app sends few distinct heads; bounded all the same, in number
                                       # and in size (messages.HEAD_CACHE_MAX_BYTES a head)


def _http_head(head_json: bytes) -> Tuple[int, Optional[bytes]]:
    """A response frame's JSON head -> (status, HTTP status line and header lines), or
    (0, None) for a worker asking to stop. An app sends the same few heads over and over,
    so each is decoded and checked once. Raises ValueError on an invalid head."""
    cached = _HTTP_HEADS.get(head_json)
    if cached is not None:
        return cached
    status, headers, stop = decode_response_head(head_json)
    if stop:
        return 0, None
    result = (status, http11.response_head(status, headers))
    if len(_HTTP_HEADS) < _HTTP_HEADS_SIZE and len(head_json) <= HEAD_CACHE_MAX_BYTES:
        _HTTP_HEADS[head_json] = result
    return result


def _printable(data: bytes) -> str:
    text = data.decode("latin-1")
    return repr("".join(ch if 32 <= ord(ch) < 127 else "." for ch in text))
