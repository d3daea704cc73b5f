"""HTTP/1.1 responses as bytes: status line, header lines, framing, dates (RFC 9110, 9112).

Owns: turning (status, headers, body) into the bytes of a response, the framing fields
      this layer controls (Date, Content-Length, Transfer-Encoding, Connection), the
      body writers of a streamed answer (one per framing, chosen from a table), and
      error answers.
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
from typing import Optional, Tuple

from .grammar import TOKEN_RE

_REASONS = {status.value: status.phrase for status in HTTPStatus}
_GENERIC_REASONS = {1: "Informational", 2: "Success", 3: "Redirection", 4: "Client Error",
                    5: "Server Error"}
# Framing and hop-by-hop fields belong to this layer, not to the application.
_RESPONSE_OWNED = frozenset(("connection", "keep-alive", "transfer-encoding", "content-length", "date"))
# RFC 9110 §5.5: a field value is VCHAR and obs-text, with SP and HTAB between them; any
# other control character (CR, LF and NUL, but also VT, ESC, DEL) is refused, as h11 and
# gunicorn refuse it: a client or a proxy may act on it, or a terminal showing a log may.
_UNSAFE_VALUE_RE = re.compile("[\x00-\x08\x0a-\x1f\x7f]")
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


def body_framing(status: int, content_length: Optional[int], protocol: str) -> str:
    """How a streamed answer's body is delimited (RFC 9112 §6.3), a key of WRITERS: none
    for a status that has no content, the app's own Content-Length, chunked for HTTP/1.1,
    or for HTTP/1.0 a body that ends when the connection closes."""
    if has_no_content(status):
        return "none"
    if content_length is not None:
        return "length"
    return "close" if protocol == "HTTP/1.0" else "chunked"


def streamed_head(head: bytes, status: int, content_length: Optional[int], *, keep_alive: bool,
                  head_only: bool, date: bytes, protocol: str) -> Tuple[bytes, "BodyWriter"]:
    """The head of an answer whose body is still to come, and the writer (from WRITERS)
    that frames its body. A HEAD request gets the head a GET would, Content-Length
    included, and no body at all (RFC 9110 §9.3.2)."""
    framing = body_framing(status, content_length, protocol)
    writer = WRITERS[framing](content_length)
    fields = FRAMING_FIELDS[framing](content_length)
    if head_only:
        writer = NoBodyWriter(keeps_alive=writer.keeps_alive)
    line = _connection(keep_alive and writer.keeps_alive, protocol)
    return b"%sDate: %s\r\n%s%s\r\n" % (head, date, fields, line), writer


# ---- body writers: how the pieces of a streamed body go on the wire ---------------------------
#
# One object per streamed answer, chosen by streamed_head (h11's _writers.py split): each
# turns the app's pieces into wire bytes, and says when the body breaks its framing.
#
#     writer.write(piece) -> bytes, or None if the piece would pass the announced length
#     writer.end(last)    -> bytes that end the body, or None if the body is not as long as announced
#     writer.complete     the body is whole already (a Content-Length reached by the pieces so far)
#     writer.keeps_alive  the connection may carry another request after this answer

class BodyWriter:
    keeps_alive = True
    complete = False

    def write(self, piece: bytes) -> Optional[bytes]:
        raise NotImplementedError

    def end(self, last: bytes) -> Optional[bytes]:
        raise NotImplementedError


class ContentLengthWriter(BodyWriter):
    """The app gave Content-Length: the body must be exactly that long (RFC 9112 §6.2)."""

    __slots__ = ("left",)

    def __init__(self, content_length: int) -> None:
        self.left = content_length         # bytes still owed

    @property
    def complete(self) -> bool:
        return self.left == 0

    def write(self, piece: bytes) -> Optional[bytes]:
        if len(piece) > self.left:
            return None
        self.left -= len(piece)
        return piece

    def end(self, last: bytes) -> Optional[bytes]:
        return self.write(last) if len(last) == self.left else None


class ChunkedWriter(BodyWriter):
    """HTTP/1.1 without a length: each piece a chunk, then the last chunk (RFC 9112 §7.1)."""

    __slots__ = ()

    def __init__(self, content_length: Optional[int] = None) -> None:
        pass

    def write(self, piece: bytes) -> Optional[bytes]:
        return chunk(piece) if piece else b""

    def end(self, last: bytes) -> Optional[bytes]:
        return (chunk(last) if last else b"") + LAST_CHUNK


class CloseDelimitedWriter(BodyWriter):
    """HTTP/1.0 without a length: the body ends when the connection closes (RFC 9112 §6.3)."""

    __slots__ = ()
    keeps_alive = False

    def __init__(self, content_length: Optional[int] = None) -> None:
        pass

    def write(self, piece: bytes) -> Optional[bytes]:
        return piece

    def end(self, last: bytes) -> Optional[bytes]:
        return last


class NoBodyWriter(BodyWriter):
    """HEAD, 204 and 304: the body the app sends is not the client's (RFC 9110 §6.4.1)."""

    __slots__ = ("keeps_alive",)

    def __init__(self, content_length: Optional[int] = None, keeps_alive: bool = True) -> None:
        self.keeps_alive = keeps_alive

    def write(self, piece: bytes) -> Optional[bytes]:
        return b""

    def end(self, last: bytes) -> Optional[bytes]:
        return b""


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


# framing -> the writer of its body, and the header field that announces it
WRITERS = {"none": NoBodyWriter, "length": ContentLengthWriter, "chunked": ChunkedWriter,
           "close": CloseDelimitedWriter}
FRAMING_FIELDS = {
    "none": lambda content_length: b"",
    "length": lambda content_length: b"Content-Length: %d\r\n" % content_length,
    "chunked": lambda content_length: b"Transfer-Encoding: chunked\r\n",
    "close": lambda content_length: b"",
}
