"""The master's logs: lines to stderr as text or JSON, written without ever blocking the loop.

Owns: the root handler's format and level, the writer that holds lines a slow or unread
      stderr cannot take yet (bounded, with a count of what it had to drop), and the
      access log, formatted directly rather than through a LogRecord per request.
Never: decides what is logged (each module logs its own events), or waits for stderr.

    logging.getLogger(...).info(...) ──LoopHandler──┐
    AccessLog.log(...) ─────────────────────────────┴──> LogWriter ──(writable? ≤ 4 KB)──> stderr
                                                         pending lines, at most 1 MB

Why: stderr may be a pipe nobody reads (a wrapper script, a stuck journald). A plain
write() would then block the master, and with it every client. The writer asks the
kernel first (poll with no wait) and writes only what fits; the loop calls `flush()`
once per round, so a busy server makes one write per round, not one per line.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import select
import stat
import sys
import time
from typing import Deque, Optional

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
MAX_PENDING_BYTES = 1024 * 1024
WRITE_BYTES = 4096       # a pipe that polls writable takes this much without blocking (PIPE_BUF)


class LogWriter:
    """Text to a stream; to a file descriptor without blocking, keeping what it cannot
    take yet (up to MAX_PENDING_BYTES) and counting what it drops beyond that."""

    def __init__(self, stream, max_pending_bytes: int = MAX_PENDING_BYTES) -> None:
        self.stream = stream
        self.max_pending_bytes = max_pending_bytes
        self.batching = False           # the loop runs: write at flush(), once per round
        self.dropped = 0                # lines dropped since the last notice
        self._pending: Deque[bytes] = collections.deque()
        self.pending_bytes = 0          # bytes waiting for stderr (the loop flushes while any do)
        self._fd = _fileno(stream)
        self._poll = None
        # A regular file (stderr redirected to one) is always writable and takes any
        # amount: no poll, one write a round. Anything else (a pipe, a tty, journald's
        # socket) is asked first, and given at most PIPE_BUF bytes a write.
        self._write_bytes = WRITE_BYTES
        if self._fd is not None and not _is_regular_file(self._fd):
            self._poll = select.poll()
            self._poll.register(self._fd, select.POLLOUT)
        elif self._fd is not None:
            self._write_bytes = max_pending_bytes

    def write(self, text: str) -> None:
        """Queue `text` (whole lines, each ending in a newline)."""
        if self._fd is None:            # a StringIO in a test, or an odd stream: plain writes
            self.stream.write(text)
            self.stream.flush()
            return
        data = text.encode("utf-8", "replace")
        if self.pending_bytes + len(data) > self.max_pending_bytes:
            self.dropped += text.count("\n")
            return
        self._pending.append(data)
        self.pending_bytes += len(data)
        if not self.batching:
            self.flush()

    def flush(self) -> None:
        """Write what the descriptor takes now; never wait."""
        if self.dropped and self.pending_bytes < self.max_pending_bytes // 2:
            notice = (f"minirr: {self.dropped} log lines were dropped: stderr was not being read\n").encode()
            self._pending.append(notice)
            self.pending_bytes += len(notice)
            self.dropped = 0
        while self._pending and self._writable():
            data = self._take(self._write_bytes)
            try:
                written = os.write(self._fd, data)
            except BlockingIOError:
                written = 0
            except OSError:             # stderr is gone (EPIPE, EBADF): nobody will read these lines
                self._pending.clear()
                self.pending_bytes = 0
                return
            self.pending_bytes -= written
            if written < len(data):
                self._pending.appendleft(data[written:])
                return

    def _take(self, limit: int) -> bytes:
        """Pending lines joined, up to `limit` bytes (a longer line is cut there)."""
        pending = self._pending
        parts = [pending.popleft()]
        size = len(parts[0])
        while pending and size + len(pending[0]) <= limit:
            size += len(pending[0])
            parts.append(pending.popleft())
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if len(data) > limit:
            pending.appendleft(data[limit:])
            data = data[:limit]
        return data

    def _writable(self) -> bool:
        return self._poll is None or bool(self._poll.poll(0))


def _is_regular_file(fd: int) -> bool:
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


def _fileno(stream) -> Optional[int]:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


class LoopHandler(logging.Handler):
    """A logging handler that hands formatted lines to a LogWriter."""

    def __init__(self, writer: LogWriter) -> None:
        super().__init__()
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.writer.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, msg, and any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": iso_time(record.created), "level": record.levelname.lower(), "logger": record.name,
                 "msg": record.getMessage()}
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def iso_time(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_s)) + f".{int(epoch_s % 1 * 1000):03d}Z"


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_writer: Optional[LogWriter] = None


def configure(level: str = "info", fmt: str = "text", stream=None) -> LogWriter:
    """Route the root logger to a LogWriter on `stream` (default stderr); returns the writer,
    which the master loop flushes once per round."""
    global _writer
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    _writer = LogWriter(stream or sys.stderr)
    handler = LoopHandler(_writer)
    handler.setFormatter(JSONFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, logging.INFO))
    return _writer


def writer() -> LogWriter:
    """The writer configure() installed (one per process, like the root logger it serves)."""
    global _writer
    if _writer is None:
        _writer = LogWriter(sys.stderr)
    return _writer


# What a client may put in an access log field (the query of a target, above all) that
# would let it forge the line: `"` ends the request field early, `\` starts an escape of
# its own, control characters end the line or steer a terminal. nginx writes them (and
# any byte past 0x7e) as \xHH; so does minirr, in every field a client controls.
_UNSAFE_LOG_RE = re.compile(r'[^\x20\x21\x23-\x5b\x5d-\x7e]')
_needs_escape = _UNSAFE_LOG_RE.search


def escape_log_field(text: str) -> str:
    """`text` as an access log shows it: `"` as \\x22, `\\` as \\x5C, each control
    character and each byte past 0x7e (its UTF-8 bytes for a character past 0xff) as \\xHH."""
    if _UNSAFE_LOG_RE.search(text) is None:     # the usual case: nothing to escape
        return text
    return _UNSAFE_LOG_RE.sub(_hex_escape, text)


def _hex_escape(match) -> str:
    char = match.group()
    data = char.encode("latin-1") if char <= "\xff" else char.encode("utf-8", "backslashreplace")
    return "".join("\\x%02X" % byte for byte in data)


class AccessLog:
    """One line per answered request, written straight to the LogWriter.

    The logging machinery costs a LogRecord, a lock and a formatter per line, about as
    much as the rest of the master's work on a small request; this formats one string
    with a cached timestamp instead. `bytes` is the body bytes sent, as nginx's
    $body_bytes_sent counts (the head is not counted). What the client sent (the
    request line, and the address a trusted proxy gave) is escaped (escape_log_field);
    a JSON line also carries each field as it is, JSON-escaped."""

    def __init__(self, out: LogWriter, fmt: str = "text", clock=time.time) -> None:
        self.out = out
        self.json = fmt == "json"
        self.clock = clock
        self._second = -1
        self._stamp = ""

    def log(self, remote_addr: str, method: str, target: str, protocol: str, status: int, body_bytes: int,
            duration_s: float, pid: object, extra: str = "") -> None:
        """`extra`: more `key=value` fields, ours (a WebSocket's messages and close code)."""
        now = self.clock()
        duration_ms = duration_s * 1000
        # Spaces are never escaped, so escaping the joined request line is escaping each part;
        # one search of both fields finds the usual case, nothing to escape.
        request = f"{method} {target} {protocol}"
        remote = remote_addr
        if _needs_escape(f"{remote} {request}") is not None:
            request, remote = escape_log_field(request), escape_log_field(remote)
        if self.json:
            self.out.write(json.dumps({
                "time": iso_time(now), "level": "info", "logger": "minirr.access",
                "msg": f'{remote} "{request}" {status} {body_bytes} {duration_ms:.1f}ms pid={pid}{extra}',
                "remote_addr": remote_addr, "method": method, "target": target, "status": status,
                "bytes": body_bytes, "duration_ms": round(duration_ms, 1), "pid": pid}) + "\n")
            return
        second = int(now)
        if second != self._second:      # strftime costs more than the rest of the line
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        self.out.write('%s,%03d INFO minirr.access: %s "%s" %d %d %.1fms pid=%s%s\n' % (
            self._stamp, int((now - second) * 1000), remote, request, status, body_bytes, duration_ms, pid, extra))
