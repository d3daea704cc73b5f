"""PEP 3333 adapter: serve a WSGI callable as a minirr handler.

Owns: building the environ from a Request, start_response, collecting the body, close().
Never: sees sockets or frames; it runs inside a worker, one request at a time.
"""

from __future__ import annotations

import io
import sys
from typing import Callable, List, Optional, Tuple
from urllib.parse import unquote

from .messages import Request, Response

# The master has already read the body whole and de-chunked it (RFC 9112 §7.1): the
# request's framing fields describe bytes the app never sees, so the environ drops them
# and describes `wsgi.input` instead. Werkzeug, for one, reads nothing past CONTENT_LENGTH
# and reads nothing at all while HTTP_TRANSFER_ENCODING says chunked.
_FRAMING = {"CONTENT_LENGTH", "TRANSFER_ENCODING"}


def build_environ(request: Request) -> dict:
    """The CGI-style environ of PEP 3333 for `request`."""
    scheme, host, port = _scheme_host_port(request.uri)
    environ = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        # PEP 3333: PATH_INFO is decoded, then carried as latin-1 "bytes in a str".
        "PATH_INFO": unquote(request.path, encoding="latin-1"),
        "QUERY_STRING": request.query,
        "SERVER_NAME": host,
        "SERVER_PORT": port,
        "SERVER_PROTOCOL": request.protocol,
        "REMOTE_ADDR": request.remote_addr,
        "RAW_URI": request.path + ("?" + request.query if request.query else ""),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": io.BytesIO(request.body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        # wsgi.input holds exactly the body and ends there: safe to read to EOF.
        "wsgi.input_terminated": True,
        # RFC 3875 §4.1.2: the body's length after transfer-codings are removed. No body:
        # "" (PEP 3333 allows empty or absent; Werkzeug reads "" as a known length of 0,
        # absent as "unknown, streaming"; and environ["CONTENT_LENGTH"] never raises).
        "CONTENT_LENGTH": str(len(request.body)) if request.body else "",
    }
    for name, value in request.headers:
        key = name.upper().replace("-", "_")
        if key in _FRAMING:
            continue
        if key == "CONTENT_TYPE":
            environ[key] = value
            continue
        key = "HTTP_" + key
        # RFC 9110 §5.3: repeated fields combine with ", " (no header of interest is a Set-Cookie here)
        environ[key] = environ[key] + "," + value if key in environ else value
    return environ


def _scheme_host_port(uri: str) -> Tuple[str, str, str]:
    """`https://example.com:8443/x` -> ("https", "example.com", "8443"), by string scans
    (urlsplit is the single most expensive call of a request in a worker)."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return "http", "localhost", "80"
    authority = rest.split("/", 1)[0].split("?", 1)[0]
    default_port = "443" if scheme == "https" else "80"
    if authority.startswith("["):                       # [::1]:8080
        host, _, tail = authority[1:].partition("]")
        return scheme, host, tail[1:] if tail.startswith(":") and tail[1:] else default_port
    host, colon, port = authority.partition(":")
    return scheme, host or "localhost", port if colon and port else default_port


class WSGIHandler:
    """handler(request) -> Response around a WSGI application."""

    def __init__(self, app: Callable) -> None:
        self.app = app

    def __call__(self, request: Request) -> Response:
        state: dict = {}
        chunks: List[bytes] = []

        def start_response(status: str, headers: List[Tuple[str, str]], exc_info: Optional[tuple] = None):
            if exc_info is not None:
                try:
                    if state.get("sent"):
                        raise exc_info[1].with_traceback(exc_info[2])
                finally:
                    exc_info = None
            elif "status" in state:
                raise AssertionError("start_response called twice without exc_info")
            state["status"] = status
            state["headers"] = headers
            return chunks.append   # the legacy write() callable

        result = self.app(build_environ(request), start_response)
        try:
            for chunk in result:
                if chunk:
                    state["sent"] = True
                    chunks.append(chunk)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if "status" not in state:
            raise RuntimeError("WSGI application did not call start_response")
        status = int(state["status"].split(" ", 1)[0])
        return Response(status, list(state["headers"]), b"".join(chunks))
