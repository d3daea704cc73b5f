"""`python faulty_master.py serve ...`: minirr's own command line, with one of the master's
methods made to fail, to prove that a failure is contained where it belongs.

MINIRR_FAULT names the fault (nothing is patched without it):

    client   the frontend raises on a request for /fault: that client only gets 500
    worker   the backend raises on a worker's frames answering /fault: that worker only
    peer     the status endpoint raises on /fault: that peer only is dropped
    escape   the tick raises once a file named `escape` exists in the working directory:
             nothing contains that, so the master must end in order, with status 1

A bug in the master is what these stand for: no real input reaches these paths.
"""

import os
import sys

from minirr import cli
from minirr.master import backend
from minirr.master import frontend
from minirr.master import operations
from minirr.master import server


def _raise_for(path: str, name: str) -> None:
    if path == "/fault":
        raise RuntimeError(f"injected fault in the {name}")


def client() -> None:
    original = frontend.Frontend.on_request

    def on_request(self, conn, request):
        _raise_for(request.path, "frontend")
        return original(self, conn, request)
    frontend.Frontend.on_request = on_request


def worker() -> None:
    original = backend.Backend.on_frames

    def on_frames(self, worker_, items):
        for job in worker_.jobs.values():
            _raise_for(job.request.path, "backend")
        return original(self, worker_, items)
    backend.Backend.on_frames = on_frames


def peer() -> None:
    original = operations.Operations.answer_http

    def answer_http(self, endpoint, request, now):
        _raise_for(request.path, "status endpoint")
        return original(self, endpoint, request, now)
    operations.Operations.answer_http = answer_http


def escape() -> None:
    original = server.Server._on_tick

    def on_tick(self, now):
        if os.path.exists("escape"):
            raise RuntimeError("injected fault in the tick")
        return original(self, now)
    server.Server._on_tick = on_tick


FAULTS = {"client": client, "worker": worker, "peer": peer, "escape": escape}

if __name__ == "__main__":
    FAULTS[os.environ["MINIRR_FAULT"]]()
    sys.exit(cli.main())
