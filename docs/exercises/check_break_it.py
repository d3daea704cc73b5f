"""Check for exercise 5: predict, then break it (docs/exercises/5-break-it.md).

    python docs/exercises/check_break_it.py [YOUR_APP.py]

Serves your app (one worker, `exec_ttl = 1s`), calls each route of PREDICTIONS, and
compares what the client got, and whether the worker survived (`/pid` before and after),
with your predictions. Without an argument it checks the reference solution,
docs/exercises/solutions/break_it.py.
"""

from __future__ import annotations

import importlib.util
import re
import sys

from checking import Check, learner_file

USAGE = __doc__.split("\n\n")[1]
ROUTES = ("/raise", "/exit", "/loop", "/bad-status")


def predictions_of(path) -> dict:
    spec = importlib.util.spec_from_file_location("break_it_predictions", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, "PREDICTIONS", {})


def main(argv) -> int:
    with Check(learner_file(argv, USAGE), "break_it.py") as check:
        predicted = predictions_of(check.path)
        check.expect(set(predicted) == set(ROUTES), "PREDICTIONS has the four routes",
                     f"it has {sorted(predicted)}")
        srv = check.serve("[server]\napp = break_it:create_app\nfactory = true\n[pool]\nnum_workers = 1\n"
                          "[supervisor]\nexec_ttl = 1s\n", files={"break_it.py": check.path.read_text()})
        check.expect(check.started(srv), "the app starts",
                     "its worker never became ready. The master logged:\n" + check.first_start(srv))
        for route in ROUTES:
            before = srv.request("GET", "/pid", timeout=20)[2]
            status, _, body = srv.request("GET", route, timeout=20)
            after = srv.request("GET", "/pid", timeout=20)[2]
            fate = "kept" if after == before else "replaced"
            check.expect(status != 200 and status != 404, f"{route} goes wrong",
                         f"it answered {status} {body[:100]!r}: write the route first")
            check.expect(predicted[route] == (status, fate), f"{route}: {status}, the worker {fate}, as you predicted",
                         f"you predicted {predicted[route]}; the client got {status} ({body.decode(errors='replace').strip()!r}) "
                         f"and the worker was {fate}")
        check.info("what the master logged about it, worker by worker:")
        said = [(int(m.group(1)), line.split(" ", 2)[2]) for line in srv.log.split("\n")
                for m in [re.search(r"(?:ERROR|WARNING) minirr: worker (\d+) \(pid \d+\)(?:: request| [a-z])", line)]
                if m]
        for _, text in sorted(said, key=lambda item: item[0]):    # stable: each worker's lines in order
            check.info(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
