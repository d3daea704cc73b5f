"""Static files as decisions: which file a request names, and what to answer (no I/O).

Owns: a request path under a mount -> the relative path of a file, or a refusal (the
      segments of RFC 3986 §3.3, strict percent-decoding; `..`, `.`, encoded slashes,
      backslashes, NUL and control characters refused; dot-files and folders not found);
      the validators (a strong ETag, Last-Modified); conditional requests in the order of
      RFC 9110 §13.2.2 (412, 304); one byte range (§14) and If-Range (§13.1.5); the
      precompressed codings a client accepts (Accept-Encoding, §12.5.3); the head of
      each answer.
Never: stats, opens or sends a file (master/static.py and master/connection.py do),
       reads a clock (the caller passes `now`), or asks mimetypes for a type (mimetypes
       reads system files the first time it is used: the caller passes the Content-Type).

    request path ──relative_path(path, prefix)──> "css/base.css" | Refusal(400 or 404)
    Accept-Encoding ──codings_to_try──> ("br", "gzip"): the precompressed files worth a stat
    static.py stats the file it found, then plan(...) decides:

        If-Match / If-Unmodified-Since fail ───────────> 412
        If-None-Match / If-Modified-Since match ───────> 304 (validators, no body)
        GET with one satisfiable Range (If-Range ok) ──> 206 that range
                 with an unsatisfiable one ────────────> 416
        otherwise ─────────────────────────────────────> 200 the whole file (HEAD: its head)
"""

from __future__ import annotations

import calendar
import datetime
import functools
import re
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from .responses import http_date, response_head, streamed_head

# ---- the path: which file, or a refusal -----------------------------------------------------

_ESCAPE_RE = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class Refusal(NamedTuple):
    """A request path under a mount that names no file we serve."""
    status: int                        # 400: a path no browser sends (it is hostile); 404: no such file
    message: str


NOT_FOUND = Refusal(404, "not found")


def relative_path(path: str, prefix: str) -> Union[str, Refusal]:
    """`/static/css/base.css` under `/static/` -> `css/base.css`, decoded, or a Refusal.

    `path` is the request's path as it arrived (not percent-decoded) and starts with
    `prefix`. Each segment is decoded on its own, so that an encoded slash (`%2F`) can
    never join two segments into a path the checks did not see. Refused with 400: a `.`
    or `..` segment (raw or encoded: `%2e%2e`), an encoded slash, a backslash, NUL or
    another control character, a bad escape, bytes that are not UTF-8. Not found (404):
    an empty segment (a folder: there are no listings), a name starting with a dot."""
    rest = path[len(prefix):]
    if "%" in rest or "\\" in rest or _CONTROL_RE.search(rest):
        names: List[str] = []
        for raw in rest.split("/"):
            name = _decode_segment(raw)
            if isinstance(name, Refusal):
                return name
            names.append(name)
    else:
        names = rest.split("/")         # the usual path: nothing to decode
    for name in names:
        if name in (".", ".."):
            return Refusal(400, "a dot segment in the path (RFC 3986 §3.3)")
    for name in names:
        if not name or name.startswith("."):
            return NOT_FOUND           # a folder (no listings), or a dot-file (.env, .git)
    return "/".join(names)


def _decode_segment(raw: str) -> Union[str, Refusal]:
    if _BAD_ESCAPE_RE.search(raw):
        return Refusal(400, "a % in the path that is not a %XX escape")
    data = _ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 16)), raw).encode("latin-1", "replace")
    try:
        name = data.decode("utf-8")
    except UnicodeDecodeError:
        return Refusal(400, "the path is not UTF-8 once decoded")
    if "/" in name:
        return Refusal(400, "an encoded slash (%2F) in the path")
    if "\\" in name:
        return Refusal(400, "a backslash in the path")
    if _CONTROL_RE.search(name):
        return Refusal(400, "a NUL or control character in the path")
    return name


# ---- what the file is --------------------------------------------------------------------

class FileInfo(NamedTuple):
    """What static.py learned from one stat (or fstat) of a regular file."""
    size: int
    mtime_ns: int


def etag_of(info: FileInfo, coding: str) -> str:
    """A strong entity tag (RFC 9110 §8.8.3): it changes with the file's size or
    modification time, and differs per content coding (each coded file is a
    representation of its own)."""
    suffix = "" if coding == "identity" else f"-{coding}"
    return f'"{info.mtime_ns:x}-{info.size:x}{suffix}"'


def last_modified_s(info: FileInfo, now: float) -> int:
    """Whole seconds, never later than now: an origin server must not send a
    Last-Modified later than its Date (RFC 9110 §8.8.2.1), whatever the file says."""
    return min(info.mtime_ns // 1_000_000_000, int(now))


# ---- HTTP-dates (RFC 9110 §5.6.7: recipients accept all three forms) -----------------------------

_MONTHS = {name: number for number, name in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
_TIME = r"(\d\d):(\d\d):(\d\d)"
_IMF_FIXDATE_RE = re.compile(r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\d\d) ([A-Z][a-z]{2}) (\d{4}) " + _TIME + " GMT")
_RFC850_RE = re.compile(r"(?:Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day, (\d\d)-([A-Z][a-z]{2})-(\d\d) " + _TIME + " GMT")
_ASCTIME_RE = re.compile(r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) ([A-Z][a-z]{2}) ([ \d]\d) " + _TIME + r" (\d{4})")


def parse_http_date(value: str) -> Optional[int]:
    """An HTTP-date -> seconds since the epoch, or None if it is not one (then the field
    is ignored, RFC 9110 §13.1.3 and §13.1.4)."""
    value = value.strip()
    m = _IMF_FIXDATE_RE.fullmatch(value)
    if m:
        day, month, year, hour, minute, second = m.groups()
    else:
        m = _RFC850_RE.fullmatch(value)
        if m:
            day, month, year, hour, minute, second = m.groups()
            # Two-digit years: RFC 9110 §5.6.7 reads one that seems more than 50 years in the
            # future as the past; without a clock here, 70-99 are the 1900s (as HTTP's own era).
            year = str(1900 + int(year) if int(year) >= 70 else 2000 + int(year))
        else:
            m = _ASCTIME_RE.fullmatch(value)
            if m is None:
                return None
            month, day, hour, minute, second, year = m.groups()
    if month not in _MONTHS:
        return None
    try:
        moment = datetime.datetime(int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second))
    except ValueError:                 # 31 February, hour 25
        return None
    return calendar.timegm(moment.timetuple())


# ---- conditional requests (RFC 9110 §13) ---------------------------------------------------

_ETAG_LIST_RE = re.compile(r'\s*(?:(W/)?("[\x21\x23-\x7e\x80-\xff]*"))?\s*(?:,|$)')


def _entity_tags(value: str) -> Optional[List[Tuple[bool, str]]]:
    """`"a", W/"b"` -> [(False, '"a"'), (True, '"b"')]; None for a list that does not parse.
    Empty elements are allowed, as in any list field (RFC 9110 §5.6.1)."""
    tags = []
    pos = 0
    value = value.strip()
    while pos < len(value):
        m = _ETAG_LIST_RE.match(value, pos)
        if m is None or m.end() == pos:
            return None
        if m.group(2) is not None:
            tags.append((m.group(1) is not None, m.group(2)))
        pos = m.end()
    return tags


def _matches(value: str, etag: str, weak: bool) -> bool:
    """Does an If-Match / If-None-Match value match `etag`? `*` matches any current
    representation. Strong comparison (If-Match, If-Range) refuses weak tags; weak
    comparison (If-None-Match) compares the opaque tags only (RFC 9110 §8.8.3.2)."""
    if value.strip() == "*":
        return True
    tags = _entity_tags(value)
    if not tags:
        return False                   # unparsable: it matches nothing
    return any(tag == etag and (weak or not is_weak) for is_weak, tag in tags)


def field(headers: Sequence[Tuple[str, str]], name: str) -> Optional[str]:
    """A field's value, its lines joined with commas (RFC 9110 §5.3), or None if absent."""
    lname = name.lower()
    values = [value for key, value in headers if key.lower() == lname]
    return ", ".join(values) if values else None


CONDITIONAL_FIELDS = frozenset(("if-match", "if-none-match", "if-modified-since", "if-unmodified-since", "range",
                                "if-range", "accept-encoding"))


def request_fields(headers: Sequence[Tuple[str, str]]) -> Dict[str, str]:
    """The fields a file answer depends on, by lower-case name, each field's lines joined
    with commas (RFC 9110 §5.3): one pass over the request's headers."""
    found: Dict[str, str] = {}
    for key, value in headers:
        name = key.lower()
        if name in CONDITIONAL_FIELDS:
            found[name] = f"{found[name]}, {value}" if name in found else value
    return found


def precondition_status(method: str, fields: Dict[str, str], etag: str, modified_s: int) -> int:
    """RFC 9110 §13.2.2, in its order -> 412, 304, or 0 (go on with the request).
    `fields` is request_fields(headers)."""
    if_match = fields.get("if-match")
    if if_match is not None:
        if not _matches(if_match, etag, weak=False):
            return 412
    else:
        since = fields.get("if-unmodified-since")
        date = parse_http_date(since) if since is not None else None
        if date is not None and modified_s > date:
            return 412
    if_none_match = fields.get("if-none-match")
    if if_none_match is not None:
        if _matches(if_none_match, etag, weak=True):
            return 304 if method in ("GET", "HEAD") else 412
        return 0
    since = fields.get("if-modified-since")
    if since is not None and method in ("GET", "HEAD"):
        date = parse_http_date(since)
        if date is not None and modified_s <= date:
            return 304
    return 0


# ---- one byte range (RFC 9110 §14) ------------------------------------------------------------

_RANGE_RE = re.compile(r"bytes[ \t]*=[ \t]*(\d{0,19})-(\d{0,19})[ \t]*", re.IGNORECASE)
UNSATISFIABLE = (-1, -1)


def parse_range(value: str, size: int) -> Optional[Tuple[int, int]]:
    """A Range value -> (first, last) inclusive, UNSATISFIABLE (416), or None: ignore it
    and send the whole file. Ignored as a server may (§14.2): several ranges (one
    request for many pieces is a way to make a server work hard), another unit, a
    syntax that does not parse, an empty file."""
    m = _RANGE_RE.fullmatch(value.strip())
    if m is None or size == 0:
        return None
    first_text, last_text = m.groups()
    if not first_text:
        if not last_text:
            return None                # "bytes=-": no range at all
        suffix = int(last_text)        # the last N bytes (§14.1.2)
        return (max(0, size - suffix), size - 1) if suffix else UNSATISFIABLE
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None                    # invalid: ignored (§14.1.1)
    if first >= size:
        return UNSATISFIABLE
    return first, min(int(last_text), size - 1) if last_text else size - 1


def if_range_allows(value: Optional[str], etag: str, modified_s: int, now: float) -> bool:
    """If-Range (RFC 9110 §13.1.5): the range only if the client's copy is current. An
    entity-tag must match strongly; a date must be exactly Last-Modified, and that is
    only a strong validator once the file is a second older than now (§8.8.2.2)."""
    if value is None:
        return True
    value = value.strip()
    if value.startswith('"') or value.startswith("W/"):
        return _matches(value, etag, weak=False)
    date = parse_http_date(value)
    return date is not None and date == modified_s and now - modified_s >= 1


# ---- content codings (RFC 9110 §12.5.3) ---------------------------------------------------------

PRECOMPRESSED = (("br", ".br"), ("gzip", ".gz"))    # what we look for beside a file, in this order
_CODING_RE = re.compile(r"\s*([A-Za-z0-9!#$%&'*+.^_`|~-]+)\s*(?:;\s*q\s*=\s*([01](?:\.\d{0,3})?))?\s*")


def codings_to_try(accept_encoding: Optional[str]) -> Tuple[str, ...]:
    """The precompressed codings this client takes, in the order to look for their files:
    the client's preference (q), then ours (br is smaller than gzip). A coding is only
    worth it when the client does not prefer identity over it. No Accept-Encoding: none
    (the whole file, as is). An entry that does not parse is left out."""
    if not accept_encoding:
        return ()
    weights = {}
    for item in accept_encoding.split(","):
        m = _CODING_RE.fullmatch(item)
        if m is None:
            continue
        name = m.group(1).lower()
        name = "gzip" if name == "x-gzip" else name     # RFC 9110 §8.4.1.3
        weights[name] = float(m.group(2)) if m.group(2) is not None else 1.0
    anything = weights.get("*")
    # identity is acceptable unless excluded, but when not named it is the last choice
    identity = weights.get("identity", 0.001 if anything is None else anything)
    ranked = [(weights.get(coding, anything or 0.0), -order, coding)
              for order, (coding, _) in enumerate(PRECOMPRESSED)]
    return tuple(coding for weight, _, coding in sorted(ranked, reverse=True) if weight > 0 and weight >= identity)


# ---- the answer ------------------------------------------------------------------------------

class Plan(NamedTuple):
    """What to answer: the status, its header fields, and the part of the file to send."""
    status: int
    headers: List[Tuple[str, str]]
    content_length: int                # the Content-Length the head announces
    offset: int                        # the first byte of the file to send ...
    length: int                        # ... and how many (0: none, e.g. a 304 or a HEAD)


def plan(method: str, fields: Dict[str, str], info: FileInfo, coding: str, content_type: str,
         cache_control: str, now: float) -> Plan:
    """The answer to GET or HEAD of a file (`coding` says which of its files `info` is).
    `fields` is request_fields(headers)."""
    etag = etag_of(info, coding)
    modified_s = last_modified_s(info, now)
    validators = [("ETag", etag), ("Cache-Control", cache_control), ("Vary", "Accept-Encoding")]
    status = precondition_status(method, fields, etag, modified_s)
    if status == 304:
        # RFC 9110 §15.4.5: the fields a 200 would carry to update a cache, no metadata.
        return Plan(304, validators, 0, 0, 0)
    if status == 412:
        return Plan(412, [], 0, 0, 0)
    headers = [("Content-Type", content_type), ("Last-Modified", _http_date(modified_s))]
    headers += validators + [("Accept-Ranges", "bytes")]
    if coding != "identity":
        headers.append(("Content-Encoding", coding))
    size = info.size
    wanted = fields.get("range") if method == "GET" else None     # §14.2: ranges are for GET
    span = parse_range(wanted, size) if wanted is not None else None
    if span is not None and not if_range_allows(fields.get("if-range"), etag, modified_s, now):
        span = None
    if span == UNSATISFIABLE:
        return Plan(416, [("Content-Range", f"bytes */{size}")] + validators, 0, 0, 0)
    if span is not None:
        first, last = span
        headers.append(("Content-Range", f"bytes {first}-{last}/{size}"))
        count = last - first + 1
        return Plan(206, headers, count, first, count if method == "GET" else 0)
    return Plan(200, headers, size, 0, size if method == "GET" else 0)


@functools.lru_cache(maxsize=1024)
def _http_date(seconds: int) -> str:
    """Last-Modified, formatted once per file (a pure function, remembered)."""
    return http_date(seconds).decode("ascii")


@functools.lru_cache(maxsize=16)
def _status_line(status: int) -> bytes:
    return response_head(status, [])


def answer_head(answer: Plan, keep_alive: bool, date: bytes, protocol: str) -> bytes:
    """The bytes of the answer's head: status line, fields, Date, Content-Length, Connection.
    Every field here is made by us (validators, ranges) or checked where it came from
    (cache_control by config.parse_header_value, types from mimetypes' tables), so the
    lines are joined as they are, without response_head's per-field checks."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in answer.headers).encode("latin-1")
    head, _ = streamed_head(_status_line(answer.status) + lines, answer.status, answer.content_length,
                            keep_alive=keep_alive, head_only=False, date=date, protocol=protocol)
    return head
