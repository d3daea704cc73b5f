"""The master's CPU per proxied request, measured in one process, without load or noise.

Drives the real `minirr.master.server.Server` code through one keep-alive request cycle at a
time: a request arrives on a client socket, the master parses it and writes a request
frame to a "worker" pipe; a response frame comes back on the other pipe, the master
turns it into HTTP bytes and sends them to the client. The harness plays both the
client and the worker (a socketpair and two pipes; TCP on loopback, as in a real run), so no other process runs, nothing
waits, and the figure does not depend on what else the machine is doing. It leaves out
what a real run adds: waking other processes, and caches shared with them (a loaded
run costs the master about twice this; see docs/performance.md).

    python tests/bench/master_path.py [--requests 20000] [--repeat 5] [--close] [--profile]

With --close every request comes on a new connection that says `Connection: close`:
the master also accepts it, sets it up, and closes it after the response.

Prints µs per request cycle for the master's code (the harness's own share, measured
the same way with the master's steps left out, is subtracted), and with --profile the
cProfile table of one run.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from minirr import config as config_module  # noqa: E402
from minirr.wire import frame  # noqa: E402
from minirr.master.channel import WorkerChannel  # noqa: E402
from minirr.master.loop import READ  # noqa: E402
from minirr.master.server import Server  # noqa: E402

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n\r\n"
CLOSE_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nConnection: close\r\n\r\n"
RESPONSE_HEAD = b'{"status":200,"headers":{"Content-Type":["text/plain"]}}'
RESPONSE_BODY = b"Hello, world!\n"


class HarnessProcess:
    """Stands in for a WorkerProcess: the master sees two pipe ends and nothing else."""

    def __init__(self) -> None:
        self.pid = 0
        self.requests_r, self.to_worker = os.pipe()
        self.from_worker, self.responses_w = os.pipe()
        os.set_blocking(self.to_worker, False)
        os.set_blocking(self.from_worker, False)
        self.output = None
        self.sentinel = None

    def fds(self) -> list:
        return [self.to_worker, self.from_worker]

    def kill(self) -> None:
        pass


def build_server() -> Server:
    config = config_module.parse("[server]\napp = x:y\n[http]\naddress = 127.0.0.1:0\n[pool]\nnum_workers = 1\n"
                                 "[logs]\naccess_log = false\n",
                                 path="bench.ini")
    server = Server(config, launcher=None)
    return server


def cycle_parts(server: Server):
    """One ready worker and one client connection, wired to the harness's ends."""
    now = time.monotonic()
    worker = server.pool.new_worker(now)
    proc = HarnessProcess()
    worker.channel = WorkerChannel(server.loop, worker, proc, server.back, 1 << 30)
    worker.channel.open()
    server.pool.hello(worker, 1, now)
    server.bind()                          # 127.0.0.1, port 0
    theirs = socket.create_connection(server.address)
    listener = server.front.listener
    while not listener.connections:
        listener.on_event(READ)
    [client] = listener.connections.values()
    response = frame.encode_header(frame.CODEC_JSON, len(RESPONSE_HEAD) + len(RESPONSE_BODY),
                                   (len(RESPONSE_HEAD),)) + RESPONSE_HEAD + RESPONSE_BODY
    return worker, proc, client, theirs, response


def run(requests: int, master: bool, close: bool = False) -> float:
    """Seconds of CPU for `requests` cycles; with master=False only the harness's part."""
    server = build_server()
    worker, proc, client, peer, response = cycle_parts(server)
    listener = server.front.listener
    on_worker = worker.channel.on_event
    read = READ
    address = server.address
    started = time.process_time()
    for _ in range(requests):
        if close:
            peer = socket.create_connection(address)
            if master:
                listener.on_event(read)
                client = next(reversed(listener.connections.values()))   # the one just accepted
            else:
                client_sock, _ = listener.sock.accept()
            peer.send(CLOSE_REQUEST)
        else:
            peer.send(REQUEST)
        if master:
            client.on_event(read)
        else:
            (client_sock if close else client.sock).recv(65536)
            os.write(proc.to_worker, b"x" * 120)
        os.read(proc.requests_r, 65536)
        os.write(proc.responses_w, response)
        if master:
            on_worker(read)
            server.loop.run_soon()
        else:
            os.read(proc.from_worker, 65536)
            (client_sock if close else client.sock).send(b"x" * 120)
            if close:
                client_sock.close()
        peer.recv(65536)
        if close:
            peer.close()
    elapsed = time.process_time() - started
    server.front.close()
    return elapsed


def trace_one(close: bool) -> None:
    """The master's Python calls for one request cycle (after a warm-up one), in order, with
    the modules they are in: how far a reader must jump to follow one request. With
    `close`, each request comes on a new connection (accepted by the listener) and asks
    to close it."""
    import sys as _sys
    calls = []

    def profiler(frame_, event, arg):
        if event == "call":
            module = frame_.f_globals.get("__name__", "?")
            if module.startswith("minirr"):
                calls.append((module, frame_.f_code.co_name))
    server = build_server()
    worker, proc, client, peer, response = cycle_parts(server)
    listener = server.front.listener
    for traced in (False, True):
        if close:
            peer = socket.create_connection(server.address)
        if traced:
            _sys.setprofile(profiler)
        if close:
            listener.on_event(READ)
            client = next(reversed(listener.connections.values()))   # the one just accepted
        _sys.setprofile(None)
        peer.send(CLOSE_REQUEST if close else REQUEST)
        if traced:
            _sys.setprofile(profiler)
        client.on_event(READ)
        _sys.setprofile(None)
        os.read(proc.requests_r, 65536)
        os.write(proc.responses_w, response)
        if traced:
            _sys.setprofile(profiler)
        worker.channel.on_event(READ)
        if server.loop._soon:
            server.loop.run_soon()
        _sys.setprofile(None)
        peer.recv(65536)
        if close:
            peer.close()
    switches = sum(1 for a, b in zip(calls, calls[1:]) if a[0] != b[0])
    modules = sorted({module for module, _ in calls})
    for module, name in calls:
        print(f"  {module}.{name}")
    print(f"{len(calls)} calls in {len(modules)} modules ({', '.join(m.split('.')[-1] for m in modules)}), "
          f"{switches} module switches")
    server.front.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--close", action="store_true", help="one connection per request")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--trace", action="store_true",
                        help="list the Python calls the master makes for one request (sys.setprofile)")
    args = parser.parse_args()
    if args.trace:
        trace_one(args.close)
        return
    if args.profile:
        import cProfile
        import pstats
        cProfile.runctx("run(args.requests, True, args.close)", globals(), {"args": args}, "/tmp/master_path.prof")
        pstats.Stats("/tmp/master_path.prof").sort_stats("tottime").print_stats(30)
    full = min(run(args.requests, True, args.close) for _ in range(args.repeat))
    harness = min(run(args.requests, False, args.close) for _ in range(args.repeat))
    per = 1e6 / args.requests
    print(f"master code: {(full - harness) * per:.1f} µs/request  "
          f"(cycle {full * per:.1f} µs, harness alone {harness * per:.1f} µs; best of {args.repeat})")


if __name__ == "__main__":
    main()
