"""Check for exercise 3: a worker that recycles itself (docs/exercises/3-recycle-yourself.md).

    python docs/exercises/check_recycle.py [YOUR_WORKER.py]

Serves the worker through minirr (`[server] command`, one worker, RECYCLE_AFTER = 3) and
sends 10 requests, one after another: every one must be answered 200, and the worker's
pid (its X-Worker-Pid header) must change after every third, each old worker stopped
(not killed) because it asked. Without an argument it checks the reference solution,
docs/exercises/solutions/recycling_worker.py.
"""

from __future__ import annotations

import shlex
import sys

from checking import Check, imports_minirr, learner_file

USAGE = __doc__.split("\n\n")[1]
REQUESTS = 10
RECYCLE_AFTER = 3


def main(argv) -> int:
    with Check(learner_file(argv, USAGE), "recycling_worker.py") as check:
        check.expect(not imports_minirr(check.path), "it does not import minirr",
                     "start from your worker of exercise 1, which speaks the wire itself")
        command = f"{shlex.quote(sys.executable)} {shlex.quote(str(check.path))}"
        srv = check.serve(f"[server]\ncommand = {command}\n[server.env]\nRECYCLE_AFTER = {RECYCLE_AFTER}\n"
                          f"[pool]\nnum_workers = 1\nallocate_timeout = 10s\n")
        check.expect(check.started(srv), "the worker starts",
                     "it never finished its handshake. The master logged:\n" + check.first_start(srv))
        pids, failed = [], []
        for number in range(1, REQUESTS + 1):
            status, headers, body = srv.request("GET", f"/{number}", timeout=20)
            pids.append(headers.get("x-worker-pid"))
            if status != 200:
                failed.append(f"request {number}: {status} {body[:100]!r}")
        check.expect(not failed, f"{REQUESTS} requests, one after another, all answered 200",
                     "; ".join(failed) + ": a request a worker declines must run on another worker, not fail\n"
                     + srv.log[-2000:])
        groups = [pids[i:i + RECYCLE_AFTER] for i in range(0, REQUESTS, RECYCLE_AFTER)]
        check.expect(all(len(set(group)) == 1 for group in groups) and len({g[0] for g in groups}) == len(groups),
                     f"a new worker after every {RECYCLE_AFTER} answers",
                     f"the answers came from pids {pids}")
        stops = srv.wait_for_log(r"stopped \(worker_request\)", count=len(groups) - 1, timeout=15)
        check.expect(len(stops) >= len(groups) - 1, "each old worker stopped because it asked (worker_request)",
                     "\n".join(stops))
        kills = [line for line in srv.log.split("\n") if "killed" in line or "broke the frame channel" in line]
        check.expect(not kills, "no worker was killed", "\n".join(kills))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
