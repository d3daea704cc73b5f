"""Check for exercise 2: a header in the worker loop (docs/exercises/2-a-header-in-the-worker-loop.md).

    python docs/exercises/check_header_in_loop.py [YOUR_LOOP.py]

Serves the tour app (docs/examples/tour_app.py) with one worker running your `serve`
(through docs/exercises/run_your_loop.py) and checks that every response, whole or
streamed, carries X-Served-By (the worker's pid) and X-Request-Count (1, 2, 3, ...).
Without an argument it checks the reference solution, docs/exercises/solutions/header_in_loop.py.
"""

from __future__ import annotations

import shlex
import sys

from checking import EXERCISES, ROOT, Check, learner_file

USAGE = __doc__.split("\n\n")[1]


def main(argv) -> int:
    with Check(learner_file(argv, USAGE), "header_in_loop.py") as check:
        command = " ".join(shlex.quote(str(part)) for part in (
            sys.executable, EXERCISES / "run_your_loop.py", check.path, "tour_app:create_app", "--factory",
            "--path", ROOT / "docs" / "examples"))
        srv = check.serve(f"[server]\ncommand = {command}\n[pool]\nnum_workers = 1\nallocate_timeout = 10s\n")
        check.expect(check.started(srv), "the worker starts with your loop",
                     "it never finished its handshake. The master logged:\n" + check.first_start(srv))
        [pid] = check.note_workers(srv)
        for count in (1, 2, 3):
            status, headers, body = srv.request("GET", "/")
            check.expect(status == 200 and body == b"Hello, world!\n", f"GET / number {count} is answered",
                         f"it answered {status} {body[:200]!r}\n{srv.log[-2000:]}")
            served_by, seen = headers.get("x-served-by"), headers.get("x-request-count")
            check.expect(served_by == str(pid), "X-Served-By is the worker's pid",
                         f"X-Served-By is {served_by!r}; the worker's pid is {pid}")
            check.expect(seen == str(count), f"X-Request-Count: {count}", f"X-Request-Count is {seen!r}")
        status, headers, body = srv.request("GET", "/stream?n=2")
        check.expect(status == 200 and body == b"block 0\nblock 1\n", "GET /stream?n=2 is streamed",
                     f"it answered {status} {body[:200]!r}")
        check.expect(headers.get("x-served-by") == str(pid) and headers.get("x-request-count") == "4",
                     "the streamed answer carries both headers too",
                     f"X-Served-By {headers.get('x-served-by')!r}, X-Request-Count {headers.get('x-request-count')!r}"
                     ": a generator's answer leaves by another way (stream.ResponseStream); add the headers "
                     "before the two ways part")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
