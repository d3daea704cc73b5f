"""Time to first byte of a streamed answer: a WSGI generator that yields a block, sleeps
one second, then yields another (apps:pause_stream_wsgi). PEP 3333: a server must not
delay the transmission of any block, so the first block should arrive at once, not
when the generator ends.

    python tests/bench/ttfb.py [--repeat 5] [--against gunicorn] [--baseline TREE]

Prints, per server, the median time to the first body byte and to the last one.
Loopback only; everything it starts is stopped by pid (run.py's Service).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (the suite's servers and services)

SCENARIO = run.Scenario("pause-stream", "apps:pause_stream_wsgi", servers=("minirr", "gunicorn"))


def first_and_last_byte(host: str, port: int) -> tuple:
    """Seconds from sending the request to the first body byte, and to the end."""
    with socket.create_connection((host, port), timeout=10) as sock:
        started = time.perf_counter()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        first = None
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if first is None and b"first" in data:
                first = time.perf_counter() - started
        return first, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--against", choices=["gunicorn"])
    parser.add_argument("--baseline", type=Path, metavar="TREE")
    parser.add_argument("--venv", type=Path, default=run.DEFAULT_VENV)
    args = parser.parse_args()
    servers = [run.Minirr(2)]
    if args.baseline is not None:
        servers.append(run.Minirr(2, root=args.baseline.resolve(), name="base"))
    if args.against == "gunicorn":
        executable = run.install_gunicorn(args.venv)
        if executable is not None:
            servers.append(run.Gunicorn(executable, 2))
    work = Path(tempfile.mkdtemp(prefix="minirr-ttfb-"))
    for server in servers:
        folder = work / server.name
        folder.mkdir()
        service, host, port = server.start(SCENARIO, folder)
        try:
            run.probe(SCENARIO, host, port)
            times = [first_and_last_byte(host, port) for _ in range(args.repeat)]
        finally:
            service.stop()
        first = statistics.median(t[0] for t in times)
        last = statistics.median(t[1] for t in times)
        print(f"{server.name:9} first byte {first * 1000:7.1f} ms   last byte {last * 1000:7.1f} ms "
              f"(median of {args.repeat})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
