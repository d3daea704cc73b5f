"""PEP 3333 adapter: serve a WSGI callable as a minirr handler.

Owns: building the environ from a Request, start_response and write(), turning what the
      app returns into a Response body (whole or streamed), close().
Never: sees sockets or frames; it runs inside a worker, one request at a time.

What the app returns decides how its body travels:

    a list or tuple          joined: one frame, the usual case (and the fast one)
    any other iterable       streamed: run up to its first non-empty block, which goes
                             out at once with the head; each later block as it comes
    blocks given to write()  sent at once, each in a frame of its own (the worker's
                             ResponseStream, given to attach_stream()); after a STOP
                             write() raises ClientDisconnected
"""

from __future__ import annotations

import io
import sys
from typing import Callable, Iterable, Iterator, List, Optional, Tuple
from urllib.parse import unquote

from ..wire.messages import Request, Response

# The master has already read the body whole and de-chunked it (RFC 9112 §7.1): the
# request's framing fields describe bytes the app never sees, so the environ drops them
# and describes `wsgi.input` instead. Werkzeug, for one, reads nothing past CONTENT_LENGTH
# and reads nothing at all while HTTP_TRANSFER_ENCODING says chunked.
_FRAMING = {"CONTENT_LENGTH", "TRANSFER_ENCODING"}


def build_environ(request: Request) -> dict:
    """The CGI-style environ of PEP 3333 for `request`."""
    scheme, host, port = scheme_host_port(request.uri)
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
        if "_" in name:
            # `X_Auth_User` would become HTTP_X_AUTH_USER, the very key of `X-Auth-User`; a
            # proxy that strips or sets only the dash spelling would let a client spoof
            # it (and `Content_Type` would overwrite CONTENT_TYPE). Dropped, as nginx
            # (underscores_in_headers off) and gunicorn (22 and later) drop them.
            continue
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


def scheme_host_port(uri: str) -> Tuple[str, str, str]:
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
        self.stream = None               # the worker's ResponseStream, for write(); see attach_stream

    def attach_stream(self, stream) -> None:
        """Called by the worker before its first request: write() then sends each block
        at once through `stream` (PEP 3333: the block is sent, or buffered for transmission,
        while the app goes on). Without one (the adapter on its own), write()'s blocks are
        kept and go first in the body."""
        self.stream = stream

    def __call__(self, request: Request) -> Response:
        call = _Call(self.stream)
        result = self.app(build_environ(request), call.start_response)
        if type(result) is list or type(result) is tuple:
            return call.whole(result)
        return call.streamed(result)


class _Call:
    """One request's start_response, write() and body."""

    __slots__ = ("stream", "status", "headers", "written", "sent", "head")

    def __init__(self, stream) -> None:
        self.stream = stream
        self.status: Optional[str] = None
        self.headers: Optional[List[Tuple[str, str]]] = None
        self.written: List[bytes] = []   # write()'s blocks, while no stream is attached
        self.sent = False                # a non-empty block was produced: the head counts as sent
        self.head: Optional[Response] = None   # status and headers, for write()'s frames

    def start_response(self, status: str, headers: List[Tuple[str, str]], exc_info: Optional[tuple] = None):
        if exc_info is not None:
            try:
                if self.sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response called twice without exc_info")
        self.status = status
        self.headers = headers
        return self.write

    def write(self, data: bytes) -> None:
        """PEP 3333's legacy write(): `data` as if the app had yielded it."""
        if not data:
            return
        self.sent = True
        if self.stream is None:
            self.written.append(data)
            return
        if self.head is None:
            self.head = self.response(b"")
        self.stream.send(self.head, _block(data))

    def whole(self, result) -> Response:
        """A list or tuple (it has no close() to call): the whole body, joined."""
        if self.written:
            result = self.written + list(result)
        return self.response(b"".join(result))

    def streamed(self, result: Iterable[bytes]) -> Response:
        """Any other iterable: run it up to its first non-empty block (by then the app
        has called start_response). If it ends first, the body is whole after all."""
        try:
            iterator = iter(result)
            first = b""
            for first in iterator:
                if first:
                    break
            if not first:
                _close(result)
                return self.response(b"".join(self.written))
            self.sent = True
            return self.response(self._blocks(_block(first), iterator, result))
        except BaseException:
            _close(result)
            raise

    def _blocks(self, first: bytes, iterator: Iterator[bytes], result) -> Iterator[bytes]:
        """The blocks of a streamed body, in the order the app made them: the first, then
        the rest as it yields them (and, with no stream attached, what it gave write()
        meanwhile). However it ends (exhausted, failed, or closed by the worker when the
        client left), the app's close() is called (PEP 3333)."""
        try:
            yield from self._take_written()
            yield first
            for block in iterator:
                if self.written:
                    yield from self._take_written()
                if block:
                    yield _block(block)
            yield from self._take_written()
        finally:
            _close(result)

    def _take_written(self) -> List[bytes]:
        written, self.written = self.written, []
        return written

    def response(self, body) -> Response:
        if self.status is None:
            raise RuntimeError("WSGI application did not call start_response")
        return Response(int(self.status.split(" ", 1)[0]), list(self.headers), body)


def _block(block: bytes) -> bytes:
    """PEP 3333: the body is bytes; a str block is the app's mistake, named here."""
    if isinstance(block, str):
        raise TypeError(f"a WSGI application must give bytes, not str: {block[:40]!r}")
    return block


def _close(result) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()
