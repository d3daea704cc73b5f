"""[status] /health and /ready, [metrics] /metrics against a live server. The pure parts
are tests/test_metrics.py's (the registry, the text format) and tests/test_operations.py's
(the probes, the routes).

The metrics text is checked line by line against the text exposition format 0.0.4
(parse_exposition, in test_metrics.py):
https://prometheus.io/docs/instrumenting/exposition_formats/#text-format-details
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import threading

from serverproc import wait_until
from test_metrics import check_histogram, parse_exposition


# ---- against a live server ----------------------------------------------------------------------

CONFIG = """[server]
app = minirr_testapp:create_app
factory = true
[pool]
num_workers = 2
[status]
address = 127.0.0.1:0
[metrics]
address = 127.0.0.1:0
"""
LINE_RE = re.compile(r"^minirr (status|metrics) on http://127\.0\.0\.1:(\d+)$")


def endpoints_of(srv) -> dict:
    found = {}
    for line in srv.stdout_lines:
        m = LINE_RE.match(line)
        if m:
            found[m.group(1)] = int(m.group(2))
    return found


def fetch(port: int, path: str, method: str = "GET"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_endpoint_lines_come_before_the_ready_line(serve):
    srv = serve(CONFIG)
    assert [line.split(" on ")[0] for line in srv.stdout_lines] == \
        ["minirr status", "minirr metrics", "minirr listening"]
    ports = endpoints_of(srv)
    assert ports["status"] and ports["metrics"] and len({ports["status"], ports["metrics"], srv.port}) == 3


def test_health_and_ready(serve):
    srv = serve(CONFIG)
    port = endpoints_of(srv)["status"]
    srv.wait_for_log(r"worker \d+ \(pid \d+\) ready in", count=2)
    status, headers, body = fetch(port, "/health")
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body)["workers"] == {"ready": 2, "working": 0, "starting": 0, "stopping": 0}
    assert fetch(port, "/ready")[0] == 200
    assert fetch(port, "/nope")[0] == 404
    assert fetch(port, "/health", "POST")[0] == 405
    status, headers, body = fetch(port, "/ready", "HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0


def test_ready_turns_503_first_during_a_graceful_stop(serve):
    srv = serve(CONFIG)
    port = endpoints_of(srv)["status"]
    result = {}
    slow = threading.Thread(target=lambda: result.update(resp=srv.request("GET", "/sleep?3", timeout=30)))
    slow.start()
    srv.wait_for_log(r"sleeping in")
    srv.send_signal(signal.SIGTERM)
    srv.wait_for_log(r"stopping: finishing 1 in-flight")
    status, _, body = fetch(port, "/ready")                # the request is still in flight
    assert status == 503 and json.loads(body)["stopping"] is True
    status, _, body = fetch(port, "/health")
    assert status == 200 and json.loads(body)["workers"]["working"] == 1
    slow.join()
    assert result["resp"][0] == 200
    assert srv.wait_exit() == 0


def test_ready_stays_200_while_every_worker_is_busy_and_turns_503_when_the_queue_is_full(serve):
    """Busy workers are normal load (a readiness probe failing then would pull every pod at
    peak); a full queue refuses requests (503 at once), and that is not ready."""
    srv = serve(CONFIG.replace("num_workers = 2", "num_workers = 1\nmax_queue_size = 1"))
    port = endpoints_of(srv)["status"]
    srv.wait_for_log(r"worker \d+ \(pid \d+\) ready in")
    results = []
    slow = [threading.Thread(target=lambda: results.append(srv.request("GET", "/sleep?2", timeout=30)[0]))
            for _ in range(2)]
    slow[0].start()
    srv.wait_for_log(r"sleeping in")
    status, _, body = fetch(port, "/ready")
    assert status == 200 and json.loads(body)["workers"]["working"] == 1 and json.loads(body)["queue"] == 0
    slow[1].start()                                          # waits in the queue: now it is full
    wait_until(lambda: json.loads(fetch(port, "/ready")[2])["queue"] == 1, message="the second request queued")
    assert fetch(port, "/ready")[0] == 503
    assert fetch(port, "/health")[0] == 200
    for thread in slow:
        thread.join()
    assert results == [200, 200]
    assert fetch(port, "/ready")[0] == 200


def test_health_is_503_while_no_worker_can_start(serve):
    srv = serve(CONFIG.replace("create_app", "failing_factory"))
    port = endpoints_of(srv)["status"]
    srv.wait_for_log(r"before it was ready")
    assert fetch(port, "/health")[0] == 503
    assert fetch(port, "/ready")[0] == 503


def test_metrics_follow_the_exposition_format_and_count(serve):
    srv = serve(CONFIG.replace("num_workers = 2", "num_workers = 2\nallocate_timeout = 200ms"))
    port = endpoints_of(srv)["metrics"]
    pids = srv.wait_workers(2)
    for _ in range(3):
        assert srv.request("GET", "/")[0] == 200
    assert srv.request("GET", "/raise")[0] == 500
    assert srv.request("GET", "/crash")[0] == 502
    srv.wait_for_log(r"exited with status 7 while busy")
    status, headers, body = fetch(port, "/metrics")
    assert status == 200 and headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = parse_exposition(body.decode())
    for name in ("minirr_requests_total", "minirr_request_duration_seconds", "minirr_workers",
                 "minirr_worker_memory_bytes", "minirr_worker_restarts_total", "minirr_queue_length",
                 "minirr_no_free_workers_total", "minirr_uptime_seconds"):
        assert name in families, name
    samples = {(s[0], tuple(s[1].items())): s[2] for f in families.values() for s in f["samples"]}
    assert samples[("minirr_requests_total", (("status", "200"),))] == 3
    assert samples[("minirr_requests_total", (("status", "500"),))] == 1
    assert samples[("minirr_requests_total", (("status", "502"),))] == 1
    assert samples[("minirr_request_duration_seconds_count", ())] == 5
    assert samples[("minirr_worker_restarts_total", (("reason", "crash"),))] == 1
    assert samples[("minirr_uptime_seconds", ())] > 0
    check_histogram(families["minirr_request_duration_seconds"])
    live = set(srv.wait_workers(2))
    memory_pids = {int(s[1]["pid"]) for s in families["minirr_worker_memory_bytes"]["samples"]}
    assert memory_pids == live and set(pids) - live      # the crashed worker's pid is gone
    assert all(s[2] > 1024 * 1024 for s in families["minirr_worker_memory_bytes"]["samples"])


def test_no_free_workers_counted(serve):
    srv = serve(CONFIG.replace("num_workers = 2", "num_workers = 1\nallocate_timeout = 200ms"))
    port = endpoints_of(srv)["metrics"]
    busy = threading.Thread(target=srv.request, args=("GET", "/sleep?2"))
    busy.start()
    srv.wait_for_log(r"sleeping in")
    assert srv.request("GET", "/")[0] == 503
    busy.join()
    text = fetch(port, "/metrics")[2].decode()
    assert "minirr_no_free_workers_total 1\n" in text
    assert 'minirr_requests_total{status="503"} 1\n' in text


def test_keep_alive_scrapes_on_one_connection(serve):
    srv = serve(CONFIG)
    port = endpoints_of(srv)["metrics"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(3):
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200 and b"minirr_uptime_seconds" in resp.read()
    conn.close()


def test_workers_hold_no_endpoint_sockets(serve):
    srv = serve(CONFIG.replace("num_workers = 2", "num_workers = 1"))
    port = endpoints_of(srv)["status"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)   # an open peer while a
    conn.request("GET", "/health")                                      # worker is forked
    conn.getresponse().read()
    old = int(srv.request("GET", "/pid")[2])
    srv.request("GET", "/crash")
    srv.wait_workers(1, exclude=[old])
    worker = int(srv.request("GET", "/pid")[2])
    held = {os.readlink(f"/proc/{worker}/fd/{fd}") for fd in os.listdir(f"/proc/{worker}/fd")}
    assert not [t for t in held if t.startswith("socket:")], held
    conn.close()


def raw(port: int, data: bytes, half_close: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(65536)     # times out (fails) if the endpoint never closes
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def test_endpoint_connections_close_cleanly(serve):
    srv = serve(CONFIG)
    port = endpoints_of(srv)["status"]
    answer = raw(port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", half_close=True)
    assert answer.startswith(b"HTTP/1.1 ") and answer.count(b"HTTP/1.1 ") == 1
    answer = raw(port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"Connection: close\r\n" in answer
    assert raw(port, b"BOGUS\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert srv.request("GET", "/")[0] == 200          # the server is fine
