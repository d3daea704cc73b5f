"""Exercise 5, the starting point: four ways for a request to go wrong.

Write the four routes (the TODOs), then, before you run anything, fill in PREDICTIONS:
for each route, the status the client will get and whether the worker that ran it is
"kept" or "replaced". Then check it:

    cp docs/exercises/starters/break_it.py break_it.py
    python docs/exercises/check_break_it.py break_it.py
"""

import os

from minirr import Response

PREDICTIONS = {
    "/raise": (None, None),           # (status, "kept" or "replaced")
    "/exit": (None, None),
    "/loop": (None, None),            # the server runs with exec_ttl = 1s
    "/bad-status": (None, None),
}


def create_app():
    def handle(request):
        if request.path == "/pid":
            return Response(200, {"Content-Type": "text/plain"}, str(os.getpid()))
        # TODO /raise:      raise an exception
        # TODO /exit:       end the process at once, os._exit(3)
        # TODO /loop:       never return (while True: pass)
        # TODO /bad-status: return a Response whose status is 99
        return Response(200, {}, "not broken yet")
    return handle
