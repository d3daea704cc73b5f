"""A job's life, end to end, where it used to lose, hang or stall a request: a graceful
stop with requests still arriving, a worker that closes its request pipe, clients gone
while their uploads wait in the queue, reloads in quick succession, a worker that pings
and never reads, a header the app built from the client's input, HEAD on a streamed
answer. Real servers, real workers (tests/test_containment.py's style)."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import threading
from pathlib import Path

from serverproc import run_cli, wait_until
from wire import connect, parse_responses, read_until_closed

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "tests" / "apps"
ROGUE = f"{sys.executable} {ROOT / 'tests' / 'workers' / 'rogue_worker.py'}"
APP = "[server]\napp = containment_app:create_app\nfactory = true\n[pool]\nnum_workers = {n}\n"
TESTAPP = "[server]\napp = minirr_testapp:create_app\nfactory = true\n[pool]\nnum_workers = {n}\n"


def serve_app(serve, config: str, **kwargs):
    return serve(config, **kwargs)                               # tests/apps is on the path (serverproc.py)


def pid_of(srv) -> int:
    status, _, body = srv.request("GET", "/pid")
    assert status == 200, body
    return int(body)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def only_response(data: bytes):
    [response] = parse_responses(data)
    return response


# ---- 1. a graceful stop finishes requests still arriving -----------------------------------------

def test_a_graceful_stop_reads_and_answers_an_upload_under_way_then_closes(serve):
    srv = serve_app(serve, TESTAPP.format(n=1))
    assert pid_of(srv)                                           # a worker is ready
    idle = connect(srv)                                          # a keep-alive client with nothing under way
    uploading = connect(srv)
    uploading.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
    half_head = connect(srv)
    half_head.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n")
    srv.send_signal(signal.SIGTERM)
    srv.wait_for_log("stopping: finishing")
    assert read_until_closed(idle) == (b"", "eof")               # nothing owed: closed at once
    uploading.sendall(b"67890")                                  # the rest of the body, after the stop
    half_head.sendall(b"\r\n")                                   # and the end of a head
    status, headers, body = only_response(read_until_closed(uploading)[0])
    assert (status, body, headers.get("connection")) == (200, b"1234567890", "close")
    status, headers, _ = only_response(read_until_closed(half_head)[0])
    assert (status, headers.get("connection")) == (200, "close")
    assert srv.wait_exit() == 0
    for sock in (idle, uploading, half_head):
        sock.close()


def test_a_request_arriving_too_slowly_during_a_stop_still_meets_its_own_timeout(serve):
    srv = serve_app(serve, TESTAPP.format(n=1) + "[http]\nheader_timeout = 1s\n")
    assert pid_of(srv)
    slow = connect(srv)
    slow.sendall(b"GET / HTTP/1.1\r\n")
    srv.send_signal(signal.SIGTERM)
    status, _, body = only_response(read_until_closed(slow)[0])
    assert (status, body) == (408, b"request header not complete within 1s\n")
    assert srv.wait_exit() == 0
    slow.close()


# ---- 2. a worker that closes its request pipe --------------------------------------------------------

def test_a_worker_that_closed_its_request_pipe_is_a_broken_channel_not_a_hang(serve):
    srv = serve(f"[server]\ncommand = {ROGUE}\n[pool]\nnum_workers = 1\n")
    before = pid_of(srv)
    assert srv.request("GET", "/close-stdin")[0] == 200          # answered, then it closes its stdin
    status, _, body = srv.request("GET", "/pid", timeout=20)     # the next request cannot be written to it
    assert status == 502, body
    srv.wait_for_log(r"closed its request pipe")
    assert pid_of(srv) != before                                 # replaced
    assert srv.stop() == 0


# ---- 3. clients gone while their uploads wait in the queue ---------------------------------------------

def metric(srv, status_url: str, name: str) -> float:
    import urllib.request
    text = urllib.request.urlopen(status_url + "/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def health(url: str) -> dict:
    import urllib.request
    try:
        return json.loads(urllib.request.urlopen(url + "/health", timeout=10).read())
    except Exception as exc:                                   # 503 still carries the JSON
        return json.loads(exc.read())


def test_queued_uploads_whose_clients_left_are_removed_at_once_and_never_run(serve):
    config = (TESTAPP.format(n=1) + "max_queue_size = 4\n[status]\naddress = 127.0.0.1:0\n"
              "[metrics]\naddress = 127.0.0.1:0\n")
    srv = serve_app(serve, config)
    status_url = [line for line in srv.stdout_lines if "minirr status on" in line][0].split(" on ")[1]
    metrics_url = [line for line in srv.stdout_lines if "minirr metrics on" in line][0].split(" on ")[1]
    assert pid_of(srv)
    busy = threading.Thread(target=srv.raw, args=(b"GET /sleep?3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",),
                            kwargs={"timeout": 30})
    busy.start()
    srv.wait_for_log("sleeping in")                              # the one worker is busy
    body = b"u" * (4 * 1024 * 1024)
    rss_before = rss_mb(srv.proc.pid)
    for index in range(8):                                       # twice the queue's size, one after the other
        sock = connect(srv)
        sock.sendall(b"POST /echo?%d HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (index, len(body)) + body)
        wait_until(lambda: health(status_url)["queue"] == 1, timeout=10, message="the upload queued")
        if index % 2:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))   # a reset
        sock.close()                                             # (else a plain FIN)
        wait_until(lambda: health(status_url)["queue"] == 0, timeout=10, message="the departed upload removed")
    # Their bodies went with them (no cycle of job and connection left for the garbage
    # collector to find some day): 8 x 4 MiB held would show here.
    assert rss_mb(srv.proc.pid) - rss_before < 16, "the departed uploads' bodies are still held"
    # The queue has room: a new client waits its turn instead of 503 "queue is full".
    status, _, echoed = srv.request("POST", "/echo", body=b"still here", timeout=30)
    assert (status, echoed) == (200, b"still here")
    busy.join()
    srv.wait_for_log(r'"POST /echo\?7 HTTP/1.1" 499')
    departed = [line for line in srv.log.splitlines() if '" 499 ' in line]
    assert len(departed) == 8 and all(line.endswith("pid=-") for line in departed)   # no worker ran one
    assert metric(srv, metrics_url, 'minirr_requests_total{status="499"}') == 8
    assert srv.stop() == 0


def test_eof_while_queued_is_a_client_gone_but_at_a_worker_the_answer_still_comes(serve):
    srv = serve_app(serve, TESTAPP.format(n=1))
    assert pid_of(srv)
    at_worker = connect(srv)
    at_worker.sendall(b"GET /sleep?1 HTTP/1.1\r\nHost: x\r\n\r\n")
    srv.wait_for_log("sleeping in")
    at_worker.shutdown(socket.SHUT_WR)                           # half-closed, its request at the worker
    queued = connect(srv)
    queued.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
    queued.shutdown(socket.SHUT_WR)                              # half-closed while queued: gone
    assert read_until_closed(queued) == (b"", "eof")
    status, _, body = only_response(read_until_closed(at_worker)[0])
    assert (status, body) == (200, b"slept")
    srv.wait_for_log(r'"GET /pid HTTP/1.1" 499')
    assert srv.stop() == 0
    at_worker.close()
    queued.close()


# ---- 8. reloads in quick succession ------------------------------------------------------------------------

def test_a_reload_begun_while_another_runs_supersedes_it_and_completes(serve):
    srv = serve_app(serve, APP.format(n=2) + "reset_timeout = 20s\n[rpc]\nlisten = unix:minirr.sock\n")
    old = set(srv.wait_workers(2))
    assert pid_of(srv)
    (srv.config_path.parent / "slow-bootstrap").write_text("0.5")
    srv.send_signal(signal.SIGHUP)
    srv.wait_for_log(r"reloading: replacing 2 workers")
    srv.send_signal(signal.SIGHUP)                               # while the first replacement boots
    srv.wait_for_log(r"reload complete", timeout=30)
    final = set(srv.wait_workers(2, timeout=20, exclude=old))
    assert not final & old
    (srv.config_path.parent / "slow-bootstrap").unlink()
    # The pool is whole and of one generation: a further reset completes too.
    result = run_cli("reset", "-c", str(srv.config_path), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "replaced 2 workers" in result.stdout
    assert not set(srv.wait_workers(2, exclude=final)) & final
    assert srv.stop() == 0


# ---- 10. a worker that pings and never reads its PONG ------------------------------------------------------

def test_a_worker_that_pings_without_reading_its_pong_is_a_broken_channel(serve):
    srv = serve(f"[server]\ncommand = {ROGUE}\n[pool]\nnum_workers = 1\n")
    before = pid_of(srv)
    with connect(srv, timeout=20) as sock:
        sock.sendall(b"GET /ping-flood HTTP/1.1\r\nHost: x\r\n\r\n")
        data, _ = read_until_closed(sock, timeout=20)
    assert data.startswith(b"HTTP/1.1 200 OK") and not data.endswith(b"0\r\n\r\n")   # broken off
    srv.wait_for_log(r"sent PING again before it read the last PONG; killing it")
    assert pid_of(srv) != before
    assert srv.stop() == 0


# ---- 13. a header the app built from the client's input ---------------------------------------------------

def test_cr_lf_in_a_header_the_app_built_is_its_500_and_the_worker_is_kept(serve):
    srv = serve_app(serve, APP.format(n=1))
    before = pid_of(srv)
    for _ in range(3):                                           # not one bootstrap per attacker request
        status, _, body = srv.request("GET", "/redirect?/x%0d%0aSet-Cookie:%20admin=1")
        assert (status, body) == (500, b"the application sent an invalid response head\n")
    assert srv.request("GET", "/redirect?/fine")[0] == 302
    assert pid_of(srv) == before
    srv.wait_for_log(r"response head is invalid: response header 'Location' contains")
    assert srv.stop() == 0


# ---- 14. HEAD on a streamed answer with its own Content-Length -------------------------------------------

def test_head_of_a_streamed_answer_with_its_own_length_keeps_the_connection(serve):
    srv = serve("[server]\napp = streaming_app:handle\n[pool]\nnum_workers = 1\n")
    status, headers, body = srv.request("GET", "/blocks?n=3&length=24")
    assert status == 200 and len(body) == 24, body
    with connect(srv) as sock:
        sock.sendall(b"HEAD /blocks?n=3&length=24 HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data, ending = read_until_closed(sock)
    head = data.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: 24" in head and b"Connection: close" not in head
    assert data.count(b"HTTP/1.1 200 OK") == 2                  # the same connection served the next request
    assert "shorter than its Content-Length" not in srv.log
    assert srv.stop() == 0
