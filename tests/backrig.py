"""The master's back half (Backend, Replies, Jobs, Pool) wired as server.py wires it, with
fakes at its edges: a recording front, recording operations, a fake launcher whose
processes are real pipes (fakes.FakeProcess), a fake selector and a fake clock.

Owns: building that rig, and the worker's side of the wire for tests (the handshake,
      reading request frames, writing response frames).
Never: sleeps or starts a process: the test plays every worker.

    rig = BackRig(num_workers=1)
    [proc] = rig.start()                         # started and handshaken: READY
    job = rig.submit("/hello")                   # dispatched: a request frame in proc's pipe
    rig.reply(proc, 200, b"hi")                  # the response frame, and a round of the loop
    rig.front.calls -> [("answer", job, 200, b"hi")]
"""

from __future__ import annotations

import json
import random
from typing import List, Optional

from fakes import FakeClock, FakeLauncher, FakeProcess, FakeSelector, spin
from minirr.wire import frame
from minirr.master.backend import Backend
from minirr.config import Config, PoolConfig, SupervisorConfig
from minirr.wire.frame import CODEC_JSON, CONTROL
from minirr.master.jobs import Job, Jobs
from minirr.master.loop import Loop
from minirr.wire.messages import Request
from minirr.master.metrics import ServerMetrics
from minirr.master.pool import Pool


class Client:
    """What replies.py reads of a client connection: `backlogged`, and wait_for_drain()."""

    def __init__(self) -> None:
        self.backlogged = False
        self.drain_waits = 0

    def wait_for_drain(self) -> None:
        self.drain_waits += 1


class Front:
    """Records the calls the back half makes on the frontend, and finishes jobs as the
    real frontend does (jobs.finished: job.done, metrics)."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.jobs: Optional[Jobs] = None
        self.calls: list = []
        self.part_fails_after = None      # part() returns False once this many bytes went

    def answer(self, job, head, body, now) -> None:
        job.status = head.status
        self.calls.append(("answer", job, head.status, bytes(body)))
        self.jobs.finished(job, now)

    def answer_error(self, job, status, message, headers, keep_alive) -> None:
        job.status = status
        self.calls.append(("error", job, status, message))
        self.jobs.finished(job, self.loop.clock())

    def begin(self, job, head, content_length, first) -> bool:
        job.status = head.status
        job.streaming = True
        self.calls.append(("begin", job, head.status, content_length, bytes(first)))
        return True

    def part(self, job, data) -> bool:
        job.body_bytes += len(data)
        self.calls.append(("part", job, bytes(data)))
        return self.part_fails_after is None or job.body_bytes <= self.part_fails_after

    def end(self, job, last, now) -> bool:
        self.calls.append(("end", job, bytes(last)))
        self.jobs.finished(job, now)
        return True

    def abort(self, job, why, now) -> None:
        self.calls.append(("abort", job, why))
        self.jobs.finished(job, now)

    def kinds(self) -> list:
        return [call[0] for call in self.calls]

    def body(self) -> bytes:
        """The body bytes of a begun answer: the first bytes, every part, the last bytes."""
        return b"".join(call[4] if call[0] == "begin" else call[2] for call in self.calls
                        if call[0] in ("begin", "part", "end"))


class Ops:
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
        self.pool = Pool(num_workers, max_jobs, exec_ttl, allocate_timeout, destroy_timeout, rng=random.Random(0))
        self.metrics = ServerMetrics()
        self.jobs = Jobs(self.pool, max_queue_size, allocate_timeout, exec_ttl, self.metrics, None)
        self.front = Front(self.loop)
        self.launcher = FakeLauncher()
        self.back = Backend(self.loop, self.config, self.launcher, self.pool, self.jobs, self.front)
        self.ops = Ops()
        self.jobs.front, self.jobs.back = self.front, self.back
        self.front.jobs = self.jobs
        self.back.ops = self.ops

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

    # ---- requests and answers --------------------------------------------------------------------
    def submit(self, path: str = "/", method: str = "GET", body: bytes = b"", client: Optional[Client] = None) -> Job:
        request = Request(method, path, headers=[("Host", "x")], body=body, remote_addr="192.0.2.7",
                          uri=f"http://x{path}")
        job = Job(client or Client(), request, True, self.clock())
        self.jobs.submit(job, self.clock())
        return job

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

    def finish(self) -> None:
        for worker in list(self.pool.workers.values()):
            if worker.channel is not None:
                worker.channel.close()
        self.launcher.finish()
