"""The core against a live server: real master, real workers, 127.0.0.1 port 0.

Every test runs twice: with forked workers (`app = ...`) and with external workers
(`command = python -m minirr.worker ...`), which must behave the same.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import sys
import threading
import time

import pytest

from serverproc import RequestLoop, pid_alive, wait_until

APP = "minirr_testapp:create_app"


@pytest.fixture(params=["fork", "command"])
def mode(request):
    return request.param


def config(mode: str, app: str = APP, factory: bool = True, interface: str = "minirr", extra: str = "") -> str:
    if mode == "fork":
        server = f"app = {app}\nfactory = {str(factory).lower()}\ninterface = {interface}\n"
    else:
        flags = (" --factory" if factory else "") + (f" --interface {interface}" if interface != "minirr" else "")
        server = f"command = {sys.executable} -m minirr.worker {app}{flags}\n"
    return f"[server]\n{server}\n[pool]\nnum_workers = 2\n{extra}"


def get(srv, path, **kw):
    return srv.request("GET", path, **kw)


def test_round_trip(serve, mode):
    srv = serve(config(mode))
    status, headers, body = get(srv, "/")
    assert (status, body) == (200, b"Hello, world!")
    assert headers["content-length"] == "13" and "date" in headers and headers["content-type"] == "text/plain"


def test_ready_line_is_the_only_stdout_line(serve, mode):
    srv = serve(config(mode))
    assert srv.stdout_lines == [f"minirr listening on http://127.0.0.1:{srv.port}"]


def test_keep_alive_reuses_the_connection(serve, mode):
    srv = serve(config(mode))
    conn = srv.connection()
    for _ in range(5):
        conn.request("GET", "/")
        resp = conn.getresponse()
        assert resp.read() == b"Hello, world!"
        assert resp.getheader("Connection") is None
    conn.close()


def test_pipelined_requests_are_answered_in_order(serve, mode):
    srv = serve(config(mode))
    reqs = b"".join(f"GET /request?{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in range(5))
    data = srv.raw(reqs + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data.count(b"HTTP/1.1 200 OK") == 6
    positions = [data.index(f"GET /request {i} ".encode()) for i in range(5)]
    assert positions == sorted(positions)
    assert data.endswith(b"Hello, world!")


def test_pipelined_requests_then_half_close_are_all_answered(serve, mode):
    """Each request goes to a worker at once (one is ready): a half-closed client still
    gets every answer. (EOF while a request waits in the queue is a client gone:
    tests/test_job_life.py.)"""
    srv = serve(config(mode))
    assert get(srv, "/")[0] == 200                     # a worker is ready
    reqs = b"".join(f"GET /request?{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in range(3))
    data = srv.raw(reqs, shutdown=True)
    assert data.count(b"HTTP/1.1 200 OK") == 3


def test_head_has_no_body(serve, mode):
    srv = serve(config(mode))
    data = srv.raw(b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: 13\r\n" in data
    assert data.endswith(b"\r\n\r\n")


def test_http10_closes_unless_keep_alive(serve, mode):
    srv = serve(config(mode))
    data = srv.raw(b"GET / HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"Hello, world!")


def test_request_fields_reach_the_app(serve, mode):
    srv = serve(config(mode))
    status, _, body = get(srv, "/request?a=1&b=%20", headers={"X-Test": "yes"})
    assert body == f"GET /request a=1&b=%20 HTTP/1.1 http://127.0.0.1:{srv.port}/request?a=1&b=%20 127.0.0.1 yes".encode()


def test_repeated_response_headers(serve, mode):
    srv = serve(config(mode))
    data = srv.raw(b"GET /headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"X-Multi: a\r\nX-Multi: b\r\n" in data


def test_app_exception_gives_500_and_the_worker_carries_on(serve, mode):
    srv = serve(config(mode, extra="num_workers = 1\n").replace("num_workers = 2\n", ""))
    pid_before = get(srv, "/pid")[2]
    status, _, body = get(srv, "/raise")
    assert status == 500
    assert get(srv, "/pid")[2] == pid_before
    srv.wait_for_log(r"RuntimeError: boom from the app")


def test_crash_gives_502_and_a_new_worker(serve, mode):
    srv = serve(config(mode, extra="num_workers = 1\n").replace("num_workers = 2\n", ""))
    old = int(get(srv, "/pid")[2])
    status, _, _ = get(srv, "/crash")
    assert status == 502
    srv.wait_for_log(r"exited with status 7 while busy")
    new = int(get(srv, "/pid")[2])
    assert new != old and not pid_alive(old)


def test_max_jobs_recycles_with_zero_failures(serve, mode):
    srv = serve(config(mode, extra="max_jobs = 5\n"))
    pids = set()
    for _ in range(40):
        status, _, body = get(srv, "/pid")
        assert status == 200
        pids.add(int(body))
    assert len(pids) >= 4          # 2 workers, each recycled after 5..5 jobs (+15% jitter rounds down)
    srv.wait_for_log(r"stopped \(max_jobs\)")


def test_exec_ttl_gives_504_and_replaces_the_worker(serve, mode):
    srv = serve(config(mode, extra="num_workers = 1\n[supervisor]\nexec_ttl = 300ms\n").replace("num_workers = 2\n", ""))
    old = int(get(srv, "/pid")[2])
    status, _, body = get(srv, "/sleep?30")
    assert status == 504 and b"exec_ttl" in body
    srv.wait_for_log(r"exceeded exec_ttl")
    assert int(get(srv, "/pid")[2]) != old


def test_allocate_timeout_gives_503_with_retry_after(serve, mode):
    srv = serve(config(mode, extra="num_workers = 1\nallocate_timeout = 300ms\n").replace("num_workers = 2\n", ""))
    busy = threading.Thread(target=get, args=(srv, "/sleep?3"))
    busy.start()
    srv.wait_for_log(r"sleeping in")
    status, headers, body = get(srv, "/")
    busy.join()
    assert status == 503 and headers["retry-after"].isdigit() and b"allocate_timeout" in body


def test_queue_full_gives_503_at_once(serve, mode):
    srv = serve(config(mode, extra="num_workers = 1\nmax_queue_size = 1\n").replace("num_workers = 2\n", ""))
    results = []
    first = threading.Thread(target=lambda: results.append(get(srv, "/sleep?2")[0]))
    first.start()
    srv.wait_for_log(r"sleeping in")
    # One more fits in the queue; of the next two, exactly one finds the queue full.
    others = [threading.Thread(target=lambda: results.append(get(srv, "/")[0])) for _ in range(2)]
    for t in others:
        t.start()
    for t in [first] + others:
        t.join()
    assert sorted(results) == [200, 200, 503]


def test_5mb_body_echoed_intact(serve, mode):
    srv = serve(config(mode))
    body = os.urandom(5 * 1024 * 1024)
    status, _, echoed = srv.request("POST", "/echo", body=body, timeout=60)
    assert status == 200 and echoed == body


def test_chunked_body_is_dechunked(serve, mode):
    srv = serve(config(mode))
    data = srv.raw(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                   b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\nhello world")


def test_expect_100_continue(serve, mode):
    srv = serve(config(mode))
    with socket.create_connection((srv.host, srv.port), timeout=10) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        data = sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"hello")


def test_100_concurrent_clients(serve, mode):
    srv = serve(config(mode))
    results = []
    lock = threading.Lock()

    def client(i):
        status, _, body = srv.request("POST", "/echo", body=f"client {i}".encode(), timeout=30)
        with lock:
            results.append((status, body == f"client {i}".encode()))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count((200, True)) == 100


def test_client_gets_eof_after_close_even_across_a_respawn(serve, mode):
    """Fork hygiene: a client socket accepted before a worker was forked must not be kept
    open by that worker, or the client would never see EOF after `Connection: close`."""
    srv = serve(config(mode, extra="num_workers = 1\n").replace("num_workers = 2\n", ""))
    sock = socket.create_connection((srv.host, srv.port), timeout=10)
    old = int(get(srv, "/pid")[2])
    get(srv, "/crash")                               # forces a respawn while `sock` is open
    new = int(get(srv, "/pid")[2])
    assert new != old
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        chunk = sock.recv(65536)                     # times out (fails) if the EOF never comes
        if not chunk:
            break
        data += chunk
    sock.close()
    assert data.endswith(b"Hello, world!")


def test_workers_hold_no_master_descriptors(serve):
    """No listener, client socket, selector or other worker's pipe in a worker."""
    srv = serve(config("fork"))
    srv.wait_for_log(r"ready in", count=2)        # past the fork-to-cleanup window of both
    conn = srv.connection()
    conn.request("GET", "/")                      # a live client socket while we look
    conn.getresponse().read()
    targets = {}
    for pid in srv.wait_workers(2):
        targets[pid] = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    for pid, held in targets.items():
        assert not [t for t in held if t.startswith("socket:") or "eventpoll" in t], (pid, held)
    first, second = (set(t for t in held if t.startswith("pipe:")) for held in targets.values())
    assert not first & second, targets
    conn.close()


def test_stdout_and_stderr_are_relayed_with_the_pid(serve, mode):
    srv = serve(config(mode, extra="num_workers = 1\n").replace("num_workers = 2\n", ""))
    pid = int(get(srv, "/pid")[2])
    assert get(srv, "/print")[2] == b"printed"
    srv.wait_for_log(rf"\(pid {pid}\): hello from stdout")
    srv.wait_for_log(rf"\(pid {pid}\): hello from stderr")


def test_sigterm_drains_in_flight_request_and_exits_0(serve, mode):
    srv = serve(config(mode))
    workers = srv.wait_workers(2)
    result = {}

    def slow():
        result["resp"] = get(srv, "/sleep?1", timeout=30)

    t = threading.Thread(target=slow)
    t.start()
    srv.wait_for_log(r"sleeping in")
    srv.send_signal(signal.SIGTERM)
    assert srv.wait_exit(timeout=30) == 0
    t.join()
    assert result["resp"][0] == 200 and result["resp"][2] == b"slept"
    assert not [p for p in workers if pid_alive(p)]


def test_sighup_replaces_all_workers_with_zero_failures(serve, mode):
    srv = serve(config(mode))
    old = srv.wait_workers(2)
    with RequestLoop(srv, threads=4) as loop:
        srv.send_signal(signal.SIGHUP)
        new = srv.wait_workers(2, timeout=30, exclude=old)
        srv.wait_for_log("reload complete", timeout=30)
    assert loop.failures == []
    assert not set(new) & set(old)


def test_wsgi_app_under_validator(serve, mode):
    srv = serve(config(mode, app="minirr_testapp:create_validated_wsgi_app", interface="wsgi"))
    status, _, body = get(srv, "/some/path")
    assert (status, body) == (200, b"GET /some/path")
    assert "AssertionError" not in srv.log and "WSGIWarning" not in srv.log


def test_handler_object_with_handle_method(serve):
    srv = serve(config("fork", app="minirr_testapp:create_object_app"))
    assert get(srv, "/")[2] == b"Hello, world!"


def test_failing_bootstrap_backs_off_and_answers_503(serve, mode):
    srv = serve(config(mode, app="minirr_testapp:failing_factory", extra="num_workers = 1\n")
                .replace("num_workers = 2\n", ""))
    srv.wait_for_log(r"the database is down")
    srv.wait_for_log(r"before it was ready; next start in", count=3, timeout=20)
    status, headers, _ = get(srv, "/")
    assert status == 503 and "retry-after" in headers
    # Backing off, not spinning: the log shows growing delays and the master is mostly asleep.
    delays = [float(line.rsplit("next start in ", 1)[1].rstrip("s"))
              for line in srv.stderr_lines if "next start in" in line]
    assert delays[-1] > delays[0]
    assert _cpu_seconds(srv.proc.pid) < 2.0


def test_bootstrap_system_exit_logs_one_line(serve, mode):
    srv = serve(config(mode, app="minirr_testapp:exiting_factory", extra="num_workers = 1\n")
                .replace("num_workers = 2\n", ""))
    srv.wait_for_log(r"bootstrap failed: Vault at http://127.0.0.1:1: connection refused")
    assert "Traceback" not in srv.log


def _cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_workers_exit_when_the_master_is_killed(serve):
    srv = serve(config("fork"))
    workers = srv.wait_workers(2)
    srv.proc.kill()
    srv.proc.wait(10)
    wait_until(lambda: not [p for p in workers if pid_alive(p)], timeout=10, message="orphaned workers to exit")


def test_bad_config_exits_2_with_one_line(tmp_path):
    import subprocess
    (tmp_path / "rr.ini").write_text("[server]\napp = a:b\n[pool]\nnum_workers = lots\n")
    proc = subprocess.run([sys.executable, "-m", "minirr", "serve", "-c", str(tmp_path / "rr.ini")],
                          capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PYTHONPATH": str(__import__("serverproc").ROOT)})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "rr.ini" in lines[0] and "[pool] num_workers" in lines[0]


def test_worker_tracebacks_survive_a_warning_log_level(serve, mode):
    """Relayed worker lines keep their level: at `[logs] level = warning` an app's
    traceback (logged at ERROR in the worker) is still in the log, a print() is not."""
    srv = serve(config(mode, extra="num_workers = 1\n[logs]\nlevel = warning\n").replace("num_workers = 2\n", ""))
    assert get(srv, "/print")[2] == b"printed"
    assert get(srv, "/raise")[0] == 500
    # One worker, one pipe: once the traceback is relayed, the earlier print() was too.
    srv.wait_for_log(r"ERROR minirr: worker \d+ \(pid \d+\): \| RuntimeError: boom from the app")
    srv.wait_for_log(r"ERROR minirr: worker \d+ \(pid \d+\): minirr.worker: request failed")
    assert "hello from stdout" not in srv.log


def test_accepted_connections_have_nagle_off():
    """TCP_NODELAY is set once, on the listener; accepted sockets inherit it (bind() says
    why). Checked in-process, on the master's own accepted socket."""
    from minirr import config as config_module
    from minirr.master.server import Server
    cfg = config_module.parse("[server]\napp = x:y\n[http]\naddress = 127.0.0.1:0\n", path="t.ini")
    server = Server(cfg, launcher=None)
    server.bind()
    try:
        with socket.create_connection(server.address, timeout=5) as peer:
            peer.sendall(b"x")
            deadline = time.monotonic() + 10
            listener = server.front.listener
            while not listener.connections and time.monotonic() < deadline:
                listener.on_event(selectors.EVENT_READ)
            [client] = listener.connections.values()
            assert client.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            client.close()
    finally:
        server.front.close()
        server.loop.close()
