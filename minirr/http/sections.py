"""A request's head and trailer sections against the size limits, checked as bytes arrive.

Owns: the line-level rules of a head (request line, then field lines) and of a trailer
      section: the request-line limit (414), the field-line limit, the field count and
      the section size (431), CRLF line ends; and the scan marks that let each line be
      checked once however the bytes are split.
Never: keeps the bytes (the parser's buffer is passed in), parses fields, or knows the
       state machine (http11.py owns both and calls this).

Why a scan of its own: a client may send a head one byte at a time. Each complete line
is checked once, in stream order, and a partial line is checked against its limit while
it is still arriving, so a limit is enforced before the head is complete and a byte-by-
byte feed gives the same answer as the same bytes in one read:

    buf:  GET / HTTP/1.1\r\nHost: a\r\nX-Lo|ng-Fiel...
          └ request line ┘└ field ┘└ partial line: its bytes so far against the limit
          line_at ─────────────────────^           (first line not yet checked)
          section_at ────────^                     (start of the field lines; -1 = unknown)
"""

from __future__ import annotations

from ..errors import ProtocolError


class SectionScan:
    """The scan marks of the section being read, and the limits' budget of the request.
    `limits` is an http11.RequestLimits."""

    def __init__(self, limits) -> None:
        self.limits = limits
        self.new_request()

    def new_request(self) -> None:
        self.section_used = 0          # header-section bytes, counted again for trailers
        self.fields_seen = 0           # field lines, header and trailer sections together
        self.search_at = 0             # (start_section(request_line=True), written out: once a request)
        self.line_at = 0
        self.section_at = -1
        self.trailers = False

    def start_section(self, request_line: bool, trailers: bool = False) -> None:
        """Reset the scan marks for a new head or trailer section at the buffer start."""
        self.search_at = 0                          # where the parser's next find() may start
        self.line_at = 0                            # first line not yet limit-checked
        self.section_at = -1 if request_line else 0  # start of the field lines, -1 = unknown
        self.trailers = trailers

    def check_partial(self, buf: bytearray) -> None:
        """A section without its end yet: refuse it as soon as a limit is passed."""
        # A CR at the very end may be half of the CRLF that ends the line: not counted yet.
        filled = len(buf) - buf.endswith(b"\r")
        self._check_lines(buf, len(buf))
        self._check_line_bytes(self.line_at, filled)

    def check_complete(self, buf: bytearray, end: int) -> None:
        """The section ends with the CRLF CRLF at `end`: the same checks, all lines."""
        self._check_lines(buf, end + 2)
        if self.section_used + end + 4 - self.section_at > self.limits.limit_request_headers:
            raise self._section_too_large()

    def _check_lines(self, buf: bytearray, end: int) -> None:
        """Check every complete line in buf[line_at:end] once, in order.

        Within a line the checks run in the order the bytes arrive: the size limits its
        bytes pass (which a partial read would already have refused, so the one passed
        first), then its terminator, then the field count."""
        limits = self.limits
        pos = self.line_at
        while True:
            nl = buf.find(b"\n", pos, end)
            if nl < 0:
                break
            has_cr = nl > pos and buf[nl - 1] == 13
            self._check_line_bytes(pos, nl - has_cr)
            if not has_cr:
                # RFC 9112 §2.2 lets a recipient accept a bare LF; we do not, because a
                # front proxy that disagrees about line ends enables request smuggling.
                raise ProtocolError("bare LF line ending (RFC 9112 §2.2: lines end with CRLF)")
            if self.section_at < 0:
                self.section_at = nl + 1
            else:
                self.fields_seen += 1
                if self.fields_seen > limits.limit_request_fields:
                    raise ProtocolError(f"more than {limits.limit_request_fields} {self._section_name()} fields", 431)
            pos = nl + 1
        self.line_at = pos

    def _check_line_bytes(self, start: int, stop: int) -> None:
        """The bytes buf[start:stop] of one line (without its line end) against the
        line limit and, for a field line, the section limit. When both are passed the
        error names the one passed at the earlier byte, as a byte-by-byte feed would."""
        limits = self.limits
        if self.section_at < 0:
            if stop - start > limits.limit_request_line:
                raise ProtocolError(f"request line exceeds {limits.limit_request_line} bytes", 414)
            return
        # The whole line counts, its CRLF included (name, colon, whitespace, value, CRLF),
        # as gunicorn counts it: its default of 8190 refuses a line of 8189 bytes and its
        # CRLF (gunicorn's corpus, invalid/008). `stop` excludes the line end, so the
        # first byte over the limit is two before where the CRLF would push it over.
        # Below: the index of the first byte over each limit.
        line_over_at = start + limits.limit_request_field_size - len(b"\r\n")
        section_over_at = self.section_at + limits.limit_request_headers - self.section_used
        if stop <= line_over_at and stop <= section_over_at:
            return
        if section_over_at < line_over_at:
            raise self._section_too_large()
        # The limit is per line, so the message names the section the line is in
        # rather than the budget header and trailer share.
        section = "trailer" if self.trailers else "header"
        raise ProtocolError(f"{section} field line exceeds {limits.limit_request_field_size} bytes", 431)

    def _section_too_large(self) -> ProtocolError:
        limit = self.limits.limit_request_headers
        return ProtocolError(f"{self._section_name()} section exceeds {limit} bytes", 431)

    def _section_name(self) -> str:
        """Trailers share the header limits (one budget per request), and say so."""
        return "header and trailer" if self.trailers else "header"
