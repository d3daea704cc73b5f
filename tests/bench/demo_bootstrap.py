"""Benchmark: what bootstrapping once per worker saves, measured through minirr.

Owns: serving the demo (against OpenBao if found, else the Vault double with a login
delay like bcrypt's) and timing N sequential requests twice: with the bootstrap once
per worker, and with `-o pool.max_jobs=1`, a fresh worker and bootstrap for every
request (PHP-FPM's model).
Never: runs in the test suite (figures for the docs, not a timed test); talks to
anything but 127.0.0.1.

    python tests/bench/demo_bootstrap.py [--requests 200] [--workers 1]

OpenBao is found through MINIRR_BAO or `bao` on PATH. Flipt is always the double.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

TESTS = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(TESTS), str(TESTS.parent)]

import demo_app  # noqa: E402
from doubles.flipt_double import FliptDouble  # noqa: E402
from doubles.vault_double import VaultDouble  # noqa: E402
from serverproc import ServerProcess  # noqa: E402

CONFIG = "[server]\napp = demo_app:create_app\nfactory = true\n"
PASSWORD = "bench-password-123"
DOUBLE_LOGIN_DELAY_S = 0.085  # a real userpass login costs 80-115 ms (bcrypt)


def percentile(sorted_values: List[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def time_requests(srv: ServerProcess, count: int) -> List[float]:
    """Latencies in ms of `count` sequential GET / (each on a fresh connection)."""
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        status, _headers, body = srv.request("GET", "/", timeout=30)
        latencies.append((time.perf_counter() - started) * 1000)
        if status != 200 or body not in (b"Hello, world!", b"!dlrow ,olleH"):
            raise SystemExit(f"unexpected answer {status} {body[:80]!r}\n{srv.log}")
    return sorted(latencies)


def run_mode(folder: Path, env: Dict[str, str], workers: int, count: int,
             extra: List[str]) -> Tuple[List[float], List[float]]:
    """-> (sorted request latencies, bootstrap durations the workers logged), both in ms."""
    srv = ServerProcess.start(folder, CONFIG, overrides=[f"pool.num_workers={workers}", *extra], env=env)
    try:
        srv.wait_for_log(r"demo_app: bootstrap: logged in", count=workers, timeout=30)
        latencies = time_requests(srv, count)
    finally:
        srv.stop()
    bootstraps = [float(ms) for ms in re.findall(r"bootstrap: logged in .* in (\d+) ms", srv.log)]
    return latencies, bootstraps


def start_backend(folder: Path, flipt: FliptDouble) -> Tuple[str, Dict[str, str], object]:
    """-> (description, env for the server, thing to stop)."""
    bao_binary = os.environ.get("MINIRR_BAO") or shutil.which("bao")
    if bao_binary:
        from test_demo_openbao import start_bao
        vault = start_bao(bao_binary, folder)
        description = "OpenBao (bao server -dev, real bcrypt userpass login)"
    else:
        vault = VaultDouble(root_token="root").start()
        vault.login_delay_s = DOUBLE_LOGIN_DELAY_S
        description = f"the Vault double (login delay {DOUBLE_LOGIN_DELAY_S * 1000:.0f} ms; OpenBao not found)"
    env_file = folder / "vault.env"
    with open(os.devnull, "w") as quiet:
        stdout, sys.stdout = sys.stdout, quiet
        try:
            status = demo_app.main(["setup", "--vault-addr", vault.url, "--vault-token", "root",
                                    "--flipt-addr", flipt.url, "--app-password", PASSWORD, "--env-file", str(env_file)])
        finally:
            sys.stdout = stdout
    if status != 0:
        raise SystemExit("demo_app.py setup failed")
    return description, {"VAULT_HOST": vault.url, "VAULT_USER": "demoapp", "VAULT_PASS": PASSWORD}, vault


def report(name: str, latencies: List[float], bootstraps: List[float]) -> None:
    print(f"  {name:<36} p50 {percentile(latencies, 0.50):6.1f} ms  p99 {percentile(latencies, 0.99):6.1f} ms  "
          f"mean {statistics.mean(latencies):6.1f} ms  bootstraps {len(bootstraps)} "
          f"(median {statistics.median(bootstraps):.0f} ms in create_app)")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    flipt = FliptDouble().start()
    flipt.set_flag("show_reverse_greeting", False)
    backend = None
    with tempfile.TemporaryDirectory(prefix="minirr-bench-") as tmp:
        folder = Path(tmp)
        try:
            description, env, backend = start_backend(folder, flipt)
            print(f"Vault: {description}; Flipt: the double")
            print(f"{args.requests} sequential requests, {args.workers} worker(s), Python {sys.version.split()[0]}")
            once, once_boots = run_mode(folder / "once", env, args.workers, args.requests, [])
            each, each_boots = run_mode(folder / "each", env, args.workers, args.requests, ["pool.max_jobs=1"])
        finally:
            if backend is not None:
                backend.stop()
            flipt.stop()
    report("bootstrap once per worker", once, once_boots)
    report("bootstrap per request (max_jobs=1)", each, each_boots)
    print(f"  ratio (per request / once): p50 {percentile(each, 0.5) / percentile(once, 0.5):.0f}x, "
          f"p99 {percentile(each, 0.99) / percentile(once, 0.99):.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
