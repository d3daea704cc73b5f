"""Request and Response: what the application sees, on both sides of the pipe (no I/O).

Owns: the application-facing Request and Response types and the rules for a response
      body (`response_body`, `body_block`): bytes, str, or an iterable streamed block by
      block.
Never: parses HTTP bytes (http/parser.py does) or encodes them for the wire (heads.py
       writes and reads their JSON heads).
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Tuple, Union

HeaderList = List[Tuple[str, str]]


class Request:
    """One HTTP request as the application sees it.

    `path` is not percent-decoded; `query` is the raw query string without `?`;
    `headers` are (name, value) pairs in arrival order; `body` is de-chunked bytes.
    """

    __slots__ = ("method", "path", "query", "headers", "body", "remote_addr", "protocol", "uri")

    def __init__(self, method: str, path: str, query: str = "", headers: Optional[HeaderList] = None,
                 body: bytes = b"", remote_addr: str = "", protocol: str = "HTTP/1.1", uri: str = "") -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers if headers is not None else []
        self.body = body
        self.remote_addr = remote_addr
        self.protocol = protocol
        self.uri = uri

    def header(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """The first value of header `name` (case-insensitive), else `default`."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return default

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path}{'?' + self.query if self.query else ''}>"


class Response:
    """What a handler returns. `headers` may be a dict or a list of pairs; the body is
    bytes, bytearray, memoryview, str (sent as UTF-8), or an iterable of those, sent as
    it is produced: see response_body()."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int = 200, headers: Union[None, dict, Iterable[Tuple[str, str]]] = None,
                 body: Union[bytes, bytearray, memoryview, str, Iterable[Union[bytes, str]]] = b"") -> None:
        self.status = int(status)
        if headers is None:
            self.headers: HeaderList = []
        elif isinstance(headers, dict):
            self.headers = [(str(k), str(v)) for k, v in headers.items()]
        else:
            self.headers = [(str(k), str(v)) for k, v in headers]
        self.body = response_body(body)

    def __repr__(self) -> str:
        if isinstance(self.body, bytes):
            return f"<Response {self.status} {len(self.body)} bytes>"
        return f"<Response {self.status} streamed from {type(self.body).__name__}>"


def response_body(body: object) -> Union[bytes, Iterable]:
    """The one place that says what a response body may be.

    - bytes, bytearray, memoryview (taken as they are) or str (sent as UTF-8): the whole
      body, returned as bytes and sent in one frame;
    - a list or tuple of such blocks: also whole, joined here into bytes;
    - any other iterable (a generator, a file, an object with __iter__): returned as it
      is, and streamed by the worker, each block leaving as soon as it is produced; the
      worker calls its close() (if it has one) when it ends, fails or the client leaves.
      Its blocks go through body_block().

    Anything else is refused here, by name, rather than turned into something surprising:
    bytes(5) is five zero bytes, and a dict would stream its keys."""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, (bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, (list, tuple)):
        return b"".join([body_block(block) for block in body])
    if isinstance(body, dict) or not hasattr(body, "__iter__"):
        raise TypeError(f"a response body must be bytes, bytearray, memoryview, str or an iterable of them, "
                        f"not {type(body).__name__}")
    return body


def body_block(block: object) -> bytes:
    """One block of a body given in pieces: bytes as they are, bytearray and memoryview
    copied, str encoded as UTF-8 (as a whole str body is); anything else is a TypeError."""
    if isinstance(block, bytes):
        return block
    if isinstance(block, str):
        return block.encode("utf-8")
    if isinstance(block, (bytearray, memoryview)):
        return bytes(block)
    raise TypeError(f"a response body's blocks must be bytes, bytearray, memoryview or str, "
                    f"not {type(block).__name__}")
