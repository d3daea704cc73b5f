"""The master's memory while clients that queued an upload have left.

One worker is kept busy (GET /sleep); `--uploads` clients each send a 4 MiB POST, which
waits in the queue, and then leave (a reset for half of them, a plain close for the
rest). A master that keeps departed jobs keeps their bodies too; minirr removes a queued
job whose client left at once, body and all.

    python tests/bench/departed_uploads.py [--uploads 20] [--baseline TREE]

Two waves of them. Prints, per server: the master's RSS before the uploads and after each
wave has left (with the busy request still running: freed memory is kept by the
allocator and reused, so a master that lets go grows in the first wave only), `/health`'s
queue count then, and whether a new client is served or refused ("queue is full",
`max_queue_size = --uploads`). Loopback only; every server it starts is stopped by pid.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (the suite's servers and services)

APPS_DIR = run.ROOT / "tests" / "apps"
BODY_BYTES = 4 * 1024 * 1024


class QueueMinirr(run.Minirr):
    """minirr serving the test app with a bounded queue and a status listener."""

    def __init__(self, uploads: int, **kwargs) -> None:
        super().__init__(1, **kwargs)
        self.uploads = uploads

    def config_text(self, scenario: run.Scenario, folder: Path) -> str:
        text = super().config_text(scenario, folder)
        text = text.replace("[pool]\n", f"[pool]\nmax_queue_size = {self.uploads}\n")
        return text + "[status]\naddress = 127.0.0.1:0\n"

    def start(self, scenario: run.Scenario, folder: Path):
        self.extra_env = {"PYTHONPATH": os.pathsep.join([str(self.root), str(APPS_DIR)])}
        return super().start(scenario, folder)


def queue_length(host: str, port: int) -> int:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", "/health")
        return json.loads(conn.getresponse().read())["queue"]
    finally:
        conn.close()


def measure(server: QueueMinirr, uploads: int) -> None:
    scenario = run.Scenario("departed-uploads", "minirr_testapp:create_app", interface="minirr", factory=True,
                            servers=("minirr",))
    folder = Path(tempfile.mkdtemp(prefix=f"minirr-departed-{server.name}-"))
    service, host, port = server.start(scenario, folder)
    try:
        status = service.wait_for_line(r"minirr status on http://([\d.]+):(\d+)")
        status_host, status_port = status.group(1), int(status.group(2))
        busy = threading.Thread(target=lambda: http_get(host, port, "/sleep?12"), daemon=True)
        busy.start()
        time.sleep(0.5)  # the busy request reaches the worker (a benchmark, not a test)
        before = run.rss_mb(service.pid)
        body = b"u" * BODY_BYTES
        waves = []
        for _ in range(2):    # freed memory is reused (RSS rarely shrinks): the second wave tells
            for index in range(uploads):
                sock = socket.create_connection((host, port), timeout=30)
                sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                time.sleep(0.05)  # the master reads it into the queue
                if index % 2:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            time.sleep(0.5)
            waves.append(run.rss_mb(service.pid))
        queued = queue_length(status_host, status_port)
        status_code = http_post(host, port, "/echo", b"a newcomer")
        print(f"{server.name:7} 2 x {uploads} departed 4 MiB uploads: master RSS {before:.1f} MB before, "
              f"{waves[0]:.1f} MB after the first wave, {waves[1]:.1f} MB after the second; /health queue "
              f"{queued}; a new client got {status_code}")
        busy.join(30)
    finally:
        service.stop()


def http_get(host: str, port: int, path: str) -> int:
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def http_post(host: str, port: int, path: str, body: bytes) -> int:
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request("POST", path, body=body)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--uploads", type=int, default=20)
    parser.add_argument("--baseline", type=Path, metavar="TREE")
    args = parser.parse_args()
    servers = [QueueMinirr(args.uploads)]
    if args.baseline is not None:
        servers.append(QueueMinirr(args.uploads, root=args.baseline.resolve(), name="base"))
    for server in servers:
        measure(server, args.uploads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
