"""Abusive clients against a live server: slowloris, idle floods, slow readers, clients
that vanish, and a random-mutation fuzz over the wire.

What is asserted is that the master keeps serving, not how fast: "promptly" means
before the flood's own connections time out, which holds on any machine.
"""

from __future__ import annotations

import json
import random
import selectors
import socket
import struct
import time
from pathlib import Path
from typing import Dict, List

import pytest

from serverproc import wait_until
from test_http_fuzz import SEEDS, mutate
from wire import (BASE_CONFIG, connect, exchange, parse_responses, start_module_server,
                  stop_module_server)

HEADER_TIMEOUT_S = 2.0
FLOOD = 300
GOOD_REQUEST = b"GET /request HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    srv = start_module_server(tmp_path_factory.mktemp("flood"), f"[http]\nheader_timeout = {HEADER_TIMEOUT_S}\n")
    yield srv
    stop_module_server(srv)


def served_now(srv) -> bool:
    data, ending = exchange(srv, GOOD_REQUEST)
    return [r[0] for r in parse_responses(data)] == [200] and ending == "eof"


class Flood:
    """Many client sockets, read together until the server closes each one."""

    def __init__(self) -> None:
        self.socks: List[socket.socket] = []
        self.opened_at: Dict[socket.socket, float] = {}
        self.received: Dict[socket.socket, bytes] = {}
        self.closed_at: Dict[socket.socket, float] = {}

    def open(self, srv, first_bytes: bytes) -> socket.socket:
        started = time.monotonic()
        sock = connect(srv)
        if first_bytes:
            sock.sendall(first_bytes)
        sock.setblocking(False)
        self.socks.append(sock)
        self.opened_at[sock] = started
        self.received[sock] = b""
        return sock

    def quiet(self) -> bool:
        """Nothing has been received on any socket, and none is closed."""
        self.poll(0)
        return not self.closed_at and not any(self.received.values())

    def poll(self, timeout: float) -> None:
        with selectors.DefaultSelector() as sel:
            for sock in self.socks:
                if sock not in self.closed_at:
                    sel.register(sock, selectors.EVENT_READ)
            if not sel.get_map():
                return
            for key, _ in sel.select(timeout):
                self._read(key.fileobj)

    def _read(self, sock: socket.socket) -> None:
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            return
        except ConnectionResetError:
            chunk = b""
        if chunk:
            self.received[sock] += chunk
        else:
            self.closed_at[sock] = time.monotonic()

    def wait_all_closed(self, timeout: float, each_poll=lambda: None) -> None:
        def done():
            each_poll()
            self.poll(0.05)        # the poll interval
            return len(self.closed_at) == len(self.socks)
        wait_until(done, timeout, interval=0, message=f"{len(self.socks)} flood connections to be closed")

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


def test_slowloris_does_not_delay_a_normal_request(guarded):
    flood = Flood()
    try:
        for i in range(FLOOD):
            partial = (b"GET /slow", b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ", b"POST / HTTP/1.1\r\n")[i % 3]
            flood.open(guarded, partial)
        tricklers = flood.socks[:5]      # these keep sending, a header byte per poll
        assert served_now(guarded)
        # "promptly": answered while every partial request is still waiting for its timeout
        assert flood.quiet()

        def trickle():
            for sock in tricklers:
                if sock not in flood.closed_at:
                    try:
                        sock.send(b"a")
                    except OSError:
                        pass
        flood.wait_all_closed(timeout=30, each_poll=trickle)
    finally:
        flood.close()
    for sock in flood.socks:
        assert flood.closed_at[sock] - flood.opened_at[sock] >= HEADER_TIMEOUT_S
        [(status, headers, body)] = parse_responses(flood.received[sock])
        assert (status, headers["connection"]) == (408, "close"), body
        assert body == b"request header not complete within 2s\n"
    assert served_now(guarded)


def test_idle_and_half_closed_flood_does_not_delay_a_normal_request(guarded):
    flood = Flood()
    try:
        idle = [flood.open(guarded, b"") for _ in range(FLOOD)]
        for _ in range(20):              # half-closed mid-request: nothing to answer
            flood.open(guarded, b"GET / HTTP/1.1\r\n").shutdown(socket.SHUT_WR)
        assert served_now(guarded)
        flood.wait_all_closed(timeout=30)
    finally:
        flood.close()
    assert not any(flood.received.values())      # closed without a response
    assert all(flood.closed_at[sock] - flood.opened_at[sock] >= HEADER_TIMEOUT_S for sock in idle)
    assert served_now(guarded)


# ---------------------------------------------------------------------------- slow readers

def count_log(srv, text: str) -> int:
    return sum(text in line for line in srv.log.splitlines())


def all_in(data: bytes, count: int, body_size: int) -> bool:
    responses = parse_responses(data)
    return len(responses) == count and len(responses[-1][2]) == body_size


def test_slow_reader_holds_one_worker_and_others_are_served(serve):
    """A client that never reads: its pipelined requests wait until the first answer has
    left, and that answer waits at its worker (backpressure), so the master holds a
    bounded part of it, not one answer per request; the other worker serves everyone else."""
    srv = serve(BASE_CONFIG.replace("num_workers = 1", "num_workers = 2") + "[http]\nbody_timeout = 60s\n")
    big = b"GET /bytes?8000000 HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.socket() as slow:
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.settimeout(10)
        slow.connect((srv.host, srv.port))
        slow.sendall(big)
        for _ in range(5):
            slow.sendall(big)            # each arrives while the first answer is stuck
            assert served_now(srv)       # ...and the other worker serves a round trip
        # (access-log lines are written once per round of the loop: they may trail the answer)
        srv.wait_for_log(r'"GET /request HTTP/1\.1" 200', count=5)
        # 8 MB cannot fit in the socket buffers, the master's bound and the pipe: the first
        # answer is not complete, so none of the pipelined ones has started.
        assert count_log(srv, '"GET /bytes?8000000 HTTP/1.1" 200') == 0
        # Now it reads: every response arrives, in order.
        data = bytearray()
        while len(data) < 6 * 8_000_000 or not all_in(bytes(data), 6, 8_000_000):
            chunk = slow.recv(1 << 20)
            assert chunk, "closed before the sixth response"
            data += chunk
    responses = parse_responses(bytes(data))
    assert [(status, len(body)) for status, _, body in responses] == [(200, 8_000_000)] * 6


# ---------------------------------------------------------------------------- vanishing clients

def reset_close(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends a reset instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_clients_that_vanish_with_a_request_in_flight(serve):
    """Their answers are dropped; the worker finishes and serves the next client."""
    srv = serve(BASE_CONFIG)
    [worker_pid] = srv.wait_workers(1)
    at_worker = connect(srv)
    at_worker.sendall(b"GET /sleep?0.5 HTTP/1.1\r\nHost: x\r\n\r\n")
    srv.wait_for_log("sleeping in")
    queued_reset = connect(srv)
    queued_reset.sendall(b"GET /sleep?0.1 HTTP/1.1\r\nHost: x\r\n\r\n")
    queued_closed = connect(srv)
    queued_closed.sendall(b"GET /sleep?0.1 HTTP/1.1\r\nHost: x\r\n\r\n")
    reset_close(at_worker)
    reset_close(queued_reset)
    queued_closed.close()
    assert served_now(srv)
    assert srv.workers() == [worker_pid]
    assert "Traceback" not in srv.log


# ---------------------------------------------------------------------------- corpus and fuzz

CORPUS = Path(__file__).parent / "corpus"
CORPUS_LIMITS = json.loads((CORPUS / "limits.json").read_text())
ALONE = 1000                 # mutants sent one per connection, followed by a valid request
PIPELINED = 100              # connections carrying 10 mutants each
ALLOWED = set(range(200, 300)) | set(range(400, 500)) | {100, 501, 505}


@pytest.fixture(scope="module")
def corpus_server(tmp_path_factory):
    """A server with the corpus's limits (tests/corpus/limits.json)."""
    limits = "".join(f"{key} = {value}\n" for key, value in CORPUS_LIMITS.items())
    srv = start_module_server(tmp_path_factory.mktemp("fuzz"), "[http]\n" + limits, overrides=["pool.num_workers=2"])
    yield srv
    stop_module_server(srv)


def fuzz_exchange(srv, data: bytes, tally: dict) -> None:
    """Half-close after the bytes, so every exchange ends: answered, or closed."""
    answer, ending = exchange(srv, data, shutdown=True)
    tally[ending] = tally.get(ending, 0) + 1
    for status, _, body in parse_responses(answer):
        assert status in ALLOWED, (status, body, data)
        tally[status] = tally.get(status, 0) + 1


@pytest.mark.parametrize("path", sorted((CORPUS / "invalid").glob("*.http")), ids=lambda p: p.stem)
def test_invalid_corpus_case_over_the_wire(corpus_server, path):
    """The parser's refusal reaches the client: any valid requests before it are
    answered, then the case's status, then the connection closes."""
    expected = json.loads(path.with_suffix(".json").read_text())
    data, ending = exchange(corpus_server, path.read_bytes())
    statuses = [r[0] for r in parse_responses(data)]
    assert statuses[-1] == expected["status"] and set(statuses[:-1]) <= {100, 200}, statuses
    assert ending == "eof"


def test_wire_fuzz_mutated_corpus_requests(corpus_server):
    rng = random.Random(4_2024)
    tally: dict = {}
    for _ in range(ALONE):
        fuzz_exchange(corpus_server, mutate(rng, rng.choice(SEEDS)) + GOOD_REQUEST, tally)
    for _ in range(PIPELINED):
        fuzz_exchange(corpus_server, b"".join(mutate(rng, rng.choice(SEEDS)) for _ in range(10)), tally)
    assert corpus_server.proc.poll() is None
    assert served_now(corpus_server)
    # the mutants land on both sides: served requests, and refusals
    assert tally.get(200, 0) > 300 and tally.get(400, 0) > 300, tally
