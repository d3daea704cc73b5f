"""Exercise 5, a reference solution: four ways for a request to go wrong, and what happens.

Served with `[supervisor] exec_ttl = 1s`. PREDICTIONS says, for each route, the status
the client gets and whether the worker that ran it is kept or replaced.
"""

import os

from minirr import Response

PREDICTIONS = {
    "/raise": (500, "kept"),           # a soft error: an ERROR frame; the worker is fine
    "/exit": (502, "replaced"),        # the process is gone before it answered
    "/loop": (504, "replaced"),        # past exec_ttl: killed, it would never answer
    "/bad-status": (500, "kept"),  # the app's answer is wrong, the frames are fine: its 500
}


def create_app():
    def handle(request):
        if request.path == "/pid":
            return Response(200, {"Content-Type": "text/plain"}, str(os.getpid()))
        if request.path == "/raise":
            raise RuntimeError("broken on purpose")
        if request.path == "/exit":
            os._exit(3)
        if request.path == "/loop":
            while True:
                pass
        if request.path == "/bad-status":
            return Response(99, {}, "a status no HTTP client can take")
        return Response(404, {}, "no such route")
    return handle
