"""The JSON heads of requests and responses on the wire (RoadRunner 2023.3's shape), and
the one switch between their plain code and its fast twins (no I/O).

Owns: encoding a request head in the master and decoding it in the worker; encoding a
      response head in the worker and decoding it (checked: the master trusts no worker)
      in the master; `FAST`, the switch.
Never: parses HTTP bytes, touches descriptors, or builds frames (frame.py does).

A request frame's payload is `head ‖ body`, the head being

    {"remoteAddr","protocol","method","uri","headers":{Canonical-Name:[values]},
     "cookies":{name:value},"rawQuery","parsed":false,"uploads":null,"attributes":{}}

and a response frame's payload is `{"status":int,"headers":{name:[values]}} ‖ body`.

**Plain code and fast twins.** Each head is written or read once per request, on the hot
path of one side or the other, and json's encoder costs more than the rest of the work
around it. Where a faster way measured worth more than 5% of a side's CPU per small
request (tests/bench/master_path.py for the master, tests/bench/worker_path.py for a
worker), it is kept as a twin of the plain function, never instead of it:

    plain (the reference)        fast twin                    what it saves
    encode_request_head          RequestHeadWriter.encode     ~12% of the master's CPU: JSON written by hand
    decode_request_json          _raw_head_json               ~7% of a worker's: no whitespace scans
    encode_response_head         ResponseHeadCache.encode     ~20% of a worker's: an app repeats its heads
    (master/reply.py) read_reply_head   ReplyHeads.read       ~20% of the master's: the same, on its side

`FAST` picks for the whole package: set MINIRR_FAST_PATHS=0 in the environment to run the
plain code everywhere (read once, at import; forked workers inherit the choice).
tests/test_heads.py checks that each twin gives what its plain function gives.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Callable, Dict, Iterable, Tuple

from .messages import HeaderList, Request, Response

FAST = os.environ.get("MINIRR_FAST_PATHS", "1") != "0"

_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_json_str = json.encoder.encode_basestring   # a str as a JSON string literal (C-accelerated)
_decode_json = json.JSONDecoder().decode   # on str: json.loads(bytes) sniffs the encoding every call


class HeadSyntaxError(ValueError):
    """A head that is not a JSON object at all (or is nested too deeply to decode)."""


@functools.lru_cache(maxsize=4096)      # names come from clients: bounded
def canonical_header_name(name: str) -> str:
    """`x-test` -> `X-Test`: the spelling Go's net/http gives header names, which
    RoadRunner worker libraries index by (docs/external-workers.md, What a worker must do)."""
    return "-".join(word[:1].upper() + word[1:].lower() for word in name.split("-"))


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


# ---- the request head: master -> worker -------------------------------------------------

def encode_request_head(request: Request) -> bytes:
    """Request -> the JSON head RoadRunner 2023.3 sends (every key it sends): the plain
    reference, a dict through json."""
    headers: Dict[str, list] = {}
    for name, value in request.headers:
        headers.setdefault(canonical_header_name(name), []).append(value)
    cookies = parse_cookies(request.headers) if "Cookie" in headers else {}
    return _encode_json({
        "remoteAddr": request.remote_addr, "protocol": request.protocol, "method": request.method,
        "uri": request.uri, "headers": headers, "cookies": cookies, "rawQuery": request.query,
        "parsed": False, "uploads": None, "attributes": {}}).encode("utf-8")


# The request head with its constant parts written out once; only the %s fields change.
_REQUEST_HEAD = ('{"remoteAddr":%s,"protocol":%s,"method":%s,"uri":%s,"headers":{%s},"cookies":%s,'
                 '"rawQuery":%s,"parsed":false,"uploads":null,"attributes":{}}')


class RequestHeadWriter:
    """The fast twin of encode_request_head: the same bytes, the JSON written by hand from
    remembered keys instead of through a dict and the encoder. Header names come from
    clients: at most NAME_CACHE_SIZE names of at most NAME_CACHE_MAX_LENGTH characters
    are remembered."""

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


def request_head_encoder() -> Callable[[Request], bytes]:
    """The master's encoder of request heads: the fast twin, or the plain one (FAST)."""
    return RequestHeadWriter().encode if FAST else encode_request_head


def decode_request_json(text: str):
    """A request head's JSON -> the object: the plain reference (json.loads)."""
    return _decode_json(text)


_raw_decode_json = json.JSONDecoder().raw_decode


def _raw_head_json(text: str):
    """The fast twin of decode_request_json, for a head with nothing around it (what
    masters send): decode() runs a whitespace regex before and after the C scanner;
    raw_decode() alone does not."""
    try:
        obj, end = _raw_decode_json(text)
    except ValueError:
        end = -1
    if end != len(text):
        obj = _decode_json(text)   # whitespace around the head, or not JSON: decode() judges and words the error
    return obj


_request_json = _raw_head_json if FAST else decode_request_json


def decode_request(head: bytes, body: bytes) -> Request:
    """Inverse of encode_request_head, run in the worker. Raises ValueError on a bad head."""
    try:
        obj = _request_json(head.decode("utf-8"))
    except RecursionError:
        raise HeadSyntaxError("request head is nested too deeply") from None
    if not isinstance(obj, dict):
        raise HeadSyntaxError("request head is not a JSON object")
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


# ---- the response head: worker -> master -------------------------------------------------

def encode_response_head(response: Response) -> bytes:
    """`{"status":...,"headers":{name:[values]}}` for `response`: the plain reference."""
    return _encode_json({"status": response.status, "headers": _group(response.headers)}).encode("utf-8")


class ResponseHeadCache:
    """The fast twin of encode_response_head, run in the worker once per request: json's
    encode() builds a new C encoder on every call, and an app sends the same few heads
    over and over, so encoded heads are remembered, keyed by (status, header pairs) —
    sound because Response keeps its headers as (str, str) pairs. Bounded in number (a
    head that changes per response, a Content-Length or a Set-Cookie, would grow it
    without end) and in size (a large head is rare, and costs little next to its size)."""

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


def response_head_encoder() -> Callable[[Response], bytes]:
    """A worker's encoder of response heads: the fast twin, or the plain one (FAST)."""
    return ResponseHeadCache().encode if FAST else encode_response_head


def decode_response_head(head: bytes) -> Tuple[int, HeaderList, bool]:
    """-> (status, header pairs, stop). `stop` is a worker asking to be recycled
    (docs/external-workers.md, What a worker must do). The head comes from a worker, which
    the master does not trust, so every type is checked: HeadSyntaxError for a head that
    is not a JSON object at all (or nested too deeply to decode), ValueError for one whose
    status or headers are wrong.

    A final status must be 200..599: a 1xx answer is interim (RFC 9110 §15.2), and sent
    as the answer it would leave the client waiting for the real one."""
    try:
        obj = _decode_json(head.decode("utf-8"))
    except RecursionError:
        raise HeadSyntaxError("response head is nested too deeply") from None
    except ValueError as exc:          # not UTF-8, not JSON
        raise HeadSyntaxError(f"response head is not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise HeadSyntaxError("response head is not a JSON object")
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
