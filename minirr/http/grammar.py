"""The rules of an HTTP/1.1 request head: RFC 9110/9112 syntax, and what framing fields mean.

Owns: the ABNF of request lines, field lines, targets, Host and chunk-size lines as
precompiled regexes; the pure checks on a parsed head (target forms, Host, Connection,
Transfer-Encoding, Content-Length, repeated single-value fields, trailer fields);
one-line error messages naming the broken rule.
Never: keeps state, buffers bytes or decides when to read (http11 does); performs I/O.

Everything here is a pure function of strings, so each rule can be read, and tested,
on its own. The connection state machine in http11 calls these on a complete head.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

from ..errors import ProtocolError

# --- syntax (RFC 9110 §5.6.2 tokens, RFC 9112 §3 request line, §5 field lines) ---------

_TCHAR = r"!#$%&'*+\-.^_`|~0-9A-Za-z"
_TOKEN = f"[{_TCHAR}]+"
TOKEN_RE = re.compile(_TOKEN)
# field-value: VCHAR, obs-text, SP and HTAB; no other control character (RFC 9110 §5.5).
_FIELD_CHARS = r"\t\x20-\x7e\x80-\xff"
FIELD_LINES_RE = re.compile(f"{_TOKEN}:[{_FIELD_CHARS}]*(?:\r\n{_TOKEN}:[{_FIELD_CHARS}]*)*")
# method SP request-target SP HTTP-version; the target is visible ASCII only.
REQUEST_LINE_RE = re.compile(f"({_TOKEN}) ([\x21-\x7e]+) HTTP/([0-9])\\.([0-9])")
_VERSION_RE = re.compile(r"HTTP/([0-9])\.([0-9])")
# RFC 9112 §2.2: empty lines a server may skip before a request line
EMPTY_LINES_RE = re.compile(rb"(?:\r\n)+")

# RFC 3986 path characters (pchar and "/"), plus "[" and "]" which common clients send
# unescaped; a "%" must start a valid escape. The query is any VCHAR but "#".
# `[c]*(?:%XX[c]*)*` is `(?:[c]|%XX)*` unrolled: the same language, matched without
# trying the alternation at every character.
_PCHARS = r"[A-Za-z0-9\-._~!$&'()*+,;=:@/\[\]]*"
_PATH = f"/{_PCHARS}(?:%[0-9A-Fa-f]{{2}}{_PCHARS})*"
_QUERY = r"[\x21\x22\x24-\x7e]*"
_REG_CHARS = r"[A-Za-z0-9\-._~!$&'()*+,;=]"
_HOST_NAME = (r"(?:\[[0-9A-Fa-f:.]+\]"                                   # IPv6 literal
              r"|\[v[0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+\]"          # IPvFuture
              f"|(?:{_REG_CHARS}|%[0-9A-Fa-f]{{2}}){_REG_CHARS}*(?:%[0-9A-Fa-f]{{2}}{_REG_CHARS}*)*)")  # reg-name
_ORIGIN_FORM_RE = re.compile(f"({_PATH})(?:\\?({_QUERY}))?")
# A whole head (request line, then field lines) in one match: the common, valid case
# costs one regex; only a head that fails it is taken apart to name the broken rule.
# Groups: method, target, and, when the target is in origin-form (the usual
# "/path?query"), its path and query; major, minor; the field lines.
HEAD_RE = re.compile(f"({_TOKEN}) ({_ORIGIN_FORM_RE.pattern}|[\x21-\x7e]+) HTTP/([0-9])\\.([0-9])"
                     f"(?:\r\n({FIELD_LINES_RE.pattern}))?")
_AUTHORITY_FORM_RE = re.compile(f"{_HOST_NAME}:[0-9]{{1,5}}")
# absolute-form: http(s) only, no userinfo (RFC 9110 §4.2.4 calls userinfo an error)
_ABSOLUTE_FORM_RE = re.compile(f"(?i:https?)://{_HOST_NAME}(?::[0-9]{{0,5}})?({_PATH})?(?:\\?({_QUERY}))?")
_HOST_RE = re.compile(f"(?:{_HOST_NAME}(?::[0-9]{{0,5}})?)?")
_DIGITS_RE = re.compile(r"[0-9]+")
_BAD_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL_RE = re.compile(r"[^\t\x20-\x7e\x80-\xff]")

# chunk = chunk-size [ chunk-ext ] CRLF; chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] )
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_BTOKEN = _TOKEN.encode("ascii")
CHUNK_LINE_RE = re.compile(
    rb"([0-9A-Fa-f]+)(?:[ \t]*;[ \t]*" + _BTOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _BTOKEN + rb"|" + _QUOTED + rb"))?)*")
MAX_CHUNK_DIGITS = 16  # 16 hex digits is 2**64: anything longer is an attack, not a body

_KNOWN_CODINGS = frozenset(("chunked", "compress", "deflate", "gzip", "x-compress", "x-gzip"))
# RFC 9110 §6.5.1: fields about framing, routing, authentication, request modifiers or
# content format must be known before the content; they may not arrive as trailers.
_FORBIDDEN_TRAILERS = frozenset((
    "content-length", "transfer-encoding", "trailer", "te", "host", "connection",
    "keep-alive", "proxy-connection", "upgrade", "expect", "max-forwards",
    "authorization", "proxy-authorization", "cookie", "content-type", "content-encoding",
    "content-range", "range", "if-match", "if-none-match", "if-modified-since",
    "if-unmodified-since", "if-range", "cache-control", "forwarded", "x-forwarded-for",
    "x-forwarded-proto", "x-forwarded-host"))

# Request fields defined as one value, not as a comma-separated list (RFC 9110 §5.6.1
# #rule). RFC 9110 §5.3: a sender MUST NOT send such a field on more than one line, since
# the lines cannot be recombined into one value; RFC 9110 §8.3 names the risk for
# Content-Type: recipients that each pick "the last valid member" of a combined value
# differ in what they pick. So different values on repeated lines are 400 (identical
# repeats are harmless and accepted). The fields, by the ABNF of their sections:
#   Content-Type (§8.3), Content-Location (§8.7), Date (§6.6.1), Max-Forwards (§7.6.2),
#   From (§10.1.2), Referer (§10.1.3), User-Agent (§10.1.5), Authorization (§11.6.2),
#   Proxy-Authorization (§11.7.2), If-Modified-Since (§13.1.3), If-Unmodified-Since
#   (§13.1.4), If-Range (§13.1.5), Range (§14.2: one ranges-specifier, whose ranges are
#   a list inside one value), Content-Range (§14.4, which a PUT may carry, §14.5).
# Host and Content-Length are singletons too, with rules of their own (check_host,
# content_length). Not here: list fields (Accept*, Expect, If-Match, If-None-Match,
# Content-Encoding, Connection, TE, ...), and Cookie, which RFC 9110 does not define
# (RFC 6265 §5.4 asks clients for one line, but HTTP/2 gateways may split it).
SINGLE_VALUE_FIELDS = frozenset((
    "content-type", "content-location", "date", "max-forwards", "from", "referer",
    "user-agent", "authorization", "proxy-authorization", "if-modified-since",
    "if-unmodified-since", "if-range", "range", "content-range"))


def shown(text: str) -> str:
    """A client-supplied string, quoted and cut short enough for a one-line message."""
    return repr(text if len(text) <= 40 else text[:40] + "...")


# --- the request line and its target (RFC 9112 §3) ---------------------------------------

def request_line_error(line: str) -> ProtocolError:
    """Name what is wrong with a request line that did not match REQUEST_LINE_RE."""
    parts = line.split(" ")
    if len(parts) == 2 and all(parts) and not parts[1].startswith("HTTP/"):
        # HTTP/0.9's simple-request: "GET /path" with no version at all
        return ProtocolError("request line has no HTTP version (HTTP/0.9 is not supported)", 505)
    if len(parts) != 3 or not all(parts):
        return ProtocolError("malformed request line: expected 'method SP target SP version'")
    method, target, version = parts
    match = _VERSION_RE.fullmatch(version)
    if match is None:
        return ProtocolError(f"malformed HTTP version {shown(version)}")
    if match.group(1) != "1":
        return ProtocolError(f"{version} is not supported", 505)
    if TOKEN_RE.fullmatch(method) is None:
        return ProtocolError(f"method {shown(method)} is not a token")
    if any(c > "\x7f" for c in target):
        return ProtocolError("request-target contains a non-ASCII byte")
    return ProtocolError("request-target contains a control character")


def http_version(major: str, minor: str) -> str:
    """The protocol a request is answered in: HTTP/1.0, or HTTP/1.1 for any other 1.x."""
    if major != "1":
        raise ProtocolError(f"HTTP/{major}.{minor} is not supported", 505)
    return "HTTP/1.0" if minor == "0" else "HTTP/1.1"


def head_error(text: str) -> ProtocolError:
    """Name what is wrong with a head that did not match HEAD_RE, checking the rules in
    the order a reader would: request line, version, target, then the field lines."""
    line, _, fields = text.partition("\r\n")
    match = REQUEST_LINE_RE.fullmatch(line)
    if match is None:
        return request_line_error(line)
    method, target, major, minor = match.groups()
    try:
        http_version(major, minor)
        split_target(method, target)
    except ProtocolError as exc:
        return exc
    return field_line_error(fields.split("\r\n"), "header")


def split_target(method: str, target: str) -> Tuple[str, str]:
    """-> (path, query) of the four request-target forms (RFC 9112 §3.2)."""
    if target[0] == "/":
        match = _ORIGIN_FORM_RE.fullmatch(target)
        if match is None:
            raise ProtocolError(_origin_form_error(target))
        if method == "CONNECT":
            raise ProtocolError("CONNECT needs an authority-form target (RFC 9112 §3.2.3)")
        return match.group(1), match.group(2) or ""
    if target == "*":
        if method != "OPTIONS":
            raise ProtocolError("asterisk-form is only for OPTIONS (RFC 9112 §3.2.4)")
        return "*", ""
    if method == "CONNECT":
        if _AUTHORITY_FORM_RE.fullmatch(target) is None:
            raise ProtocolError("CONNECT target is not host:port (RFC 9112 §3.2.3)")
        return "", ""
    match = _ABSOLUTE_FORM_RE.fullmatch(target)
    if match is None:
        raise ProtocolError(f"request-target {shown(target)} is not a valid origin- or absolute-form")
    return match.group(1) or "/", match.group(2) or ""


def _origin_form_error(target: str) -> str:
    if "#" in target:
        return "request-target contains a fragment '#' (RFC 9112 §3.2.1)"
    path = target.partition("?")[0]
    if _BAD_ESCAPE_RE.search(path):
        return "malformed percent-encoding in request path"
    return f"request path {shown(path)} contains a character RFC 3986 does not allow"


def target_uri(scheme: str, host: str, method: str, target: str) -> str:
    """The target URI (RFC 9112 §3.3). Asterisk-form stays "*", the spelling
    messages.decode_request turns back into path "*"."""
    if target[0] == "/":
        return f"{scheme}://{host}{target}"
    if method == "CONNECT":
        return f"{scheme}://{target}"
    return target  # absolute-form is the URI itself


# --- field lines (RFC 9112 §5) ---------------------------------------------------------------

def field_line_error(lines: List[str], section: str) -> ProtocolError:
    """Name what is wrong with the first field line that did not match FIELD_LINES_RE."""
    for line in lines:
        if line[:1] in (" ", "\t"):
            return ProtocolError(f"obsolete line folding in {section} section (RFC 9112 §5.2)")
        name, colon, value = line.partition(":")
        if not colon:
            return ProtocolError(f"{section} line {shown(line)} has no colon")
        if name.rstrip(" \t") != name:
            return ProtocolError(f"whitespace before colon in {section} field (RFC 9112 §5.1)")
        if TOKEN_RE.fullmatch(name) is None:
            return ProtocolError(f"{section} field name {shown(name)} is not a token")
        if _CONTROL_RE.search(value):
            return ProtocolError(f"{section} field {shown(name)} contains a control character")
    return ProtocolError(f"malformed {section} section")


def check_trailer_section(text: str) -> None:
    """Trailer fields (RFC 9112 §7.1.2) follow the field-line grammar, and may not be
    fields the request had to be framed, routed or authorized by (RFC 9110 §6.5.1)."""
    if FIELD_LINES_RE.fullmatch(text) is None:
        raise field_line_error(text.split("\r\n"), "trailer")
    for line in text.split("\r\n"):
        name = line.partition(":")[0]
        if name.lower() in _FORBIDDEN_TRAILERS:
            raise ProtocolError(f"field {shown(name)} is not allowed in a trailer section (RFC 9110 §6.5.1)")


def check_single_values(fields: Dict[str, List[str]]) -> None:
    """400 for a field of SINGLE_VALUE_FIELDS sent on several lines with different
    values. `fields` maps lowercase names to their values in order (other names may be
    in it and are not looked at)."""
    for name, values in fields.items():
        if len(values) > 1 and name in SINGLE_VALUE_FIELDS and values.count(values[0]) != len(values):
            raise ProtocolError(f"header field {shown(name)} repeated with different values (RFC 9110 §5.3)")


def check_host(values: Optional[List[str]], protocol: str) -> Optional[str]:
    """RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host, for any request with
    more than one Host line, and for an invalid Host value. -> the Host value or None."""
    if values is None:
        if protocol == "HTTP/1.1":
            raise ProtocolError("HTTP/1.1 request without a Host header (RFC 9112 §3.2)")
        return None
    if len(values) > 1:
        raise ProtocolError("more than one Host header (RFC 9112 §3.2)")
    if _HOST_RE.fullmatch(values[0]) is None:
        raise ProtocolError(f"invalid Host header {shown(values[0])}")
    return values[0]


def asks_to_close(values: Optional[List[str]], protocol: str) -> bool:
    """RFC 9112 §9.3: HTTP/1.1 persists unless "close"; HTTP/1.0 only with "keep-alive"."""
    if not values:
        return protocol == "HTTP/1.0"
    options = {option.strip(" \t").lower() for value in values for option in value.split(",")}
    if "close" in options:
        return True
    return protocol == "HTTP/1.0" and "keep-alive" not in options


# --- message body length (RFC 9112 §6.3) -----------------------------------------------------

def check_transfer_coding(values: List[str], protocol: str, has_length: bool) -> None:
    """RFC 9112 §6.1 and §6.3: only a body framed by a final "chunked" is readable.

    Order: first whether the framing can be trusted at all (400): no HTTP/1.0, no
    Content-Length beside it, no empty element, chunked once and last (RFC 9112 §6.3:
    a final coding other than chunked, known to us or not, leaves the body length
    undeterminable, and that MUST be 400). Only a request we could frame gets 501 for
    a coding before chunked: unregistered (RFC 9112 §6.1), or registered but not
    decoded here (gzip)."""
    if protocol == "HTTP/1.0":
        raise ProtocolError("Transfer-Encoding in an HTTP/1.0 request (RFC 9112 §6.1)")
    if has_length:
        raise ProtocolError("both Transfer-Encoding and Content-Length (RFC 9112 §6.3)")
    codings = [coding.strip(" \t").lower() for value in values for coding in value.split(",")]
    if "" in codings:
        # RFC 9110 §5.6.1 would skip empty elements; in a framing field a front
        # proxy that reads them differently makes a smuggling gap, so refuse.
        raise ProtocolError("empty element in Transfer-Encoding")
    names = [_coding_name(coding) for coding in codings]
    if names.count("chunked") > 1:
        raise ProtocolError("chunked transfer coding applied more than once (RFC 9112 §7)")
    if names[-1] != "chunked":
        raise ProtocolError(f"final transfer coding {shown(codings[-1])} is not chunked (RFC 9112 §6.3)")
    if codings[-1] != "chunked":
        raise ProtocolError("chunked transfer coding takes no parameters (RFC 9112 §7)")
    unknown = [coding for coding, name in zip(codings, names) if name not in _KNOWN_CODINGS]
    if unknown:
        raise ProtocolError(f"unknown transfer coding {shown(unknown[0])}", 501)
    if len(codings) > 1:
        raise ProtocolError(f"transfer coding {shown(codings[0])} is not supported", 501)


def _coding_name(coding: str) -> str:
    """transfer-coding = token *( OWS ";" OWS transfer-parameter ) (RFC 9112 §7): the token."""
    return coding.partition(";")[0].rstrip(" \t")


def content_length(values: List[str], limit: int) -> int:
    """RFC 9112 §6.3 item 5 and RFC 9110 §8.6: 1*DIGIT; repeated values must agree.
    Larger than `limit` is 413, decided before a body byte is read."""
    found = set()
    for value in values:
        for item in value.split(","):
            item = item.strip(" \t")
            if _DIGITS_RE.fullmatch(item) is None:  # str.isdigit() would accept "²"
                raise ProtocolError(f"invalid Content-Length {shown(value)}")
            found.add(item.lstrip("0") or "0")
    if len(found) > 1:
        raise ProtocolError("Content-Length values differ")
    digits = found.pop()
    # compare lengths first: int() of thousands of digits is slow, or refused (3.11+)
    if len(digits) > len(str(limit)) or int(digits) > limit:
        raise ProtocolError(f"request body exceeds {limit} bytes", 413)
    return int(digits)
