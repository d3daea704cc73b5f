"""HTTP/1.1 responses as bytes: status line, header lines, framing, dates (RFC 9110, 9112).

Owns: turning (status, headers, body) into the bytes of a response, the framing fields
      this layer controls (Date, Content-Length, Transfer-Encoding, Connection), chunked
      encoding of a streamed body, and error answers; the translation of a worker's JSON
      head into HTTP, checked and remembered (`ResponseHeads`).
Never: parses requests (http11 does), touches a socket, a clock or a process.

h11 keeps its readers and writers apart; so does minirr: http11.py reads requests, this
module writes responses. A response is built in two parts, because an app sends the same
few heads over and over:

    response_head(status, headers)   the status line and the app's header lines (kept)
    framing(...)                     Date, Content-Length or Transfer-Encoding, Connection,
                                     the blank line (per response)
"""

from __future__ import annotations

import re
import time
from http import HTTPStatus
from typing import List, NamedTuple, Optional, Tuple

from .grammar import TOKEN_RE
from ..wire.messages import HeadCache, decode_response_head

_REASONS = {status.value: status.phrase for status in HTTPStatus}
_GENERIC_REASONS = {1: "Informational", 2: "Success", 3: "Redirection", 4: "Client Error",
                    5: "Server Error"}
# Framing and hop-by-hop fields belong to this layer, not to the application.
_RESPONSE_OWNED = frozenset(("connection", "keep-alive", "transfer-encoding", "content-length", "date"))
# RFC 9110 §5.5: a field value is VCHAR and obs-text, with SP and HTAB between them; any
# other control character (CR, LF and NUL, but also VT, ESC, DEL) is refused, as h11 and
# gunicorn refuse it: a client or a proxy may act on it, or a terminal showing a log may.
_UNSAFE_VALUE_RE = re.compile("[\x00-\x08\x0a-\x1f\x7f]")
_DIGITS_RE = re.compile(r"[0-9]{1,18}")
LAST_CHUNK = b"0\r\n\r\n"


def has_no_content(status: int) -> bool:
    """RFC 9110 §8.6 and RFC 9112 §6.3: 1xx, 204 and 304 responses have no content."""
    return status < 200 or status == 204 or status == 304


def serialize_response(status: int, headers: list, body: bytes, *, keep_alive: bool,
                       head_only: bool = False, date: bytes, protocol: str = "HTTP/1.1") -> bytes:
    """The bytes of one response: status line, app headers, Date, Content-Length,
    Connection, blank line, body. Raises ValueError on header injection attempts."""
    return complete_response(response_head(status, headers), status, body, keep_alive=keep_alive,
                             head_only=head_only, date=date, protocol=protocol)


def response_head(status: int, headers: list) -> bytes:
    """The status line and the application's header lines, checked: the part of a
    response that depends only on the app's head, so a caller may keep it and reuse it.
    Raises ValueError on a bad status or a header injection attempt."""
    if not 100 <= status <= 999:
        raise ValueError(f"status {status} is not a three-digit code")
    reason = _REASONS.get(status) or _GENERIC_REASONS.get(status // 100, "Unknown")
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason.encode("ascii"))]
    for name, value in headers:
        if name.lower() in _RESPONSE_OWNED:
            continue
        parts.append(_header_line(name, value))
    return b"".join(parts)


def complete_response(head: bytes, status: int, body: bytes, *, keep_alive: bool,
                      head_only: bool = False, date: bytes, protocol: str = "HTTP/1.1") -> bytes:
    """`head` (from response_head) + Date, Content-Length, Connection, blank line, body."""
    # has_no_content and _connection, written out: this runs for every answer
    bodiless = status < 200 or status == 204 or status == 304
    length = b"" if bodiless else b"Content-Length: %d\r\n" % len(body)
    if head_only or bodiless:
        body = b""
    connection = b"" if keep_alive and protocol != "HTTP/1.0" else _connection(keep_alive, protocol)
    return b"%sDate: %s\r\n%s%s\r\n%s" % (head, date, length, connection, body)


def streamed_head(head: bytes, status: int, content_length: Optional[int], *, keep_alive: bool,
                  date: bytes, protocol: str) -> Tuple[bytes, str]:
    """The head of a response whose body is still to come: -> (bytes, framing), framing
    being "length" (the app gave Content-Length), "chunked" (HTTP/1.1) or "close"
    (HTTP/1.0: the body ends when the connection does; keep-alive is then off, and the
    caller must close). "none" for a status that has no content."""
    if has_no_content(status):
        return b"%sDate: %s\r\n%s\r\n" % (head, date, _connection(keep_alive, protocol)), "none"
    if content_length is not None:
        return (b"%sDate: %s\r\nContent-Length: %d\r\n%s\r\n" % (head, date, content_length,
                                                                 _connection(keep_alive, protocol)), "length")
    if protocol == "HTTP/1.0":
        return b"%sDate: %s\r\n%s\r\n" % (head, date, _connection(False, protocol)), "close"
    return (b"%sDate: %s\r\nTransfer-Encoding: chunked\r\n%s\r\n" % (head, date, _connection(keep_alive, protocol)),
            "chunked")


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (RFC 9112 §7.1); never call it with b"" (that ends the body)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def _connection(keep_alive: bool, protocol: str) -> bytes:
    if not keep_alive:
        return b"Connection: close\r\n"
    if protocol == "HTTP/1.0":
        return b"Connection: keep-alive\r\n"  # RFC 9112 §9.3: 1.0 closes by default
    return b""


def _header_line(name: str, value: str) -> bytes:
    if TOKEN_RE.fullmatch(name) is None:
        raise ValueError(f"response header name {name!r} is not a token")
    unsafe = _UNSAFE_VALUE_RE.search(value)
    if unsafe is not None:
        raise ValueError(f"response header {name!r} contains the control character {unsafe.group()!r} "
                         f"(RFC 9110 §5.5)")
    try:
        return b"%s: %s\r\n" % (name.encode("ascii"), value.encode("latin-1"))
    except UnicodeEncodeError:
        raise ValueError(f"response header {name!r} is not latin-1 text") from None


def error_response(status: int, message: str, *, date: bytes, keep_alive: bool = False,
                   extra_headers: tuple = ()) -> bytes:
    """A small text/plain response, e.g. for a ProtocolError: `message` plus a newline."""
    headers = [("Content-Type", "text/plain; charset=utf-8")]
    headers.extend(extra_headers)
    return serialize_response(status, headers, (message + "\n").encode("utf-8"),
                              keep_alive=keep_alive, date=date)


_WEEKDAYS = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
_MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct",
           b"Nov", b"Dec")


def http_date(epoch_seconds: float) -> bytes:
    """IMF-fixdate (RFC 9110 §5.6.7): b"Sun, 06 Nov 1994 08:49:37 GMT". The caller
    passes the time; this module reads no clock."""
    t = time.gmtime(epoch_seconds)
    return b"%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _WEEKDAYS[t.tm_wday], t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year, t.tm_hour, t.tm_min, t.tm_sec)


class DateCache:
    """http_date, formatted once a second: formatting a date costs more than parsing a
    request. The caller passes the time (this module reads no clock)."""

    def __init__(self) -> None:
        self._second = -1
        self._date = b""

    def get(self, epoch_seconds: float) -> bytes:
        second = int(epoch_seconds)
        if second != self._second:
            self._second = second
            self._date = http_date(second)
        return self._date


# ---- a worker's JSON head, as HTTP --------------------------------------------------------

class ResponseHead(NamedTuple):
    status: int                        # 0: the worker asks to be recycled instead (docs/external-workers.md, What a worker must do)
    http: bytes                        # status line and the app's header lines (response_head)
    content_length: Optional[int]      # the app's own Content-Length, if it gave one


STOP_HEAD = ResponseHead(0, b"", None)


def head_from_json(head_json: bytes) -> ResponseHead:
    """A worker's JSON head -> ResponseHead. Raises ValueError on an invalid head (bad
    JSON or types, a status outside 200..599, a header that would inject, two
    Content-Length values that differ)."""
    status, headers, stop = decode_response_head(head_json)
    if stop:
        return STOP_HEAD
    return ResponseHead(status, response_head(status, headers), _content_length(headers))


def _content_length(headers: List[Tuple[str, str]]) -> Optional[int]:
    values = {value.strip() for name, value in headers if name.lower() == "content-length"}
    if not values:
        return None
    if len(values) > 1 or _DIGITS_RE.fullmatch(next(iter(values))) is None:
        raise ValueError(f"response Content-Length {sorted(values)!r} is not one whole number")
    return int(values.pop())


class ResponseHeads(HeadCache):
    """head_from_json, remembered: an app sends the same few heads over and over, so each
    distinct head is checked and turned into HTTP once. Bounded in number and in size,
    as a head that changes per response (a Set-Cookie) would otherwise grow it.

        head = heads.get(head_json) or heads.decode(head_json)   # a hit costs no Python call
    """

    CACHE_SIZE = 256
    CACHE_MAX_BYTES = 4096

    def __init__(self) -> None:
        super().__init__(self.CACHE_SIZE, self.CACHE_MAX_BYTES)

    def decode(self, head_json: bytes) -> ResponseHead:
        return self.keep(head_json, head_from_json(head_json), len(head_json))
