"""The master loop's longest stall while it reaps workers whose app forked a helper process.

The helper inherits every descriptor of its worker, multiprocessing's sentinel pipe too;
a reap that waits on that pipe (join with a timeout) waits out the whole timeout, and
the loop with it. minirr reaps with waitpid once the worker's pidfd says it has exited.

    python tests/bench/reap_stall.py [--exits 5] [--baseline TREE]

Per server: one worker of tests/apps/containment_app.py's create_app_with_helper, and
the status listener. A probe thread asks /health on one keep-alive connection, back to
back, the whole time (the master answers it itself, so its latency is the loop's
latency); the main thread crashes the worker `--exits` times (GET /crash), each time
waiting until a new worker is ready. Prints the probe's median and longest answer
time, which is the longest round the loop made it wait. Loopback only; everything it
starts (the helpers too, by the pids they write) is stopped by pid.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (the suite's servers and services)

APPS_DIR = run.ROOT / "tests" / "apps"
READY_TIMEOUT_S = 30.0


class HelperMinirr(run.Minirr):
    """minirr serving the helper-forking app, with a status listener."""

    def config_text(self, scenario: run.Scenario, folder: Path) -> str:
        return super().config_text(scenario, folder) + "[status]\naddress = 127.0.0.1:0\n"

    def start(self, scenario: run.Scenario, folder: Path):
        self.extra_env = {"PYTHONPATH": os.pathsep.join([str(self.root), str(APPS_DIR)])}
        return super().start(scenario, folder)


class Probe(threading.Thread):
    """GET /health back to back on one connection; keeps every answer time."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(daemon=True)
        self.conn = http.client.HTTPConnection(host, port, timeout=30)
        self.times_ms = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            started = time.perf_counter()
            self.conn.request("GET", "/health")
            self.conn.getresponse().read()
            self.times_ms.append((time.perf_counter() - started) * 1000)


def health(host: str, port: int) -> int:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    finally:
        conn.close()


def wait_healthy(host: str, port: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while health(host, port) != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no ready worker within {READY_TIMEOUT_S} s")
        time.sleep(0.01)  # a poll interval


def measure(server: HelperMinirr, exits: int, folder: Path) -> None:
    scenario = run.Scenario("reap-stall", "containment_app:create_app_with_helper", interface="minirr",
                            factory=True, servers=("minirr",))
    service, host, port = server.start(scenario, folder)
    probe = None
    try:
        status = service.wait_for_line(r"minirr status on http://([\d.]+):(\d+)")
        status_host, status_port = status.group(1), int(status.group(2))
        wait_healthy(status_host, status_port)
        probe = Probe(status_host, status_port)
        probe.start()
        started = time.monotonic()
        for _ in range(exits):
            conn = http.client.HTTPConnection(host, port, timeout=30)
            conn.request("GET", "/crash")
            conn.getresponse().read()
            conn.close()
            wait_healthy(status_host, status_port)
        elapsed = time.monotonic() - started
        probe.done.set()
        probe.join(30)
    finally:
        if probe is not None:
            probe.done.set()
        service.stop()
        kill_helpers(folder / "helper.pid")
    times = sorted(probe.times_ms)
    print(f"{server.name:9} {exits} exits in {elapsed:.2f} s; /health during them: {len(times)} answers, "
          f"median {times[len(times) // 2]:.2f} ms, longest {times[-1]:.1f} ms (the loop's longest stall)")


def kill_helpers(path: Path) -> None:
    """The helpers are the app's, not the master's children: end them by the pids they wrote."""
    if path.exists():
        for pid in path.read_text().split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--exits", type=int, default=5, help="worker exits to reap")
    parser.add_argument("--baseline", type=Path, metavar="TREE")
    args = parser.parse_args()
    servers = [HelperMinirr(1)]
    if args.baseline is not None:
        servers.append(HelperMinirr(1, root=args.baseline.resolve(), name="base"))
    work = Path(tempfile.mkdtemp(prefix="minirr-reap-stall-"))
    for server in servers:
        folder = work / server.name
        folder.mkdir()
        measure(server, args.exits, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
