"""A WSGI application for tests/test_hardening.py: what an app sees, and an app's bad header.

    /environ          the request fields as the app sees them (the HTTP_* keys and
                      CONTENT_TYPE, as JSON)
    /control-header   a response header whose value holds a control character (VT)
    anything else     "ok"

`create_app` is a factory: while a file named `hold-bootstrap` exists in the working
directory (the server's folder) it does not return, so a reset stays pending for as long
as a test needs (the test removes the file).
"""

import json
import os
import time

HOLD_S = 60.0                      # a bootstrap is held at most this long


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/environ":
        seen = {key: value for key, value in environ.items() if key.startswith("HTTP_") or key == "CONTENT_TYPE"}
        body = json.dumps(seen).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    if path == "/control-header":
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Bad", "a\x0bb")])
        return [b"should not be sent"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def create_app():
    deadline = time.monotonic() + HOLD_S
    while os.path.exists("hold-bootstrap") and time.monotonic() < deadline:
        time.sleep(0.02)           # the bootstrap is held: a poll of the file
    return app
