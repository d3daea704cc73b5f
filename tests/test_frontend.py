"""The frontend (minirr.master.frontend): how a parsed Request is finished (the client
behind a trusted proxy, the target URI), and what it does as a connection's owner: a
request becomes a Job that is submitted and, if a worker took it, dispatched; a client
that leaves is told to its job at the end of the round; a drained one resumes its worker.
Real connections on socketpairs with the real Jobs, Pool and Answers, a recording
backend, a fake selector and clock. Listening and graceful stops are exercised by the
process tests (test_server.py, test_http_limits.py, test_streaming.py)."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from fakes import FakeClock, FakeSelector, FixedDates, made_and_finished, read_answer, read_available, spin
from minirr.config import HTTPConfig
from minirr.http import forwarded
from minirr.http.parser import RequestLimits, RequestParser
from minirr.master.answer import Answers
from minirr.master.connection import Connection
from minirr.master.frontend import Frontend, finish_request
from minirr.master.jobs import AT_WORKER, DONE, DRAINING, QUEUED, Jobs
from minirr.master.loop import Loop
from minirr.master.metrics import ServerMetrics
from minirr.master.pool import Pool


class Backend:
    """What the frontend asks of the worker side (frontend.Dispatch), recorded."""

    def __init__(self) -> None:
        self.calls: list = []

    def dispatch(self, worker, job, now) -> None:
        job.worker = worker
        self.calls.append(("dispatch", worker, job))

    def client_gone(self, job, now) -> None:
        self.calls.append(("client_gone", job, job.state))

    def resume(self, job) -> None:
        self.calls.append(("resume", job))


class FakeListener:
    def forget(self, conn) -> None:
        pass


class Front:
    """A Frontend with the parts server.py gives it, and clients on socketpairs."""

    def __init__(self, max_queue_size: int = 0) -> None:
        self.clock = FakeClock()
        self.loop = Loop(selector=FakeSelector(real=True), clock=self.clock)
        self.pool = Pool(1)
        self.metrics = ServerMetrics()
        self.jobs = Jobs(self.pool, Answers(FixedDates()), max_queue_size, 60.0, 0.0, 60.0, self.metrics, None)
        self.backend = Backend()
        self.front = Frontend(self.loop, HTTPConfig(), self.jobs, self.backend, FixedDates())
        self.front.default_host = "192.0.2.99:8080"
        self.pairs: list = []

    def ready_worker(self):
        worker = self.pool.new_worker(self.clock())
        self.pool.hello(worker, 4242, self.clock())
        return worker

    def client(self):
        """-> (its Connection, the client's socket)."""
        ours, peer = socket.socketpair()
        ours.setblocking(False)
        peer.setblocking(False)
        conn = Connection(self.loop, ours, "192.0.2.7", RequestParser(self.front.request_limits), self.front,
                          self.front.limits, FakeListener(), self.clock())
        conn.start()
        self.pairs.append((conn, peer))
        return conn, peer

    def send(self, peer, data: bytes) -> None:
        peer.sendall(data)
        spin(self.loop, 2)

    def close(self) -> None:
        for conn, peer in self.pairs:
            conn.close()
            peer.close()
        spin(self.loop, 1)


@pytest.fixture
def front():
    yield from made_and_finished(Front, Front.close)


GET = b"GET /p?q=1 HTTP/1.1\r\nHost: h.test\r\n\r\n"


def test_a_request_becomes_a_job_a_ready_worker_gets_at_once(front):
    f = front()
    worker = f.ready_worker()
    conn, peer = f.client()
    f.send(peer, GET)
    job = conn.job
    assert f.backend.calls == [("dispatch", worker, job)]
    assert job.state is AT_WORKER and job.conn is conn and job.keep_alive
    assert (job.request.remote_addr, job.request.uri) == ("192.0.2.7", "http://h.test/p?q=1")


def test_without_a_ready_worker_the_job_waits_in_the_queue(front):
    f = front()
    conn, peer = f.client()
    f.send(peer, GET)
    assert conn.job.state is QUEUED and list(f.jobs.queue) == [conn.job] and f.backend.calls == []


@pytest.mark.parametrize("request_bytes,stopping", [
    (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\n\r\n", False),
    (GET, True),
], ids=["connection_close", "http10", "server_stopping"])
def test_a_job_may_not_keep_its_connection_when_the_client_or_the_server_closes(front, request_bytes, stopping):
    f = front()
    f.front.stopping = stopping
    conn, peer = f.client()
    f.send(peer, request_bytes)
    assert conn.job.keep_alive is False


def test_a_refused_job_is_answered_on_its_connection(front):
    f = front(max_queue_size=1)
    first, first_peer = f.client()
    f.send(first_peer, GET)
    conn, peer = f.client()
    submitted = []
    submit = f.jobs.submit
    f.jobs.submit = lambda job, now: (submitted.append(job), submit(job, now))[1]
    f.send(peer, GET)
    answer = read_answer(read_available(lambda: peer.recv(65536)))
    assert (answer.status, answer.body) == (503, b"the request queue is full\n")
    assert answer.headers["retry-after"] == "1" and submitted[0].state is DONE
    assert list(f.jobs.queue) == [first.job]


def test_a_client_gone_is_told_to_its_job_at_the_end_of_the_round_not_inside_close(front):
    f = front()
    f.ready_worker()
    conn, peer = f.client()
    f.send(peer, GET)
    job = conn.job
    conn.close()
    assert job.state is AT_WORKER and f.backend.calls[1:] == []         # not yet: close may be inside its answer
    f.loop.run_soon()
    assert job.state is DRAINING and f.backend.calls[1:] == [("client_gone", job, DRAINING)]
    assert f.metrics.requests.get(("499",)) == 1


def test_a_client_gone_while_queued_leaves_the_queue_and_no_worker_is_told(front):
    """(Its connection closes here as on an error or a timeout: an EOF from a client that
    waits is not its end, as it may have only half-closed and still read its answer.)"""
    f = front()
    conn, peer = f.client()
    f.send(peer, GET)
    job = conn.job
    conn.close()
    f.loop.run_soon()
    assert job.state is DONE and not f.jobs.queue and f.backend.calls == []


def test_a_drained_client_resumes_its_worker(front):
    f = front()
    f.ready_worker()
    conn, peer = f.client()
    f.send(peer, GET)
    f.front.on_drain(conn)
    assert f.backend.calls[-1] == ("resume", conn.job)


def test_a_drain_without_a_job_at_a_worker_resumes_nothing(front):
    f = front()
    conn, peer = f.client()
    f.front.on_drain(conn)                                            # no request yet
    f.send(peer, GET)
    f.front.on_drain(conn)                                            # queued: no worker has it
    assert f.backend.calls == []


# ---- finishing a request ---------------------------------------------------------------------------

def nets(*cidrs):
    return tuple(ipaddress.ip_network(c) for c in cidrs)


def parsed(data: bytes):
    c = RequestParser(RequestLimits())
    c.receive_data(data)
    return c, c.next_event()


def test_the_peer_and_the_host_make_the_target_uri():
    c, r = parsed(b"PUT /x/y?z=1 HTTP/1.1\r\nHost: h.test:81\r\nContent-Length: 0\r\n\r\n")
    finish_request(r, "192.0.2.10", c.host, "127.0.0.1:8080", ())
    assert (r.remote_addr, r.uri) == ("192.0.2.10", "http://h.test:81/x/y?z=1")


def test_without_host_the_uri_names_the_server_itself():
    c, r = parsed(b"GET /p HTTP/1.0\r\n\r\n")
    finish_request(r, "192.0.2.10", c.host, "svc.internal:8080", ())
    assert r.uri == "http://svc.internal:8080/p"


def test_other_target_forms_keep_their_uri():
    c, r = parsed(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")
    finish_request(r, "192.0.2.10", c.host, "x", ())
    assert (r.path, r.uri) == ("*", "*")
    c, r = parsed(b"GET http://other.test/a?b HTTP/1.1\r\nHost: h\r\n\r\n")
    finish_request(r, "192.0.2.10", c.host, "x", ())
    assert r.uri == "http://other.test/a?b"


# --- X-Forwarded-For / X-Forwarded-Proto ---------------------------------------------------

def forwarded_request(peer, trusted, *fields):
    c = RequestParser(RequestLimits())
    c.receive_data(b"GET /p HTTP/1.1\r\nHost: example.com\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n")
    request = c.next_event()
    finish_request(request, peer, c.host, "192.0.2.99:8080", nets(*trusted))
    return request


def test_trusted_proxy_sets_client_and_scheme():
    r = forwarded_request("10.0.0.5", ["10.0.0.0/8"], b"X-Forwarded-For: 203.0.113.7", b"X-Forwarded-Proto: https")
    assert (r.remote_addr, r.uri) == ("203.0.113.7", "https://example.com/p")
    assert ("X-Forwarded-For", "203.0.113.7") in r.headers


def test_untrusted_peer_is_not_believed_but_headers_pass():
    r = forwarded_request("192.0.2.1", ["10.0.0.0/8"], b"X-Forwarded-For: 203.0.113.7", b"X-Forwarded-Proto: https")
    assert (r.remote_addr, r.uri) == ("192.0.2.1", "http://example.com/p")
    assert r.headers[1:] == [("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "https")]


@pytest.mark.parametrize("peer, trusted, xff, client", [
    ("10.0.0.5", [], b"203.0.113.7", "10.0.0.5"),
    ("10.0.0.5", ["10.0.0.0/8"], b"1.1.1.1, 2.2.2.2, 10.9.9.9", "2.2.2.2"),
    ("::ffff:10.0.0.5", ["10.0.0.0/8"], b"203.0.113.7", "203.0.113.7"),
    ("fd00::1", ["fd00::/8"], b"2001:db8::1", "2001:db8::1"),
], ids=["no_trusted_proxies_means_no_trust", "forged_left_entries_are_ignored",
        "ipv4_mapped_peer_matches_ipv4_network", "ipv6_proxy_network"])
def test_client_address_from_x_forwarded_for(peer, trusted, xff, client):
    assert forwarded_request(peer, trusted, b"X-Forwarded-For: " + xff).remote_addr == client


def test_trusted_proxy_without_xff_keeps_peer():
    r = forwarded_request("10.0.0.5", ["10.0.0.0/8"], b"X-Forwarded-Proto: HTTPS")
    assert (r.remote_addr, r.uri) == ("10.0.0.5", "https://example.com/p")


@pytest.mark.parametrize("text,expected", [
    ("10.0.0.1", "10.0.0.1"), (" 10.0.0.1:8080 ", "10.0.0.1"), ("::1", "::1"),
    ("[::1]:80", "::1"), ("[2001:db8::1]", "2001:db8::1"), ("::ffff:1.2.3.4", "1.2.3.4"),
    ("unknown", None), ("", None), ("[::1", None), ("1.2.3.4.5", None), ("_hidden", None),
])
def test_parse_address(text, expected):
    address = forwarded.parse_address(text)
    assert (None if address is None else str(address)) == expected


def test_forwarded_helpers_directly():
    trusted = nets("10.0.0.0/8")
    assert forwarded.is_trusted("10.1.2.3", trusted)
    assert not forwarded.is_trusted("", trusted)
    assert not forwarded.is_trusted("10.1.2.3", ())
    assert forwarded.client_address("10.0.0.1", ["1.2.3.4, bogus"], trusted) == "10.0.0.1"
    assert forwarded.client_address("10.0.0.1", ["bogus, 10.0.0.2"], trusted) == "10.0.0.2"
    assert forwarded.client_address("10.0.0.1", [], trusted) == "10.0.0.1"
    assert forwarded.client_scheme("http", ["https, http"]) == "http"
    assert forwarded.client_scheme("https", ["ftp"]) == "https"
    assert forwarded.client_scheme("http", []) == "http"


