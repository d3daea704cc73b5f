"""The master's operator side: the control socket, /health, /ready and /metrics, the
supervisor's soft limits, and systemd's notifications.

Owns: the three operator listeners and what they answer (control calls: workers, reset,
      stop; probes; metrics text), the watch tick that applies the supervisor's limits,
      the metric events of workers (ready, gone) and reloads, and sd_notify's READY,
      RELOADING and STOPPING.
Never: moves bytes itself (connection.py does, for these connections as for clients),
       decides which worker is due (supervisor.py does), or ends a worker, reloads or
       stops: it asks the server (its `Controls`), which has the parts that do.

    control socket ──Connection(CallParser)──> on_request(conn, Call) ──> workers | reset | stop
    status, metrics ──Connection(RequestParser)──> on_request(conn, Request) ──> (status, headers, body)

    reset: call ──> controls.begin_reload() ──> PendingReset ─┬─ reload_done(error="") ──> answer
                                                             ├─ reload_done(error) ────> error answer
                                                             └─ reset_timeout ─────────> error answer
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Protocol, Tuple

from . import control, procfs, supervisor
from ..http.parser import RequestLimits, RequestParser
from ..config import Config
from .connection import Connection
from .control import Call, ControlError, UnixAddress
from .lifecycle import CLOSED, ConnectionLimits
from .listener import Listener, bind, file_identity, remove_own_socket
from .loop import Loop
from .metrics import CONTENT_TYPE, ServerMetrics
from .notify import Notifier
from .pool import WORKING, Pool, Worker, WorkerState, restart_label
from ..http.responses import DateCache, error_response, serialize_response

log = logging.getLogger("minirr")

MAX_PEERS = 32                         # per listener; the one stuck longest makes room for a new one
# An operator's answers are small, and its peers are probes and the cli: one that takes
# nothing of an answer for this long is not reading (body_timeout is also the send
# deadline), and is closed. Clients' 30 s would hold a place that long.
PEER_SEND_TIMEOUT_S = 2.0
PEER_LIMITS = ConnectionLimits(header_timeout=5.0, body_timeout=PEER_SEND_TIMEOUT_S, keepalive_timeout=5.0,
                               pipeline_limit=64 * 1024)
# A peer that pipelines requests and reads no answer is shown to be stuck (and evictable)
# once the kernel holds this much for it (Linux doubles the figure), not after loopback's
# send buffer has grown to megabytes: the master's work for a peer that never reads is
# then a few hundred answers, not tens of thousands.
PEER_SEND_BUFFER_BYTES = 16 * 1024
HTTP_LIMITS = RequestLimits(max_request_size=64 * 1024, limit_request_headers=32 * 1024)
FAR_FUTURE = float("inf")


class PendingReset(NamedTuple):
    conn: Connection
    seq: int
    started_at: float
    deadline_at: float                  # 0 = no reset_timeout


def probe(kind: str, counts: Dict[str, int], stopping: bool, queue_length: int,
          max_queue_size: int = 0) -> Tuple[int, dict]:
    """/health or /ready -> (HTTP status, JSON body).

    Health: some worker can serve (it has booted: ready or working).
    Ready: would a request sent now be taken? Workers have booted, no stop has begun, and
    the queue can take it (`max_queue_size` 0 is unbounded). Busy workers are normal: a
    request waits in the queue for the next free one, as under any load, so a probe that
    failed whenever every worker is busy would take every instance out of a balancer at
    peak load (Kubernetes' readinessProbe does exactly that)."""
    workers = {state: counts.get(state, 0) for state in ("ready", "working", "starting", "stopping")}
    booted = workers["ready"] + workers["working"] > 0
    if kind == "health":
        ok = booted
    else:
        queue_has_room = not max_queue_size or queue_length < max_queue_size
        ok = booted and not stopping and queue_has_room
    body = {"status": "ok" if ok else "unavailable", "workers": workers, "queue": queue_length,
            "stopping": stopping}
    return (200 if ok else 503), body


class Controls(Protocol):
    """What the operator side may ask of the master (server.Server)."""

    stopping: bool

    def queue_length(self) -> int: ...

    def begin_reload(self) -> None: ...

    def begin_shutdown(self, force: bool = False) -> None: ...

    def retire(self, worker: Worker, reason, now: float) -> None: ...


class Operations:
    """Operator-facing behaviour of the master; `controls` is the server."""

    def __init__(self, loop: Loop, config: Config, pool: Pool, metrics: ServerMetrics, dates: DateCache,
                 announce: Callable[[str], None], controls: Controls) -> None:
        self.loop = loop
        self.config = config
        self.pool = pool
        self.metrics = metrics
        self.dates = dates
        self.announce = announce
        self.controls = controls
        sup = config.supervisor
        self.soft_limits = supervisor.SoftLimits(sup.ttl, sup.idle_ttl, sup.max_worker_memory)
        self.listeners: Dict[str, Listener] = {}
        self.control_address: Optional[control.Address] = None
        self.notifier: Optional[Notifier] = None
        self._control_identity: Optional[tuple] = None   # (dev, inode) of our socket file
        self._pending_resets: List[PendingReset] = []
        self._cpu_samples: Dict[int, procfs.CpuSample] = {}
        self._next_watch_at = 0.0
        self._notified_ready = False
        self._notified_stopping = False
        self._started_at = loop.clock()
        self._owners = {"control": _ControlPeers(self), "status": _HTTPPeers(self, "status"),
                        "metrics": _HTTPPeers(self, "metrics")}

    # ================================================================== opening and closing
    def open(self) -> None:
        """Bind the control socket, then the status and metrics listeners (each prints its
        stdout line, before the main ready line), then find NOTIFY_SOCKET.
        Raises MinirrError with an operator's message (the cli exits 1)."""
        try:
            self._open_control()
            for name, section in (("status", self.config.status), ("metrics", self.config.metrics)):
                if section is not None:
                    host, port = section.address
                    sock = bind((host, port), f"{host}:{port} for [{name}]", backlog=16)
                    self._listen(name, sock)
                    bound_host, bound_port = sock.getsockname()[:2]
                    self.announce(f"minirr {name} on http://{bound_host}:{bound_port}")
        except Exception:
            self.close()
            raise
        self.notifier = Notifier.from_environ(os.environ)

    def _open_control(self) -> None:
        address = control.parse_listen(self.config.rpc.listen, self.config.base_dir)
        if isinstance(address, UnixAddress):
            sock = bind(address.path, str(address), backlog=16)
            self._control_identity = file_identity(address.path)
        else:
            sock = bind((address.host, address.port), str(address), backlog=16)
            address = control.TCPAddress(address.host, sock.getsockname()[1])
        self._listen("control", sock)
        self.control_address = address
        log.info("control socket on %s", address)

    def _listen(self, name: str, sock) -> None:
        owner = self._owners[name]
        self.listeners[name] = Listener(self.loop, sock, name, owner.accept, MAX_PEERS, when_full="evict")
        owner.listener = self.listeners[name]

    def descriptors(self) -> list:
        """What a forked worker must close of ours (STYLE.md §5)."""
        items = [item for listener in self.listeners.values() for item in listener.descriptors()]
        if self.notifier is not None:
            items.append(self.notifier.sock)
        return items

    def close(self) -> None:
        for listener in self.listeners.values():
            listener.close()
            listener.close_connections()
        self.listeners.clear()
        if isinstance(self.control_address, UnixAddress):
            remove_own_socket(self.control_address.path, self._control_identity)
        if self.notifier is not None:
            self.notifier.close()
            self.notifier = None

    # ================================================================== time
    def tick(self, now: float) -> None:
        self._watch(now)
        self._finish_resets(now, "", None)
        for listener in self.listeners.values():
            listener.expire(now)

    def due_at(self, now: float) -> float:
        """When the loop must tick for us next (it may sleep up to a second otherwise)."""
        due = self._next_watch_at if self.soft_limits.active else FAR_FUTURE
        for pending in self._pending_resets:
            if pending.deadline_at:
                due = min(due, pending.deadline_at)
        return due

    def _watch(self, now: float) -> None:
        """Every watch_tick: read each worker's RSS, retire at most one worker past a limit."""
        if not self.soft_limits.active or now < self._next_watch_at:
            return
        self._next_watch_at = now + (self.config.supervisor.watch_tick or 1.0)
        if self.controls.stopping:
            return
        rss = self._read_rss() if self.soft_limits.max_memory_mb else {}
        choice = supervisor.next_retirement(self.pool.workers.values(), now, self.soft_limits, rss)
        if choice is None:
            return
        worker, reason, detail = choice
        log.info("%s %s; replacing it%s", worker, detail, " after its request" if worker.state is WORKING else "",
                 extra={"worker": worker.id, "pid": worker.pid, "reason": reason.value})
        self.controls.retire(worker, reason, now)

    def _read_rss(self) -> Dict[int, int]:
        readings = {}
        for worker in self.pool.workers.values():
            if worker.live and worker.pid:
                rss = procfs.read_rss_bytes(worker.pid)
                if rss is not None:
                    readings[worker.pid] = rss
        return readings

    # ================================================================== events from the backend
    def worker_ready(self, worker: Worker, now: float) -> None:
        if self.notifier is not None and not self._notified_ready:
            self._notified_ready = True
            self.notifier.ready(f"serving with {self.pool.size} workers")

    def worker_gone(self, worker: Worker, was: WorkerState) -> None:
        label = restart_label(was, worker.reason)
        if label is not None:
            self.metrics.worker_restarted(label)
        self._cpu_samples.pop(worker.pid, None)

    def reload_started(self) -> None:
        if self.notifier is not None:
            self.notifier.reloading(time.monotonic())

    def reload_done(self, replaced: int, seconds: float, error: str, now: float) -> None:
        if self.notifier is not None:
            self.notifier.ready("reload stopped" if error else "reload complete")
        self._finish_resets(now, error, (replaced, seconds))

    def shutdown_started(self) -> None:
        if self.notifier is not None and not self._notified_stopping:
            self._notified_stopping = True
            self.notifier.stopping()
        for pending in self._pending_resets:
            pending.conn.respond(control.encode_error(pending.seq, "reset", "the server is stopping"), True)
        self._pending_resets = []

    # ================================================================== control calls
    def on_call(self, conn: Connection, call: Call) -> None:
        handlers = {"workers": self._call_workers, "reset": self._call_reset, "stop": self._call_stop}
        handler = handlers.get(call.method)
        if handler is None:
            self._answer_error(conn, call, f"unknown method {call.method!r} (known: {', '.join(control.METHODS)})")
            return
        handler(conn, call, self.loop.clock())

    @staticmethod
    def _answer(conn: Connection, call: Call, result: dict) -> None:
        conn.respond(control.encode_answer(call.seq, call.method, result), True)

    @staticmethod
    def _answer_error(conn: Connection, call: Call, message: str) -> None:
        conn.respond(control.encode_error(call.seq, call.method, message), True)

    def _call_workers(self, conn: Connection, call: Call, now: float) -> None:
        wall = time.time()
        rows = [self._worker_row(worker, now, wall)
                for worker in sorted(self.pool.workers.values(), key=lambda w: w.id)]
        self._answer(conn, call, {"pid": os.getpid(), "workers": rows})

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
                "in_flight": len(worker.jobs), "slots": worker.slots,
                "memory_bytes": rss or 0, "cpu_percent": round(cpu, 1), "created_at": round(wall - age, 3),
                "age_s": round(age, 3)}

    def _call_reset(self, conn: Connection, call: Call, now: float) -> None:
        if self.controls.stopping:
            self._answer_error(conn, call, "the server is stopping")
            return
        log.info("reset requested over the control socket")
        timeout = self.config.pool.reset_timeout
        self._pending_resets.append(PendingReset(conn, call.seq, now, now + timeout if timeout else 0.0))
        self.controls.begin_reload()

    def _finish_resets(self, now: float, error: str, done: Optional[Tuple[int, float]]) -> None:
        """Answer each reset whose reload has ended (`done`, with `error` if it failed), or
        whose reset_timeout has passed."""
        waiting = []
        for pending in self._pending_resets:
            if pending.conn.phase is CLOSED:
                continue
            if done is not None and not error:
                pending.conn.respond(control.encode_answer(pending.seq, "reset", {
                    "replaced": done[0], "seconds": round(done[1], 3)}), True)
            elif done is not None:
                pending.conn.respond(control.encode_error(pending.seq, "reset", error), True)   # the cli says "reset failed"
            elif pending.deadline_at and now >= pending.deadline_at:
                log.warning("reset did not complete within reset_timeout (%gs)", self.config.pool.reset_timeout)
                pending.conn.respond(control.encode_error(
                    pending.seq, "reset", f"the reset did not complete within reset_timeout "
                                          f"({self.config.pool.reset_timeout:g}s); workers are still being replaced"),
                    True)
            else:
                waiting.append(pending)
        self._pending_resets = waiting

    def _call_stop(self, conn: Connection, call: Call, now: float) -> None:
        force = call.params.get("force") is True
        log.info("stop requested over the control socket%s", " (force)" if force else "")
        # Answer, but leave the call open (the connection stays WAITING, so no idle limit
        # closes it): the cli sees EOF when the master has exited.
        conn.write(control.encode_answer(call.seq, call.method, {"pid": os.getpid(), "force": force}))
        self.controls.begin_shutdown(force=force)

    # ================================================================== status and metrics
    def answer_http(self, endpoint: str, request, now: float) -> Tuple[int, list, bytes]:
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
        status, body = probe(kind, self.pool.counts(), self.controls.stopping, self.controls.queue_length(),
                             self.config.pool.max_queue_size)
        headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
        return status, headers, json.dumps(body).encode() + b"\n"

    def _answer_metrics(self, now: float) -> Tuple[int, list, bytes]:
        text = self.metrics.render(self.pool.counts(), self.controls.queue_length(), self.pool.in_flight(),
                                   self._read_rss(),
                                   now - self._started_at)
        return 200, [("Content-Type", CONTENT_TYPE)], text.encode("utf-8")


def limit_send_buffer(sock) -> None:
    """PEER_SEND_BUFFER_BYTES for an operator peer's socket (TCP or unix)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, PEER_SEND_BUFFER_BYTES)
    except OSError:                    # reset before we got to it: its first read says so
        pass


class _ControlPeers:
    """The owner of control-socket connections (connection.py's owner interface)."""

    def __init__(self, ops: Operations) -> None:
        self.ops = ops
        self.listener: Optional[Listener] = None

    def accept(self, sock, peer: str, now: float) -> Connection:
        limit_send_buffer(sock)
        return Connection(self.ops.loop, sock, peer or "control peer", control.CallParser(), self, PEER_LIMITS,
                          self.listener, now)

    def on_request(self, conn: Connection, call: Call) -> None:
        self.ops.on_call(conn, call)

    def on_bad_request(self, conn: Connection, error: ControlError) -> None:
        if error.broken:
            log.warning("control connection sent a broken frame (%s); closing it", error)
            conn.close()
            return
        log.warning("control connection sent an invalid call (%s); answering and closing it", error)
        conn.reject(400, str(error), control.encode_error(error.seq or 0, "", str(error)))

    def rejection(self, status: int, message: str) -> bytes:
        return control.encode_error(0, "", message)

    def on_closed(self, conn: Connection) -> None:
        """A pending reset still completes; its answer has nowhere to go."""

    def on_eof(self, conn: Connection) -> None:
        """A call under way (a reset, a stop) is answered all the same."""

    def on_drain(self, conn: Connection) -> None:
        """Control answers are never held back."""


class _HTTPPeers:
    """The owner of status and metrics connections: each request answered at once."""

    def __init__(self, ops: Operations, name: str) -> None:
        self.ops = ops
        self.name = name
        self.listener: Optional[Listener] = None

    def accept(self, sock, peer: str, now: float) -> Connection:
        limit_send_buffer(sock)
        return Connection(self.ops.loop, sock, peer, RequestParser(HTTP_LIMITS), self, PEER_LIMITS,
                          self.listener, now)

    def on_request(self, conn: Connection, request) -> None:
        status, headers, body = self.ops.answer_http(self.name, request, self.ops.loop.clock())
        keep_alive = not conn.parser.close_requested
        conn.respond(serialize_response(status, headers, body, keep_alive=keep_alive,
                                        head_only=request.method == "HEAD", date=self._http_date(),
                                        protocol=request.protocol), keep_alive)

    def on_bad_request(self, conn: Connection, error) -> None:
        conn.reject(error.status, error.msg)

    def rejection(self, status: int, message: str) -> bytes:
        return error_response(status, message, date=self._http_date())

    def on_closed(self, conn: Connection) -> None:
        pass

    def on_eof(self, conn: Connection) -> None:
        pass

    def on_drain(self, conn: Connection) -> None:
        pass

    def _http_date(self) -> bytes:
        return self.ops.dates.get(time.time())
