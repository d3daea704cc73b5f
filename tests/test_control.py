"""The control socket and `minirr workers | reset | stop`: the codec, then a live server."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading

import pytest

from minirr import remote
from minirr.master import control
from minirr.wire import frame
from minirr.master.control import Call, ControlError, TCPAddress, UnixAddress
from minirr.wire.frame import FrameDecoder
from serverproc import ROOT, pid_alive, run_cli, wait_until

CONFIG = """[server]
app = minirr_testapp:create_app
factory = true
[pool]
num_workers = 2
destroy_timeout = 10s
reset_timeout = 20s
"""


def decode_three_ways(data: bytes) -> list:
    """Whole, byte by byte, and with trailing data: the decoder must give the same frames."""
    whole = FrameDecoder().feed(data)
    decoder = FrameDecoder()
    split = [f for i in range(len(data)) for f in decoder.feed(data[i:i + 1])]
    trailing = FrameDecoder().feed(data + data[:5])
    assert whole == split == trailing
    return whole


# ---- the codec ------------------------------------------------------------------------------

def test_call_round_trip():
    (item,) = decode_three_ways(control.encode_call(7, "stop", {"force": True}))
    assert control.decode_call(item) == Call(7, "stop", {"force": True})
    assert item.options == (7, 4) and item.payload.startswith(b"stop{")


def test_answer_and_error_round_trip():
    items = decode_three_ways(control.encode_answer(3, "workers", {"pid": 1, "workers": []})
                              + control.encode_error(4, "reset", "the server is stopping"))
    ok, err = (control.decode_answer(item) for item in items)
    assert (ok.seq, ok.method, ok.result, ok.error) == (3, "workers", {"pid": 1, "workers": []}, "")
    assert (err.seq, err.method, err.error) == (4, "reset", "the server is stopping")


@pytest.mark.parametrize("bad", [
    frame.Frame(frame.CODEC_RAW, b"workers{}", (1, 7)),          # not JSON
    frame.Frame(frame.CODEC_JSON, b"workers{}", (1,)),           # one option
    frame.Frame(frame.CODEC_JSON, b"workers", (1, 70)),          # method longer than payload
    frame.Frame(frame.CODEC_JSON, b"workers[1]", (1, 7)),        # JSON not an object
    frame.Frame(frame.CODEC_JSON, b"workers{", (1, 7)),          # broken JSON
])
def test_invalid_calls_raise(bad):
    with pytest.raises(ControlError):
        control.decode_call(bad)


def test_call_parser_counts_pipelined_calls_in_bytes():
    """Calls decoded but not handed out yet count as the bytes they came in, so a
    connection's pipeline_limit bounds them (counted one a call, 2,000 calls of 60 KB
    held behind a pending reset were 117 MB)."""
    call = control.encode_call(1, "workers", {"pad": "x" * 60_000})
    parser = control.CallParser()
    parser.receive_data(call * 3 + call[:100])
    assert parser.buffered_bytes == 3 * len(call) + 100
    assert parser.next_event().seq == 1
    assert parser.buffered_bytes == 2 * len(call) + 100
    parser.receive_data(call[100:])
    for _ in range(3):
        parser.next_event()
    assert parser.buffered_bytes == 0 and parser.next_event() is control.NEED_DATA


def test_call_parser_byte_count_is_the_same_however_the_bytes_arrive():
    calls = b"".join(control.encode_call(seq, "workers", {"n": "y" * seq}) for seq in range(1, 6))
    parser = control.CallParser()
    for i in range(len(calls)):
        parser.receive_data(calls[i:i + 1])
        assert parser.buffered_bytes == i + 1
    assert [parser.next_event().seq for _ in range(5)] == [1, 2, 3, 4, 5]
    assert parser.buffered_bytes == 0


def test_listen_addresses(tmp_path):
    assert control.parse_listen("unix:minirr.sock", "/srv/app") == UnixAddress("/srv/app/minirr.sock")
    assert control.parse_listen("unix:/run/x.sock", "/srv/app") == UnixAddress("/run/x.sock")
    assert control.parse_listen("tcp://127.0.0.1:6001", "/srv") == TCPAddress("127.0.0.1", 6001)
    with pytest.raises(ControlError, match="longer than 107 bytes"):
        control.parse_listen("unix:" + "x" * 120, "/srv")



# ---- against a live server ---------------------------------------------------------------------

def cli(srv, *args, timeout=60):
    return run_cli(args[0], "-c", str(srv.config_path), *args[1:], timeout=timeout)


def get(srv, path, **kw):
    return srv.request("GET", path, **kw)


def test_workers_rows_match_the_pids_the_app_reports(serve):
    srv = serve(CONFIG)
    pids = srv.wait_workers(2)
    served = wait_until(lambda: {int(get(srv, "/pid")[2]) for _ in range(6)} == set(pids) or None,
                        message="both workers to answer /pid")
    proc = cli(srv, "workers")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["PID", "Status", "Execs", "In-flight", "Memory", "CPU%", "Created"]
    rows = [line.split() for line in lines[1:]]
    assert sorted(int(row[0]) for row in rows) == pids and served
    for row in rows:
        assert row[1] == "ready" and int(row[2]) >= 1 and row[3] == "0"       # idle: nothing in flight
        assert row[5] in ("KB", "MB") and float(row[4]) > 0
        assert float(row[6]) >= 0
        assert row[-1] == "ago" or row[-2:] == ["just", "now"]


def test_workers_json_counts_every_request(serve):
    srv = serve(CONFIG)
    srv.wait_for_log(r"worker \d+ \(pid \d+\) ready in", count=2)
    for _ in range(5):
        assert get(srv, "/")[0] == 200
    proc = cli(srv, "workers", "--json")
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["pid"] == srv.proc.pid
    assert sorted(w["pid"] for w in answer["workers"]) == srv.wait_workers(2)
    assert sum(w["execs"] for w in answer["workers"]) == 5
    assert all(w["memory_bytes"] > 1024 * 1024 and w["status"] == "ready" for w in answer["workers"])


def test_workers_interactive_redraws_until_ctrl_c(serve):
    srv = serve(CONFIG)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # Ctrl-C in a terminal reaches a process whose SIGINT is at its default. A suite run as
    # a background job (`pytest &`, as a shell without job control starts it) passes SIGINT
    # on ignored, and Python then leaves it ignored: put it back, as a terminal would have it.
    proc = subprocess.Popen([sys.executable, "-m", "minirr", "workers", "-i", "-c", str(srv.config_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    reader = threading.Thread(target=lambda: seen.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        wait_until(lambda: sum(line.replace(remote.CLEAR_SCREEN, "").startswith("PID") for line in seen) >= 2, timeout=15, message="two redraws")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            status = proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            pytest.fail(f"`minirr workers -i` ignored Ctrl-C for 10s; its stderr: {proc.stderr.read()[-500:]!r}")
    assert status == 0
    assert remote.CLEAR_SCREEN in "".join(seen)


def run_load(srv, stop: threading.Event, failures: list, threads: int = 4) -> list:
    def loop():
        while not stop.is_set():
            try:
                status = get(srv, "/")[0]
            except OSError as exc:
                status = repr(exc)
            if status != 200:
                failures.append(status)

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for t in workers:
        t.start()
    return workers


@pytest.mark.parametrize("trigger", ["reset", "sighup"])
def test_reset_replaces_every_worker_under_load(serve, trigger):
    srv = serve(CONFIG)
    old = srv.wait_workers(2)
    failures: list = []
    stop = threading.Event()
    threads = run_load(srv, stop, failures)
    try:
        if trigger == "reset":
            proc = cli(srv, "reset")
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout.startswith("reset: replaced 2 workers")
        else:
            srv.send_signal(signal.SIGHUP)
            srv.wait_for_log("reload complete", timeout=30)
        new = srv.wait_workers(2, timeout=30, exclude=old)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert not set(new) & set(old)
    srv.wait_for_log(r"stopped \(reset\)", count=2)


def test_stop_finishes_the_in_flight_request_and_exits_0(serve):
    srv = serve(CONFIG)
    result = {}
    slow = threading.Thread(target=lambda: result.update(resp=get(srv, "/sleep?1", timeout=30)))
    slow.start()
    srv.wait_for_log(r"sleeping in")
    proc = cli(srv, "stop")
    slow.join()
    assert proc.returncode == 0, proc.stderr
    assert "is stopping" in proc.stdout and proc.stdout.endswith("stopped\n")
    assert srv.wait_exit() == 0              # `minirr stop` returned after the master exited
    assert result["resp"][0] == 200 and result["resp"][2] == b"slept"
    assert not os.path.exists(srv.config_path.parent / "minirr.sock")


def test_stop_force_exits_at_once(serve):
    srv = serve(CONFIG)
    workers = srv.wait_workers(2)
    errors = []

    def slow():
        try:
            get(srv, "/sleep?60", timeout=60)
        except OSError as exc:
            errors.append(exc)

    t = threading.Thread(target=slow)
    t.start()
    srv.wait_for_log(r"sleeping in")
    proc = cli(srv, "stop", "-f")
    assert proc.returncode == 0, proc.stderr
    assert srv.wait_exit() == 0
    t.join()
    assert errors                            # the busy worker was killed, not waited for
    wait_until(lambda: not [p for p in workers if pid_alive(p)], message="workers to be gone")


def test_control_socket_is_mode_0600(serve):
    srv = serve(CONFIG)
    path = srv.config_path.parent / "minirr.sock"
    mode = os.lstat(path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


def test_second_server_on_the_same_socket_is_refused(serve):
    first = serve(CONFIG)
    path = first.config_path.parent / "minirr.sock"
    second = serve(CONFIG, overrides=[f"rpc.listen=unix:{path}"], wait_ready=False)
    assert second.wait_exit() == 1
    assert f"another minirr is running on {path}" in second.log
    assert cli(first, "workers").returncode == 0          # the first one's socket is untouched


def test_stale_socket_file_is_replaced(serve, tmp_path):
    folder = tmp_path / "srv0"                             # where the fixture puts the first server
    folder.mkdir()
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(folder / "minirr.sock"))                 # bound, never listening, then closed:
    dead.close()                                           # the file stays behind, like after kill -9
    srv = serve(CONFIG)
    assert srv.config_path.parent == folder
    assert cli(srv, "workers").returncode == 0


@pytest.mark.parametrize("command", [["workers"], ["reset"], ["stop"], ["stop", "-f"]])
def test_no_server_exits_1_with_a_message(tmp_path, command):
    (tmp_path / "rr.ini").write_text(CONFIG)
    proc = run_cli(command[0], "-c", str(tmp_path / "rr.ini"), *command[1:])
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"minirr: no server answers on unix:{tmp_path / 'minirr.sock'} "
                                   f"(no such file or directory)")


def test_tcp_control_socket(serve):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    srv = serve(CONFIG, overrides=[f"rpc.listen=tcp://127.0.0.1:{port}"])
    proc = cli(srv, "workers", "--json", "-o", f"rpc.listen=tcp://127.0.0.1:{port}")
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["workers"]) == 2


def test_unknown_method_and_broken_frames(serve):
    srv = serve(CONFIG)
    address = UnixAddress(str(srv.config_path.parent / "minirr.sock"))
    client = remote.ControlClient(address)
    with pytest.raises(ControlError, match="unknown method 'dance'"):
        client.call("dance")
    assert client.call("workers")["pid"] == srv.proc.pid     # the connection carries on
    client.close()
    with socket.socket(socket.AF_UNIX) as sock:              # garbage: the master closes the peer
        sock.settimeout(10)
        sock.connect(address.path)
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert sock.recv(100) == b""
    srv.wait_for_log("control connection sent a broken frame")
    assert get(srv, "/")[0] == 200
