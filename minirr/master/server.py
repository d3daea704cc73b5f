"""The master: the parts wired together, the loop's rounds, signals, reload and shutdown.

Owns: building the parts — each gets the parts it calls in its constructor, so this is
      the one place that shows who calls whom — the round (select, then time-driven
      work), signals, the reload and shutdown sequences, and the orderly end when anything
      escapes the loop (listeners closed, workers stopped, exit status 1: never a hang).
Never: parses HTTP, reads a frame or decides a worker's fate; each part does its own.

    ┌────────────── Server ──────────────────────────────────────────────────────────┐
    │  Loop (loop.py): one selector, the clock, containment of every callback        │
    │                                                                                │
    │  Frontend ──Job──> Jobs.submit ──a free worker──> Backend.dispatch ──frame──> WorkerChannel
    │  (listener,          │ queue, the job's table          │ reply frames <────────┘
    │   Connections) <──Answers (answer.py) <── Jobs.on_reply <── ReplyReader (reply.py)
    │  Operations: control socket, /health /ready /metrics, supervisor, systemd      │
    └────────────────────────────────────────────────────────────────────────────────┘

    built in this order (each line needs only the lines above it):
      pool, metrics, answers                 decisions and the client-side writer
      jobs(pool, answers)                    the job's life
      ops(pool, metrics, controls=server)    the operator side
      websockets(jobs, metrics, pool)        WebSockets after their 101
      backend(pool, jobs, events=ops, websockets)   workers
      front(jobs, backend, websockets)       clients

A round:  loop.run_once(timeout) -> if a tick is due: `_on_tick(now)` -> flush the logs.
"""

from __future__ import annotations

import logging
import signal
import socket
from typing import Optional

from ..config import Config
from ..errors import MinirrError
from ..http.responses import DateCache
from ..logs import AccessLog, LogWriter, writer as default_log_writer
from .answer import Answers
from .backend import Backend, log_move
from .frontend import Frontend
from .jobs import Jobs, Outcome
from .loop import READ, Handler, Loop
from .metrics import ServerMetrics
from .operations import Operations
from . import reload
from .pool import Pool, Reason, Worker
from .static import StaticFiles
from .lifecycle import WebSocketLimits
from .websocket import WebSockets

log = logging.getLogger("minirr")

TICK_BUSY_S = 0.1                      # timer resolution while anything is in flight
TICK_IDLE_S = 1.0


class _Wakeup(Handler):
    """The signal socketpair: handlers only write the signal number; the loop reads it."""

    def __init__(self, server: "Server") -> None:
        self.server = server
        self.sock_r, self.sock_w = socket.socketpair()
        self.sock_r.setblocking(False)
        self.sock_w.setblocking(False)

    def on_event(self, mask: int) -> None:
        try:
            data = self.sock_r.recv(64)
        except BlockingIOError:
            return
        handlers = {signal.SIGTERM: self.server.begin_shutdown, signal.SIGINT: self.server.begin_shutdown,
                    signal.SIGHUP: self.server.begin_reload}
        for signum in data:
            handler = handlers.get(signum)
            if handler is not None:
                handler()

    def close(self) -> None:
        self.sock_r.close()
        self.sock_w.close()


class Server:
    """The master process. `run()` returns the exit status."""

    def __init__(self, config: Config, launcher, stdout=None, log_writer: Optional[LogWriter] = None,
                 loop: Optional[Loop] = None) -> None:
        self.config = config
        self.stdout = stdout
        self.loop = loop or Loop()
        self.log_writer = log_writer or default_log_writer()
        pool_cfg = config.pool
        self.pool = Pool(pool_cfg.num_workers, pool_cfg.max_jobs, pool_cfg.allocate_timeout, pool_cfg.destroy_timeout,
                         on_move=log_move if config.logs.trace_frames else None)
        self.metrics = ServerMetrics()
        dates = DateCache()
        access_log = None
        if config.logs.access_log and config.logs.level in ("debug", "info"):
            access_log = AccessLog(self.log_writer, config.logs.format)
        self.jobs = Jobs(self.pool, Answers(dates), pool_cfg.max_queue_size, pool_cfg.allocate_timeout,
                         config.supervisor.exec_ttl, pool_cfg.destroy_timeout, self.metrics, access_log)
        self.ops = Operations(self.loop, config, self.pool, self.metrics, dates, self._announce, controls=self)
        ws = config.websocket
        self.websockets = WebSockets(WebSocketLimits(ws.max_message_size, ws.ping_interval, ws.ping_timeout,
                                                     config.http.body_timeout), self.jobs, self.metrics, dates,
                                     self.pool)
        self.back = Backend(self.loop, config, launcher, self.pool, self.jobs, events=self.ops,
                            inherited=self._child_descriptors, websockets=self.websockets)
        static = StaticFiles.from_config(config, self.metrics, access_log, dates)   # None without [static]
        self.front = Frontend(self.loop, config.http, self.jobs, self.back, dates, static, self.websockets)
        self.reload_watch = reload.watcher(config, self.loop, launcher,   # [server] reload (master/reload.py)
                                           lambda: self.back.descriptors() + self._child_descriptors(),
                                           self.begin_reload)
        self.stopping = False
        self._stop_deadline_at = 0.0
        self._exit_status: Optional[int] = None
        self._next_tick_at = 0.0
        self._wakeup: Optional[_Wakeup] = None
        self._operations_open = False

    @property
    def address(self):
        return self.front.address

    # ================================================================== start and run
    def bind(self) -> None:
        """Listen on [http] address. Raises MinirrError with the operator's message."""
        self.front.bind()

    def open_operations(self) -> None:
        """The control socket, status and metrics listeners. Raises MinirrError."""
        if not self._operations_open:
            self._operations_open = True
            self.ops.open()

    def run(self) -> int:
        """Bind, start the pool, announce readiness, then loop until stopped. Whatever
        escapes the loop ends in an orderly exit with status 1."""
        try:
            if self.front.listener is None:
                self.bind()
            self.open_operations()
            self._install_signals()
            self.back.ensure_pool(self.loop.clock())
            self._announce(f"minirr listening on http://{self.address[0]}:{self.address[1]}")
            log.info("serving %s with %d workers", self.config.server.app or " ".join(self.config.server.command),
                     self.pool.size)
            self.log_writer.batching = True
            while self._exit_status is None:
                self._round()
        except MinirrError:
            raise
        except Exception:
            log.critical("the master failed; closing the listeners and stopping the workers", exc_info=True)
            self._exit_status = 1
        finally:
            self._close_everything()
        return self._exit_status

    def _announce(self, line: str) -> None:
        if self.stdout is not None:
            self.stdout.write(line + "\n")
            self.stdout.flush()

    def _round(self) -> None:
        now = self.loop.clock()
        self.loop.run_once(max(0.0, self._next_tick_at - now))
        now = self.loop.clock()
        if now >= self._next_tick_at:
            self._on_tick(now)
            busy = self.front.connections or self.jobs.queue or self.stopping \
                or len(self.pool.workers) != self.pool.size
            self._next_tick_at = min(now + (TICK_BUSY_S if busy else TICK_IDLE_S), self.ops.due_at(now))
        if self.log_writer.pending_bytes:
            self.log_writer.flush()

    def _on_tick(self, now: float) -> None:
        """Time-driven work, in the order a reader would check it."""
        self.jobs.expire(now)              # allocate_timeout
        self.back.expire(now)              # exec_ttl, start and stop deadlines, restarts, the reload
        self.front.expire(now)             # client timeouts and rates
        self.ops.tick(now)                 # supervisor, pending resets, operator peers
        self.reload_watch.tick(now)        # [server] reload: the app's files changed?
        self._continue_shutdown(now)

    def _child_descriptors(self) -> list:
        """Everything of ours (besides the workers' pipes) a forked worker must close."""
        items: list = [self.loop.selector]
        if self._wakeup is not None:
            items += [self._wakeup.sock_r, self._wakeup.sock_w]
        return items + self.front.descriptors() + self.ops.descriptors() + self.reload_watch.descriptors()

    def queue_length(self) -> int:
        return self.jobs.waiting

    def retire(self, worker: Worker, reason: Reason, now: float) -> None:
        """The supervisor found `worker` past a soft limit (operations.py asks)."""
        self.back.retire(worker, reason, now)

    # ================================================================== signals
    def _install_signals(self) -> None:
        """Handlers only wake the loop: the signal number arrives on a socketpair."""
        self._wakeup = _Wakeup(self)
        signal.set_wakeup_fd(self._wakeup.sock_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, _ignore_signal)
        self.loop.register(self._wakeup.sock_r, READ, self._wakeup)

    # ================================================================== reload and shutdown
    def begin_reload(self) -> None:
        """SIGHUP / reset: replace every worker, one at a time, without failing a request."""
        if self.stopping:
            return
        self.ops.reload_started()
        self.back.begin_reload(self.loop.clock())

    def begin_shutdown(self, force: bool = False) -> None:
        """SIGTERM/SIGINT: stop accepting, finish what is under way (requests being read,
        in flight and queued), stop the workers. A second signal (or force) exits at once."""
        self.ops.shutdown_started()
        if self.stopping or force:
            log.warning("stopping now: killing %d workers", len(self.pool.workers))
            self.back.kill_all()
            self._exit_status = 0 if force and not self.stopping else 1
            return
        log.info("stopping: finishing %d in-flight and %d queued requests", self.pool.in_flight(), self.jobs.waiting)
        self.stopping = True
        self.back.stopping = True
        self.back.stop_reload()
        destroy = self.config.pool.destroy_timeout
        self._stop_deadline_at = self.loop.clock() + destroy if destroy else 0.0
        self.front.stop_accepting()
        self._next_tick_at = 0.0

    def _continue_shutdown(self, now: float) -> None:
        if not self.stopping:
            return
        if not self.pool.serving() and self.jobs.queue:
            self.jobs.refuse_all(Outcome.SHUTDOWN, now)
        busy = self.front.busy() or self.jobs.waiting
        if not busy:
            self.front.close_idle()
            self.back.stop_idle(now)
        past_deadline = self._stop_deadline_at and now >= self._stop_deadline_at
        if past_deadline:
            self.back.kill_all()
        # Answers still draining to slow readers, and requests still arriving, get until
        # the stop deadline.
        if not self.pool.workers and (not busy or past_deadline) and (not self.front.unsent() or past_deadline):
            log.info("stopped")
            self._exit_status = 0

    def _close_everything(self) -> None:
        for part in (self.front.close, self.ops.close, self.back.close, self.reload_watch.close, self._close_signals):
            try:
                part()
            except Exception:              # the end must be reached whatever broke on the way
                log.exception("closing failed")
        self.loop.close()
        self.log_writer.batching = False
        self.log_writer.flush()

    def _close_signals(self) -> None:
        if self._wakeup is not None:
            signal.set_wakeup_fd(-1)
            self.loop.unregister(self._wakeup.sock_r)
            self._wakeup.close()
            self._wakeup = None


def _ignore_signal(signum, frame) -> None:
    """Installed so that signals reach the wakeup fd; the loop does the work."""
