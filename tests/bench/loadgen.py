"""A stdlib HTTP/1.1 load generator for loopback servers: few processes, many connections each.

Owns: building one request up front, driving it over N processes x M connections for a
fixed time, reading responses by Content-Length, and merging counts and latencies.
Never: talks to anything but a loopback address, runs longer than its duration (plus a
short grace to collect results), pipelines requests, or leaves a process behind.

Used by run.py when `wrk` is not installed, and on its own:

    python tests/bench/loadgen.py http://127.0.0.1:8080/ -d 10 -p 2 -c 32
    python tests/bench/loadgen.py http://127.0.0.1:8080/echo --method POST --body-bytes 65536
    python tests/bench/loadgen.py http://127.0.0.1:8080/ --close

Theory of operation:

    parent --fork--> process 1: one selector, M/N connections --.
           --fork--> process 2: one selector, M/N connections ---+--> (counters, latency
           ...                                                   |     samples) on a pipe
           <-------------------- merge, sort, percentiles -------'

    each connection:  connect -> send request -> read one response -> record -> send again
                                  ^ latency starts here    (--close: reconnect first)

Latency is measured from the first byte of a request written to the last byte of its
response read, as wrk does; with --close the connect before it is not counted. Each
process keeps every latency in an array of microseconds (4 bytes a request) so the
percentiles are exact. To stay out of the way of the server it measures, a process runs
a plain loop: one `select()`, then `recv_into` a reused buffer and one `send` per request,
and it only changes a socket's registration when a send is partial or a connection opens.
"""

from __future__ import annotations

import argparse
import array
import errno
import ipaddress
import json
import marshal
import multiprocessing
import os
import resource
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional
from urllib.parse import urlsplit

RECV_BUFFER_BYTES = 256 * 1024
MAX_HEAD_BYTES = 64 * 1024
SWEEP_INTERVAL_S = 0.1  # how often a process looks for requests past their timeout
RESULT_GRACE_S = 10.0  # how long the parent waits for a process's results after the deadline


@dataclass(frozen=True)
class LoadSpec:
    """What to send, where, how hard and for how long."""

    host: str
    port: int
    path: str = "/"
    method: str = "GET"
    body_bytes: int = 0  # request body size; the body is b"x" * body_bytes
    close: bool = False  # send `Connection: close` and open a new connection per request
    processes: int = 2
    connections: int = 32  # in total, spread over the processes
    duration_s: float = 10.0
    timeout_s: float = 10.0  # a request unanswered this long counts as a timeout
    headers: tuple = ()  # extra (name, value) pairs


@dataclass
class LoadResult:
    """Merged outcome of a run. Latencies are sorted microseconds."""

    duration_s: float
    requests: int = 0
    non_2xx: int = 0
    statuses: Dict[int, int] = field(default_factory=dict)
    errors: Dict[str, int] = field(default_factory=dict)  # connect, read, write, protocol, timeout
    bytes_sent: int = 0
    bytes_received: int = 0
    client_cpu_s: float = 0.0  # user+system time of the load generator's processes
    latencies_us: List[int] = field(default_factory=list)

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    def latency_ms(self, percent: float) -> float:
        return percentile(self.latencies_us, percent) / 1000.0

    def summary(self) -> dict:
        return {
            "requests": self.requests,
            "duration_s": round(self.duration_s, 3),
            "requests_per_s": round(self.requests_per_s, 1),
            "non_2xx": self.non_2xx,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": dict(self.errors),
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "client_cpu_s": round(self.client_cpu_s, 3),
            "latency_ms": {f"p{p:g}": round(self.latency_ms(p), 3) for p in (50, 90, 99, 99.9)},
        }


def percentile(sorted_values: List[int], percent: float) -> float:
    """Nearest-rank percentile of an ascending list; 0 for an empty one."""
    if not sorted_values:
        return 0.0
    rank = max(1, -(-len(sorted_values) * percent // 100))  # ceil without floats drifting
    return float(sorted_values[int(min(rank, len(sorted_values))) - 1])


def build_request(spec: LoadSpec) -> bytes:
    """The whole request, head and body, as the one bytes object every send reuses."""
    lines = [f"{spec.method} {spec.path} HTTP/1.1", f"Host: {spec.host}:{spec.port}", "User-Agent: minirr-loadgen"]
    if spec.body_bytes or spec.method in ("POST", "PUT", "PATCH"):
        lines += ["Content-Type: application/octet-stream", f"Content-Length: {spec.body_bytes}"]
    if spec.close:
        lines.append("Connection: close")
    lines += [f"{name}: {value}" for name, value in spec.headers]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + b"x" * spec.body_bytes


def require_loopback(host: str) -> str:
    """Resolve `host` and refuse anything that is not a loopback address."""
    infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    address = infos[0][4][0]
    if not ipaddress.ip_address(address).is_loopback:
        raise ValueError(f"refusing to load {host} ({address}): only loopback addresses are allowed")
    return address


# ---- reading one response (no I/O) ------------------------------------------------------

class ResponseReader:
    """Incremental HTTP/1.1 response reader: `feed()` says when a response is complete.

    The body is counted, not kept. A response without Content-Length ends when the
    server closes (RFC 9112 §6.3 rule 8); chunked responses are not supported and
    raise, since none of the benchmark's apps produce them.
    """

    __slots__ = ("_head", "body_left", "status", "until_close", "keep_alive")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._head = b""
        self.body_left = -1  # -1: still reading the head
        self.status = 0
        self.until_close = False
        self.keep_alive = True

    def feed(self, data: bytes) -> bool:
        if self.body_left >= 0:
            self.body_left -= len(data)
            return self._check_done()
        buf = self._head + data if self._head else data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD_BYTES:
                raise ValueError(f"response head exceeds {MAX_HEAD_BYTES} bytes")
            self._head = buf
            return False
        self._head = b""
        length = self._parse_head(buf[:end])
        self.body_left = length - (len(buf) - end - 4)
        return self._check_done()

    def _check_done(self) -> bool:
        if self.until_close:
            return False
        if self.body_left < 0:
            raise ValueError("bytes after the response body (the load generator never pipelines)")
        return self.body_left == 0

    def _parse_head(self, head: bytes) -> int:
        """-> body length; sets status, keep_alive and until_close."""
        if not head.startswith(b"HTTP/1."):
            raise ValueError(f"not an HTTP/1.x status line: {head[:40]!r}")
        self.status = int(head[9:12])
        lower = head.lower()
        self.keep_alive = b"\r\nconnection: close" not in lower and head[7:8] == b"1"
        if self.status < 200 or self.status in (204, 304):
            return 0
        if b"\r\ntransfer-encoding:" in lower:
            raise ValueError("chunked responses are not supported by the load generator")
        at = lower.find(b"\r\ncontent-length:")
        if at < 0:
            self.until_close = True
            self.keep_alive = False
            return 0
        stop = lower.find(b"\r\n", at + 17)
        return int(lower[at + 17: stop if stop >= 0 else len(lower)])


# ---- one process: a selector over its connections ---------------------------------------

class _Connection:
    """One client socket and the request on it. `started_at` is 0.0 while idle."""

    __slots__ = ("sock", "sent", "started_at", "reader", "connected", "writing")

    def __init__(self) -> None:
        self.sock: Optional[socket.socket] = None
        self.sent = 0
        self.started_at = 0.0
        self.reader = ResponseReader()
        self.connected = False
        self.writing = False  # registered for EVENT_WRITE too


class _Driver:
    """The loop of one load process. Counters are plain attributes: the loop is hot."""

    def __init__(self, spec: LoadSpec, address: str, connections: int, deadline: float) -> None:
        self.spec = spec
        self.address = (address, spec.port)
        self.request = build_request(spec)
        self.view = memoryview(self.request)
        self.deadline = deadline
        self.selector = selectors.DefaultSelector()
        self.buffer = bytearray(RECV_BUFFER_BYTES)
        self.buffer_view = memoryview(self.buffer)
        self.conns = [_Connection() for _ in range(connections)]
        self.latencies = array.array("I")
        self.statuses: Dict[int, int] = {}
        self.errors: Dict[str, int] = {}
        self.requests = 0
        self.non_2xx = 0
        self.bytes_sent = 0
        self.bytes_received = 0

    # -- the loop --
    def run(self) -> None:
        for conn in self.conns:
            self._open(conn)
        next_sweep = time.perf_counter() + SWEEP_INTERVAL_S
        while True:
            now = time.perf_counter()
            if now >= self.deadline:
                break
            if now >= next_sweep:
                self._sweep_timeouts(now)
                next_sweep = now + SWEEP_INTERVAL_S
            for key, mask in self.selector.select(min(self.deadline, next_sweep) - now):
                conn = key.data
                if mask & selectors.EVENT_WRITE:
                    self._on_writable(conn)
                # A failed write replaces the socket; the read event was for the old one.
                if mask & selectors.EVENT_READ and conn.sock is key.fileobj:
                    self._on_readable(conn)
        for conn in self.conns:
            self._close(conn)
        self.selector.close()

    # -- connection lifecycle --
    def _open(self, conn: _Connection) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sock, conn.connected, conn.sent, conn.started_at = sock, False, 0, 0.0
        conn.reader.reset()
        code = sock.connect_ex(self.address)
        if code not in (0, errno.EINPROGRESS):  # refused at once: retried by the next sweep
            self.errors["connect"] = self.errors.get("connect", 0) + 1
            sock.close()
            conn.sock = None
            return
        conn.writing = True
        self.selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)

    def _close(self, conn: _Connection) -> None:
        if conn.sock is None:
            return
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        conn.sock = None

    def _fail(self, conn: _Connection, kind: str) -> None:
        """Count an error, drop the connection and start a fresh one (as wrk does)."""
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self._close(conn)
        if time.perf_counter() < self.deadline:
            self._open(conn)

    def _sweep_timeouts(self, now: float) -> None:
        """Fail requests past their timeout; reopen connections whose connect was refused."""
        limit = now - self.spec.timeout_s
        for conn in self.conns:
            if conn.sock is None:
                self._open(conn)
            elif conn.started_at and conn.started_at < limit:
                self._fail(conn, "timeout")

    # -- writing --
    def _on_writable(self, conn: _Connection) -> None:
        if not conn.connected:
            if conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self._fail(conn, "connect")
                return
            conn.connected = True
        self._send(conn)

    def _send(self, conn: _Connection) -> None:
        """Write as much of the request as the socket takes; keep EVENT_WRITE only while
        some is left, so a small request costs no registration change at all."""
        if conn.sent == 0:
            conn.started_at = time.perf_counter()
        try:
            n = conn.sock.send(self.view[conn.sent:])
        except BlockingIOError:
            n = 0
        except ConnectionError:  # reset, broken pipe, or a refused connect seen late
            self._fail(conn, "write")
            return
        conn.sent += n
        self.bytes_sent += n
        done = conn.sent == len(self.request)
        if done == conn.writing:  # registration must change: (done, writing) is (T,T) or (F,F)
            conn.writing = not done
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.writing else 0)
            self.selector.modify(conn.sock, events, conn)

    # -- reading --
    def _on_readable(self, conn: _Connection) -> None:
        try:
            n = conn.sock.recv_into(self.buffer)
        except BlockingIOError:
            return
        except ConnectionError:  # reset, or a refused connect seen on the read side
            self._fail(conn, "read" if conn.connected else "connect")
            return
        if n == 0:
            self._on_eof(conn)
            return
        self.bytes_received += n
        reader = conn.reader
        try:
            done = reader.feed(self.buffer_view[:n] if reader.body_left >= 0 else bytes(self.buffer_view[:n]))
        except ValueError:
            self._fail(conn, "protocol")
            return
        if done:
            self._on_response(conn)

    def _on_eof(self, conn: _Connection) -> None:
        if conn.reader.until_close:
            self._on_response(conn)
        else:
            self._fail(conn, "read")  # closed before (or between) responses

    def _on_response(self, conn: _Connection) -> None:
        now = time.perf_counter()
        if now < self.deadline:  # a response finishing after the deadline is not counted
            self.requests += 1
            self.latencies.append(int((now - conn.started_at) * 1e6))
            status = conn.reader.status
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if not 200 <= status < 300:
                self.non_2xx += 1
        keep_alive = conn.reader.keep_alive and not self.spec.close
        conn.started_at, conn.sent = 0.0, 0
        conn.reader.reset()
        if conn.writing:  # the server answered before taking the whole body: start over
            keep_alive = False
        if keep_alive:
            self._send(conn)
        else:
            self._close(conn)
            if now < self.deadline:
                self._open(conn)

    def result(self) -> bytes:
        return marshal.dumps({
            "requests": self.requests, "non_2xx": self.non_2xx, "statuses": self.statuses,
            "errors": self.errors, "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received,
            "latencies": self.latencies.tobytes(),
        })


def _process_main(spec: LoadSpec, address: str, connections: int, start_at: float, deadline: float, pipe) -> None:
    """Entry point of one load process (forked): wait for the common start, run, report."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    driver = _Driver(spec, address, connections, deadline)
    delay = start_at - time.perf_counter()
    if delay > 0:
        time.sleep(delay)  # line up the processes' windows; perf_counter is CLOCK_MONOTONIC, shared
    driver.run()
    pipe.send_bytes(driver.result())
    pipe.close()


# ---- the parent: fork, collect, merge -----------------------------------------------------

def run_load(spec: LoadSpec) -> LoadResult:
    """Run `spec` and return the merged result. Every process started is joined or killed."""
    address = require_loopback(spec.host)
    processes = max(1, min(spec.processes, spec.connections))
    shares = [spec.connections // processes + (1 if i < spec.connections % processes else 0) for i in range(processes)]
    context = multiprocessing.get_context("fork")
    cpu_before = _children_cpu_s()
    start_at = time.perf_counter() + 0.1  # time for every process to fork and build its request
    deadline = start_at + spec.duration_s
    procs, pipes = [], []
    try:
        for share in shares:
            receiver, sender = context.Pipe(duplex=False)
            proc = context.Process(target=_process_main, args=(spec, address, share, start_at, deadline, sender),
                                   name="minirr-loadgen", daemon=True)
            proc.start()
            sender.close()
            procs.append(proc)
            pipes.append(receiver)
        parts = [_receive(pipe, deadline + RESULT_GRACE_S) for pipe in pipes]
    finally:
        _stop(procs)
    result = _merge(parts, spec.duration_s)
    result.client_cpu_s = _children_cpu_s() - cpu_before
    return result


def _receive(pipe, until: float) -> dict:
    if not pipe.poll(max(0.0, until - time.perf_counter())):
        raise RuntimeError("a load process sent no result in time")
    return marshal.loads(pipe.recv_bytes())


def _stop(procs) -> None:
    for proc in procs:
        proc.join(timeout=2.0)
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(timeout=2.0)


def _merge(parts: List[dict], duration_s: float) -> LoadResult:
    result = LoadResult(duration_s=duration_s)
    samples = array.array("I")
    for part in parts:
        result.requests += part["requests"]
        result.non_2xx += part["non_2xx"]
        result.bytes_sent += part["bytes_sent"]
        result.bytes_received += part["bytes_received"]
        for status, count in part["statuses"].items():
            result.statuses[status] = result.statuses.get(status, 0) + count
        for kind, count in part["errors"].items():
            result.errors[kind] = result.errors.get(kind, 0) + count
        samples.frombytes(part["latencies"])
    result.latencies_us = sorted(samples)
    return result


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ---- command line -------------------------------------------------------------------------

def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="stdlib HTTP/1.1 load generator (loopback only)")
    parser.add_argument("url", help="http://127.0.0.1:PORT/path")
    parser.add_argument("-d", "--duration", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument("-p", "--processes", type=int, default=2, help="load processes (default 2)")
    parser.add_argument("-c", "--connections", type=int, default=32, help="connections in total (default 32)")
    parser.add_argument("--close", action="store_true", help="Connection: close, one connection per request")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body-bytes", type=int, default=0, help="request body size in bytes")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request timeout in seconds")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    url = urlsplit(args.url)
    if url.scheme != "http" or not url.hostname:
        parser.error("the URL must be http://HOST:PORT/path")
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    spec = LoadSpec(host=url.hostname, port=url.port or 80, path=path, method=args.method.upper(),
                    body_bytes=args.body_bytes, close=args.close, processes=args.processes,
                    connections=args.connections, duration_s=args.duration, timeout_s=args.timeout)
    try:
        result = run_load(spec)
    except ValueError as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 2
    summary = result.summary()
    if args.json:
        print(json.dumps(summary))
        return 0
    lat = summary["latency_ms"]
    print(f"{summary['requests']} requests in {summary['duration_s']} s: {summary['requests_per_s']} req/s")
    print(f"latency ms: p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  p99.9 {lat['p99.9']}")
    print(f"non-2xx: {summary['non_2xx']}  statuses: {summary['statuses']}  errors: {summary['errors'] or 'none'}")
    print(f"load generator CPU: {summary['client_cpu_s']} s ({100 * result.client_cpu_s / spec.duration_s:.0f}% of one core)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
