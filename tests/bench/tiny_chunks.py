"""Other clients' latency while one client sends a chunked body of tiny chunks at full speed.

A chunk of one byte is six bytes on the wire and a few microseconds of the master's one
thread, so a client that sends nothing else can keep the loop busy; the master reads such
a body a budget at a time (minirr/http/chunked.py: FRAMING_BYTES_PER_READ) and refuses it
once its framing outweighs its data (CHUNK_FRAMING_FACTOR past CHUNK_FRAMING_MIN_BYTES).

    python tests/bench/tiny_chunks.py [--seconds 5] [--chunk-bytes 1] [--clients 4] [--baseline TREE]

Per server: `--clients` keep-alive connections GET `/` as fast as they are answered
(loadgen.py, one process), first alone, then while a separate process sends chunked
POSTs of `--chunk-bytes`-byte chunks as fast as the kernel takes them, opening a new
connection whenever one is refused or closed. Prints the honest clients' p50, p99 and
max, requests per second, and the master's CPU. The goal: p50 under 50 ms while the
attacker runs (1-byte chunks are refused past the allowance; 5-byte chunks are not, and
show the per-read budget alone). Loopback only; everything it starts is stopped by pid.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen  # noqa: E402
import run  # noqa: E402  (the suite's servers and services)

HEAD = b"POST / HTTP/1.1\r\nHost: bench\r\nTransfer-Encoding: chunked\r\n\r\n"


def attack(host: str, port: int, chunk_bytes: int, counts) -> None:
    """Runs in its own process: tiny chunks, as fast as they go, reconnecting when refused."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    one = b"%x\r\n%s\r\n" % (chunk_bytes, b"X" * chunk_bytes)
    block = one * (256 * 1024 // len(one))
    while True:
        try:
            with socket.create_connection((host, port), timeout=10) as sock:
                counts[0] += 1
                sock.sendall(HEAD)
                while True:
                    sock.sendall(block)
                    counts[1] += len(block)
        except OSError:
            pass                    # refused (400), or closed: a new connection at once


def honest_load(host: str, port: int, clients: int, seconds: float) -> dict:
    spec = loadgen.LoadSpec(host=host, port=port, path="/", processes=1, connections=clients, duration_s=seconds,
                            timeout_s=30.0)
    result = loadgen.run_load(spec)
    summary = result.summary()
    summary["max_ms"] = round(result.latencies_us[-1] / 1000, 1) if result.latencies_us else 0.0
    return summary


def measure(server: run.Minirr, args, folder: Path) -> None:
    scenario = run.Scenario("tiny-chunks", "apps:hello_wsgi", servers=("minirr",))
    service, host, port = server.start(scenario, folder)
    attacker = None
    try:
        run.probe(scenario, host, port)
        honest_load(host, port, args.clients, 1.0)                       # warm up
        quiet = honest_load(host, port, args.clients, args.seconds)
        counts = multiprocessing.get_context("fork").Array("q", 2, lock=False)
        attacker = multiprocessing.get_context("fork").Process(target=attack, args=(host, port, args.chunk_bytes,
                                                                                    counts), daemon=True)
        attacker.start()
        time.sleep(0.5)                                                   # the attack is under way
        ticks_before, started = run.cpu_ticks(service.pid), time.monotonic()
        loud = honest_load(host, port, args.clients, args.seconds)
        cpu = (run.cpu_ticks(service.pid) - ticks_before) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - started)
        connections, sent = counts[0], counts[1]
    finally:
        if attacker is not None and attacker.is_alive():
            os.kill(attacker.pid, signal.SIGKILL)
            attacker.join(5)
        service.stop()
    for label, result in (("alone", quiet), (f"{args.chunk_bytes}-byte chunks", loud)):
        lat = result["latency_ms"]
        print(f"{server.name:9} {label:15} p50 {lat['p50']:8.2f} ms  p99 {lat['p99']:8.2f} ms  "
              f"max {result['max_ms']:8.1f} ms  {result['requests_per_s']:8.0f} req/s  errors {result['errors'] or 0}")
    print(f"{server.name:9} attacker: {connections} connections, {sent / 2**20:.0f} MiB sent; "
          f"master CPU {100 * cpu:.0f}% while it ran")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="load per measurement")
    parser.add_argument("--chunk-bytes", type=int, default=1, help="data bytes per chunk of the attacker")
    parser.add_argument("--clients", type=int, default=4, help="honest keep-alive connections")
    parser.add_argument("--baseline", type=Path, metavar="TREE")
    args = parser.parse_args()
    servers = [run.Minirr(2)]
    if args.baseline is not None:
        servers.append(run.Minirr(2, root=args.baseline.resolve(), name="base"))
    work = Path(tempfile.mkdtemp(prefix="minirr-tiny-chunks-"))
    for server in servers:
        folder = work / server.name
        folder.mkdir()
        measure(server, args, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
