"""10,000 idle WebSockets on 2 workers: the master's and each worker's resident memory
before and after (the goal: at most 20 KiB per WebSocket in the master), and that a fresh
HTTP request is still answered within 50 ms while they are open. A benchmark, run by hand;
never from CI, never a timed test.

    python tests/bench/websocket_idle.py                 # 10,000 WebSockets, 2 workers
    python tests/bench/websocket_idle.py --sockets 2000

Owns: raising this process's open-files limit (the server it starts inherits it: each
WebSocket is a descriptor on both sides), starting and stopping minirr (by pid, in a
`finally`), opening the sockets (many handshakes in flight at once, one selector), the
readings from /proc.
Never: sends anything off loopback, or leaves a process behind.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import resource
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
APPS = ROOT / "tests" / "apps"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def children(pid: int) -> list:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return sorted(found)


def raise_open_files(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else wanted
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(target, max(wanted, soft))), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def start(folder: Path, workers: int, sockets: int) -> tuple:
    per_worker = (sockets + workers - 1) // workers + 100
    (folder / "rr.ini").write_text(
        f"[server]\napp = websocket_testapp:app\n[pool]\nnum_workers = {workers}\nmax_concurrency = {per_worker}\n"
        f"[http]\naddress = 127.0.0.1:0\nmax_connections = {sockets + 200}\n[logs]\naccess_log = false\n"
        f"[websocket]\nping_interval = 0\n[rpc]\nlisten = unix:{folder}/minirr.sock\n")
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{APPS}")
    proc = subprocess.Popen([sys.executable, "-m", "minirr", "serve", "-c", str(folder / "rr.ini")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True, cwd=folder)
    for line in proc.stdout:
        if "minirr listening on http://" in line:
            return proc, int(line.rsplit(":", 1)[1])
    raise SystemExit("minirr did not start")


def handshake(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET /echo HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def open_many(port: int, count: int, in_flight: int = 200, timeout: float = 120.0) -> list:
    """`count` accepted WebSockets, `in_flight` handshakes at a time."""
    selector = selectors.DefaultSelector()
    opened, pending, started = [], {}, 0
    deadline = time.monotonic() + timeout
    while len(opened) < count:
        while started < count and len(pending) < in_flight:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(handshake(port))
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
            pending[sock] = b""
            started += 1
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(opened)} of {count} WebSockets opened in {timeout:g}s")
        for key, _ in selector.select(1.0):
            sock = key.fileobj
            data = pending[sock] + sock.recv(4096)
            if b"\r\n\r\n" not in data:
                pending[sock] = data
                continue
            if not data.startswith(b"HTTP/1.1 101"):
                raise SystemExit(f"a handshake was refused: {data[:80]!r}")
            selector.unregister(sock)
            del pending[sock]
            opened.append(sock)
    return opened


def http_latency_ms(port: int, count: int = 20) -> list:
    times = []
    for _ in range(count):
        began = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/report?result=probe")
        response = conn.getresponse()
        response.read()
        conn.close()
        if response.status != 200:
            raise SystemExit(f"a fresh HTTP request got {response.status}")
        times.append((time.perf_counter() - began) * 1000)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    limit = raise_open_files(args.sockets * 2 + 1000)
    print(f"open-files limit: {limit}")
    if limit < args.sockets + 500:
        raise SystemExit(f"the open-files limit ({limit}) is too low for {args.sockets} WebSockets")
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start(Path(tmp), args.workers, args.sockets)
        socks = []
        try:
            deadline = time.monotonic() + 30
            while len(children(proc.pid)) < args.workers and time.monotonic() < deadline:
                time.sleep(0.1)            # a poll with a deadline: the workers start
            http_latency_ms(port, 5)       # the workers are ready, the first requests made
            workers = children(proc.pid)
            before = {"master": rss_kib(proc.pid), **{f"worker {pid}": rss_kib(pid) for pid in workers}}
            idle_ms = http_latency_ms(port)
            began = time.monotonic()
            socks = open_many(port, args.sockets)
            opened_s = time.monotonic() - began
            time.sleep(2.0)                # let the master settle (not a measurement of time)
            after = {"master": rss_kib(proc.pid), **{f"worker {pid}": rss_kib(pid) for pid in workers}}
            busy_ms = http_latency_ms(port)
            print(f"{len(socks)} WebSockets open in {opened_s:.1f}s")
            for name in before:
                grown = after[name] - before[name]
                print(f"{name:14} RSS {before[name] / 1024:7.1f} MiB -> {after[name] / 1024:7.1f} MiB   "
                      f"+{grown / 1024:6.1f} MiB = {grown * 1024 / len(socks) / 1024:5.1f} KiB per WebSocket")
            print(f"a fresh HTTP request, {len(idle_ms)} in a row: before p50 {statistics.median(idle_ms):.1f} ms; "
                  f"with {len(socks)} WebSockets open p50 {statistics.median(busy_ms):.1f} ms, "
                  f"max {max(busy_ms):.1f} ms (goal: within 50 ms)")
        finally:
            for sock in socks:
                sock.close()
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
