"""Containment: the master never hangs, never hands one client another's answer, never grows
without bound — whatever clients, workers, apps, their children and operator peers do.

Each test starts a real server with real workers and plays the attacker or the buggy app.
Memory is read from /proc; "promptly" means within a deadline any machine meets.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from minirr.master import control
from minirr.wire import frame
from serverproc import ROOT, pid_alive, run_cli, wait_until
from wire import connect, exchange, parse_responses, read_until_closed

APPS = ROOT / "tests" / "apps"
WORKERS = ROOT / "tests" / "workers"
FAULTY = [sys.executable, str(APPS / "faulty_master.py")]
ROGUE = f"{sys.executable} {WORKERS / 'rogue_worker.py'}"
APP = "[server]\napp = containment_app:create_app\nfactory = true\n[pool]\nnum_workers = {n}\n"


def app_config(n: int = 1, extra: str = "") -> str:
    return APP.format(n=n) + extra


def rogue_config(extra: str = "") -> str:
    return f"[server]\ncommand = {ROGUE}\n[pool]\nnum_workers = 1\n{extra}"


def get(srv, path: str, timeout: float = 10.0):
    return srv.request("GET", path, timeout=timeout)


def pid_of(srv) -> int:
    status, _, body = get(srv, "/pid")
    assert status == 200, body
    return int(body)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def max_growth(pid: int, before_mb: float, seconds: float) -> float:
    """The largest RSS growth of `pid` over `before_mb` seen in `seconds` of sampling."""
    grown = 0.0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        grown = max(grown, rss_mb(pid) - before_mb)
        time.sleep(0.05)        # the sampling interval
    return grown


def kill_pids_in(path: Path) -> None:
    """End the processes an app started and wrote down (they are not the master's children)."""
    if not path.exists():
        return
    for line in path.read_text().split():
        try:
            os.kill(int(line), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


# ---- 1. an exception in a callback is contained where it belongs ------------------------------

def test_a_client_callback_failing_answers_that_client_500_and_nobody_else(serve):
    srv = serve(app_config(2), entry=FAULTY, env={"MINIRR_FAULT": "client"})
    data, ending = exchange(srv, b"GET /fault HTTP/1.1\r\nHost: x\r\n\r\n")
    assert [r[0] for r in parse_responses(data)] == [500] and ending == "eof"
    assert get(srv, "/pid")[0] == 200
    assert srv.log.count("injected fault in the frontend") == 1     # one traceback, logged once
    srv.wait_for_log(r"ERROR minirr: 127\.0\.0\.1: the connection failed; closing it")
    assert srv.stop() == 0


def test_a_worker_callback_failing_replaces_that_worker_only(serve):
    srv = serve(app_config(1), entry=FAULTY, env={"MINIRR_FAULT": "worker"})
    before = pid_of(srv)
    assert get(srv, "/fault")[0] == 502
    srv.wait_for_log("handling its channel failed; killing it")
    after = pid_of(srv)
    assert after != before
    assert srv.log.count("injected fault in the backend") == 1
    assert srv.stop() == 0


def test_an_operator_peer_callback_failing_drops_that_peer_only(serve):
    srv = serve(app_config(1, "[status]\naddress = 127.0.0.1:0\n"), entry=FAULTY, env={"MINIRR_FAULT": "peer"})
    status_url = [line for line in srv.stdout_lines if "minirr status on" in line][0].rsplit("/", 1)[-1]
    host, port = status_url.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /fault HTTP/1.1\r\nHost: x\r\n\r\n")
        data, _ = read_until_closed(sock)
    assert [r[0] for r in parse_responses(data)] == [500]
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data, _ = read_until_closed(sock)
    assert [r[0] for r in parse_responses(data)] == [200]
    assert get(srv, "/pid")[0] == 200
    assert srv.stop() == 0


def test_whatever_escapes_the_loop_ends_in_an_orderly_exit_with_status_1(serve):
    srv = serve(app_config(2), entry=FAULTY, env={"MINIRR_FAULT": "escape"})
    workers = srv.wait_workers(2)
    (srv.config_path.parent / "escape").write_text("")
    assert srv.wait_exit(timeout=20) == 1
    assert "the master failed; closing the listeners and stopping the workers" in srv.log
    wait_until(lambda: not [p for p in workers if pid_alive(p)], timeout=10, message="workers to exit")
    with pytest.raises(OSError):
        socket.create_connection((srv.host, srv.port), timeout=2).close()
    assert not (srv.config_path.parent / "minirr.sock").exists()


# ---- 2. a stop racing new connections --------------------------------------------------------

def test_sigterm_racing_new_connections_exits_0_without_a_traceback(serve):
    for attempt in range(3):
        srv = serve(app_config(1))
        stop = threading.Event()

        def hammer():
            while not stop.is_set():
                try:
                    with socket.create_connection((srv.host, srv.port), timeout=2) as sock:
                        sock.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        sock.recv(100)
                except OSError:
                    pass
        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: srv.log.count("minirr.access") >= 20, timeout=20, message="a busy loop")
            srv.send_signal(signal.SIGTERM)
            assert srv.wait_exit(timeout=30) == 0, srv.log[-3000:]
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert "Traceback" not in srv.log and "Bad file descriptor" not in srv.log


# ---- 3. what workers and control peers send is checked ----------------------------------------

@pytest.mark.parametrize("path", ["/headers-list", "/headers-str", "/header-number", "/header-null", "/status-103"])
def test_a_response_head_the_app_got_wrong_is_500_and_the_worker_is_kept(serve, path):
    """The frames are fine, the head is a JSON object: what is wrong is the app's answer to
    this one request (wire-protocol reference: a broken response, the worker stays)."""
    srv = serve(rogue_config())
    before = pid_of(srv)
    status, _, body = get(srv, path)
    assert (status, body) == (500, b"the application sent an invalid response head\n")
    srv.wait_for_log("the application's response head is invalid")
    assert pid_of(srv) == before
    assert srv.stop() == 0


def test_a_response_head_that_is_no_json_object_is_502_and_the_worker_is_replaced(serve):
    srv = serve(rogue_config())
    before = pid_of(srv)
    status, _, body = get(srv, "/deep-head")
    assert status == 502, body
    srv.wait_for_log("sent an invalid response")
    assert pid_of(srv) != before
    assert srv.stop() == 0


def test_a_1xx_final_status_from_a_native_app_is_500_and_the_worker_is_kept(serve):
    srv = serve(app_config(1))
    before = pid_of(srv)
    assert get(srv, "/status-103")[0] == 500
    srv.wait_for_log(r"response status 103 is outside 200\.\.599")
    assert pid_of(srv) == before
    assert srv.stop() == 0


def test_a_deeply_nested_handshake_is_a_failed_start_not_a_dead_master(serve):
    srv = serve(rogue_config(), env={"ROGUE_HANDSHAKE": "deep"}, wait_ready=True)
    srv.wait_for_log("answered the handshake with", count=2, timeout=20)   # and again, after a back-off
    assert get(srv, "/pid")[0] == 503
    assert srv.stop() == 0


def test_a_deeply_nested_control_call_gets_an_error_answer(serve):
    srv = serve(app_config(1))
    address = str(srv.config_path.parent / "minirr.sock")
    name = b"workers"
    payload = name + b'{"x":' + b"[" * 100000 + b"]" * 100000 + b"}"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(address)
        sock.sendall(frame.encode(frame.CODEC_JSON, payload, (7, len(name))))
        decoder = frame.FrameDecoder()
        answers = []
        while not answers:
            data = sock.recv(65536)
            assert data, "closed without an answer"
            answers = decoder.feed(data)
    answer = control.decode_answer(answers[0])
    assert answer.seq == 7 and "nested too deeply" in answer.error
    assert run_cli("workers", "-c", str(srv.config_path)).returncode == 0
    assert srv.stop() == 0


# ---- 4. a frame header cannot make the master allocate what it announces -----------------------

def test_a_frame_over_max_frame_size_breaks_the_channel_at_once(serve):
    srv = serve(rogue_config())
    before = pid_of(srv)
    assert get(srv, "/huge-frame")[0] == 502
    srv.wait_for_log("exceeds 268435456")
    assert pid_of(srv) != before
    assert srv.stop() == 0


def test_a_2_gib_frame_allowed_by_max_frame_size_costs_the_master_what_arrives(serve):
    srv = serve(rogue_config("max_frame_size = 3GB\ndestroy_timeout = 2s\n[http]\nbody_timeout = 1s\n"))
    before_mb = rss_mb(srv.proc.pid)
    with connect(srv) as sock:
        sock.sendall(b"GET /huge-frame HTTP/1.1\r\nHost: x\r\n\r\n")
        head = sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: 2147483621" in head
        grown = max_growth(srv.proc.pid, before_mb, seconds=1.0)
    assert grown < 32, f"the master grew by {grown:.0f} MB"
    assert srv.stop(timeout=60) == 0


# ---- 5. one client never receives another's answer ------------------------------------------

def test_two_answers_for_one_request_break_the_channel(serve):
    srv = serve(rogue_config())
    before = pid_of(srv)
    status, _, body = get(srv, "/double")
    assert status == 200 and int(body) == before          # the first answer is this client's
    srv.wait_for_log("sent a frame after its final response frame")
    assert pid_of(srv) != before                          # the second never reaches anyone


def test_an_answer_with_no_request_in_flight_breaks_the_channel(serve):
    srv = serve(rogue_config())
    before = pid_of(srv)
    assert get(srv, "/double-idle")[0] == 200
    srv.wait_for_log("sent a frame with no request in flight")
    assert pid_of(srv) != before


@pytest.mark.parametrize("path", ["/fork-raise", "/fork-return"])
def test_a_child_the_handler_forks_never_writes_on_the_channel(serve, path):
    srv = serve(app_config(1))
    worker = pid_of(srv)
    status, _, body = get(srv, path)
    assert (status, body) == (200, f"parent {worker}".encode())
    srv.wait_for_log("returned into the worker loop; it exits without answering")
    for _ in range(5):                                    # the next clients get their own answers
        assert get(srv, "/pid")[2] == str(worker).encode()
    assert "broke" not in srv.log and "after its final" not in srv.log
    assert srv.stop() == 0


# ---- 6. a helper process cannot hide its worker's exit ----------------------------------------

# The master, with multiprocessing's wait on a sentinel pipe made visible: the reap of a
# worker must never wait there (a helper the app forked holds the pipe open, so the wait
# would last its whole timeout, with the loop stopped for every client).
WATCHED_MASTER = [sys.executable, "-c", """
import multiprocessing.connection, sys
from minirr import cli
real_wait = multiprocessing.connection.wait
def wait(object_list, timeout=None):
    sys.stderr.write(f"TEST: waited on a sentinel (timeout {timeout})\\n")
    return real_wait(object_list, timeout)
multiprocessing.connection.wait = wait
sys.exit(cli.main())
"""]


def test_a_helper_process_outliving_its_worker_does_not_hide_or_delay_the_exit(serve):
    srv = serve("[server]\napp = containment_app:create_app_with_helper\nfactory = true\n[pool]\nnum_workers = 1\n",
                entry=WATCHED_MASTER)
    helpers = srv.config_path.parent / "helper.pid"
    try:
        wait_until(helpers.exists, message="the helper's pid")
        waits_at_start = srv.log.count("TEST: waited on a sentinel")   # the preflight's join
        for crash in range(1, 4):                  # several exits in a row, each helper still alive
            before = pid_of(srv)
            started = time.monotonic()
            assert get(srv, "/crash")[0] == 502
            assert time.monotonic() - started < 5  # not the 10 s request timeout: the exit was seen
            assert pid_of(srv) != before
            srv.wait_for_log(r"exited with status 7 while busy; request answered 502", count=crash)
        assert all(pid_alive(int(pid)) for pid in helpers.read_text().split())
        assert srv.log.count("TEST: waited on a sentinel") == waits_at_start, srv.log
        assert srv.stop(timeout=30) == 0
    finally:
        kill_pids_in(helpers)


# ---- 7. worker output cannot starve or livelock the master -------------------------------------

def test_a_chatty_child_left_behind_does_not_livelock_the_master(serve):
    srv = serve(app_config(1))
    yes_pid_file = srv.config_path.parent / "yes.pid"
    try:
        assert get(srv, "/spawn-yes")[0] == 200
        yes_pid = int(yes_pid_file.read_text())
        assert get(srv, "/crash")[0] == 502
        srv.wait_for_log("of its output (were|was) not relayed")
        assert get(srv, "/pid")[0] == 200                 # the master serves again
        wait_until(lambda: not pid_alive(yes_pid), timeout=10, message="`yes` to die of its closed pipe")
        assert srv.stop() == 0
    finally:
        kill_pids_in(yes_pid_file)


def test_a_worker_printing_many_lines_does_not_starve_other_clients(serve):
    """Between two requests of another client, answered one after the other, the master
    relays at most a few rounds' budget of the flooding worker's lines: the relay waits its
    turn instead of running the whole pipe through the log at once."""
    srv = serve(app_config(2, "[logs]\nlevel = info\n"))
    flooding = threading.Thread(target=get, args=(srv, "/flood?300000", 60.0))
    flooding.start()
    try:
        srv.wait_for_log("flood line", timeout=20)
        for _ in range(5):
            assert get(srv, "/pid")[0] == 200
    finally:
        flooding.join()
    lines = srv.stderr_lines
    access = [i for i, line in enumerate(lines) if '"GET /pid' in line]
    gaps = [sum(1 for line in lines[a:b] if "flood line" in line) for a, b in zip(access, access[1:])]
    assert max(gaps) < 3000, gaps      # one 64 KB read alone holds about 6000 of these lines
    assert srv.stop(timeout=60) == 0


# ---- 8. slow request bodies end in 408 in bounded time ------------------------------------------

def test_a_trickled_body_ends_in_408_below_min_body_rate(serve):
    srv = serve(app_config(1, "[http]\nbody_timeout = 1s\nmin_body_rate = 1KB\n"))
    with connect(srv) as sock:
        sock.sendall(b"POST /pid HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        sock.settimeout(0.1)
        received = b""
        ending = ""
        deadline = time.monotonic() + 20
        while not ending and time.monotonic() < deadline:
            try:
                if not received:
                    sock.sendall(b"x")                    # one byte per tenth of a second ...
                chunk = sock.recv(4096)                   # ... and a look for the answer
            except socket.timeout:
                continue
            except OSError as exc:
                ending = repr(exc)
                break
            received += chunk
            if not chunk:
                ending = "eof"
    assert received.startswith(b"HTTP/1.1 408"), f"{received!r} {ending}\n{srv.log}"
    assert b"below min_body_rate" in received
    srv.wait_for_log(r"rejected with 408: request body arrived at \d+ bytes/s, below min_body_rate")
    assert srv.stop() == 0


# ---- 9. slow readers are dropped, and their memory with them -----------------------------------

def test_a_trickle_reader_is_dropped_in_bounded_time(serve):
    """4 KB every tenth of a second, far below min_send_rate: the master closes the
    connection long before the answer is read, by the send-rate rule or, when the kernel's
    buffers hide the trickle from it, by the no-progress rule (both bounded by
    body_timeout; the rate rule itself is tested with time passed in, in test_lifecycle.py).
    The kernel still holds megabytes for the client then, so its EOF comes much later:
    the master's log says when it let go."""
    import re
    srv = serve(app_config(1, "[http]\nbody_timeout = 1s\nmin_send_rate = 1MB\n"))
    closed = re.compile(r"127\.0\.0\.1: (response read at \d+ bytes/s, below min_send_rate|response not read for 1s); closed")
    with connect(srv) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /bytes?50000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(0.1)
        deadline = time.monotonic() + 20
        while not closed.search(srv.log) and time.monotonic() < deadline:
            try:
                sock.recv(4096)
            except socket.timeout:
                pass
    assert closed.search(srv.log), srv.log
    assert get(srv, "/pid")[0] == 200                     # its worker is free again
    assert srv.stop() == 0


def test_non_reading_clients_hold_a_bounded_part_of_a_large_answer(serve):
    """Four clients that read nothing of a 10 MB answer each: each answer waits at its
    worker (backpressure), so the master holds about HIGH_WATER_BYTES per client."""
    srv = serve(app_config(4, "[http]\nbody_timeout = 60s\n"))
    srv.wait_workers(4)
    before_mb = rss_mb(srv.proc.pid)
    socks = []
    try:
        for _ in range(4):
            sock = connect(srv)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"GET /bytes?10000000 HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 OK")   # its answer is under way
            socks.append(sock)
        # Watch the master for two seconds (a window, not a wait for something): without
        # backpressure it reads all 40 MB into its buffers within a fraction of that.
        grown = max_growth(srv.proc.pid, before_mb, seconds=2.0)
        assert grown < 16, f"the master grew by {grown:.0f} MB for 4 clients that do not read"
    finally:
        for sock in socks:
            sock.close()
    assert get(srv, "/pid")[0] == 200
    assert srv.stop(timeout=60) == 0


# ---- 10. operator endpoints have the same protections -------------------------------------------

def status_address(srv):
    line = [line for line in srv.stdout_lines if "minirr status on" in line][0]
    host, port = line.rsplit("/", 1)[-1].split(":")
    return host, int(port)


def metrics_address(srv):
    line = [line for line in srv.stdout_lines if "minirr metrics on" in line][0]
    host, port = line.rsplit("/", 1)[-1].split(":")
    return host, int(port)


def test_pipelined_metrics_requests_without_reading_do_not_grow_the_master(serve):
    """A scraper that pipelines requests and reads nothing: the master answers one at a time
    and stops reading once the unanswered ones pile up, so the client's writes block."""
    import select as select_module
    srv = serve(app_config(1, "[metrics]\naddress = 127.0.0.1:0\n"))
    before_mb = rss_mb(srv.proc.pid)
    with socket.create_connection(metrics_address(srv), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 100
        sent = 0
        deadline = time.monotonic() + 3            # three seconds of trying to push requests in
        while time.monotonic() < deadline and sent < 50 * 1024 * 1024:
            if select_module.select([], [sock], [], 0.05)[1]:
                try:
                    sent += sock.send(request)
                except BlockingIOError:
                    pass
                except (ConnectionResetError, BrokenPipeError):
                    break                              # closed: it took nothing for PEER_SEND_TIMEOUT_S
        grown = rss_mb(srv.proc.pid) - before_mb
    assert sent < 5 * 1024 * 1024, f"the master took {sent} bytes of requests it could not answer"
    assert grown < 10, f"the master grew by {grown:.0f} MB"
    assert srv.stop() == 0


def test_idle_peers_never_lock_a_probe_out(serve):
    srv = serve(app_config(1, "[status]\naddress = 127.0.0.1:0\n"))
    idle = [socket.create_connection(status_address(srv), timeout=10) for _ in range(40)]
    try:
        with socket.create_connection(status_address(srv), timeout=10) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data, _ = read_until_closed(sock)
        assert [r[0] for r in parse_responses(data)] == [200]
        srv.wait_for_log("the most allowed; closing the one stuck longest")
    finally:
        for sock in idle:
            sock.close()
    assert srv.stop() == 0


def test_idle_control_peers_never_lock_the_cli_out(serve):
    srv = serve(app_config(1))
    address = str(srv.config_path.parent / "minirr.sock")
    idle = []
    try:
        for _ in range(40):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(address)
            idle.append(sock)
        proc = run_cli("workers", "--json", "-c", str(srv.config_path))
        assert proc.returncode == 0, proc.stderr
        assert len(json.loads(proc.stdout)["workers"]) == 1
    finally:
        for sock in idle:
            sock.close()
    assert srv.stop() == 0


def test_an_idle_operator_peer_is_closed_promptly(serve):
    srv = serve(app_config(1, "[status]\naddress = 127.0.0.1:0\n"))
    with socket.create_connection(status_address(srv), timeout=30) as sock:
        assert sock.recv(10) == b""                       # closed by the master, not by us
    assert srv.stop() == 0


# ---- 11. a reload whose new bootstrap fails keeps the old workers --------------------------------

def test_a_failing_reload_keeps_the_old_workers_and_reset_says_why(serve):
    srv = serve(app_config(2))
    old = srv.wait_workers(2)
    srv.wait_for_log(r"ready in \d+ms", count=2)          # both bootstraps are done
    (srv.config_path.parent / "fail-bootstrap").write_text("")
    failures = []

    def load():
        while not done.is_set():
            if get(srv, "/pid")[0] != 200:
                failures.append(1)
    done = threading.Event()
    loader = threading.Thread(target=load)
    loader.start()
    try:
        proc = run_cli("reset", "-c", str(srv.config_path))
    finally:
        done.set()
        loader.join()
    assert proc.returncode == 1
    assert "reset failed" in proc.stderr and "the new bootstrap fails: fail-bootstrap exists" in proc.stderr
    assert proc.stderr.startswith("minirr: reset failed: worker ") and proc.stderr.count("reset failed") == 1
    assert failures == []
    assert sorted(srv.workers()) == sorted(old), srv.log     # the old workers serve on
    srv.wait_for_log("reload stopped: worker .* failed to start")
    # Fixed: the next reset starts at once, whatever the boot back-off says.
    (srv.config_path.parent / "fail-bootstrap").unlink()
    proc = run_cli("reset", "-c", str(srv.config_path))
    assert proc.returncode == 0, proc.stderr
    assert "replaced 2 workers" in proc.stdout
    assert not set(srv.workers()) & set(old)
    assert srv.stop() == 0


def test_a_failing_sighup_reload_keeps_the_old_workers(serve):
    srv = serve(app_config(1))
    old = srv.wait_workers(1)
    srv.wait_for_log(r"ready in \d+ms")
    (srv.config_path.parent / "fail-bootstrap").write_text("")
    srv.send_signal(signal.SIGHUP)
    srv.wait_for_log("reload stopped")
    assert srv.workers() == old and get(srv, "/pid")[0] == 200
    assert srv.stop() == 0


# ---- 13. a log nobody reads never blocks the loop ------------------------------------------------

def test_an_unread_stderr_pipe_never_blocks_the_master(serve, tmp_path):
    """stderr is a pipe nobody reads: a worker's 200,000 lines (some 8 MB of log) cannot be
    written, yet every request is answered; what could not be kept is counted and said."""
    read_end, write_end = os.pipe()
    try:
        srv = serve(app_config(2), stderr=write_end)
        assert srv.request("GET", "/flood?200000", timeout=60)[0] == 200
        for _ in range(20):
            assert srv.request("GET", "/pid", timeout=10)[0] == 200
        os.set_blocking(read_end, False)
        seen = b""
        deadline = time.monotonic() + 30
        while b"log lines were dropped" not in seen and time.monotonic() < deadline:
            try:
                seen = (seen + os.read(read_end, 1 << 20))[-4096:]
            except BlockingIOError:
                assert srv.request("GET", "/pid")[0] == 200   # a round: the master writes what it kept
        assert b"log lines were dropped: stderr was not being read" in seen
        assert srv.stop() == 0
    finally:
        os.close(read_end)
        os.close(write_end)
