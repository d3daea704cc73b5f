"""Inside a worker process: the app loaded once, then request frames answered until told to stop.

    loop.py       the worker's side of the wire: handshake, requests, soft errors, STOP
    load.py       `module:attr` -> a handler (or an ASGI app), which interface it speaks,
                  and a failure as one line
    stream.py     a response body sent block by block as it is produced
    wsgi.py       PEP 3333: a WSGI application as a handler
    asgi.py       ASGI 3: the HTTP scope, receive() and send(), the lifespan
    asyncloop.py  an ASGI app's worker: one event loop, many requests at once, the pipes
                  read and written without blocking it
    __main__.py   `python -m minirr.worker MODULE:ATTR`: an external worker on stdin/stdout

A worker never sees HTTP bytes or a client socket: only frames and Request objects.
"""
