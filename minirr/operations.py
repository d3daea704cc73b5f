"""The master's operations side: control calls, the supervisor, status, metrics, systemd.

Owns: what the control socket answers (workers, reset, stop), the watch tick that applies
      the supervisor's soft limits, the /health, /ready and /metrics answers, the metric
      events, and the systemd notifications (READY, RELOADING, STOPPING).
Never: moves bytes itself (endpoints.py does), decides which worker is due (supervisor.py
       does), or kills a worker: retirement goes through `retire_worker` (backend.py).

`Operations` is mixed into server.Server, before Frontend and Backend. The server calls
these hooks; each is one line at the place the event happens:

    __init__            _init_operations()           run()       open_operations()
    _on_tick            _on_operations_tick(now)     _tick_once  _operations_due_at(now)
    _respond            _on_request_answered(status, duration_s)
    _answer_job_failure _on_job_failed(reason)       _on_handshake  _on_worker_ready(worker, now)
    _on_worker_exit     _on_worker_gone(worker, was)
    begin_reload        _on_reload_started()         _continue_reload  _on_reload_finished(now)
    begin_shutdown      _on_shutdown_started()       _close_everything _close_operations()

    reset:  call ──> begin_reload() ──> PendingReset ─┬─ reload complete ──> answer
                                                      └─ reset_timeout ────> error answer
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Dict, List, NamedTuple, Optional, Tuple

from . import control, endpoints, procfs, supervisor
from .control import Call, UnixAddress
from .endpoints import Endpoints, Peer
from .metrics import CONTENT_TYPE, ServerMetrics
from .notify import Notifier
from .pool import Worker, WorkerState

log = logging.getLogger("minirr")

S = WorkerState
NO_FREE_WORKER_REASONS = ("allocate_timeout", "queue_full", "no_workers")
FAR_FUTURE = float("inf")


class PendingReset(NamedTuple):
    peer: Peer
    seq: int
    started_at: float
    deadline_at: float                  # 0 = no reset_timeout
    workers: int


def probe(kind: str, counts: Dict[str, int], stopping: bool, queue_length: int) -> Tuple[int, dict]:
    """/health or /ready -> (HTTP status, JSON body). Health: some worker can serve.
    Ready: a worker is free right now, and the server is not draining for a stop (so a
    load balancer takes this instance out first)."""
    workers = {state: counts.get(state, 0) for state in ("ready", "working", "starting", "stopping")}
    if kind == "health":
        ok = workers["ready"] + workers["working"] > 0
    else:
        ok = workers["ready"] > 0 and not stopping
    body = {"status": "ok" if ok else "unavailable", "workers": workers, "queue": queue_length,
            "stopping": stopping}
    return (200 if ok else 503), body


class Operations(Endpoints):
    """Operator-facing behaviour of the master; mixed into server.Server."""

    # ================================================================== lifecycle
    def _init_operations(self) -> None:
        sup = self.config.supervisor
        self.metrics = ServerMetrics()
        self.supervisor_limits = supervisor.Limits(sup.ttl, sup.idle_ttl, sup.max_worker_memory)
        self.endpoints = {}
        self.peers = {}
        self.control_address: Optional[control.Address] = None
        self.notifier: Optional[Notifier] = None
        self._operations_open = False
        self._control_identity: Optional[tuple] = None   # (dev, inode) of our socket file
        self._pending_resets: List[PendingReset] = []
        self._cpu_samples: Dict[int, procfs.CpuSample] = {}
        self._next_watch_at = 0.0
        self._notified_ready = False
        self._notified_stopping = False
        self._started_monotonic = time.monotonic()

    def open_operations(self) -> None:
        """Bind the control socket, then the status and metrics listeners (each prints its
        stdout line, before the main ready line), then find NOTIFY_SOCKET.
        Raises MinirrError with an operator's message (the cli exits 1)."""
        if self._operations_open:
            return
        self._operations_open = True
        try:
            self._open_control()
            for name, section in (("status", self.config.status), ("metrics", self.config.metrics)):
                if section is not None:
                    endpoint = self._add_endpoint(name, "http", endpoints.bind_http(name, section.address))
                    host, port = endpoint.sock.getsockname()[:2]
                    self._announce(f"minirr {name} on http://{host}:{port}")
        except Exception:
            self._close_operations()
            raise
        self.notifier = Notifier.from_environ(os.environ)

    def _open_control(self) -> None:
        address = control.parse_listen(self.config.rpc.listen, self.config.base_dir)
        endpoint = self._add_endpoint("control", "control", endpoints.bind_control(address))
        if isinstance(address, UnixAddress):
            self._control_identity = endpoints.file_identity(address.path)
        else:
            address = control.TCPAddress(address.host, endpoint.sock.getsockname()[1])
        self.control_address = address
        log.info("control socket on %s", address)

    def _extra_child_descriptors(self) -> list:
        """Overrides Backend's: what a forked worker must close of ours."""
        items = self._endpoint_descriptors()
        if self.notifier is not None:
            items.append(self.notifier.sock)
        return items

    def _close_operations(self) -> None:
        self._close_endpoints()
        if isinstance(self.control_address, UnixAddress):
            endpoints.remove_own_socket(self.control_address.path, self._control_identity)
        if self.notifier is not None:
            self.notifier.close()
            self.notifier = None

    # ================================================================== time
    def _on_operations_tick(self, now: float) -> None:
        self._watch(now)
        self._finish_resets(now)
        self._expire_peers(now)

    def _operations_due_at(self, now: float) -> float:
        """When the loop must tick for us next (it may sleep up to a second otherwise)."""
        due = FAR_FUTURE
        if self.supervisor_limits.active:
            due = self._next_watch_at
        for pending in self._pending_resets:
            if pending.deadline_at:
                due = min(due, pending.deadline_at)
        return due

    def _watch(self, now: float) -> None:
        """Every watch_tick: read each worker's RSS, retire at most one worker past a limit."""
        if not self.supervisor_limits.active or now < self._next_watch_at:
            return
        self._next_watch_at = now + (self.config.supervisor.watch_tick or 1.0)
        if self._stopping:
            return
        rss = self._read_rss() if self.supervisor_limits.max_memory_mb else {}
        choice = supervisor.next_retirement(self.pool.workers.values(), now, self.supervisor_limits, rss)
        if choice is None:
            return
        worker, reason, detail = choice
        log.info("%s %s; replacing it%s", worker, detail, " after its request" if worker.state is S.BUSY else "",
                 extra={"worker": worker.id, "pid": worker.pid, "reason": reason})
        self.retire_worker(worker, reason, now)

    def _read_rss(self) -> Dict[int, int]:
        readings = {}
        for worker in self.pool.workers.values():
            if worker.live and worker.pid:
                rss = procfs.read_rss_bytes(worker.pid)
                if rss is not None:
                    readings[worker.pid] = rss
        return readings

    # ================================================================== events from the server
    def _on_request_answered(self, status: int, duration_s: float) -> None:
        self.metrics.request_answered(status, duration_s)

    def _on_job_failed(self, reason: str) -> None:
        if reason in NO_FREE_WORKER_REASONS:
            self.metrics.no_free_worker()

    def _on_worker_ready(self, worker: Worker, now: float) -> None:
        if self.notifier is not None and not self._notified_ready:
            self._notified_ready = True
            self.notifier.ready(f"serving with {self.pool.size} workers")

    def _on_worker_gone(self, worker: Worker, was: WorkerState) -> None:
        reason = supervisor.restart_reason(was, worker.retire_reason)
        if reason is not None:
            self.metrics.worker_restarted(reason)
        self._cpu_samples.pop(worker.pid, None)

    def _on_reload_started(self) -> None:
        if self.notifier is not None:
            self.notifier.reloading(time.monotonic())

    def _on_reload_finished(self, now: float) -> None:
        if self.notifier is not None:
            self.notifier.ready("reload complete")
        self._finish_resets(now)

    def _on_shutdown_started(self) -> None:
        if self.notifier is not None and not self._notified_stopping:
            self._notified_stopping = True
            self.notifier.stopping()
        for pending in self._pending_resets:
            self._send_error(pending.peer, pending.seq, "reset", "the server is stopping")
        self._pending_resets = []

    # ================================================================== control calls
    def _on_control_call(self, peer: Peer, call: Call, now: float) -> None:
        handlers = {"workers": self._call_workers, "reset": self._call_reset, "stop": self._call_stop}
        handler = handlers.get(call.method)
        if handler is None:
            self._send_error(peer, call.seq, call.method,
                             f"unknown method {call.method!r} (known: {', '.join(control.METHODS)})")
            return
        handler(peer, call, now)

    def _send_answer(self, peer: Peer, seq: int, method: str, result: dict) -> None:
        self._send_to_peer(peer, control.encode_answer(seq, method, result))

    def _send_error(self, peer: Peer, seq: int, method: str, message: str) -> None:
        self._send_to_peer(peer, control.encode_error(seq, method, message))

    def _call_workers(self, peer: Peer, call: Call, now: float) -> None:
        wall = time.time()
        rows = [self._worker_row(worker, now, wall)
                for worker in sorted(self.pool.workers.values(), key=lambda w: w.id)]
        self._send_answer(peer, call.seq, call.method, {"pid": os.getpid(), "workers": rows})

    def _worker_row(self, worker: Worker, now: float, wall: float) -> dict:
        """One row of `minirr workers`. CPU% is since the previous `workers` call (or since
        the worker started), like `top` between two refreshes."""
        rss = procfs.read_rss_bytes(worker.pid) if worker.pid else None
        sample = procfs.read_cpu_sample(worker.pid, now) if worker.pid else None
        cpu = 0.0
        if sample is not None:
            before = self._cpu_samples.get(worker.pid) or procfs.CpuSample(0, worker.created_at)
            cpu = procfs.cpu_percent(before, sample)
            self._cpu_samples[worker.pid] = sample
        age = now - worker.created_at
        return {"id": worker.id, "pid": worker.pid, "status": worker.state.value, "execs": worker.jobs_done,
                "memory_bytes": rss or 0, "cpu_percent": round(cpu, 1), "created_at": round(wall - age, 3),
                "age_s": round(age, 3)}

    def _call_reset(self, peer: Peer, call: Call, now: float) -> None:
        if self._stopping:
            self._send_error(peer, call.seq, call.method, "the server is stopping")
            return
        workers = sum(1 for w in self.pool.workers.values() if w.live)
        log.info("reset requested over the control socket")
        timeout = self.config.pool.reset_timeout
        self._pending_resets.append(PendingReset(peer, call.seq, now, now + timeout if timeout else 0.0, workers))
        self.begin_reload()
        self._finish_resets(now)

    def _finish_resets(self, now: float) -> None:
        """Answer each reset whose reload is complete, or whose reset_timeout has passed."""
        waiting = []
        for pending in self._pending_resets:
            if pending.peer.closed:
                continue
            if not self.reloading:
                self._send_answer(pending.peer, pending.seq, "reset",
                                  {"replaced": pending.workers, "seconds": round(now - pending.started_at, 3)})
            elif pending.deadline_at and now >= pending.deadline_at:
                log.warning("reset did not complete within reset_timeout (%gs)", self.config.pool.reset_timeout)
                self._send_error(pending.peer, pending.seq, "reset",
                                 f"the reset did not complete within reset_timeout "
                                 f"({self.config.pool.reset_timeout:g}s); workers are still being replaced")
            else:
                waiting.append(pending)
        self._pending_resets = waiting

    def _call_stop(self, peer: Peer, call: Call, now: float) -> None:
        force = call.params.get("force") is True
        log.info("stop requested over the control socket%s", " (force)" if force else "")
        # Answer first: a forced stop leaves the loop at once. The peer stays open, so
        # the cli sees EOF when the master has exited.
        self._send_answer(peer, call.seq, call.method, {"pid": os.getpid(), "force": force})
        self.begin_shutdown(force=force)

    # ================================================================== status and metrics
    def _answer_http(self, endpoint: str, request, now: float) -> Tuple[int, list, bytes]:
        routes = {
            ("status", "/health"): lambda: self._answer_probe("health"),
            ("status", "/ready"): lambda: self._answer_probe("ready"),
            ("metrics", "/metrics"): lambda: self._answer_metrics(now),
        }
        answer = routes.get((endpoint, request.path))
        if answer is None:
            known = " ".join(path for name, path in routes if name == endpoint)
            return 404, [("Content-Type", "text/plain; charset=utf-8")], f"not found; try {known}\n".encode()
        if request.method not in ("GET", "HEAD"):
            return 405, [("Allow", "GET, HEAD"), ("Content-Type", "text/plain; charset=utf-8")], b"use GET\n"
        return answer()

    def _answer_probe(self, kind: str) -> Tuple[int, list, bytes]:
        status, body = probe(kind, self.pool.counts(), self._stopping, len(self.queue))
        headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
        return status, headers, json.dumps(body).encode() + b"\n"

    def _answer_metrics(self, now: float) -> Tuple[int, list, bytes]:
        text = self.metrics.render(self.pool.counts(), len(self.queue), self._read_rss(),
                                   now - self._started_monotonic)
        return 200, [("Content-Type", CONTENT_TYPE)], text.encode("utf-8")
