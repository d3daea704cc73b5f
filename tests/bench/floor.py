"""The floor of minirr's design on this machine: the same process layout with no HTTP.

A master with one selector, two forked workers, a pipe pair each; the master hands each
read from a client to an idle worker as it is and sends back what the worker writes, a
fixed hello response. No parser, no frames, no JSON, no timeouts, no bookkeeping: only
the system calls and wake-ups every proxied request costs (recv, pipe write, pipe read,
send, a share of epoll_wait). What minirr's master spends above this figure is the price
of doing the job properly; docs/performance.md compares the two.

    python tests/bench/floor.py [--duration 8] [--connections 32]     (needs wrk)

Prints req/s and the master's CPU per request (user and system, from /proc). It serves
keep-alive GETs from wrk and nothing else; it is a measuring stick, not a server.
"""

from __future__ import annotations

import argparse
import os
import re
import selectors
import signal
import socket
import subprocess
import sys

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\nContent-Type: text/plain\r\n\r\nHello, world!\n"


def worker(requests_r: int, responses_w: int) -> None:
    while os.read(requests_r, 65536):
        os.write(responses_w, RESPONSE)
    os._exit(0)


def accept_client(listener: socket.socket, sel: selectors.BaseSelector) -> socket.socket:
    conn, _ = listener.accept()
    conn.setblocking(False)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sel.register(conn, selectors.EVENT_READ, ("client", conn))
    return conn


def read_client(conn: socket.socket) -> bytes:
    try:
        return conn.recv(65536)
    except ConnectionResetError:                 # wrk resets its connections when it stops
        return b""


def serve(listener: socket.socket) -> None:
    """The master loop; runs in a child of the measuring process until SIGTERM."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sel = selectors.DefaultSelector()
    idle, waiting, client_of = [], [], {}
    for _ in range(2):
        requests_r, requests_w = os.pipe()
        responses_r, responses_w = os.pipe()
        if os.fork() == 0:
            listener.close()
            os.close(requests_w)
            os.close(responses_r)
            worker(requests_r, responses_w)
        os.close(requests_r)
        os.close(responses_w)
        idle.append(requests_w)
        sel.register(responses_r, selectors.EVENT_READ, ("worker", requests_w))
    sel.register(listener, selectors.EVENT_READ, ("listener", None))
    while True:
        for key, _ in sel.select():
            kind, obj = key.data
            if kind == "listener":
                accept_client(listener, sel)
            elif kind == "client":
                data = read_client(obj)
                if not data:
                    sel.unregister(obj)
                    obj.close()
                elif idle:
                    to_worker = idle.pop()
                    client_of[to_worker] = obj
                    os.write(to_worker, data)
                else:
                    waiting.append((obj, data))
            else:
                response = os.read(key.fd, 65536)
                try:
                    client_of.pop(obj).send(response)
                except OSError:                  # the client left (wrk stopping): nothing to answer
                    pass
                if waiting:
                    conn, data = waiting.pop(0)
                    client_of[obj] = conn
                    os.write(obj, data)
                else:
                    idle.append(obj)


def cpu_ticks(pid: int):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])      # utime, stime


def run_wrk(port: int, connections: int, duration: int, close: bool = False):
    """-> (requests, req/s) of `wrk -t2` against 127.0.0.1:port (close: `Connection: close`)."""
    header = ["-H", "Connection: close"] if close else []
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{duration}s", *header, f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, check=True).stdout
    return int(re.search(r"(\d+) requests in", out).group(1)), float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    master = os.fork()
    if master == 0:
        serve(listener)
    listener.close()
    try:
        before = cpu_ticks(master)
        requests, rate = run_wrk(port, args.connections, args.duration)
        after = cpu_ticks(master)
    finally:
        os.kill(master, signal.SIGTERM)
        os.waitpid(master, 0)                    # the workers see EOF and exit
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    user, system = ((b - a) * tick_us / requests for a, b in zip(before, after))
    print(f"floor: {rate:,.0f} req/s; master CPU {user + system:.1f} µs/request "
          f"(user {user:.1f}, system {system:.1f}); wrk -t2 -c{args.connections} -d{args.duration}s")


if __name__ == "__main__":
    sys.exit(main())
