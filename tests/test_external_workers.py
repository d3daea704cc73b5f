"""External workers (`[server] command`): a PHP worker end to end, stray output on the
frame channel, and the environment a worker is started with. The launcher on its own
(CommandLauncher, its argv and environment) is tests/test_launch.py's.

test_server.py runs the whole core list with `command = python -m minirr.worker ...`;
this file covers what only external workers have.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional

import pytest

from serverproc import pid_alive, wait_until
from wire import StreamClient, assert_answer_completed, chunked_body, head_of

WORKERS = Path(__file__).resolve().parent / "workers"
PHP_WORKER = (WORKERS / "worker.php").read_text()
LEAKY_WORKER = f"{sys.executable} {WORKERS / 'leaky_worker.py'}"

needs_php = pytest.mark.skipif(shutil.which("php") is None,
                               reason="php is not on PATH (CI installs php-cli; apt-get install php-cli)")


# Two external workers: PHP (worker.php, copied next to rr.ini, so `php worker.php` resolves
# against the config's folder) and Python (leaky_worker.py, which runs without php-cli).
COMMANDS = {"php": "php worker.php", "python": LEAKY_WORKER}
BOTH_WORKERS = pytest.mark.parametrize("kind", [pytest.param("python"), pytest.param("php", marks=needs_php)])


def serve_command(serve, kind: str, extra: str = "", num_workers: int = 1, sections: str = "",
                  files: Optional[Dict[str, str]] = None, env: Optional[Dict[str, str]] = None):
    """`extra` goes into [pool]; `sections` (e.g. [server.env]) comes before it."""
    text = (f"[server]\ncommand = {COMMANDS[kind]}\n\n{sections}"
            f"[pool]\nnum_workers = {num_workers}\n{extra}")
    return serve(text, files={"worker.php": PHP_WORKER, **(files or {})}, env=env)


def serve_php(serve, extra: str = "", num_workers: int = 1):
    return serve_command(serve, "php", extra, num_workers)


def pid_of(srv) -> int:
    status, _, body = srv.request("GET", "/pid")
    assert status == 200, body
    return int(body)


# ---- start-up ---------------------------------------------------------------------------------

def test_a_missing_program_stops_minirr_with_one_line(tmp_path):
    (tmp_path / "rr.ini").write_text("[server]\ncommand = no-such-program-minirr worker.php\n")
    proc = subprocess.run([sys.executable, "-m", "minirr", "serve", "-c", str(tmp_path / "rr.ini")],
                          capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "rr.ini" in lines[0] and "[server] command" in lines[0] and "no-such-program-minirr" in lines[0]


def test_a_program_that_vanishes_is_a_failed_start_not_a_dead_master(serve, tmp_path):
    script = tmp_path / "bin" / "worker.sh"
    script.parent.mkdir()
    text = f"#!/bin/sh\nexec {sys.executable} {WORKERS / 'leaky_worker.py'}\n"
    script.write_text(text)
    script.chmod(0o755)
    srv = serve(f"[server]\ncommand = {script}\n[pool]\nnum_workers = 1\n")
    pid_of(srv)
    script.unlink()
    assert srv.request("GET", "/leak")[0] == 502               # the worker is gone; a new start fails
    srv.wait_for_log(r"could not be started: .*No such file or directory")
    status, headers, _ = srv.request("GET", "/pid")
    assert status == 503 and "retry-after" in headers
    script.write_text(text)
    script.chmod(0o755)
    srv.wait_for_log(r"ready in", count=2, timeout=60)          # after the back-off
    assert srv.request("GET", "/pid")[0] == 200


# ---- a PHP worker end to end ---------------------------------------------------------------

@needs_php
def test_php_worker_says_hello(serve):
    srv = serve_php(serve)
    status, headers, body = srv.request("GET", "/")
    assert (status, body) == (200, b"Hello from PHP")
    assert headers["content-type"] == "text/plain"


@needs_php
def test_php_worker_echoes_a_1mb_body(serve):
    srv = serve_php(serve)
    body = os.urandom(1024 * 1024)
    status, _, echoed = srv.request("POST", "/echo", body=body, timeout=60)
    assert status == 200 and echoed == body


@needs_php
def test_php_crash_gives_502_and_a_new_worker_serves(serve):
    srv = serve_php(serve)
    old = pid_of(srv)
    status, _, _ = srv.request("GET", "/crash")
    assert status == 502
    srv.wait_for_log(r"exited with status 3 while busy")
    srv.wait_for_log(rf"\(pid {old}\): crashing on purpose")    # its stderr, relayed
    new = pid_of(srv)
    assert new != old and not pid_alive(old)


@needs_php
def test_php_soft_error_gives_500_and_keeps_the_worker(serve):
    srv = serve_php(serve)
    before = pid_of(srv)
    status, _, _ = srv.request("GET", "/error")
    assert status == 500
    srv.wait_for_log(r"failed: 'something went wrong in PHP'")
    assert pid_of(srv) == before


@needs_php
def test_php_workers_are_recycled_after_max_jobs(serve):
    srv = serve_php(serve, "max_jobs = 3\n")
    pids = [pid_of(srv) for _ in range(10)]
    assert len(set(pids)) >= 3                   # 10 jobs, at most 3 per worker (jitter rounds to 0)
    srv.wait_for_log(r"stopped \(max_jobs\)")


@needs_php
def test_php_workers_stop_gracefully_on_sigterm(serve):
    srv = serve_php(serve, num_workers=2)
    workers = srv.wait_workers(2)
    srv.wait_for_log(r"ready in", count=2)       # a worker still starting is killed, not stopped
    assert srv.stop(signal.SIGTERM) == 0
    assert srv.log.count("stopped (shutdown)") == 2
    assert not [p for p in workers if pid_alive(p)]


# ---- a PHP worker streaming, as RoadRunner's HttpWorker::respond(200, $generator) does -------

PHP_CHUNKS_12 = b"".join(f"chunk {i}\n".encode() for i in range(12))


def body_so_far(buf: bytes) -> bytes:
    found = chunked_body(buf, complete=False)
    return found[0] if found else b""


def php_stream_left_by_its_client(srv, query: str) -> int:
    """Start a stream, take its first chunk, leave. -> the pid of the worker streaming it."""
    pid = pid_of(srv)
    with StreamClient(srv) as client:
        client.get(f"/stream?{query}")
        client.read_until(lambda buf: chunked_body(buf, complete=False), what="the first chunk")
        client.leave()
    return pid


@needs_php
def test_php_streams_a_generator_twice_then_answers_plainly_on_the_same_worker(serve):
    """12 chunks: STREAM frames, each repeating the head, PING on the 5th and 10th (the
    worker blocks until PONG), then a final frame without STREAM."""
    srv = serve_php(serve)
    pid = pid_of(srv)
    for _ in range(2):
        with StreamClient(srv) as client:
            client.get("/stream?n=12")
            assert_answer_completed(srv, "/stream?n=12")
            body, ended = client.read_until(chunked_body, what="the whole chunked body")
            status, headers, _ = head_of(client.buf)
            assert status == 200 and headers["content-type"] == "text/plain"
            assert headers["transfer-encoding"] == "chunked"
            assert body == PHP_CHUNKS_12 and ended
    assert srv.request("GET", "/")[2] == b"Hello from PHP"
    assert pid_of(srv) == pid


@needs_php
def test_php_stream_reaches_the_client_chunk_by_chunk_through_its_pings(serve):
    """The master answers each PING with a PONG: a worker that waits for it goes on, and
    all 12 chunks arrive (whether the answer then ends is the test above)."""
    srv = serve_php(serve)
    with StreamClient(srv) as client:
        client.get("/stream?n=12")
        client.read_until(lambda buf: body_so_far(buf) == PHP_CHUNKS_12, what="all 12 chunks")


@needs_php
def test_php_client_leaving_mid_stream_stops_the_generator_and_frees_the_worker(serve, tmp_path):
    srv = serve_php(serve)
    marker = tmp_path / "finally"
    pid = php_stream_left_by_its_client(srv, f"n=100000&delay_ms=10&marker={marker}")
    wait_until(lambda: marker.exists() and marker.read_text(), timeout=10, message="the generator's finally")
    assert int(marker.read_text()) == pid
    assert srv.request("GET", "/")[2] == b"Hello from PHP"
    assert pid_of(srv) == pid


@needs_php
@pytest.mark.parametrize("exec_ttl", [
    "0",
    "60s",
])
def test_php_worker_that_streams_on_after_stop_is_killed_after_destroy_timeout(serve, exec_ttl):
    """It ignores STOP and would stream for 5 s more (1000 chunks, 5 ms apart): the master
    kills it destroy_timeout (1 s) after the STOP, and the next request goes to a new one."""
    srv = serve_php(serve, f"destroy_timeout = 1s\n[supervisor]\nexec_ttl = {exec_ttl}\n")
    old = php_stream_left_by_its_client(srv, "n=1000&delay_ms=5&ignore_stop=1")
    assert pid_of(srv) != old                   # queued until then: a new worker, or the old one once free
    srv.wait_for_log(r"went on with a request whose answer is over, past its deadline \(destroy_timeout 1s")


# ---- process hygiene -----------------------------------------------------------------------

def test_command_workers_hold_only_their_three_standard_streams(serve):
    """close_fds=True: no listener, client socket, selector or other worker's pipe leaks in."""
    srv = serve_command(serve, "python", num_workers=2)
    # Both must have exec'd and answered the handshake: between fork and exec a child
    # still holds the master's descriptors (subprocess closes them just before exec).
    srv.wait_for_log(r"ready in", count=2)
    conn = srv.connection()
    conn.request("GET", "/pid")                   # a live client socket while we look
    conn.getresponse().read()
    held = {}
    for pid in srv.wait_workers(2):
        held[pid] = {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    conn.close()
    for pid, fds in held.items():
        assert [fd for fd, target in fds.items() if fd > 2 and not target.startswith("/")] == [], (pid, fds)
        assert fds[0].startswith("pipe:") and fds[1].startswith("pipe:") and fds[2].startswith("pipe:")
    first, second = (set(fds.values()) for fds in held.values())
    assert not first & second, held


@BOTH_WORKERS
def test_command_workers_exit_when_the_master_is_killed(serve, kind):
    """SIGKILL leaves no time to stop anyone: the workers see EOF on stdin and exit."""
    srv = serve_command(serve, kind, num_workers=2)
    workers = srv.wait_workers(2)
    srv.proc.kill()
    srv.proc.wait(10)
    wait_until(lambda: not [p for p in workers if pid_alive(p)], timeout=10, message="orphaned workers to exit")


# ---- the environment -------------------------------------------------------------------

@BOTH_WORKERS
def test_server_env_and_roadrunner_variables_reach_the_worker(serve, kind):
    srv = serve_command(serve, kind, sections="[server.env]\nAPP_GREETING = hello ${MINIRR_TEST_NAME}\n\n",
                        env={"MINIRR_TEST_NAME": "tester"})
    assert srv.request("GET", "/env?APP_GREETING")[2] == b"hello tester"
    assert srv.request("GET", "/env?RR_RELAY")[2] == b"pipes"
    assert srv.request("GET", "/env?RR_MODE")[2] == b"http"
    assert srv.request("GET", "/env?MINIRR_TEST_NAME")[2] == b"tester"      # inherited
    assert srv.request("GET", "/env?RR_RPC")[0] == 404                        # unix control socket


# ---- stray output on the frame channel ---------------------------------------------------

def test_stray_output_in_a_request_is_logged_answered_502_and_the_worker_replaced(serve):
    srv = serve_command(serve, "python")
    old = pid_of(srv)
    status, _, _ = srv.request("GET", "/leak")
    assert status == 502
    line = srv.wait_for_log(r"broke the frame channel")[0]
    assert f"(pid {old})" in line and "it sent: 'debug: a stray line on stdout in a request" in line
    new = pid_of(srv)
    assert new != old and not pid_alive(old)


def test_stray_output_before_the_handshake_is_logged_and_the_next_worker_serves(serve):
    srv = serve_command(serve, "python", files={"leak-at-start": ""})
    line = srv.wait_for_log(r"broke the frame channel")[0]
    assert "it sent: 'debug: a stray line on stdout before the handshake" in line
    srv.wait_for_log(r"worker 2 \(pid \d+\) ready")
    status, _, body = srv.request("GET", "/pid")
    assert status == 200 and int(body) in srv.workers()
