"""The master's memory while clients do not read: each of N clients (default 100) asks
for a 10 MiB answer that its worker sends in one frame, then reads nothing. The master
reads a worker's pipe only while that client's outgoing buffer is below a bound, so it
should hold about that bound per client, not the answers.

    python tests/bench/slow_readers.py [--clients 100] [--mb 10] [--seconds 5] [--baseline TREE]

Prints, per server, the master's RSS before the clients come and its peak while they
wait. One worker per client, so every answer is in flight at once. Loopback only;
everything it starts is stopped by pid (run.py's Service).
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (the suite's servers and services)

WORKERS_TIMEOUT_S = 120.0


def peak_master_rss(server: run.Minirr, clients: int, mb: int, seconds: float, folder: Path) -> tuple:
    """-> (RSS before, peak RSS while `clients` non-reading clients wait), in MB."""
    scenario = run.Scenario("slow-readers", "apps:big_wsgi", path=f"/?mb={mb}", servers=("minirr",))
    service, host, port = server.start(scenario, folder)
    sockets = []
    try:
        deadline = time.monotonic() + WORKERS_TIMEOUT_S
        while len(service.workers()) < clients:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server.name}: fewer than {clients} workers after {WORKERS_TIMEOUT_S} s")
            time.sleep(0.1)  # a poll interval
        run.probe(scenario, host, port)
        before = run.rss_mb(service.pid)
        for _ in range(clients):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: a slow reader
            sock.connect((host, port))
            sock.sendall(f"GET /?mb={mb} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        peak = before
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            peak = max(peak, run.rss_mb(service.pid))
            time.sleep(0.1)  # a sampling interval
        return before, peak
    finally:
        for sock in sockets:
            sock.close()
        service.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--mb", type=int, default=10, help="MiB per answer")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long the clients wait")
    parser.add_argument("--baseline", type=Path, metavar="TREE")
    args = parser.parse_args()
    servers = [run.Minirr(args.clients)]
    if args.baseline is not None:
        servers.append(run.Minirr(args.clients, root=args.baseline.resolve(), name="base"))
    work = Path(tempfile.mkdtemp(prefix="minirr-slow-readers-"))
    for server in servers:
        folder = work / server.name
        folder.mkdir()
        before, peak = peak_master_rss(server, args.clients, args.mb, args.seconds, folder)
        print(f"{server.name:9} master RSS {before:6.1f} MB before, peak {peak:7.1f} MB with {args.clients} "
              f"clients not reading {args.mb} MiB answers: +{peak - before:.1f} MB "
              f"({(peak - before) / args.clients * 1024:.0f} KiB a client)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
