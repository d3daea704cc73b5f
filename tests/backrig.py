"""The master's back half (Backend, ReplyReader, Jobs, Answers, Pool) wired as server.py
wires it, with fakes at its edges: clients are recording connections (fakes.FakeConnection)
behind the real Answers, the operator side records what it is told, the launcher hands
out processes that are real pipes (fakes.FakeProcess), and the selector and clock are
fakes.

Owns: building that rig, the client side as the frontend would play it (a job submitted,
      then dispatched if a worker took it), and the worker's side of the wire for tests
      (the handshake, reading request frames, writing response frames).
Never: sleeps or starts a process: the test plays every worker.

    rig = BackRig(num_workers=1)
    [proc] = rig.start()                         # started and handshaken: READY
    job = rig.submit("/hello")                   # dispatched: a request frame in proc's pipe
    rig.reply(proc, 200, b"hi")                  # the response frame, and a round of the loop
    rig.answer(job) -> Answer(200, {...}, b"hi", complete=True)    # what the client got
"""

from __future__ import annotations

import json
import random
from typing import List, Optional

from fakes import (Answer, FakeClock, FakeConnection, FakeLauncher, FakeProcess, FakeSelector, FixedDates, read_answer,
                   spin)
from minirr.config import Config, PoolConfig, SupervisorConfig
from minirr.master.answer import Answers
from minirr.master.backend import Backend
from minirr.master.jobs import Job, Jobs
from minirr.master.loop import Loop
from minirr.master.metrics import ServerMetrics
from minirr.master.pool import Pool
from minirr.wire import frame
from minirr.wire.frame import CODEC_JSON, CONTROL
from minirr.wire.messages import Request


class Ops:
    """What the operator side (operations.py) is told about workers, recorded."""

    def __init__(self) -> None:
        self.calls: list = []

    def worker_ready(self, worker, now) -> None:
        self.calls.append(("ready", worker))

    def worker_gone(self, worker, was) -> None:
        self.calls.append(("gone", worker, was))

    def reload_done(self, replaced, seconds, error, now) -> None:
        self.calls.append(("reload_done", replaced, seconds, error))


class BackRig:
    def __init__(self, num_workers: int = 1, max_jobs: int = 0, exec_ttl: float = 0.0, allocate_timeout: float = 60.0,
                 destroy_timeout: float = 60.0, max_queue_size: int = 0) -> None:
        self.clock = FakeClock()
        self.loop = Loop(selector=FakeSelector(real=True), clock=self.clock)
        self.config = Config(pool=PoolConfig(num_workers=num_workers, max_jobs=max_jobs, max_queue_size=max_queue_size,
                                             allocate_timeout=allocate_timeout, destroy_timeout=destroy_timeout),
                             supervisor=SupervisorConfig(exec_ttl=exec_ttl))
        # In server.py's order: each part gets the parts it calls.
        self.pool = Pool(num_workers, max_jobs, allocate_timeout, destroy_timeout, rng=random.Random(0))
        self.metrics = ServerMetrics()
        self.answers = Answers(FixedDates())
        self.jobs = Jobs(self.pool, self.answers, max_queue_size, allocate_timeout, exec_ttl, destroy_timeout,
                         self.metrics, None)
        self.ops = Ops()
        self.launcher = FakeLauncher()
        self.back = Backend(self.loop, self.config, self.launcher, self.pool, self.jobs, events=self.ops)

    # ---- workers ------------------------------------------------------------------------------
    def start(self) -> List[FakeProcess]:
        """Start the pool and answer every handshake: -> the processes, all READY."""
        self.back.ensure_pool(self.clock())
        procs = list(self.launcher.started)
        for proc in procs:
            self.hello(proc)
        return procs

    def hello(self, proc: FakeProcess, payload: Optional[bytes] = None) -> None:
        handshake = proc.read_requests()
        assert frame.FrameDecoder().feed(handshake)[0].flags == CONTROL | CODEC_JSON
        proc.send(frame.encode(CONTROL, payload if payload is not None else json.dumps({"pid": proc.pid}).encode()))
        self.round()

    def worker_of(self, proc: FakeProcess):
        [worker] = [w for w in self.pool.workers.values() if w.channel is not None and w.channel.proc is proc]
        return worker

    def new_procs(self, before: List[FakeProcess]) -> List[FakeProcess]:
        return [proc for proc in self.launcher.started if proc not in before]

    # ---- clients: what frontend.on_request and on_closed do -------------------------------------------
    def submit(self, path: str = "/", method: str = "GET", body: bytes = b"", protocol: str = "HTTP/1.1",
               keep_alive: bool = True) -> Job:
        request = Request(method, path, headers=[("Host", "x")], body=body, remote_addr="192.0.2.7",
                          protocol=protocol, uri=f"http://x{path}")
        now = self.clock()
        conn = FakeConnection()
        job = conn.job = Job(conn, request, keep_alive, now)
        worker = self.jobs.submit(job, now)
        if worker is not None:
            self.back.dispatch(worker, job, now)
        return job

    def one_job(self, path: str = "/"):
        """The pool started, a job at its first worker, and the request frame read off the
        worker's pipe (what the worker writes next is up to the test): -> (proc, worker, job)."""
        procs = self.start()
        job = self.submit(path)
        [proc] = [p for p in procs if self.worker_of(p) is job.worker]
        proc.read_requests()
        return proc, job.worker, job

    def client_gone(self, job: Job) -> None:
        """The client closed its connection (frontend._client_gone, at the end of the round)."""
        job.conn.close()
        now = self.clock()
        if self.jobs.client_gone(job, now):
            self.back.client_gone(job, now)

    @staticmethod
    def answer(job: Job) -> Answer:
        """What the job's client got, read back as HTTP."""
        conn = job.conn
        return read_answer(conn.sent(), head_only=job.head_only, closed=conn.closed)

    # ---- the worker's side of the wire ------------------------------------------------------------
    @staticmethod
    def request_of(proc: FakeProcess):
        """The request frame the worker received: -> (JSON head as a dict, body)."""
        [item] = frame.FrameDecoder().feed(proc.read_requests())
        head_len = item.options[0]
        return json.loads(item.payload[:head_len]), bytes(item.payload[head_len:])

    @staticmethod
    def response(status: int = 200, body: bytes = b"", headers: Optional[dict] = None, stream: int = 0,
                 head: Optional[bytes] = None) -> bytes:
        if head is None:
            head = json.dumps({"status": status, "headers": headers or {}}).encode()
        return frame.encode(CODEC_JSON, head + body, (len(head),), stream)

    @staticmethod
    def piece(body: bytes = b"", stream: int = 0) -> bytes:
        """A later frame of a stream: no head (head length 0)."""
        return frame.encode(CODEC_JSON, body, (0,), stream)

    def reply(self, proc: FakeProcess, status: int = 200, body: bytes = b"", **kwargs) -> None:
        self.send(proc, self.response(status, body, **kwargs))

    def send(self, proc: FakeProcess, data: bytes, piece: int = 32 * 1024) -> None:
        """Write `data` as the worker, a piece at a time, with a round after each (a pipe
        holds 64 KB: the master must read as the worker writes)."""
        for start in range(0, len(data), piece):
            proc.send(data[start:start + piece])
            self.round()

    def round(self, count: int = 1) -> None:
        spin(self.loop, count)

    def later(self, seconds: float) -> None:
        """`seconds` pass, and the deadlines are checked (the backend's part of a tick)."""
        self.clock.advance(seconds)
        self.back.expire(self.clock())

    def finish(self) -> None:
        for worker in list(self.pool.workers.values()):
            if worker.channel is not None:
                worker.channel.close()
        self.launcher.finish()
