"""Raw-socket helpers for the HTTP process tests (test_http_limits, test_http_flood).

    data, ending = exchange(srv, b"GET / HTTP/1.1\\r\\n...")   # read until the server closes
    [(status, headers, body), ...] = parse_responses(data)

A server that keeps the connection open past the deadline fails the test: every
exchange here must end with the server closing the connection.
"""

from __future__ import annotations

import re
import socket
import time
from typing import Dict, List, Optional, Tuple

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
