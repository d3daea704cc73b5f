"""Applications that misbehave the way real ones do, for tests/test_containment.py.

Files in the worker's working directory (the server's folder) steer them:
    fail-bootstrap     create_app raises while it exists (a reload whose new bootstrap fails)
    slow-bootstrap     create_app first sleeps as many seconds as the file says (a slow start)
    helper.pid         create_app_with_helper writes its helper process's pid here
    yes.pid            /spawn-yes writes the pid of the `yes` it starts here
"""

import os
import subprocess
import sys
import time
from urllib.parse import unquote

from minirr import Response


def route(request):
    path = request.path
    if path == "/pid":
        return Response(200, {}, str(os.getpid()))
    if path == "/crash":
        os._exit(7)
    if path == "/fork-raise":
        # A handler that forks a child, which then raises on its way out instead of
        # exiting: the child must never answer (its answer would reach another client).
        child = os.fork()
        if child == 0:
            raise RuntimeError("raised in a forked child")
        os.waitpid(child, 0)
        return Response(200, {}, f"parent {os.getpid()}")
    if path == "/fork-return":
        # ... and one whose child returns a Response of its own.
        child = os.fork()
        if child == 0:
            return Response(200, {}, "from the forked child")
        os.waitpid(child, 0)
        return Response(200, {}, f"parent {os.getpid()}")
    if path == "/status-103":
        return Response(103, {}, b"")
    if path == "/flood":
        # Many short lines on stdout, then an answer.
        count = int(request.query or "100000")
        sys.stdout.write("flood line\n" * count)
        sys.stdout.flush()
        return Response(200, {}, "flooded")
    if path == "/spawn-yes":
        # A chatty child on the worker's own stdout, left running when the worker exits.
        proc = subprocess.Popen(["yes"], stdout=sys.stdout)
        with open("yes.pid", "w") as f:
            f.write(str(proc.pid))
        return Response(200, {}, str(proc.pid))
    if path == "/bytes":
        return Response(200, {"Content-Type": "application/octet-stream"}, b"x" * int(request.query or "0"))
    if path == "/redirect":
        # Decoded input in a header, as a redirect built from the query string is: a client
        # can put CR LF in it.
        return Response(302, {"Location": unquote(request.query)}, b"")
    return Response(200, {}, "ok")


def create_app():
    if os.path.exists("fail-bootstrap"):
        raise RuntimeError("the new bootstrap fails: fail-bootstrap exists")
    if os.path.exists("slow-bootstrap"):
        with open("slow-bootstrap") as f:
            time.sleep(float(f.read() or "1"))
    return route


def create_app_with_helper():
    """A bootstrap that forks a helper process: it inherits every descriptor the worker
    has (the frame pipes, multiprocessing's sentinel) and outlives the worker."""
    helper = os.fork()
    if helper == 0:
        time.sleep(120)
        os._exit(0)
    with open("helper.pid", "a") as f:
        f.write(f"{helper}\n")
    return route
