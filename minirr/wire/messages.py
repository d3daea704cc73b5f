"""Request and Response, and their JSON heads on the wire (RoadRunner 2023.3 shape).

Owns: the application-facing Request/Response types; encoding a request head in the
master and decoding it in the worker; the reverse for responses.
Never: parses HTTP bytes (http11 does), touches descriptors or frames.

A request frame's payload is `head ‖ body`, the head being

    {"remoteAddr","protocol","method","uri","headers":{Canonical-Name:[values]},
     "cookies":{name:value},"rawQuery","parsed":false,"uploads":null,"attributes":{}}

and a response frame's payload is `{"status":int,"headers":{name:[values]}} ‖ body`.
"""

from __future__ import annotations

import json
from typing import Dict, Iterable, List, Optional, Tuple, Union

HeaderList = List[Tuple[str, str]]

_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_json_str = json.encoder.encode_basestring   # a str as a JSON string literal (C-accelerated)
_decode_json = json.JSONDecoder().decode   # on str: json.loads(bytes) sniffs the encoding every call


def canonical_header_name(name: str) -> str:
    """`x-test` -> `X-Test`: the spelling Go's net/http gives header names, which
    RoadRunner worker libraries index by (docs/external-workers.md, What a worker must do)."""
    return "-".join(word[:1].upper() + word[1:].lower() for word in name.split("-"))


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


def _group(headers: Iterable[Tuple[str, str]]) -> Dict[str, List[str]]:
    grouped: Dict[str, List[str]] = {}
    for name, value in headers:
        values = grouped.get(name)
        if values is None:
            grouped[name] = [value]
        else:
            values.append(value)
    return grouped


def parse_cookies(headers: Iterable[Tuple[str, str]]) -> Dict[str, str]:
    """Cookie header(s) -> {name: value}; the first occurrence of a name wins."""
    cookies: Dict[str, str] = {}
    for name, value in headers:
        if name.lower() != "cookie":
            continue
        for part in value.split(";"):
            key, sep, val = part.strip().partition("=")
            if sep and key and key not in cookies:
                cookies[key] = val.strip().strip('"')
    return cookies


class HeadCache(dict):
    """A dict that stops growing: a value is kept only while fewer than `max_entries` are
    kept and its key's `size` is at most `max_size`. Whoever owns one bounds it, so no
    peer can grow the process by sending new names or heads (STYLE.md §10)."""

    def __init__(self, max_entries: int, max_size: int) -> None:
        super().__init__()
        self.max_entries = max_entries
        self.max_size = max_size

    def keep(self, key, value, size: int):
        """Remember `value` under `key` if there is room; return `value` either way."""
        if len(self) < self.max_entries and size <= self.max_size:
            self[key] = value
        return value


# The request head with its constant parts written out once (docs/external-workers.md, What a worker must do);
# only the %s fields change per request.
_REQUEST_HEAD = ('{"remoteAddr":%s,"protocol":%s,"method":%s,"uri":%s,"headers":{%s},"cookies":%s,'
                 '"rawQuery":%s,"parsed":false,"uploads":null,"attributes":{}}')


class RequestHeadEncoder:
    """Request -> the JSON head RoadRunner 2023.3 sends (every key it sends).

    Runs in the master for every request, so the headers object is written by hand from
    remembered keys rather than through a dict and the json encoder (half the cost).
    Header names come from clients: at most NAME_CACHE_SIZE names of at most
    NAME_CACHE_MAX_LENGTH characters are remembered."""

    NAME_CACHE_SIZE = 4096
    NAME_CACHE_MAX_LENGTH = 64

    def __init__(self) -> None:
        self.json_keys = HeadCache(self.NAME_CACHE_SIZE, self.NAME_CACHE_MAX_LENGTH)

    def json_key(self, name: str) -> str:
        """`x-test` -> `"X-Test":`, the canonical name as a JSON object key."""
        key = _json_str(canonical_header_name(name)) + ":"
        return self.json_keys.keep(name, key, len(name))

    def encode(self, request: Request) -> bytes:
        json_keys = self.json_keys
        grouped: Dict[str, str] = {}   # '"Name":' -> the JSON of its values, comma-separated
        for name, value in request.headers:
            key = json_keys.get(name) or self.json_key(name)   # a hit costs no call
            if key in grouped:
                grouped[key] += "," + _json_str(value)
            else:
                grouped[key] = _json_str(value)
        headers = ",".join([key + "[" + values + "]" for key, values in grouped.items()])
        cookies = _encode_json(parse_cookies(request.headers)) if '"Cookie":' in grouped else "{}"
        return (_REQUEST_HEAD % (
            _json_str(request.remote_addr), _json_str(request.protocol), _json_str(request.method),
            _json_str(request.uri), headers, cookies, _json_str(request.query),
        )).encode("utf-8")


def encode_request_head(request: Request) -> bytes:
    """The JSON head of `request`, with nothing remembered (the master keeps a
    RequestHeadEncoder instead)."""
    return RequestHeadEncoder().encode(request)


_raw_decode_json = json.JSONDecoder().raw_decode


def _decode_head_json(text: str):
    """json.loads(text), faster for a head with nothing around it (what masters send).

    decode() runs a whitespace regex before and after the C scanner; going straight
    to raw_decode() saves about 5% of a worker's CPU for a small request."""
    try:
        obj, end = _raw_decode_json(text)
    except ValueError:
        end = -1
    if end != len(text):
        obj = _decode_json(text)   # whitespace around the head, or not JSON: decode() judges and words the error
    return obj


def decode_request(head: bytes, body: bytes) -> Request:
    """Inverse of encode_request_head, run in the worker. Raises ValueError on a bad head."""
    obj = _decode_head_json(head.decode("utf-8"))
    if not isinstance(obj, dict):
        raise ValueError("request head is not a JSON object")
    uri = obj.get("uri", "")
    headers = [(name, value) for name, values in (obj.get("headers") or {}).items() for value in values]
    return Request(
        method=obj.get("method", "GET"),
        path=path_of(uri),
        query=obj.get("rawQuery", "") or "",
        headers=headers,
        body=body,
        remote_addr=obj.get("remoteAddr", ""),
        protocol=obj.get("protocol", "HTTP/1.1"),
        uri=uri,
    )


def path_of(uri: str) -> str:
    """The path of an absolute URL (`http://host/a/b?q` -> `/a/b`), not percent-decoded.
    A plain string scan: urlsplit costs more than the rest of a request's decoding."""
    if uri == "*":
        return "*"
    scheme_end = uri.find("://")
    if scheme_end >= 0:
        slash = uri.find("/", scheme_end + 3)
        uri = uri[slash:] if slash >= 0 else "/"
    for mark in ("?", "#"):
        cut = uri.find(mark)
        if cut >= 0:
            uri = uri[:cut]
    return uri or "/"


class ResponseHeadEncoder:
    """Response -> its JSON head, run in the worker once per request.

    json's encode() builds a new C encoder on every call, about a sixth of a small
    request's worker CPU, and an app sends the same few heads over and over: so encoded
    heads are remembered, keyed by (status, header pairs) — sound because Response keeps
    its headers as (str, str) pairs. Bounded in number (a head that changes per response,
    a Content-Length or a Set-Cookie, would grow it without end) and in size (a large
    head is rare, and costs little to encode next to its own size)."""

    CACHE_SIZE = 256
    CACHE_MAX_BYTES = 4096

    def __init__(self) -> None:
        self.heads = HeadCache(self.CACHE_SIZE, self.CACHE_MAX_BYTES)

    def encode(self, response: Response) -> bytes:
        key = (response.status, tuple(response.headers))
        head = self.heads.get(key)
        if head is None:
            head = encode_response_head(response)
            self.heads.keep(key, head, len(head))
        return head


def encode_response_head(response: Response) -> bytes:
    """`{"status":...,"headers":{name:[values]}}` for `response`, nothing remembered."""
    return _encode_json({"status": response.status, "headers": _group(response.headers)}).encode("utf-8")


def decode_response_head(head: bytes) -> Tuple[int, HeaderList, bool]:
    """-> (status, header pairs, stop). `stop` is a worker asking to be recycled
    (docs/external-workers.md, What a worker must do). Raises ValueError on anything that is not a valid head:
    the head comes from a worker, which the master does not trust (STYLE.md §10), so
    every type is checked, and a head nested too deeply for the decoder is refused too.

    A final status must be 200..599: a 1xx answer is interim (RFC 9110 §15.2), and sent
    as the answer it would leave the client waiting for the real one."""
    try:
        obj = _decode_json(head.decode("utf-8"))
    except RecursionError:
        raise ValueError("response head is nested too deeply") from None
    if not isinstance(obj, dict):
        raise ValueError("response head is not a JSON object")
    if obj.get("stop") is True:
        return 0, [], True
    status = obj.get("status")
    if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
        raise ValueError(f"response status {status!r} is outside 200..599")
    return status, _header_pairs(obj.get("headers")), False


def _header_pairs(headers: object) -> HeaderList:
    """`{"Name": ["v1", "v2"], "Other": "v"}` -> [(name, value), ...]; ValueError on any
    other shape (a list, a number, a null value)."""
    if headers is None:
        return []
    if not isinstance(headers, dict):
        raise ValueError(f"response headers are a JSON {type(headers).__name__}, not an object")
    pairs = []
    for name, values in headers.items():
        if isinstance(values, str):
            values = [values]
        elif not isinstance(values, list):
            raise ValueError(f"response header {name!r} has a {type(values).__name__} value, not strings")
        for value in values:
            if not isinstance(value, str):
                raise ValueError(f"response header {name!r} has a {type(value).__name__} value, not a string")
            pairs.append((name, value))
    return pairs
