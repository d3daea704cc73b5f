"""Raw-socket helpers for the HTTP process tests (test_http_limits, test_http_flood,
test_streaming, test_external_workers).

    data, ending = exchange(srv, b"GET / HTTP/1.1\\r\\n...")   # read until the server closes
    [(status, headers, body), ...] = parse_responses(data)

    with StreamClient(srv) as client:                         # a streamed answer, as it arrives
        client.get("/stream")
        body, ended = client.read_until(chunked_body)

A server that keeps the connection open past the deadline fails the test: every
`exchange` must end with the server closing the connection.
"""

from __future__ import annotations

import re
import socket
import struct
import time
from typing import Callable, Dict, List, Optional, Tuple

from serverproc import ServerProcess, pid_alive, wait_until

BASE_CONFIG = ("[server]\napp = minirr_testapp:create_app\nfactory = true\n"
               "[pool]\nnum_workers = 1\n[rpc]\nlisten = unix:minirr.sock\n")
STATUS_LINE_RE = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n")


def connect(srv: ServerProcess, timeout: float = 10.0, source: Optional[str] = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    if source is not None:
        sock.bind((source, 0))
    sock.connect((srv.host, srv.port))
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 10.0) -> Tuple[bytes, str]:
    """-> (bytes, "eof" | "reset"); fails if the server has not closed within `timeout`."""
    deadline = time.monotonic() + timeout
    chunks = []
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            raise AssertionError(f"the server did not close the connection within {timeout}s; "
                                 f"got {b''.join(chunks)[:300]!r}") from None
        except ConnectionResetError:
            return b"".join(chunks), "reset"
        if not chunk:
            return b"".join(chunks), "eof"
        chunks.append(chunk)


def exchange(srv: ServerProcess, data: bytes, shutdown: bool = False, timeout: float = 10.0,
             source: Optional[str] = None) -> Tuple[bytes, str]:
    """Send `data` on a new connection (then half-close if `shutdown`), read until closed."""
    with connect(srv, timeout, source) as sock:
        sock.sendall(data)
        if shutdown:
            sock.shutdown(socket.SHUT_WR)
        return read_until_closed(sock, timeout)


def parse_response_head(data: bytes, pos: int = 0) -> Tuple[int, Dict[str, str], int]:
    """-> (status, lower-cased headers, position after the head)."""
    match = STATUS_LINE_RE.match(data, pos)
    assert match is not None, f"not a status line at {pos}: {data[pos:pos + 80]!r}"
    end = data.index(b"\r\n\r\n", pos)
    headers = {}
    for line in data[match.end():end].split(b"\r\n"):
        if line:
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(match.group(1)), headers, end + 4


def parse_responses(data: bytes) -> List[Tuple[int, Dict[str, str], bytes]]:
    """Split a stream of responses (the last one may be cut short by a close)."""
    responses = []
    pos = 0
    while pos < len(data):
        status, headers, pos = parse_response_head(data, pos)
        length = int(headers.get("content-length", "0"))
        if length and _is_head_response(data, pos, length):
            length = 0
        responses.append((status, headers, data[pos:pos + length]))
        pos += length
    return responses


def _is_head_response(data: bytes, pos: int, length: int) -> bool:
    """A response to HEAD has a Content-Length but no body: nothing follows its head, or
    the next status line follows at once rather than `length` bytes later."""
    if pos == len(data):
        return True
    after_body = pos + length
    return (STATUS_LINE_RE.match(data, pos) is not None and after_body != len(data)
            and STATUS_LINE_RE.match(data, after_body) is None)


def assert_rejected(data: bytes, ending: str, status: int) -> str:
    """One error response with `status`, Connection: close, a one-line body; then EOF.
    -> the body's line."""
    responses = parse_responses(data)
    assert [r[0] for r in responses] == [status], data[:400]
    _, headers, body = responses[0]
    assert headers.get("connection") == "close", headers
    assert body.endswith(b"\n") and body.count(b"\n") == 1 and len(body) > 2, body
    assert ending == "eof", "the error response must not be cut by a reset"
    return body.decode().strip()


def start_module_server(folder, extra_config: str, overrides=()) -> ServerProcess:
    return ServerProcess.start(folder, BASE_CONFIG + extra_config, overrides=overrides)


def stop_module_server(srv: ServerProcess) -> None:
    """Teardown for a module-scoped server: exit 0 and no worker left behind."""
    kids = srv.workers() if srv.proc.poll() is None else []
    status = srv.stop(timeout=30)
    wait_until(lambda: not [p for p in kids if pid_alive(p)], timeout=10, message="workers to exit")
    assert status == 0, srv.log[-2000:]


# ---- streamed answers: a client that shows what arrived when ---------------------------------

class StreamClient:
    """One connection; `buf` holds every byte received so far."""

    def __init__(self, srv, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((srv.host, srv.port), timeout=timeout)
        self.buf = b""
        self.eof = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def get(self, target: str, method: str = "GET", protocol: str = "HTTP/1.1") -> None:
        self.send(f"{method} {target} {protocol}\r\nHost: test\r\n\r\n".encode())

    def read_until(self, predicate: Callable[[bytes], object], timeout: float = 10.0, what: str = ""):
        """Receive until predicate(buf) is truthy (-> its value) or the server closes."""
        deadline = time.monotonic() + timeout
        while True:
            found = predicate(self.buf)
            if found:
                return found
            if self.eof:
                raise AssertionError(f"the server closed before {what or predicate}; got {self.buf[:500]!r}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what or predicate}; got {self.buf[:500]!r}")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                chunk = b""
            self.eof = not chunk
            self.buf += chunk

    def read_to_eof(self, timeout: float = 10.0) -> bytes:
        self.read_until(lambda buf: self.eof, timeout, "the server to close the connection")
        return self.buf

    def leave(self) -> None:
        """Go away at once: a reset, not a polite close, as a browser tab that is shut.
        (A server sees a plain close only when it next writes, or not at all if the
        answer is complete; a reset it sees at once.)"""
        if self.sock.fileno() >= 0:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()

    def __enter__(self) -> "StreamClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.leave()        # whatever the test saw, the server is left with no connection to finish


def head_of(buf: bytes) -> Optional[Tuple[int, Dict[str, str], int]]:
    """-> (status, lower-cased headers, where the body starts), once the head is in."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buf[:end].decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, end + 4


def dechunk(data: bytes) -> Tuple[bytes, bool, int]:
    """A chunked body -> (the body so far, whether its last chunk came, bytes used)."""
    body = b""
    pos = 0
    while True:
        line_end = data.find(b"\r\n", pos)
        if line_end < 0:
            return body, False, pos
        size = int(data[pos:line_end].split(b";")[0], 16)
        if size == 0:
            if data[line_end + 2:line_end + 4] == b"\r\n":
                return body, True, line_end + 4
            return body, False, pos
        if len(data) < line_end + 2 + size + 2:
            return body, False, pos
        body += data[line_end + 2:line_end + 2 + size]
        pos = line_end + 2 + size + 2


def chunked_body(buf: bytes, complete: bool = True):
    """A predicate for read_until: the dechunked body, once complete (or once non-empty)."""
    head = head_of(buf)
    if head is None:
        return None
    body, ended, _ = dechunk(buf[head[2]:])
    return (body, ended) if ended or (not complete and body) else None


def assert_answer_completed(srv, target: str) -> None:
    """Fail at once, rather than after a deadline, if the streamed answer to `target`
    never completed. The only worker answers a request on another connection only after
    its stream's final frame; the master logs an answer in the access log when it is
    complete; its log lines come in order. So the answer's line must come before the
    next request's."""
    marker = f"/pid?after={time.monotonic_ns()}"
    assert srv.request("GET", marker)[0] == 200
    srv.wait_for_log(re.escape(f'"GET {marker} '))
    lines = srv.log.splitlines()
    before = lines[:next(i for i, line in enumerate(lines) if f'"GET {marker} ' in line)]
    assert [line for line in before if f'"GET {target} ' in line or f'"HEAD {target} ' in line], \
        f"the answer to {target} was not complete when the worker answered the next request"
