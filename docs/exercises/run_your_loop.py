"""Run `python -m minirr.worker` with your own worker loop in place of `worker.loop.serve`.

    python docs/exercises/run_your_loop.py YOUR_LOOP.py APP [--factory] [--path DIR]

YOUR_LOOP.py defines `serve(channel, bootstrap) -> exit status`, as `minirr.worker.loop.serve`
does. Everything else is minirr's own worker: the frames on stdin and stdout, print()
moved to stderr, the app loaded by `bootstrap()`. The check for exercise 2 runs this as
the `[server] command`.
"""

import importlib.util
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from minirr.worker import loop as worker  # noqa: E402  (found through the line above)


def main() -> int:
    path, args = sys.argv[1], sys.argv[2:]
    spec = importlib.util.spec_from_file_location("your_loop", path)
    your_loop = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(your_loop)
    worker.serve = your_loop.serve      # worker.main calls serve(channel, bootstrap): now yours
    return worker.main(args)


if __name__ == "__main__":
    sys.exit(main())
