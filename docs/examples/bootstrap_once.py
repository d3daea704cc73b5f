"""Bootstrap once, measured: the demo app served twice, and the same requests timed.

Owns: a Vault double (each login costs what bcrypt costs a real Vault) and a Flipt double
on loopback, `demo_app.py setup` against them, and two runs of `python -m minirr serve`
with one worker: bootstrap once per worker (the default), and a fresh worker, so a fresh
bootstrap, for every request (`-o pool.max_jobs=1`: PHP-FPM's model). It prints the
latencies of both and how many times Vault was asked to log in.
Never: needs Docker, OpenBao or the network; leaves a process behind (the servers are
stopped and the doubles shut down in `finally`).

    python docs/examples/bootstrap_once.py [--requests 20]

docs/bootstrap-once.md explains the figures; tests/bench/demo_bootstrap.py is the
benchmark version (200 requests, OpenBao when it is installed).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path[:0] = [str(ROOT / "tests" / "bench"), str(ROOT / "tests"), str(ROOT)]

import demo_app  # noqa: E402  (found through the lines above)
from demo_bootstrap import percentile, run_mode  # noqa: E402
from doubles.flipt_double import FliptDouble  # noqa: E402
from doubles.vault_double import VaultDouble  # noqa: E402

LOGIN_DELAY_S = 0.085          # a real userpass login costs 80-115 ms: Vault checks a bcrypt hash
PASSWORD = "walkthrough-password"


def set_up_doubles(folder: Path):
    """-> (vault, flipt, the VAULT_* environment a worker logs in with)."""
    flipt = FliptDouble().start()
    flipt.set_flag("show_reverse_greeting", False)
    vault = VaultDouble(root_token="root").start()
    with open(os.devnull, "w") as quiet:       # setup's own report is not what we measure
        stdout, sys.stdout = sys.stdout, quiet
        try:
            status = demo_app.main(["setup", "--vault-addr", vault.url, "--vault-token", "root",
                                    "--flipt-addr", flipt.url, "--app-password", PASSWORD,
                                    "--env-file", str(folder / "vault.env")])
        finally:
            sys.stdout = stdout
    if status != 0:
        raise SystemExit("demo_app.py setup failed against the doubles")
    vault.login_delay_s = LOGIN_DELAY_S
    return vault, flipt, {"VAULT_HOST": vault.url, "VAULT_USER": "demoapp", "VAULT_PASS": PASSWORD}


def measure(folder: Path, env: dict, vault: VaultDouble, requests: int, label: str, overrides: list) -> float:
    logins_before = vault.logins
    latencies, bootstraps = run_mode(folder, env, 1, requests, overrides)
    p50 = percentile(latencies, 0.50)
    print(f"{label:<12} p50 {p50:6.1f} ms   p99 {percentile(latencies, 0.99):6.1f} ms   "
          f"Vault logins {vault.logins - logins_before}")
    return p50


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="minirr-bootstrap-once-") as tmp:
        folder = Path(tmp)
        vault, flipt, env = set_up_doubles(folder)
        try:
            print(f"{args.requests} requests, one after another, to the demo app with 1 worker; "
                  f"each Vault login takes {LOGIN_DELAY_S * 1000:.0f} ms")
            once = measure(folder / "once", env, vault, args.requests, "once", [])
            each = measure(folder / "each", env, vault, args.requests, "per request", ["pool.max_jobs=1"])
        finally:
            vault.stop()
            flipt.stop()
    print(f"a bootstrap per request makes the median request {each / once:.0f} times slower")
    return 0


if __name__ == "__main__":
    sys.exit(main())
