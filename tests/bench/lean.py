"""minirr's job done lean: the same codecs and workers, none of the master's structure.

Between `floor.py` (no HTTP work at all) and minirr stands this: a master that does what
minirr's does for a keep-alive GET, with minirr's own pieces, and nothing else:

    recv -> find the end of the head -> grammar.HEAD_RE (the parser's regex) -> header
    lines split as http11 splits them -> messages.encode_request_head (RoadRunner's JSON)
    -> frame.encode_header -> os.write to an idle worker
    os.read <- frame.FrameDecoder <- the worker's response frame -> backend._http_head
    (the kept HTTP head) -> http11.complete_response -> send

The workers are minirr's: `worker.serve` running `apps:hello_wsgi` through the WSGI
adapter, exactly as under `python -m minirr serve`. What this leaves out is everything
minirr's master adds around the codecs: the parser's state table and limits, the Host,
Connection and framing checks, the Client and Job objects, the pool's state table,
queue timeouts, metrics, the access-log switch, backpressure and error handling. So the
distance from minirr to this figure is what that structure costs, and the distance from
this figure to issue 7's target is what no arrangement of the same codecs can recover.

    python tests/bench/lean.py [--duration 8] [--connections 32]     (needs wrk)

It serves keep-alive GETs from wrk and nothing else; it is a measuring stick, not a
server (a bad request, a pipelined request or a large body is not handled).

    python tests/bench/lean.py --close                               (`Connection: close`)
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from floor import accept_client, cpu_ticks, read_client, run_wrk  # noqa: E402
from run import children_of  # noqa: E402
from minirr import frame, http11  # noqa: E402
from minirr.backend import _http_head  # noqa: E402
from minirr.grammar import HEAD_RE  # noqa: E402
from minirr.messages import Request, encode_request_head  # noqa: E402


def start_worker(native: bool) -> tuple:
    """A real minirr worker serving the benchmark's hello app; -> (to_worker, from_worker)."""
    requests_r, requests_w = os.pipe()
    responses_r, responses_w = os.pipe()
    if os.fork() == 0:
        os.close(requests_w)
        os.close(responses_r)
        from minirr import worker
        channel = worker.Channel(requests_r, responses_w)
        app, interface = ("apps:hello_minirr", "minirr") if native else ("apps:hello_wsgi", "wsgi")
        status = 1
        try:
            status = worker.serve(channel, lambda: worker.load_handler(app, interface=interface))
        except BrokenPipeError:          # the master was stopped while this answer was on its way
            status = 0
        finally:
            os._exit(status)             # never return into the master's code
    os.close(requests_r)
    os.close(responses_w)
    os.write(requests_w, frame.encode(frame.CONTROL | frame.CODEC_JSON, json.dumps({"pid": os.getpid()}).encode()))
    frame.FrameDecoder().feed(os.read(responses_r, 65536))   # the worker's handshake answer
    return requests_w, responses_r


def request_frame(head_bytes: bytes, peer: str) -> tuple:
    """What minirr's parser and dispatch make of a request head, without their checks;
    -> (the request frame, whether the request asked to close)."""
    method, target, path, query, major, minor, fields = HEAD_RE.fullmatch(head_bytes.decode("latin-1")).groups()
    headers = []
    host = "localhost"
    close = False
    for line in fields.split("\r\n") if fields else ():
        name, _, value = line.partition(":")
        value = value.strip(" \t")
        headers.append((name, value))
        lname = name.lower()
        if lname == "host":
            host = value
        elif lname == "connection":
            close = value.lower() == "close"
    request = Request(method, path, query or "", headers, b"", peer, f"HTTP/{major}.{minor}",
                      f"http://{host}{target}")
    head = encode_request_head(request)
    return frame.encode_header(frame.CODEC_JSON, len(head), (len(head),)) + head, close


def serve(listener: socket.socket, ready_w: int, native: bool) -> None:
    """The master loop; runs in a child of the measuring process until SIGTERM."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sel = selectors.DefaultSelector()
    idle, waiting, client_of, decoders, buffers, closing = [], [], {}, {}, {}, set()
    for _ in range(2):
        to_worker, from_worker = start_worker(native)
        idle.append(to_worker)
        decoders[to_worker] = frame.FrameDecoder()
        sel.register(from_worker, selectors.EVENT_READ, ("worker", to_worker))
    os.write(ready_w, b"ready")                  # both workers answered their handshake
    os.close(ready_w)
    sel.register(listener, selectors.EVENT_READ, ("listener", None))
    date_second, date = -1, b""
    while True:
        for key, _ in sel.select():
            kind, obj = key.data
            if kind == "listener":
                buffers[accept_client(listener, sel)] = b""
            elif kind == "client":
                if obj.fileno() < 0:
                    continue                   # answered and closed earlier in this round
                data = read_client(obj)
                if not data:
                    sel.unregister(obj)
                    del buffers[obj]
                    closing.discard(obj)
                    obj.close()
                    continue
                data = buffers[obj] + data
                end = data.find(b"\r\n\r\n")
                if end < 0:
                    buffers[obj] = data
                    continue
                buffers[obj] = data[end + 4:]
                out, close = request_frame(data[:end], "127.0.0.1")
                if close:
                    closing.add(obj)
                if idle:
                    to_worker = idle.pop()
                    client_of[to_worker] = obj
                    os.write(to_worker, out)
                else:
                    waiting.append((obj, out))
            else:
                for item in decoders[obj].feed(os.read(key.fd, 65536)):
                    head_len = item.options[0]
                    status, http_head = _http_head(item.payload[:head_len])
                    now = time.time()
                    if int(now) != date_second:
                        date_second, date = int(now), http11.http_date(now)
                    client = client_of.pop(obj)
                    response = http11.complete_response(http_head, status, memoryview(item.payload)[head_len:],
                                                        keep_alive=client not in closing, date=date)
                    try:
                        client.send(response)
                    except OSError:              # the client left (wrk stopping): nothing to answer
                        pass
                    if client in closing:
                        closing.discard(client)
                        sel.unregister(client)
                        del buffers[client]
                        client.close()
                    if waiting:
                        conn, out = waiting.pop(0)
                        client_of[obj] = conn
                        os.write(obj, out)
                    else:
                        idle.append(obj)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--native", action="store_true", help="apps:hello_minirr instead of the WSGI app")
    parser.add_argument("--close", action="store_true", help="wrk sends `Connection: close`")
    args = parser.parse_args()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    ready_r, ready_w = os.pipe()
    master = os.fork()
    if master == 0:
        os.close(ready_r)
        serve(listener, ready_w, args.native)
    listener.close()
    os.close(ready_w)
    try:
        os.read(ready_r, 16)                     # the master and its workers are up
        workers = children_of(master)
        before, workers_before = cpu_ticks(master), [sum(cpu_ticks(pid)) for pid in workers]
        requests, rate = run_wrk(port, args.connections, args.duration, args.close)
        after, workers_after = cpu_ticks(master), [sum(cpu_ticks(pid)) for pid in workers]
    finally:
        os.kill(master, signal.SIGTERM)
        os.waitpid(master, 0)                    # the workers see EOF and exit
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    user, system = ((b - a) * tick_us / requests for a, b in zip(before, after))
    workers_us = (sum(workers_after) - sum(workers_before)) * tick_us / requests
    print(f"lean ({'native' if args.native else 'WSGI'} app{', close' if args.close else ''}): {rate:,.0f} req/s; master CPU {user + system:.1f} "
          f"µs/request (user {user:.1f}, system {system:.1f}), workers {workers_us:.1f} µs/request; "
          f"wrk -t2 -c{args.connections} -d{args.duration}s")


if __name__ == "__main__":
    sys.exit(main())
