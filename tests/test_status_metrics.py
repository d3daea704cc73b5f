"""[status] /health and /ready, [metrics] /metrics: the pure parts, then a live server.

The metrics text is checked line by line against the text exposition format 0.0.4:
https://prometheus.io/docs/instrumenting/exposition_formats/#text-format-details
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import signal
import socket
import threading

import pytest

from minirr import metrics
from minirr.metrics import Counter, Gauge, Histogram, ServerMetrics, format_value
from minirr.operations import probe

# ---- the exposition grammar ------------------------------------------------------------------

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
VALUE = r"(?:[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]Inf|NaN)"
HELP_RE = re.compile(rf"^# HELP ({NAME}) ((?:[^\\\n]|\\[\\n])*)$")
TYPE_RE = re.compile(rf"^# TYPE ({NAME}) (counter|gauge|histogram|summary|untyped)$")
SAMPLE_RE = re.compile(rf"^({NAME})(\{{{LABEL}(?:,{LABEL})*,?\}})? ({VALUE})(?: -?\d+)?$")
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')


def parse_exposition(text: str) -> dict:
    """Check every line against the grammar and the family rules; return
    {family: {"type": t, "help": h, "samples": [(name, {label: value}, float)]}}."""
    assert text.endswith("\n"), "the text ends with a line feed"
    families: dict = {}
    current = None
    for number, line in enumerate(text[:-1].split("\n"), 1):
        where = f"line {number}: {line!r}"
        if m := HELP_RE.match(line):
            assert m.group(1) not in families or "help" not in families[m.group(1)], f"second HELP, {where}"
            current = families.setdefault(m.group(1), {"samples": []})
            current["help"] = m.group(2)
            current["name"] = m.group(1)
        elif m := TYPE_RE.match(line):
            family = families.setdefault(m.group(1), {"samples": [], "name": m.group(1)})
            assert "type" not in family and not family["samples"], f"TYPE after samples or twice, {where}"
            family["type"] = m.group(2)
            current = family
        elif m := SAMPLE_RE.match(line):
            assert current is not None, f"sample before any HELP/TYPE, {where}"
            name, base = m.group(1), current["name"]
            allowed = {base} | ({base + s for s in ("_bucket", "_sum", "_count")}
                               if current.get("type") == "histogram" else set())
            assert name in allowed, f"sample {name} outside its family {base}, {where}"
            labels = dict(LABEL_RE.findall(m.group(2) or ""))
            current["samples"].append((name, labels, float(m.group(3))))
        else:
            raise AssertionError(f"not in the exposition grammar, {where}")
    for name, family in families.items():
        keys = [(s[0], tuple(sorted(s[1].items()))) for s in family["samples"]]
        assert len(keys) == len(set(keys)), f"{name}: a label set appears twice"
        assert "help" in family and "type" in family, f"{name}: HELP and TYPE both present"
    return families


def check_histogram(family: dict) -> None:
    buckets = [(s[1]["le"], s[2]) for s in family["samples"] if s[0].endswith("_bucket")]
    bounds = [float(le) for le, _ in buckets]
    counts = [count for _, count in buckets]
    assert bounds == sorted(bounds) and math.isinf(bounds[-1]), "le ascending, ending with +Inf"
    assert counts == sorted(counts), "bucket counts are cumulative"
    (count,) = [s[2] for s in family["samples"] if s[0].endswith("_count")]
    assert counts[-1] == count


# ---- pure: the registry and the probes ----------------------------------------------------------

def test_format_value():
    assert [format_value(v) for v in (3, 0.25, float("inf"), float("-inf"), 1e20)] == \
        ["3", "0.25", "+Inf", "-Inf", "1e+20"]
    assert format_value(float("nan")) == "NaN"


def test_escaping_and_families_parse():
    c = Counter("x_total", 'help with \\ and\nnewline', ("path",))
    c.inc(('a"b\\c\nd',), 2)
    g = Gauge("y", "a gauge")
    g.set(1.5)
    h = Histogram("z_seconds", "a histogram", (0.1, 1))
    for v in (0.05, 0.5, 5):
        h.observe(v)
    text = metrics.render([c, g, h])
    families = parse_exposition(text)
    assert families["x_total"]["help"] == "help with \\\\ and\\nnewline"
    assert families["x_total"]["samples"] == [("x_total", {"path": 'a\\"b\\\\c\\nd'}, 2.0)]
    check_histogram(families["z_seconds"])
    assert 'z_seconds_bucket{le="1"} 2' in text and "z_seconds_sum 5.55" in text


def test_server_metrics_render():
    m = ServerMetrics()
    m.request_answered(200, 0.003)
    m.request_answered(503, 20.0)
    m.worker_restarted("ttl")
    m.no_free_worker()
    text = m.render({"ready": 2, "working": 1}, 4, {4121: 2048}, 12.5)
    families = parse_exposition(text)
    samples = {(s[0], tuple(s[1].items())): s[2] for f in families.values() for s in f["samples"]}
    assert samples[("minirr_requests_total", (("status", "503"),))] == 1
    assert samples[("minirr_workers", (("state", "working"),))] == 1
    assert samples[("minirr_workers", (("state", "stopping"),))] == 0
    assert samples[("minirr_worker_memory_bytes", (("pid", "4121"),))] == 2048
    assert samples[("minirr_worker_restarts_total", (("reason", "ttl"),))] == 1
    assert samples[("minirr_worker_restarts_total", (("reason", "crash"),))] == 0
    assert samples[("minirr_queue_length", ())] == 4
    assert samples[("minirr_no_free_workers_total", ())] == 1
    assert samples[("minirr_uptime_seconds", ())] == 12.5
    check_histogram(families["minirr_request_duration_seconds"])
    with pytest.raises(ValueError):
        m.requests.inc(())                       # a label is required


@pytest.mark.parametrize("counts, stopping, health, ready", [
    ({"ready": 1}, False, 200, 200),
    ({"working": 2}, False, 200, 503),           # all busy: alive, but not ready for more
    ({"ready": 1, "working": 1}, True, 200, 503),  # draining for a stop: ready goes first
    ({"starting": 2}, False, 503, 503),
    ({}, True, 503, 503),
])
def test_probes(counts, stopping, health, ready):
    assert probe("health", counts, stopping, 0)[0] == health
    status, body = probe("ready", counts, stopping, 3)
    assert status == ready
    assert set(body["workers"]) == {"ready", "working", "starting", "stopping"} and body["queue"] == 3


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
