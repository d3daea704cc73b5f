"""Check for exercise 1: a worker without minirr (docs/exercises/1-worker-without-minirr.md).

    python docs/exercises/check_worker_without_minirr.py [YOUR_WORKER.py]
    python docs/exercises/check_worker_without_minirr.py --command "node my_worker.js"

Serves the worker through minirr (`[server] command`, one worker) and checks, in order:
the handshake, a GET, a POST with a body larger than one pipe read, a soft error, a reset
(the stop frame) and the end of the server. Without an argument it checks the reference
solution, docs/exercises/solutions/worker_without_minirr.py.
"""

from __future__ import annotations

import re
import shlex
import sys

from checking import Check, CheckFailed, imports_minirr, learner_file, run_cli

USAGE = __doc__.split("\n\n")[1]
POST_BYTES = 300_000          # more than a pipe read, less than the master's 1 MB pipe


def main(argv) -> int:
    command = argv[argv.index("--command") + 1] if "--command" in argv else ""
    rest = [arg for arg in argv if arg != command and arg != "--command"]
    with Check(command or learner_file(rest, USAGE), "worker_without_minirr.py") as check:
        if not command:
            check.expect(not imports_minirr(check.path), "it does not import minirr",
                         "the point is to speak the wire yourself: use struct, zlib and json")
            command = f"{shlex.quote(sys.executable)} {shlex.quote(str(check.path))}"
        srv = check.serve(f"[server]\ncommand = {command}\n[pool]\nnum_workers = 1\nallocate_timeout = 10s\n",
                          overrides=["logs.trace_frames=true"])
        check.expect(check.started(srv), "the handshake",
                     "the worker never answered the master's {\"pid\": ...} frame with a CONTROL frame holding "
                     "its own pid (docs/external-workers.md, step 1). The master logged:\n" + check.first_start(srv))
        [pid] = check.note_workers(srv)

        status, headers, body = srv.request("GET", "/hello?a=1")
        expected = f"GET {srv.url}/hello?a=1\n".encode()
        check.expect(status == 200 and body == expected, "GET /hello?a=1 answers 200 `GET <uri>`",
                     f"it answered {status} {body[:200]!r}, expected 200 {expected!r}\n{srv.log[-2000:]}")
        check.expect(headers.get("x-worker-pid") == str(pid), "X-Worker-Pid names the worker",
                     f"X-Worker-Pid is {headers.get('x-worker-pid')!r}, the worker's pid is {pid}")

        sent = bytes(range(256)) * (POST_BYTES // 256)
        status, _, body = srv.request("POST", "/echo", body=sent, timeout=20)
        check.expect(status == 200 and body == f"POST {srv.url}/echo\n".encode() + sent,
                     f"POST /echo with {len(sent)} bytes comes back whole",
                     f"it answered {status} with {len(body)} bytes (a pipe read may return fewer bytes than "
                     f"asked: read in a loop)")

        status, _, body = srv.request("GET", "/fail")
        check.expect(status == 500, "GET /fail answers 500 (an ERROR frame)", f"it answered {status} {body!r}")
        status, _, _ = srv.request("GET", "/after-the-failure")
        check.expect(status == 200 and srv.workers() == [pid], "the worker carries on after /fail",
                     f"status {status}, workers {srv.workers()} (was {pid}): a soft error must not end it")

        reset = run_cli("reset", "-c", str(srv.config_path), timeout=30)
        check.expect(reset.returncode == 0, "`minirr reset` replaces the worker", reset.stdout + reset.stderr)
        stopped = srv.wait_for_log(rf"worker \d+ \(pid {pid}\) (stopped|exited|was killed).*", timeout=15)
        check.expect(re.search(r"stopped \(reset\)", stopped[0]), "it exits 0 on the stop frame",
                     f"the master logged: {stopped[0]}")
        status = srv.stop()
        check.expect(status == 0, "the server stops cleanly", f"exit status {status}\n{srv.log[-2000:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
