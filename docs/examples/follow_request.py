"""Every minirr function the master calls for one request, in order, indented by depth.

Owns: running the real master parts (`minirr.master.server.Server`: its loop, listener,
connection, parser, frontend, jobs, backend, reply reader, answers) in this one process
for one request, from the accept to the last byte sent, and printing the calls
(sys.setprofile), each round's after the round: nothing is printed from inside minirr's
code, so a reader that leaves early (`| head`) ends this script quietly.
Never: forks a worker. It plays the worker itself, between two rounds of the loop: it
reads the request frame from the pipe and writes a response frame back (the worker's own
side is `worker.loop.serve`; see docs/life-of-a-request.md, step 6). Nothing leaves loopback.

    python docs/examples/follow_request.py                 # GET /hello?a=1, keep-alive
    python docs/examples/follow_request.py --close         # with Connection: close
    python docs/examples/follow_request.py --depth 3       # only the outer calls

docs/life-of-a-request.md walks through this output.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from minirr import config  # noqa: E402  (found through the line above)
from minirr.wire import frame  # noqa: E402
from minirr.master.channel import WorkerChannel  # noqa: E402
from minirr.master.server import Server  # noqa: E402

REQUEST = b"GET /hello?a=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n"
RESPONSE_HEAD = b'{"status":200,"headers":{"Content-Type":["text/plain"]}}'
RESPONSE_BODY = b"Hello, world!\n"
DEADLINE_S = 5.0


class PlayedWorker:
    """What the master sees of a worker process: two pipe ends (launch.WorkerProcess's shape)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.requests_r, self.to_worker = os.pipe()      # master -> worker
        self.from_worker, self.responses_w = os.pipe()   # worker -> master
        os.set_blocking(self.to_worker, False)
        os.set_blocking(self.from_worker, False)
        os.set_blocking(self.requests_r, False)
        self.output = None                                # no stdout/stderr pipe to relay
        self.sentinel = None                              # no pidfd: this "worker" never exits

    def fds(self) -> list:
        return [self.to_worker, self.from_worker]

    def kill(self) -> None:
        pass

    def answer(self) -> bool:
        """Read a request frame if one is there, and write the response frame."""
        try:
            data = os.read(self.requests_r, 65536)
        except BlockingIOError:
            return False
        print(f"  [the worker reads {len(data)} bytes: {frame.describe(data)[:60]}...]")
        response = frame.encode(frame.CODEC_JSON, RESPONSE_HEAD + RESPONSE_BODY, (len(RESPONSE_HEAD),))
        os.write(self.responses_w, response)
        print(f"  [the worker writes {len(response)} bytes: {frame.describe(response)[:60]}...]")
        return True


def qualified_name(code, frame_) -> str:
    """module.Class.function (co_qualname is Python 3.11+; before, the class of `self`)."""
    module = frame_.f_globals.get("__name__", "?").replace("minirr.", "", 1)
    qualname = getattr(code, "co_qualname", None)
    if qualname is None:
        qualname = f"{_defining_class(code, frame_.f_locals.get('self'))}{code.co_name}"
    return f"{module}.{qualname}"


def _defining_class(code, owner) -> str:
    """'Class.' for the class in `owner`'s MRO whose attribute runs `code`, else ''."""
    if owner is None:
        return ""
    for cls in type(owner).__mro__:
        attr = cls.__dict__.get(code.co_name)
        attr = getattr(attr, "fget", attr)           # a property runs its getter
        if getattr(attr, "__code__", None) is code:
            return f"{cls.__name__}."
    return ""


class CallTrace:
    """sys.setprofile hook: minirr's Python calls with their depth, kept in `lines`."""

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self.depth = 0
        self.lines: list = []

    def __call__(self, frame_, event, arg) -> None:
        if not frame_.f_globals.get("__name__", "").startswith("minirr"):
            return
        if event == "call":
            self.depth += 1
            name = frame_.f_code.co_name
            if self.depth <= self.max_depth and not name.startswith("<"):
                self.lines.append(f"{'  ' * self.depth}{qualified_name(frame_.f_code, frame_)}")
        elif event == "return":
            self.depth -= 1


def one_round(server: Server, trace: CallTrace, label: str) -> None:
    trace.lines = [f"round: {label}"]
    sys.setprofile(trace)
    try:
        server.loop.run_once(0.5)
    finally:
        sys.setprofile(None)
    print("\n".join(trace.lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--close", action="store_true", help="send Connection: close")
    parser.add_argument("--depth", type=int, default=99, help="print calls up to this depth")
    args = parser.parse_args()
    request = REQUEST.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n") if args.close else REQUEST
    cfg = config.parse("[server]\napp = tour_app:create_app\n[http]\naddress = 127.0.0.1:0\n"
                       "[pool]\nnum_workers = 1\n[logs]\naccess_log = false\n", path="follow.ini")
    server = Server(cfg, launcher=None)
    played = PlayedWorker()
    worker = server.pool.new_worker(time.monotonic())
    worker.pid = played.pid
    worker.channel = WorkerChannel(server.loop, worker, played, server.back, 1 << 20)
    worker.channel.open()
    server.pool.hello(worker, played.pid, time.monotonic())   # as if the handshake were done
    server.bind()
    client = socket.create_connection(server.address, timeout=DEADLINE_S)
    client.sendall(request)
    print(f"the client sends {len(request)} bytes: {request!r}")
    trace = CallTrace(args.depth)
    deadline = time.monotonic() + DEADLINE_S
    rounds = ["the listener is readable", "the connection is readable", "the worker's pipe is readable"]
    answered = False
    for label in rounds:
        one_round(server, trace, label)
        if not answered:
            answered = played.answer()
    client.settimeout(max(0.1, deadline - time.monotonic()))
    answer = client.recv(65536)
    print(f"the client receives {len(answer)} bytes: {answer!r}")
    client.close()
    server.front.close()
    server.loop.close()
    return 0 if answer.startswith(b"HTTP/1.1 200 OK") else 1


def quiet_main() -> int:
    """main(), ending without a traceback when our reader leaves (`| head`): what would
    still be written goes nowhere (Python's docs, signal module, Note on SIGPIPE)."""
    try:
        status = main()
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0                         # the reader had what it wanted: not a failure
    return status


if __name__ == "__main__":
    sys.exit(quiet_main())
