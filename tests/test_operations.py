"""The operator side of the master (minirr.master.operations): control calls, the probes, the
status and metrics routes, pending resets, the supervisor's tick; fake connections that
record what they were sent, a fake server and backend, a real Pool, a fake clock."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from fakes import FakeClock, FakeSelector
from minirr.master import control
from minirr.wire import frame
from minirr.config import Config, EndpointConfig, PoolConfig, RPCConfig, SupervisorConfig
from minirr.master.control import Call, ControlError, TCPAddress, UnixAddress
from minirr.master.lifecycle import CLOSED, WAITING
from minirr.master.loop import Loop
from minirr.wire.messages import Request
from minirr.master.metrics import CONTENT_TYPE, ServerMetrics
from minirr.master.operations import PEER_SEND_BUFFER_BYTES, Operations, limit_send_buffer, probe
from minirr.master.pool import READY, STOPPING, WORKING, Pool, Reason
from minirr.http.responses import DateCache


class Conn:
    """Records what a connection was sent, and how."""

    def __init__(self, close_requested: bool = False) -> None:
        self.phase = WAITING
        self.sent = []
        self.parser = SimpleNamespace(close_requested=close_requested)

    def respond(self, data: bytes, keep_alive: bool) -> None:
        self.sent.append(("respond", bytes(data), keep_alive))

    def write(self, data: bytes) -> None:
        self.sent.append(("write", bytes(data)))

    def reject(self, status, message, data=None) -> None:
        self.sent.append(("reject", status, message, data))

    def close(self) -> None:
        self.sent.append(("close",))
        self.phase = CLOSED

    def answer(self):
        """The one control answer sent: (how, Answer)."""
        [(how, data, *_)] = self.sent
        [item] = frame.FrameDecoder().feed(data)
        return how, control.decode_answer(item)


class Controls:
    """What operations.py may ask of the server (operations.Controls), recorded."""

    def __init__(self) -> None:
        self.stopping = False
        self.reloads = 0
        self.shutdowns = []
        self.queue = 0
        self.retired = []

    def begin_reload(self) -> None:
        self.reloads += 1

    def begin_shutdown(self, force: bool = False) -> None:
        self.shutdowns.append(force)

    def queue_length(self) -> int:
        return self.queue

    def retire(self, worker, reason, now) -> None:
        self.retired.append((worker, reason, now))


class Setup:
    def __init__(self, config: Config = None) -> None:
        self.clock = FakeClock()
        self.loop = Loop(selector=FakeSelector(), clock=self.clock)
        self.config = config or Config(pool=PoolConfig(num_workers=2, reset_timeout=5.0))
        self.pool = Pool(2)
        self.metrics = ServerMetrics()
        self.announced = []
        self.server = self.back = Controls()
        self.ops = Operations(self.loop, self.config, self.pool, self.metrics, DateCache(), self.announced.append,
                              controls=self.server)

    def worker(self, state=READY, pid=None):
        worker = self.pool.new_worker(self.clock())
        if state is not None:
            self.pool.hello(worker, pid or os.getpid(), self.clock())
        if state is WORKING:
            self.pool.assign(worker, "job", self.clock())
        return worker

    def call(self, method: str, params: dict = None, seq: int = 1) -> Conn:
        conn = Conn()
        self.ops.on_call(conn, Call(seq, method, params or {}))
        return conn


# ---- control calls -------------------------------------------------------------------------------

def test_workers_answers_one_row_per_worker_in_id_order():
    s = Setup()
    ready = s.worker(READY)
    s.clock.advance(2.5)
    working = s.worker(WORKING)
    s.clock.advance(1.0)
    how, answer = s.call("workers", seq=9).answer()
    assert how == "respond" and answer.seq == 9 and answer.error == ""
    assert answer.result["pid"] == os.getpid()
    rows = answer.result["workers"]
    assert [(row["id"], row["status"], row["execs"], row["age_s"]) for row in rows] == [
        (ready.id, "ready", 0, 3.5), (working.id, "working", 0, 1.0)]
    assert set(rows[0]) == {"id", "pid", "status", "execs", "in_flight", "slots", "memory_bytes", "cpu_percent",
                            "created_at", "age_s"}
    assert rows[0]["memory_bytes"] > 0                  # this process's RSS, read from /proc


def test_a_worker_without_a_pid_yet_has_no_readings():
    s = Setup()
    s.worker(state=None)                                 # starting: no pid
    _, answer = s.call("workers").answer()
    [row] = answer.result["workers"]
    assert (row["pid"], row["status"], row["memory_bytes"], row["cpu_percent"]) == (0, "starting", 0, 0.0)


def test_an_unknown_method_is_answered_with_an_error():
    s = Setup()
    how, answer = s.call("nope", seq=4).answer()
    assert how == "respond" and answer.seq == 4
    assert answer.error == "unknown method 'nope' (known: workers, reset, stop)"


def test_reset_is_answered_by_reload_done():
    s = Setup()
    conn = s.call("reset", seq=3)
    assert s.server.reloads == 1 and conn.sent == []    # no answer until the reload is done
    s.clock.advance(1.5)
    s.ops.reload_done(2, 1.5, "", s.clock())
    how, answer = conn.answer()
    assert how == "respond" and answer.seq == 3 and answer.result == {"replaced": 2, "seconds": 1.5}


def test_reset_is_answered_with_an_error_when_the_reload_failed():
    s = Setup()
    conn = s.call("reset", seq=3)
    s.ops.reload_done(0, 0.5, "worker 3 (pid 9) failed to start: exit status 1", s.clock())
    _, answer = conn.answer()
    # the reason alone: the cli puts "reset failed: " before it, once
    assert answer.error == "worker 3 (pid 9) failed to start: exit status 1"


def test_reset_that_outlasts_reset_timeout_is_answered_with_an_error():
    s = Setup()
    conn = s.call("reset")
    assert s.ops.due_at(s.clock()) == s.clock() + 5.0
    s.clock.advance(4.99)
    s.ops.tick(s.clock())
    assert conn.sent == []
    s.clock.advance(0.01)
    s.ops.tick(s.clock())
    _, answer = conn.answer()
    assert answer.error == ("the reset did not complete within reset_timeout (5s); workers are still being "
                            "replaced")
    s.ops.reload_done(2, 9.0, "", s.clock())             # later: nobody is waiting any more
    assert len(conn.sent) == 1


def test_reset_without_a_timeout_waits_for_the_reload():
    s = Setup(Config(pool=PoolConfig(num_workers=2, reset_timeout=0)))
    conn = s.call("reset")
    assert s.ops.due_at(s.clock()) == float("inf")
    s.clock.advance(1e6)
    s.ops.tick(s.clock())
    assert conn.sent == []


def test_reset_whose_peer_left_is_not_answered():
    s = Setup()
    conn = s.call("reset")
    conn.phase = CLOSED
    s.ops.reload_done(2, 1.0, "", s.clock())
    assert conn.sent == []


def test_reset_while_stopping_is_an_error():
    s = Setup()
    s.server.stopping = True
    _, answer = s.call("reset").answer()
    assert answer.error == "the server is stopping" and s.server.reloads == 0


def test_a_pending_reset_is_answered_when_the_shutdown_starts():
    s = Setup()
    conn = s.call("reset", seq=6)
    s.ops.shutdown_started()
    _, answer = conn.answer()
    assert answer.seq == 6 and answer.error == "the server is stopping"


@pytest.mark.parametrize("params,force", [({}, False), ({"force": True}, True), ({"force": "yes"}, False)])
def test_stop_is_answered_and_the_connection_kept_open(params, force):
    s = Setup()
    conn = s.call("stop", params, seq=2)
    how, answer = conn.answer()
    assert how == "write"                                # not respond: the call stays open until we exit
    assert answer.result == {"pid": os.getpid(), "force": force}
    assert s.server.shutdowns == [force] and conn.phase is WAITING


# ---- the control peers' owner ---------------------------------------------------------------------------

def test_a_broken_control_frame_closes_the_peer():
    s = Setup()
    conn = Conn()
    s.ops._owners["control"].on_bad_request(conn, ControlError("broken frame: x", broken=True))
    assert conn.sent == [("close",)]


def test_an_invalid_control_call_is_answered_with_its_seq_and_closed():
    s = Setup()
    conn = Conn()
    s.ops._owners["control"].on_bad_request(conn, ControlError("not JSON", seq=12))
    [(kind, status, message, data)] = conn.sent
    assert (kind, status, message) == ("reject", 400, "not JSON")
    [item] = frame.FrameDecoder().feed(data)
    assert control.decode_answer(item)[::3] == (12, "not JSON")


# ---- probes and the status and metrics routes -----------------------------------------------------------

@pytest.mark.parametrize("counts, stopping, health, ready", [
    ({"ready": 1}, False, 200, 200),
    ({"working": 2}, False, 200, 200),           # all busy is normal load: the queue takes the next request
    ({"ready": 1, "working": 1}, True, 200, 503),  # draining for a stop: ready goes first
    ({"starting": 2}, False, 503, 503),          # not booted yet
    ({"starting": 1, "stopping": 1}, False, 503, 503),
    ({}, True, 503, 503),
])
def test_probes(counts, stopping, health, ready):
    assert probe("health", counts, stopping, 0)[0] == health
    status, body = probe("ready", counts, stopping, 3)
    assert status == ready
    assert set(body["workers"]) == {"ready", "working", "starting", "stopping"} and body["queue"] == 3


@pytest.mark.parametrize("queue_length, max_queue_size, ready", [
    (0, 0, 200), (500, 0, 200),                  # an unbounded queue always takes one more
    (4, 5, 200), (5, 5, 503), (6, 5, 503),       # a full queue refuses (503 at once): not ready
])
def test_ready_is_whether_the_queue_can_take_a_request(queue_length, max_queue_size, ready):
    assert probe("ready", {"working": 2}, False, queue_length, max_queue_size)[0] == ready
    assert probe("health", {"working": 2}, False, queue_length, max_queue_size)[0] == 200


def test_probe_bodies_say_what_they_saw():
    status, body = probe("health", {"ready": 1, "stopping": 1}, False, 2)
    assert (status, body) == (200, {"status": "ok", "workers": {"ready": 1, "working": 0, "starting": 0,
                                                                 "stopping": 1}, "queue": 2, "stopping": False})
    assert probe("ready", {}, True, 0)[1]["status"] == "unavailable"


def get(path: str, method: str = "GET") -> Request:
    return Request(method, path)


def test_health_and_ready_answer_json_from_the_pool():
    s = Setup()
    s.worker(READY)
    s.server.queue = 4
    status, headers, body = s.ops.answer_http("status", get("/health"), s.clock())
    assert status == 200 and ("Content-Type", "application/json") in headers and ("Cache-Control", "no-store") in headers
    assert json.loads(body) == {"status": "ok", "workers": {"ready": 1, "working": 0, "starting": 0, "stopping": 0},
                                "queue": 4, "stopping": False}
    s.server.stopping = True
    assert s.ops.answer_http("status", get("/ready", "HEAD"), s.clock())[0] == 503


def test_metrics_answers_the_exposition_text():
    s = Setup()
    s.metrics.request_answered(200, 0.01)
    s.clock.advance(12.0)
    status, headers, body = s.ops.answer_http("metrics", get("/metrics"), s.clock())
    assert status == 200 and headers == [("Content-Type", CONTENT_TYPE)]
    text = body.decode()
    assert 'minirr_requests_total{status="200"} 1\n' in text and "minirr_uptime_seconds 12\n" in text


@pytest.mark.parametrize("endpoint,path,known", [
    ("status", "/metrics", "/health /ready"), ("metrics", "/health", "/metrics"), ("status", "/", "/health /ready")])
def test_an_unknown_path_is_404_naming_the_known_ones(endpoint, path, known):
    s = Setup()
    status, headers, body = s.ops.answer_http(endpoint, get(path), s.clock())
    assert (status, body) == (404, f"not found; try {known}\n".encode())


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_a_method_other_than_get_or_head_is_405(method):
    s = Setup()
    status, headers, body = s.ops.answer_http("status", get("/health", method), s.clock())
    assert (status, body) == (405, b"use GET\n") and ("Allow", "GET, HEAD") in headers


def test_the_http_peers_owner_answers_each_request_at_once():
    s = Setup()
    s.worker(READY)
    owner = s.ops._owners["status"]
    conn = Conn()
    owner.on_request(conn, Request("GET", "/health"))
    [(how, data, keep_alive)] = conn.sent
    assert how == "respond" and keep_alive and data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.endswith(b'"stopping": false}\n')
    closing = Conn(close_requested=True)
    owner.on_request(closing, Request("HEAD", "/nope"))
    [(_, data, keep_alive)] = closing.sent
    assert not keep_alive and data.startswith(b"HTTP/1.1 404 Not Found\r\n") and b"Connection: close\r\n" in data
    assert data.endswith(b"\r\n\r\n")                    # HEAD: no body
    assert owner.rejection(408, "slow").startswith(b"HTTP/1.1 408 Request Timeout\r\n")


# ---- metric events, the supervisor's tick --------------------------------------------------------------------

def test_worker_gone_counts_the_restart_by_reason():
    s = Setup()
    worker = s.worker(READY)
    worker.reason = Reason.TTL
    s.ops.worker_gone(worker, STOPPING)
    crashed = s.worker(READY)
    s.ops.worker_gone(crashed, READY)
    stopped = s.worker(READY)
    stopped.reason = Reason.SHUTDOWN
    s.ops.worker_gone(stopped, STOPPING)
    assert s.metrics.restarts.get(("ttl",)) == 1 and s.metrics.restarts.get(("crash",)) == 1
    assert sum(s.metrics.restarts.values.values()) == 2   # a shutdown is no restart


def test_the_watch_tick_retires_one_worker_past_ttl():
    s = Setup(Config(pool=PoolConfig(num_workers=2), supervisor=SupervisorConfig(ttl=5.0, watch_tick=1.0)))
    old = s.worker(READY)
    s.clock.advance(2.0)
    s.worker(READY)
    s.clock.advance(3.0)
    s.ops.tick(s.clock())
    assert s.back.retired == [(old, Reason.TTL, s.clock())]
    assert s.ops.due_at(s.clock()) == s.clock() + 1.0
    s.clock.advance(0.5)
    s.ops.tick(s.clock())                                # before the next watch_tick: nothing
    assert len(s.back.retired) == 1


def test_the_watch_tick_retires_nothing_while_stopping():
    s = Setup(Config(pool=PoolConfig(num_workers=2), supervisor=SupervisorConfig(ttl=5.0)))
    s.worker(READY)
    s.server.stopping = True
    s.clock.advance(10.0)
    s.ops.tick(s.clock())
    assert s.back.retired == []


# ---- opening and closing ------------------------------------------------------------------------------------------

def test_open_binds_the_control_socket_and_the_endpoints_and_announces_them(tmp_path):
    config = Config(base_dir=str(tmp_path), rpc=RPCConfig(listen="tcp://127.0.0.1:0"),
                    status=EndpointConfig(address=("127.0.0.1", 0)), metrics=EndpointConfig(address=("127.0.0.1", 0)))
    s = Setup(config)
    s.ops.open()
    try:
        assert isinstance(s.ops.control_address, TCPAddress) and s.ops.control_address.port > 0
        assert [line.split(" on ")[0] for line in s.announced] == ["minirr status", "minirr metrics"]
        socks = [listener.sock for listener in s.ops.listeners.values()]
        assert len(socks) == 3 and set(socks) <= set(s.ops.descriptors())
        assert all(s.loop.registered(sock) for sock in socks)
    finally:
        s.ops.close()
    assert s.ops.listeners == {}


def test_close_removes_its_own_unix_socket_file(tmp_path):
    s = Setup(Config(base_dir=str(tmp_path), rpc=RPCConfig(listen="unix:ctl.sock")))
    s.ops.open()
    path = tmp_path / "ctl.sock"
    assert s.ops.control_address == UnixAddress(str(path)) and path.exists()
    s.ops.close()
    assert not path.exists()


@pytest.mark.parametrize("family", ["AF_UNIX", "AF_INET"])
def test_an_operator_peer_gets_a_small_send_buffer(family):
    """A peer that never reads is stuck (and evictable) once this much waits for it."""
    import socket
    if family == "AF_UNIX":
        ours, theirs = socket.socketpair()
    else:
        listening = socket.create_server(("127.0.0.1", 0))
        theirs = socket.create_connection(listening.getsockname())
        ours, _ = listening.accept()
        listening.close()
    try:
        limit_send_buffer(ours)
        assert ours.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * PEER_SEND_BUFFER_BYTES   # socket(7)
    finally:
        ours.close()
        theirs.close()
