"""The master: one selectors loop for the listener, clients, worker pipes, signals, timers.

Owns: every socket and descriptor of the master, the request queue, and turning job
      outcomes into what the client sees (one function: `_answer_job_failure`).
Never: parses HTTP itself (http11 does), decides worker fate by itself (pool does),
       blocks anywhere but in `select()`.

    clients ──TCP──> [listener] ──> Client(http11.Connection) ──Request──> Job
                                                                           │
             idle worker? ──yes──> request frame ──pipe──> worker ─────────┘
                  │no                                        │
                  └──> FIFO queue (allocate_timeout)         └─ response frame ──> client

One tick of the loop:  select() -> run each ready callback -> `_on_tick(now)` for the
time-driven work (queue and connection timeouts, overdue workers, restarts, shutdown).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import selectors
import signal
import socket
import time
from collections import deque
from typing import Callable, Deque, Dict, List, Optional

from . import frame, http11
from .config import Config
from .errors import FrameError, ProtocolError
from .frame import CODEC_JSON, CONTROL, ERROR, FrameDecoder
from .messages import Request, decode_response_head, encode_request_head
from .pool import Pool, Worker, WorkerState

log = logging.getLogger("minirr")
access_log = logging.getLogger("minirr.access")

READ_SIZE = 256 * 1024
MAX_FRAME_PAYLOAD = 1 << 31
ACCEPTS_PER_TICK = 64                  # bounded, so a flood of connects cannot starve the loop
PIPELINE_BUFFER_LIMIT = 256 * 1024     # stop reading a client whose unparsed bytes pile up
OUTPUT_LINE_LIMIT = 8192
TICK_BUSY_S = 0.1                      # timer resolution while anything is in flight
TICK_IDLE_S = 1.0
ACCEPT_BACKOFF_S = 0.5                 # after EMFILE/ENFILE
CONTINUE_RESPONSE = b"HTTP/1.1 100 Continue\r\n\r\n"
STOP_PAYLOAD = json.dumps({"stop": True}).encode()
S = WorkerState


class Client:
    """One accepted TCP connection."""

    def __init__(self, sock: socket.socket, peer: str, conn: http11.Connection, now: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.conn = conn
        self.out = bytearray()         # response bytes not yet accepted by the kernel
        self.job: Optional[Job] = None  # the request being served; others wait in conn's buffer
        self.close_after_write = False
        self.reading = True            # registered for EVENT_READ
        self.writing = False           # registered for EVENT_WRITE
        self.closed = False
        self.idle_since = now          # waiting for a request since
        self.served = 0                # responses sent on this connection
        self.last_read_at = now


class Job:
    """One request on its way through the pool."""

    __slots__ = ("client", "request", "keep_alive", "head_only", "queued_at", "deadline_at", "worker", "started_at")

    def __init__(self, client: Client, request: Request, keep_alive: bool, now: float, deadline_at: float) -> None:
        self.client = client
        self.request = request
        self.keep_alive = keep_alive
        self.head_only = request.method == "HEAD"
        self.queued_at = now
        self.deadline_at = deadline_at
        self.worker: Optional[Worker] = None
        self.started_at = 0.0


class Channel:
    """The master's side of one worker: process handle, frame decoder, write buffer."""

    def __init__(self, proc) -> None:
        self.proc = proc
        self.decoder = FrameDecoder(MAX_FRAME_PAYLOAD)
        self.out = bytearray()
        self.writing = False
        self.output_tail = b""         # an unfinished line of the worker's stdout/stderr
        self.closed = False
        self.failure = ""              # why the master gave up on it (for the exit log line)


class Server:
    """The master process. `run()` returns the exit status."""

    def __init__(self, config: Config, launcher, stdout=None) -> None:
        self.config = config
        self.launcher = launcher
        self.stdout = stdout
        self.limits = http11.Limits(
            max_request_size=config.http.max_request_size,
            limit_request_line=config.http.limit_request_line,
            limit_request_fields=config.http.limit_request_fields,
            limit_request_field_size=config.http.limit_request_field_size,
            limit_request_headers=config.http.limit_request_headers,
        )
        pool_cfg = config.pool
        self.pool = Pool(pool_cfg.num_workers, pool_cfg.max_jobs, config.supervisor.exec_ttl,
                         pool_cfg.allocate_timeout, pool_cfg.destroy_timeout)
        self.selector = selectors.DefaultSelector()
        self.listener: Optional[socket.socket] = None
        self.clients: Dict[int, Client] = {}
        self.queue: Deque[Job] = deque()
        self.address = ("", 0)
        self._wakeup_r: Optional[socket.socket] = None
        self._wakeup_w: Optional[socket.socket] = None
        self._listening = False
        self._accept_paused_until = 0.0
        self._emfile_logged = False
        self._stopping = False
        self._stop_deadline_at = 0.0
        self._exit_status: Optional[int] = None
        self._reload_queue: List[Worker] = []
        self._reloading = False
        self._date_second = -1
        self._date = b""
        self._next_tick_at = 0.0
        self.started_at = time.time()

    # ================================================================== start and run
    def bind(self) -> None:
        host, port = self.config.http.address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(min(socket.SOMAXCONN, 1024))
        sock.setblocking(False)
        self.listener = sock
        self.address = sock.getsockname()[:2]
        self._resume_accepting()

    def run(self) -> int:
        """Bind, start the pool, announce readiness, then loop until stopped."""
        if self.listener is None:
            self.bind()
        self._install_signals()
        now = time.monotonic()
        self._ensure_pool(now)
        self._announce(f"minirr listening on http://{self.address[0]}:{self.address[1]}")
        log.info("serving %s with %d workers", self.config.server.app or " ".join(self.config.server.command),
                 self.pool.size)
        while self._exit_status is None:
            self._tick_once()
        self._close_everything()
        return self._exit_status

    def _announce(self, line: str) -> None:
        if self.stdout is not None:
            self.stdout.write(line + "\n")
            self.stdout.flush()

    def _tick_once(self) -> None:
        now = time.monotonic()
        timeout = max(0.0, self._next_tick_at - now)
        for key, mask in self.selector.select(timeout):
            key.data(mask)
        now = time.monotonic()
        if now >= self._next_tick_at:
            self._on_tick(now)
            busy = self.clients or self.queue or len(self.pool.workers) != self.pool.size or self._stopping
            self._next_tick_at = now + (TICK_BUSY_S if busy else TICK_IDLE_S)

    def _on_tick(self, now: float) -> None:
        """Time-driven work, in the order a reader would check it."""
        self._expire_queued_jobs(now)
        self._handle_overdue_workers(now)
        self._expire_connections(now)
        self._resume_accepting_after_backoff(now)
        self._ensure_pool(now)
        self._continue_reload(now)
        self._continue_shutdown(now)

    # ================================================================== signals
    def _install_signals(self) -> None:
        """Handlers only wake the loop: the signal number arrives on a socketpair."""
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        self._wakeup_r.setblocking(False)
        self._wakeup_w.setblocking(False)
        signal.set_wakeup_fd(self._wakeup_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, _ignore_signal)
        self.selector.register(self._wakeup_r, selectors.EVENT_READ, self._on_wakeup_readable)

    def _on_wakeup_readable(self, mask: int) -> None:
        try:
            data = self._wakeup_r.recv(64)
        except BlockingIOError:
            return
        handlers = {
            signal.SIGTERM: self.begin_shutdown,
            signal.SIGINT: self.begin_shutdown,
            signal.SIGHUP: self.begin_reload,
        }
        for signum in data:
            handler = handlers.get(signum)
            if handler is not None:
                handler()

    # ================================================================== listener and clients
    def _resume_accepting(self) -> None:
        if not self._listening and self.listener is not None and not self._stopping:
            self.selector.register(self.listener, selectors.EVENT_READ, self._on_listener_readable)
            self._listening = True

    def _pause_accepting(self) -> None:
        if self._listening:
            self.selector.unregister(self.listener)
            self._listening = False

    def _resume_accepting_after_backoff(self, now: float) -> None:
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            if len(self.clients) < self.config.http.max_connections:
                self._resume_accepting()

    def _on_listener_readable(self, mask: int) -> None:
        now = time.monotonic()
        for _ in range(ACCEPTS_PER_TICK):
            if len(self.clients) >= self.config.http.max_connections:
                # Beyond max_connections, new connections wait in the kernel's backlog.
                self._pause_accepting()
                return
            try:
                sock, addr = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._on_accept_exhausted(exc, now)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
            self._add_client(sock, addr[0], now)

    def _on_accept_exhausted(self, exc: OSError, now: float) -> None:
        if not self._emfile_logged:
            log.error("accept failed: %s; pausing accepts for %.1fs (raise the open-files limit?)",
                      exc.strerror, ACCEPT_BACKOFF_S)
            self._emfile_logged = True
        self._pause_accepting()
        self._accept_paused_until = now + ACCEPT_BACKOFF_S

    def _add_client(self, sock: socket.socket, peer: str, now: float) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = http11.Connection(self.limits, remote_addr=peer, scheme="http",
                                 trusted_proxies=self.config.http.trusted_proxies,
                                 default_host=f"{self.address[0]}:{self.address[1]}")
        client = Client(sock, peer, conn, now)
        self.clients[client.fd] = client
        self.selector.register(sock, selectors.EVENT_READ, lambda mask: self._on_client_event(client, mask))

    def _on_client_event(self, client: Client, mask: int) -> None:
        if client.closed:
            return
        if mask & selectors.EVENT_WRITE:
            self._flush_client(client)
        if mask & selectors.EVENT_READ and not client.closed:
            self._on_client_readable(client)

    def _on_client_readable(self, client: Client) -> None:
        try:
            data = client.sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except (ConnectionResetError, TimeoutError, OSError):
            self._close_client(client)
            return
        client.last_read_at = time.monotonic()
        client.conn.receive_data(data)
        if not data and client.job is None and not client.out:
            # The peer is gone and nothing is owed to it; parse what it left, then close.
            self._process_client(client)
            if not client.closed and client.job is None and not client.out:
                self._close_client(client)
            return
        if not data:
            self._set_reading(client, False)   # EOF stays readable forever: stop watching
        self._process_client(client)

    def _process_client(self, client: Client) -> None:
        """Turn buffered bytes into requests while the connection is not busy."""
        conn = client.conn
        while client.job is None and not client.closed and not client.close_after_write:
            try:
                event = conn.next_event()
            except ProtocolError as exc:
                self._reject(client, exc.status, exc.msg)
                return
            if event is http11.NEED_DATA:
                break
            if event is http11.CONTINUE:
                self._send(client, CONTINUE_RESPONSE)
                continue
            if event is http11.CLOSED:
                if not client.out:
                    self._close_client(client)
                else:
                    client.close_after_write = True
                return
            if event is http11.PAUSED:
                break
            self._submit(client, event)
        if client.job is not None and conn.buffered_bytes > PIPELINE_BUFFER_LIMIT:
            self._set_reading(client, False)   # backpressure: resume after the response

    def _reject(self, client: Client, status: int, message: str) -> None:
        """A protocol error: answer, then close (the connection's framing is unknown now)."""
        log.info("%s: rejected with %d: %s", client.peer, status, message)
        self._send(client, http11.error_response(status, message, date=self._http_date()))
        client.close_after_write = True
        self._set_reading(client, False)
        if not client.out:
            self._close_client(client)

    def _set_reading(self, client: Client, reading: bool) -> None:
        if client.reading != reading:
            client.reading = reading
            self._update_client_registration(client)

    def _update_client_registration(self, client: Client) -> None:
        events = (selectors.EVENT_READ if client.reading else 0) | (selectors.EVENT_WRITE if client.writing else 0)
        registered = client.fd in self.selector.get_map()
        if events and registered:
            self.selector.modify(client.sock, events, self.selector.get_key(client.sock).data)
        elif events:
            self.selector.register(client.sock, events, lambda mask: self._on_client_event(client, mask))
        elif registered:
            self.selector.unregister(client.sock)

    def _send(self, client: Client, data: bytes) -> None:
        """Write now what the kernel takes; buffer the rest and wait for EVENT_WRITE."""
        if client.closed:
            return
        if client.out:
            client.out += data
            return
        try:
            sent = client.sock.send(data)
        except BlockingIOError:
            sent = 0
        except (BrokenPipeError, ConnectionResetError, OSError):
            self._close_client(client)
            return
        if sent < len(data):
            client.out += memoryview(data)[sent:]
            client.writing = True
            self._update_client_registration(client)

    def _flush_client(self, client: Client) -> None:
        try:
            sent = client.sock.send(client.out)
        except BlockingIOError:
            return
        except (BrokenPipeError, ConnectionResetError, OSError):
            self._close_client(client)
            return
        del client.out[:sent]
        if client.out:
            return
        client.writing = False
        self._update_client_registration(client)
        if client.close_after_write:
            self._close_client(client)
        elif client.job is None:
            self._process_client(client)

    def _close_client(self, client: Client) -> None:
        if client.closed:
            return
        client.closed = True
        if client.fd in self.selector.get_map():
            self.selector.unregister(client.sock)
        client.sock.close()
        del self.clients[client.fd]
        if not self._listening and not self._accept_paused_until:
            self._resume_accepting()

    def _expire_connections(self, now: float) -> None:
        """header_timeout (408 when something was sent), body_timeout, keepalive_timeout."""
        http_cfg = self.config.http
        for client in list(self.clients.values()):
            if client.job is not None or client.out or client.close_after_write:
                continue
            if client.conn.reading_body:
                if http_cfg.body_timeout and now - client.last_read_at >= http_cfg.body_timeout:
                    self._reject(client, 408, f"no body bytes for {http_cfg.body_timeout:g}s")
            elif client.conn.has_partial_request:
                if http_cfg.header_timeout and now - client.idle_since >= http_cfg.header_timeout:
                    self._reject(client, 408, f"request header not complete within {http_cfg.header_timeout:g}s")
            else:
                # Idle between requests: the first request gets header_timeout, later ones keepalive_timeout.
                limit = http_cfg.keepalive_timeout if client.served else http_cfg.header_timeout
                if limit and now - client.idle_since >= limit:
                    self._close_client(client)

    # ================================================================== jobs
    def _submit(self, client: Client, request: Request) -> None:
        now = time.monotonic()
        keep_alive = client.conn.keep_alive and not self._stopping
        allocate = self.config.pool.allocate_timeout
        job = Job(client, request, keep_alive, now, now + allocate if allocate else 0.0)
        client.job = job
        worker = self.pool.idle_worker()
        if worker is not None:
            self._dispatch(worker, job, now)
            return
        max_queue = self.config.pool.max_queue_size
        if max_queue and len(self.queue) >= max_queue:
            self._answer_job_failure(job, "queue_full")
        elif self.pool.boot_failures and not self.pool.serving():
            self._answer_job_failure(job, "no_workers")
        else:
            self.queue.append(job)

    def _drain_queue(self, now: float) -> None:
        while self.queue:
            job = self.queue[0]
            if job.client.closed:
                self.queue.popleft()
                continue
            worker = self.pool.idle_worker()
            if worker is None:
                return
            self.queue.popleft()
            self._dispatch(worker, job, now)

    def _expire_queued_jobs(self, now: float) -> None:
        while self.queue and self.queue[0].deadline_at and now >= self.queue[0].deadline_at:
            self._answer_job_failure(self.queue.popleft(), "allocate_timeout")

    def _fail_queue(self, reason: str) -> None:
        while self.queue:
            self._answer_job_failure(self.queue.popleft(), reason)

    def _dispatch(self, worker: Worker, job: Job, now: float) -> None:
        self.pool.assign(worker, job, now)
        job.worker = worker
        job.started_at = now
        request = job.request
        head = encode_request_head(request)
        payload_len = len(head) + len(request.body)
        header = frame.encode_header(CODEC_JSON, payload_len, (len(head),))
        if len(request.body) < 65536:
            self._write_to_worker(worker, header + head + request.body)
        else:
            self._write_to_worker(worker, header + head, request.body)

    def _finish_job(self, worker: Worker, job: Job, data: bytes, status: int, now: float) -> None:
        """The job has its answer: send it, log it, and let the pool decide the worker's fate."""
        self._respond(job, data, status, now)
        if self.pool.job_done(worker, now):
            self._stop_worker(worker, worker.retire_reason, now)
            self._ensure_pool(now)
        self._drain_queue(now)

    def _respond(self, job: Job, data: bytes, status: int, now: float) -> None:
        client = job.client
        if self.config.logs.access_log:
            pid = job.worker.pid if job.worker is not None else "-"
            access_log.info('%s "%s %s %s" %d %d %.1fms pid=%s', job.request.remote_addr, job.request.method,
                            job.request.path + ("?" + job.request.query if job.request.query else ""),
                            job.request.protocol, status, len(data), (now - job.queued_at) * 1000, pid)
        if client.closed:
            return
        client.job = None
        client.served += 1
        if not job.keep_alive:
            client.close_after_write = True
        self._send(client, data)
        if client.closed:
            return
        if client.close_after_write:
            if not client.out:
                self._close_client(client)
            return
        client.conn.start_next_cycle()
        client.idle_since = now
        if not client.reading and not client.conn.reading_body:
            self._set_reading(client, True)
        if not client.out:
            self._process_client(client)

    def _answer_job_failure(self, job: Job, reason: str) -> None:
        """The one place that maps a failed job to what the client sees."""
        outcomes = {
            "soft_error": (500, "the application raised an error", ()),
            "bad_response": (502, "the worker sent an invalid response", ()),
            "worker_died": (502, "the worker died while handling the request", ()),
            "exec_ttl": (504, f"the request exceeded exec_ttl ({self.config.supervisor.exec_ttl:g}s)", ()),
            "allocate_timeout": (503, "no free worker within allocate_timeout", (("Retry-After", "1"),)),
            "queue_full": (503, "the request queue is full", (("Retry-After", "1"),)),
            "no_workers": (503, "no worker is running (workers fail to start)", (("Retry-After", str(self._retry_after())),)),
            "shutdown": (503, "the server is shutting down", (("Retry-After", "1"),)),
        }
        status, message, extra = outcomes[reason]
        keep_alive = job.keep_alive and status < 502 and not self._stopping
        data = http11.error_response(status, message, date=self._http_date(), keep_alive=keep_alive,
                                     extra_headers=extra)
        job.keep_alive = keep_alive
        self._respond(job, data, status, time.monotonic())

    def _retry_after(self) -> int:
        return max(1, int(self.pool.next_start_at - time.monotonic() + 0.999))

    # ================================================================== workers
    def _ensure_pool(self, now: float) -> None:
        if self._stopping:
            return
        while self.pool.deficit() and self.pool.can_start(now):
            self._start_worker(now)

    def _start_worker(self, now: float) -> Worker:
        worker = self.pool.new_worker(now)
        proc = self.launcher.start(self._descriptors_for_child())
        worker.pid = proc.pid
        channel = Channel(proc)
        worker.channel = channel
        self.selector.register(proc.from_worker, selectors.EVENT_READ,
                               lambda mask: self._on_worker_readable(worker))
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

    def _write_to_worker(self, worker: Worker, data: bytes, tail: bytes = b"") -> None:
        channel: Channel = worker.channel
        if channel.closed:
            return
        if channel.out:
            channel.out += data
            channel.out += tail
            return
        fd = channel.proc.to_worker
        try:
            written = os.write(fd, data)
        except BlockingIOError:
            written = 0
        except (BrokenPipeError, OSError):
            return   # the process is gone; its sentinel will tell
        if written < len(data) or tail:
            channel.out += memoryview(data)[written:]
            channel.out += tail
            self._flush_worker(worker)

    def _flush_worker(self, worker: Worker) -> None:
        channel: Channel = worker.channel
        if channel.closed:
            return
        fd = channel.proc.to_worker
        while channel.out:
            try:
                written = os.write(fd, channel.out)
            except BlockingIOError:
                break
            except (BrokenPipeError, OSError):
                channel.out.clear()
                break
            del channel.out[:written]
        want = bool(channel.out)
        if want != channel.writing:
            channel.writing = want
            if want:
                self.selector.register(fd, selectors.EVENT_WRITE, lambda mask: self._flush_worker(worker))
            else:
                self.selector.unregister(fd)

    def _on_worker_readable(self, worker: Worker) -> None:
        channel: Channel = worker.channel
        if channel.closed:
            return
        try:
            data = os.read(channel.proc.from_worker, READ_SIZE)
        except BlockingIOError:
            return
        if not data:
            if worker.state is S.STOPPING:   # expected: it is on its way out; the sentinel follows
                self.selector.unregister(channel.proc.from_worker)
            else:
                self._fail_worker(worker, "closed its frame channel")
            return
        try:
            frames = channel.decoder.feed(data)
        except FrameError as exc:
            leaked = _printable(channel.decoder.buffered[:64])
            self._fail_worker(worker, f"broke the frame channel ({exc}); it sent: {leaked}")
            return
        for item in frames:
            if worker.state in (S.STOPPING, S.DEAD):
                return
            self._on_worker_frame(worker, item)

    def _on_worker_frame(self, worker: Worker, item: frame.Frame) -> None:
        now = time.monotonic()
        if worker.state is S.STARTING:
            self._on_handshake(worker, item, now)
        elif worker.state is S.BUSY:
            self._on_response_frame(worker, item, now)
        else:
            self._fail_worker(worker, f"sent a frame while {worker.state.name}")

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
        self._drain_queue(now)
        self._continue_reload(now)

    def _on_response_frame(self, worker: Worker, item: frame.Frame, now: float) -> None:
        job: Job = worker.job
        if item.flags & ERROR:
            log.warning("%s: request %s %s failed: %s", worker, job.request.method, job.request.path,
                        _printable(item.payload[:200]))
            self._answer_job_failure_and_free(worker, job, "soft_error", now)
            return
        head_len = item.options[0] if item.options else -1
        try:
            if not 0 <= head_len <= len(item.payload):
                raise ValueError("response frame has no head length option")
            status, headers, stop = decode_response_head(item.payload[:head_len])
            if stop:
                self._requeue_from_stopping_worker(worker, job, now)
                return
            data = http11.serialize_response(status, headers, item.payload[head_len:], keep_alive=job.keep_alive,
                                             head_only=job.head_only, date=self._http_date(),
                                             protocol=job.request.protocol)
        except ValueError as exc:
            log.warning("%s: invalid response: %s", worker, exc)
            self._answer_job_failure_and_free(worker, job, "bad_response", now)
            return
        self._finish_job(worker, job, data, status, now)

    def _answer_job_failure_and_free(self, worker: Worker, job: Job, reason: str, now: float) -> None:
        """A failed job whose worker is fine (soft error, bad response): keep the worker."""
        self._answer_job_failure(job, reason)
        if self.pool.job_done(worker, now):
            self._stop_worker(worker, worker.retire_reason, now)
            self._ensure_pool(now)
        self._drain_queue(now)

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
            log.info("worker %d (pid %d): %s", worker.id, worker.pid, line.decode("utf-8", "replace").rstrip("\r"))

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

    # ================================================================== reload and shutdown
    def begin_reload(self) -> None:
        """SIGHUP / reset: replace every worker, one at a time, without failing a request."""
        if self._stopping:
            return
        log.info("reloading: replacing %d workers one at a time", len(self.pool.workers))
        self.pool.generation += 1
        self._reload_queue = [w for w in self.pool.workers.values() if w.live]
        self._reloading = True
        self._continue_reload(time.monotonic())

    def _continue_reload(self, now: float) -> None:
        """Retire the next old worker once no replacement is still starting."""
        if not self._reloading or self._stopping:
            return
        if any(w.state is S.STARTING and w.generation == self.pool.generation for w in self.pool.workers.values()):
            return
        while self._reload_queue:
            worker = self._reload_queue.pop(0)
            if worker.live and not worker.retire_reason:
                self.retire_worker(worker, "reset", now)
                return
        self._reloading = False
        log.info("reload complete")

    @property
    def reloading(self) -> bool:
        return self._reloading

    def begin_shutdown(self, force: bool = False) -> None:
        """SIGTERM/SIGINT: stop accepting, finish in-flight and queued work, stop workers.
        A second signal (or force) exits at once."""
        if self._stopping or force:
            log.warning("stopping now: killing %d workers", len(self.pool.workers))
            for worker in list(self.pool.workers.values()):
                worker.channel.proc.kill()
            self._exit_status = 0 if force and not self._stopping else 1
            return
        log.info("stopping: finishing %d in-flight and %d queued requests",
                 sum(1 for c in self.clients.values() if c.job is not None and c.job.worker is not None),
                 len(self.queue))
        self._stopping = True
        destroy = self.config.pool.destroy_timeout
        self._stop_deadline_at = time.monotonic() + destroy if destroy else 0.0
        self._pause_accepting()
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        for client in list(self.clients.values()):
            if client.job is None and not client.out:
                self._close_client(client)
            elif client.job is not None:
                client.job.keep_alive = False
        self._next_tick_at = 0.0

    def _continue_shutdown(self, now: float) -> None:
        if not self._stopping:
            return
        if not self.pool.serving() and self.queue:
            self._fail_queue("shutdown")
        busy = any(c.job is not None for c in self.clients.values()) or self.queue
        if not busy:
            for client in list(self.clients.values()):
                if not client.out:
                    self._close_client(client)
            for worker in list(self.pool.workers.values()):
                if worker.state is S.IDLE:
                    self._stop_worker(worker, "shutdown", now)
                elif worker.state is S.STARTING:
                    self._kill_worker(worker, "shutdown", now)
        if self._stop_deadline_at and now >= self._stop_deadline_at:
            for worker in list(self.pool.workers.values()):
                if worker.channel.proc is not None:
                    worker.channel.proc.kill()
        if not self.pool.workers and not busy:
            log.info("stopped")
            self._exit_status = 0

    def _close_everything(self) -> None:
        for worker in list(self.pool.workers.values()):
            worker.channel.proc.kill()
            worker.channel.proc.reap(1.0)
            self._close_channel(worker)
        for client in list(self.clients.values()):
            self._close_client(client)
        if self.listener is not None:
            self.listener.close()
        signal.set_wakeup_fd(-1)
        self.selector.close()

    # ================================================================== helpers
    def _http_date(self) -> bytes:
        now = time.time()
        second = int(now)
        if second != self._date_second:      # formatting a date costs more than a request's parse
            self._date_second = second
            self._date = http11.http_date(now)
        return self._date


def _ignore_signal(signum, frame) -> None:
    """Installed so that signals reach the wakeup fd; the loop does the work."""


def _printable(data: bytes) -> str:
    text = data.decode("latin-1")
    return repr("".join(ch if 32 <= ord(ch) < 127 else "." for ch in text))
