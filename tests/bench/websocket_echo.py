"""WebSocket echo: 100 connections, each sending a small text message as soon as its last
one came back, against minirr (2 workers) and uvicorn with its `websockets` implementation
(2 workers), the same ASGI app. Prints messages/s and the p50/p99 round trip of each, and
the ratio. A benchmark, run by hand; never from CI, never a timed test.

    python tests/bench/websocket_echo.py --uvicorn /tmp/uvicorn-venv/bin/python
    (make that venv once: python -m venv /tmp/uvicorn-venv && /tmp/uvicorn-venv/bin/pip install uvicorn websockets)

Owns: starting and stopping both servers (by pid, in a `finally`), the load (one process,
one selector, raw sockets: every client frame is the same masked bytes, so the client's
own cost per message is a send and a parse), the figures.
Never: sends anything off loopback, or leaves a process behind.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
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
sys.path.insert(0, str(ROOT))
from minirr.http import websocket as ws  # noqa: E402

APPS = ROOT / "tests" / "apps"
MESSAGE = b"hello, websocket"              # 16 bytes of text
FRAME = ws.encode_frame(ws.TEXT, MESSAGE, mask=b"\x01\x02\x03\x04")
ECHO = ws.encode_frame(ws.TEXT, MESSAGE)   # what comes back
PORT_RE = re.compile(r"(?:minirr listening on http://|Uvicorn running on http://)127\.0\.0\.1:(\d+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_minirr(folder: Path, workers: int) -> subprocess.Popen:
    (folder / "rr.ini").write_text(f"[server]\napp = websocket_testapp:app\n[pool]\nnum_workers = {workers}\n"
                                   f"[http]\naddress = 127.0.0.1:0\n[logs]\naccess_log = false\n"
                                   f"[rpc]\nlisten = unix:{folder}/minirr.sock\n")
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{APPS}")
    return subprocess.Popen([sys.executable, "-m", "minirr", "serve", "-c", str(folder / "rr.ini")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True, cwd=folder)


def start_uvicorn(python: str, workers: int, port: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(APPS))
    return subprocess.Popen([python, "-m", "uvicorn", "websocket_testapp:app", "--host", "127.0.0.1", "--port",
                             str(port), "--workers", str(workers), "--ws", "websockets", "--no-access-log",
                             "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)


def wait_port(proc: subprocess.Popen, port: int = 0, timeout: float = 30.0) -> int:
    """minirr prints its port; uvicorn's is known: wait until it accepts."""
    deadline = time.monotonic() + timeout
    if not port:
        for line in proc.stdout:
            found = PORT_RE.search(line)
            if found:
                port = int(found.group(1))
                break
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return port
        except OSError:
            time.sleep(0.05)               # a poll with a deadline
    raise SystemExit(f"the server on port {port} did not start")


def stop(proc: subprocess.Popen, group: bool = False) -> None:
    if proc.poll() is None:
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL) if group else proc.kill()
            proc.wait(5)


def open_websocket(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /echo HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit("the handshake was refused")
        data += chunk
    if not data.startswith(b"HTTP/1.1 101"):
        raise SystemExit(f"the handshake was refused: {data[:100]!r}")
    sock.setblocking(False)
    return sock


def load(port: int, connections: int, seconds: float) -> tuple:
    """-> (messages echoed, seconds, round trips in s)."""
    socks = [open_websocket(port) for _ in range(connections)]
    selector = selectors.DefaultSelector()
    sent_at = {}
    buffers = {}
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
        buffers[sock] = b""
        sent_at[sock] = time.perf_counter()
        sock.send(FRAME)
    trips = []
    start = time.perf_counter()
    end = start + seconds
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        for key, _ in selector.select(end - now):
            sock = key.fileobj
            data = buffers[sock] + sock.recv(65536)
            while len(data) >= len(ECHO):
                if data[:len(ECHO)] != ECHO:
                    raise SystemExit(f"an unexpected frame: {data[:40]!r}")
                data = data[len(ECHO):]
                done = time.perf_counter()
                trips.append(done - sent_at[sock])
                sent_at[sock] = done
                sock.send(FRAME)
            buffers[sock] = data
    elapsed = time.perf_counter() - start
    for sock in socks:
        selector.unregister(sock)
        sock.close()
    return len(trips), elapsed, trips


def figures(name: str, result: tuple) -> dict:
    count, elapsed, trips = result
    trips.sort()
    row = {"server": name, "messages/s": count / elapsed, "p50_ms": trips[len(trips) // 2] * 1000,
           "p99_ms": trips[int(len(trips) * 0.99)] * 1000}
    print(f"{name:8} {row['messages/s']:10.0f} msg/s   p50 {row['p50_ms']:6.2f} ms   p99 {row['p99_ms']:6.2f} ms",
          flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uvicorn", help="a Python with uvicorn and websockets installed (its venv's bin/python)")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_no in range(args.repeat):
            print(f"round {round_no + 1}", flush=True)
            row = {}
            proc = start_minirr(Path(tmp), args.workers)
            try:
                port = wait_port(proc)
                load(port, args.connections, 1.0)                         # warm up
                row["minirr"] = figures("minirr", load(port, args.connections, args.duration))
            finally:
                stop(proc)
            if args.uvicorn:
                port = free_port()
                proc = start_uvicorn(args.uvicorn, args.workers, port)
                try:
                    wait_port(proc, port)
                    load(port, args.connections, 1.0)
                    row["uvicorn"] = figures("uvicorn", load(port, args.connections, args.duration))
                finally:
                    stop(proc, group=True)
            rounds.append(row)
    print("\nmedian over rounds:")
    for name in ("minirr", "uvicorn"):
        if name in rounds[0]:
            values = {key: statistics.median(r[name][key] for r in rounds) for key in ("messages/s", "p50_ms", "p99_ms")}
            print(f"{name:8} {values['messages/s']:10.0f} msg/s   p50 {values['p50_ms']:6.2f} ms   "
                  f"p99 {values['p99_ms']:6.2f} ms")
    if args.uvicorn:
        ratio = statistics.median(r["minirr"]["messages/s"] / r["uvicorn"]["messages/s"] for r in rounds)
        print(f"minirr / uvicorn messages/s, median of the rounds' ratios: {ratio:.2f}x (goal >= 1.0x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
