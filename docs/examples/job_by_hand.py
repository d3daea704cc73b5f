"""One job's reply, by hand: what the reader, the jobs and the answers each return.

Owns: running three of the master's real parts on reply frames made here, and printing
what each returns: `master.reply.ReplyReader.read` (a frame in, an event out),
`master.jobs.Jobs.on_reply` (an event in, the job moved, a verdict for the worker out)
and `master.answer.Answers` (the client's bytes written, the job-table event they mean
returned). The backend's share, acting on the verdict, is the loop in `play`, as in
`master.backend.Backend.on_frames`.
Never: opens a socket, a pipe or a process. The client's connection and the access log
are stand-ins that print what they are given; nothing reads a clock but the Date header.

    python docs/examples/job_by_hand.py            # the usual answer: one frame
    python docs/examples/job_by_hand.py stream     # a streamed answer: two STREAM frames, then the end
    python docs/examples/job_by_hand.py leaves     # the same stream, its client gone after the first block

docs/life-of-a-request.md walks through this output.
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from minirr.http.responses import DateCache  # noqa: E402  (found through the line above)
from minirr.master.answer import Answers  # noqa: E402
from minirr.master.jobs import MORE, Job, Jobs  # noqa: E402
from minirr.master.metrics import ServerMetrics  # noqa: E402
from minirr.master.pool import Pool  # noqa: E402
from minirr.master.reply import ReplyReader  # noqa: E402
from minirr.wire import frame  # noqa: E402
from minirr.wire.frame import CODEC_JSON, STREAM  # noqa: E402
from minirr.wire.messages import Request  # noqa: E402

HEAD = b'{"status":200,"headers":{"Content-Type":["text/plain"]}}'
WHOLE = [frame.encode(CODEC_JSON, HEAD + b"Hello, world!\n", (len(HEAD),))]
STREAMED = [frame.encode(CODEC_JSON, HEAD + b"block 0\n", (len(HEAD),), STREAM),   # the head rides on the first
            frame.encode(CODEC_JSON, b"block 1\n", (0,), STREAM),                  # head length 0: body only
            frame.encode(CODEC_JSON, b"", (0,))]                                   # no STREAM: the end
# story -> (the request's path, the frames its worker sends, after which frame its client leaves)
STORIES = {"whole": ("/hello", WHOLE, None), "stream": ("/stream", STREAMED, None),
           "leaves": ("/stream", STREAMED, 1)}


class StandInConnection:
    """The answering side of master.connection.Connection: it prints what it is given."""

    closing = False                    # no graceful stop under way
    backlogged = False                 # the client keeps up (see Backend._read_on)

    def respond(self, data: bytes, keep_alive: bool) -> None:
        print(f"      connection.respond({bytes(data)!r}, keep_alive={keep_alive})")

    def start_stream(self, data: bytes) -> None:
        print(f"      connection.start_stream({bytes(data)!r})")

    def write(self, data: bytes) -> None:
        print(f"      connection.write({bytes(data)!r})")

    def close(self) -> None:
        print("      connection.close()")


class StandInAccessLog:
    """logs.AccessLog's one call: printed, to show when a job's answer is counted (once)."""

    def log(self, remote_addr, method, target, protocol, status, body_bytes, duration_s, pid) -> None:
        print(f"    access log: {method} {target} {status} {body_bytes}")


class ShownAnswers(Answers):
    """master.answer.Answers, printing what each call returns: the event of the job's
    table that follows from what it wrote (None where there is no choice to make)."""

    def whole(self, job, head, body):
        print("    answers.whole:")
        return _returns("answers.whole", super().whole(job, head, body))

    def begin(self, job, head, first):
        print("    answers.begin:")
        return _returns("answers.begin", super().begin(job, head, first))

    def part(self, job, piece):
        print("    answers.part:")
        return _returns("answers.part", super().part(job, piece))

    def end(self, job, last):
        print("    answers.end:")
        return _returns("answers.end", super().end(job, last))


def _returns(name: str, result):
    print(f"    {name} -> {result!r}")
    return result


def shown_event(event: tuple) -> str:
    kind, head, data = event
    data = bytes(data) if isinstance(data, memoryview) else data
    return repr((kind, head, data))


def play(story: str) -> None:
    path, frames, leaves_after = STORIES[story]
    now = 0.0
    pool = Pool(1)
    worker = pool.new_worker(now)
    pool.hello(worker, 4120, now)                       # as if its handshake were done
    jobs = Jobs(pool, ShownAnswers(DateCache()), max_queue_size=0, allocate_timeout_s=60.0, exec_ttl_s=0.0,
                destroy_timeout_s=60.0, metrics=ServerMetrics(), access_log=StandInAccessLog())
    reader = ReplyReader()
    request = Request("GET", path, uri=f"http://127.0.0.1:8080{path}", remote_addr="127.0.0.1")
    job = Job(StandInConnection(), request, keep_alive=True, now=now)
    print(f"the job {request.method} {request.path}: {job.state.name}")
    taken_by = jobs.submit(job, now)
    print(f"jobs.submit -> {taken_by}; the job is {job.state.name}")
    job.worker = taken_by                               # what Backend.dispatch does, but the request frame
    pool.assign(taken_by, job, job.id)
    for number, data in enumerate(frames, 1):
        [item] = frame.FrameDecoder().feed(data)
        print(f"frame {number}: {frame.describe(data)}")
        event = reader.read(job, item)
        print(f"  reader.read -> {shown_event(event)}")
        was = job.state
        print("  jobs.on_reply:")
        verdict = jobs.on_reply(job, event, now)
        print(f"  jobs.on_reply -> {verdict.name}; the job: {was.name} -> {job.state.name}")
        if verdict is MORE:
            print("the backend: read on")
            if number == leaves_after:
                client_leaves(jobs, reader, job, now)
            continue
        fate = pool.job_done(taken_by, job.id, now)     # Backend._release, for the verdict FREE
        print(f"the backend: pool.job_done -> {fate.name}; the worker is {taken_by.state.name}")


def client_leaves(jobs: Jobs, reader: ReplyReader, job: Job, now: float) -> None:
    """What master.frontend.Frontend.on_closed sets going, at the end of the round."""
    was = job.state
    print("the client leaves")
    print("  jobs.client_gone:")
    held = jobs.client_gone(job, now)
    print(f"  jobs.client_gone -> {held}; the job: {was.name} -> {job.state.name}")
    if held and reader.streams(job):
        print("the backend: the worker streams, so it is told STOP (Backend.client_gone)")


def main() -> int:
    story = sys.argv[1] if len(sys.argv) > 1 else "whole"
    if story not in STORIES:
        print(f"usage: python docs/examples/job_by_hand.py [{'|'.join(STORIES)}]", file=sys.stderr)
        return 2
    play(story)
    return 0


if __name__ == "__main__":
    sys.exit(main())
