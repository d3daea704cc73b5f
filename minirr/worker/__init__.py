"""Inside a worker process: the app loaded once, then request frames answered until told to stop.

    loop.py       the worker's side of the wire: handshake, requests, soft errors, STOP
    load.py       `module:attr` -> a handler, and a failure as one line
    stream.py     a response body sent block by block as it is produced
    wsgi.py       PEP 3333: a WSGI application as a handler
    __main__.py   `python -m minirr.worker MODULE:ATTR`: an external worker on stdin/stdout

A worker never sees HTTP bytes or a client socket: only frames and Request objects.
"""
