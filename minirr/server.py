"""The master: one selectors loop for the listener, clients, worker pipes, signals, timers.

Owns: the loop, signals, the request queue, reload and shutdown, and turning job
      outcomes into what the client sees (one function: `_answer_job_failure`).
      Its two halves live beside it: frontend.py (listener and clients) and
      backend.py (worker processes and their pipes).
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

import logging
import selectors
import signal
import socket
import time
from collections import deque
from typing import Deque, Dict, List, Optional

from . import http11
from .backend import Backend
from .config import Config
from .frontend import Client, Frontend, Job
from .messages import Request
from .operations import Operations
from .pool import Pool, Worker, WorkerState

log = logging.getLogger("minirr")
access_log = logging.getLogger("minirr.access")

TICK_BUSY_S = 0.1                      # timer resolution while anything is in flight
TICK_IDLE_S = 1.0
S = WorkerState


class Server(Operations, Frontend, Backend):
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
        self._default_host = "localhost"   # Host of an HTTP/1.0 request without one: set by bind()
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
        self._init_operations()

    # ================================================================== start and run
    def bind(self) -> None:
        host, port = self.config.http.address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Responses leave in one send(); Nagle's algorithm would hold back the tail of a
        # large one until the client's (delayed) ACK. Accepted sockets inherit the option
        # from the listener (Linux, the BSDs), which saves a syscall per connection.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(min(socket.SOMAXCONN, 1024))
        sock.setblocking(False)
        self.listener = sock
        self.address = sock.getsockname()[:2]
        self._default_host = f"{self.address[0]}:{self.address[1]}"
        self._resume_accepting()

    def run(self) -> int:
        """Bind, start the pool, announce readiness, then loop until stopped."""
        if self.listener is None:
            self.bind()
        self.open_operations()           # control socket, status, metrics (idempotent)
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
            self._next_tick_at = min(self._next_tick_at, self._operations_due_at(now))

    def _on_tick(self, now: float) -> None:
        """Time-driven work, in the order a reader would check it."""
        self._expire_queued_jobs(now)
        self._handle_overdue_workers(now)
        self._expire_connections(now)
        self._resume_accepting_after_backoff(now)
        self._ensure_pool(now)
        self._continue_reload(now)
        self._continue_shutdown(now)
        self._on_operations_tick(now)

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

    # ================================================================== jobs
    def _submit(self, client: Client, request: Request) -> None:
        now = time.monotonic()
        keep_alive = not client.conn.close_requested and not self._stopping
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

    def _release_worker(self, worker: Worker, now: float) -> None:
        """Its job is answered: retire it if due (its replacement starts now), and give the
        next queued job to whichever worker is free."""
        if self.pool.job_done(worker, now):
            self._stop_worker(worker, worker.retire_reason, now)
            self._ensure_pool(now)
        if self.queue:
            self._drain_queue(now)

    def _respond(self, job: Job, data: bytes, status: int, now: float) -> None:
        client = job.client
        self._on_request_answered(status, now - job.queued_at)
        if self.config.logs.access_log:
            pid = job.worker.pid if job.worker is not None else "-"
            target = job.request.path + ("?" + job.request.query if job.request.query else "")
            duration_ms = (now - job.queued_at) * 1000
            fields = {"remote_addr": job.request.remote_addr, "method": job.request.method, "target": target,
                      "status": status, "bytes": len(data), "duration_ms": round(duration_ms, 1), "pid": pid}
            access_log.info('%s "%s %s %s" %d %d %.1fms pid=%s', job.request.remote_addr, job.request.method,
                            target, job.request.protocol, status, len(data), duration_ms, pid, extra=fields)
        self._send_response(client, data, job.keep_alive, now)

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
        self._on_job_failed(reason)
        keep_alive = job.keep_alive and status < 502 and not self._stopping
        data = http11.error_response(status, message, date=self._http_date(), keep_alive=keep_alive,
                                     extra_headers=extra)
        job.keep_alive = keep_alive
        self._respond(job, data, status, time.monotonic())

    def _retry_after(self) -> int:
        return max(1, int(self.pool.next_start_at - time.monotonic() + 0.999))

    # ================================================================== reload and shutdown
    def begin_reload(self) -> None:
        """SIGHUP / reset: replace every worker, one at a time, without failing a request."""
        if self._stopping:
            return
        log.info("reloading: replacing %d workers one at a time", len(self.pool.workers))
        self.pool.generation += 1
        self._reload_queue = [w for w in self.pool.workers.values() if w.live]
        self._reloading = True
        self._on_reload_started()
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
        self._on_reload_finished(now)

    @property
    def reloading(self) -> bool:
        return self._reloading

    def begin_shutdown(self, force: bool = False) -> None:
        """SIGTERM/SIGINT: stop accepting, finish in-flight and queued work, stop workers.
        A second signal (or force) exits at once."""
        self._on_shutdown_started()
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
        # Responses still draining to slow readers get until the stop deadline.
        unsent = any(c.out for c in self.clients.values())
        past_deadline = self._stop_deadline_at and now >= self._stop_deadline_at
        if not self.pool.workers and not busy and (not unsent or past_deadline):
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
        self._close_operations()
        signal.set_wakeup_fd(-1)
        self.selector.close()

def _ignore_signal(signum, frame) -> None:
    """Installed so that signals reach the wakeup fd; the loop does the work."""
