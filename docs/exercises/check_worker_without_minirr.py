"""Check for exercise 1: a worker without minirr (docs/exercises/1-worker-without-minirr.md).

    python docs/exercises/check_worker_without_minirr.py [YOUR_WORKER.py]
    python docs/exercises/check_worker_without_minirr.py --command "node my_worker.js"

First it talks to the worker itself, with the worker's stdout on a SOCK_SEQPACKET socket:
there each write() arrives as one record, so a frame split over two writes, or bytes that
are not a frame (a stray print()), show exactly as they were written. Then it serves the
worker through minirr (`[server] command`, one worker) and checks, in order: a GET, a POST
with a body larger than one pipe read, a soft error, a reset (the stop frame) and the end
of the server. Without an argument it checks the reference solution,
docs/exercises/solutions/worker_without_minirr.py.
"""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import socket
import subprocess
import sys
import time
from typing import List, Optional

from checking import Check, CheckFailed, imports_minirr, learner_file, run_cli
from minirr.wire import frame
from minirr.wire.messages import Request
from minirr.wire.heads import RequestHeadWriter

USAGE = __doc__.split("\n\n")[1]
POST_BYTES = 300_000          # more than a pipe read, less than the master's 1 MB pipe
ANSWER_TIMEOUT_S = 10.0       # for each frame the worker owes us when we talk to it directly
RECORD_BYTES = 1 << 16        # a handshake or a small answer; larger records are cut (and said so)


# ---- talking to the worker ourselves: one record per write -----------------------------------

class Direct:
    """The worker, started as minirr would start it, but with its stdout on a SOCK_SEQPACKET
    socket: a write() of the worker's arrives here as one record, whole."""

    def __init__(self, argv: List[str], folder: str) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ, RR_RELAY="pipes", RR_MODE="http")
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=theirs.fileno(),
                                         stderr=subprocess.PIPE, cwd=folder, env=env)
        finally:
            theirs.close()
        self.sock = ours

    def send(self, data: bytes) -> None:
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except BrokenPipeError:          # it has exited: the next read says what it left
            pass

    def next_write(self) -> Optional[bytes]:
        """The worker's next write, or None if it exited or wrote nothing in time."""
        ready, _, _ = select.select([self.sock], [], [], ANSWER_TIMEOUT_S)
        if not ready:
            return None
        data = self.sock.recv(RECORD_BYTES)
        return data or None

    def why_silent(self) -> str:
        """What to tell a learner whose worker wrote nothing: how it ended, its stderr."""
        try:
            self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return f"it wrote nothing on stdout within {ANSWER_TIMEOUT_S:g}s"
        err = self.proc.stderr.read().decode("utf-8", "replace").strip()
        return f"it exited with status {self.proc.returncode} and wrote nothing on stdout" + (
            f"; its stderr:\n{err[-2000:]}" if err else "")

    def close(self) -> None:
        self.sock.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stderr):
            try:
                stream.close()
            except BrokenPipeError:
                pass


def one_frame(data: bytes, direct: Direct) -> Optional[str]:
    """None if `data`, one write of the worker's, is exactly one whole frame; otherwise
    what is wrong with it, in the words a learner needs."""
    shown = repr(data[:80]) + ("..." if len(data) > 80 else "")
    if data[0] >> 4 != 1:                # a frame starts with its version, 1, in the high nibble
        return (f"the worker wrote {shown}, which is not a frame (its first byte is not 0x1?, a frame's version "
                f"and header length). A print() to stdout? Only frames may go to stdout: log to stderr")
    if len(data) < frame.HEADER_SIZE:
        return (f"a write of {len(data)} bytes ({shown}) is shorter than a frame's {frame.HEADER_SIZE}-byte header: "
                f"write the header, the options and the payload together, in one write")
    try:
        items = frame.FrameDecoder().feed(data)
    except Exception as exc:             # FrameError: not a header at all
        return (f"the worker wrote {shown}, which is not a frame ({exc}). A print() to stdout? Only frames may "
                f"go to stdout: log to stderr")
    if not items:
        rest = direct.next_write() or b""
        return (f"the frame's header came in one write of {len(data)} bytes and the rest of the frame in another "
                f"({len(rest)} bytes): write each frame with one write (RoadRunner's PHP library reads the "
                f"12-byte header in one read; minirr tolerates it, they do not)")
    if len(items) > 1:
        return f"one write held {len(items)} frames: answer each request with one frame"
    return None


def request_frame(uri: str) -> bytes:
    """The frame minirr sends for `GET uri` (its head is what the master's encoder writes)."""
    head = RequestHeadWriter().encode(Request("GET", "/hello", "a=1", [("Host", "127.0.0.1")], b"", "127.0.0.1",
                                               "HTTP/1.1", uri))
    return frame.encode(frame.CODEC_JSON, head, (len(head),))


def check_directly(check: Check, argv: List[str]) -> None:
    """The handshake and one answer, each one write of one frame; EOF on stdin ends it."""
    direct = Direct(argv, str(check.folder))
    check.worker_pids.add(direct.proc.pid)
    try:
        direct.send(frame.encode(frame.CONTROL | frame.CODEC_JSON, json.dumps({"pid": os.getpid()}).encode()))
        check.expect_none(_handshake_problem(direct), "the handshake")
        direct.send(request_frame("http://127.0.0.1/hello?a=1"))
        data = direct.next_write()
        check.expect_none(direct.why_silent() if data is None else one_frame(data, direct),
                          "an answer is one frame, in one write")
        direct.proc.stdin.close()
        check.expect(_exits(direct.proc), "it exits at EOF on stdin", "it was still running 10s after stdin closed")
    finally:
        direct.close()


def _handshake_problem(direct: Direct) -> Optional[str]:
    data = direct.next_write()
    if data is None:
        return direct.why_silent()
    wrong = one_frame(data, direct)
    if wrong:
        return wrong
    [hello] = frame.FrameDecoder().feed(data)
    if not hello.flags & frame.CONTROL or _pid_of(hello.payload) != direct.proc.pid:
        return (f"it answered {frame.describe(data)}, expected a CONTROL frame with {{\"pid\": {direct.proc.pid}}} "
                f"(docs/external-workers.md, step 1)")
    return None


def _pid_of(payload: bytes) -> object:
    try:
        return json.loads(payload).get("pid")
    except (ValueError, AttributeError):
        return None


def _exits(proc: subprocess.Popen) -> bool:
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)                 # a poll interval, not a wait for time to pass
    return proc.poll() is not None


def main(argv) -> int:
    command = argv[argv.index("--command") + 1] if "--command" in argv else ""
    rest = [arg for arg in argv if arg != command and arg != "--command"]
    with Check(command or learner_file(rest, USAGE), "worker_without_minirr.py") as check:
        if not command:
            check.expect(not imports_minirr(check.path), "it does not import minirr",
                         "the point is to speak the wire yourself: use struct, zlib and json")
            command = f"{shlex.quote(sys.executable)} {shlex.quote(str(check.path))}"
        check_directly(check, shlex.split(command))
        srv = check.serve(f"[server]\ncommand = {command}\n[pool]\nnum_workers = 1\nallocate_timeout = 10s\n",
                          overrides=["logs.trace_frames=true"])
        check.expect(check.started(srv), "minirr starts it",
                     "the worker did not finish its handshake with minirr (docs/external-workers.md, step 1). "
                     "The master logged:\n" + check.first_start(srv))
        [pid] = check.note_workers(srv)

        status, headers, body = srv.request("GET", "/hello?a=1")
        expected = f"GET {srv.url}/hello?a=1\n".encode()
        check.expect(status == 200 and body == expected, "GET /hello?a=1 answers 200 `GET <uri>`",
                     f"it answered {status} {body[:200]!r}, expected 200 {expected!r}\n{srv.log[-2000:]}")
        check.expect(headers.get("x-worker-pid") == str(pid), "X-Worker-Pid names the worker",
                     f"X-Worker-Pid is {headers.get('x-worker-pid')!r}, the worker's pid is {pid}")

        sent = bytes(range(256)) * (POST_BYTES // 256)
        status, _, body = srv.request("POST", "/echo", body=sent, timeout=20)
        check.expect(status == 200 and body == f"POST {srv.url}/echo\n".encode() + sent,
                     f"POST /echo with {len(sent)} bytes comes back whole",
                     f"it answered {status} with {len(body)} bytes (a pipe read may return fewer bytes than "
                     f"asked: read in a loop)")

        status, _, body = srv.request("GET", "/fail")
        check.expect(status == 500, "GET /fail answers 500 (an ERROR frame)", f"it answered {status} {body!r}")
        status, _, _ = srv.request("GET", "/after-the-failure")
        check.expect(status == 200 and srv.workers() == [pid], "the worker carries on after /fail",
                     f"status {status}, workers {srv.workers()} (was {pid}): a soft error must not end it")

        reset = run_cli("reset", "-c", str(srv.config_path), timeout=30)
        check.expect(reset.returncode == 0, "`minirr reset` replaces the worker", reset.stdout + reset.stderr)
        stopped = srv.wait_for_log(rf"worker \d+ \(pid {pid}\) (stopped|exited|was killed).*", timeout=15)
        check.expect(re.search(r"stopped \(reset\)", stopped[0]), "it exits 0 on the stop frame",
                     f"the master logged: {stopped[0]}")
        status = srv.stop()
        check.expect(status == 0, "the server stops cleanly", f"exit status {status}\n{srv.log[-2000:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
