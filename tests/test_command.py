"""`[server] command` workers (minirr.master.command): the program's argv and environment, the
start-up check that it exists, and starting it on the worker's pipes. Real processes."""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
from pathlib import Path

import pytest

from minirr import config as config_module
from minirr.wire import frame
from minirr.master.command import CommandLauncher, resolve_command, worker_environment
from minirr.errors import ConfigError

WORKERS = Path(__file__).resolve().parent / "workers"
LEAKY_WORKER = f"{sys.executable} {WORKERS / 'leaky_worker.py'}"


# ---- CommandLauncher -------------------------------------------------------------------------------

def launcher_config(tmp_path: Path, command: str):
    root = Path(__file__).resolve().parent.parent
    text = f"[server]\ncommand = {command}\n[server.env]\nPYTHONPATH = {root}\n"
    return config_module.parse(text, base_dir=str(tmp_path))


def read_frame(fd: int, decoder: frame.FrameDecoder, timeout: float = 10.0) -> frame.Frame:
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, "no frame from the worker in time"
        if select.select([fd], [], [], remaining)[0]:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            assert data, "the worker closed its stdout"
            frames = decoder.feed(data)
            if frames:
                return frames[0]


def test_launcher_gives_non_blocking_pipes_a_pidfd_sentinel_and_a_reapable_process(tmp_path):
    launcher = CommandLauncher(launcher_config(tmp_path, LEAKY_WORKER))
    proc = launcher.start([])
    try:
        assert len(set(proc.fds())) == 4          # to_worker, from_worker, output, sentinel
        for fd in (proc.to_worker, proc.from_worker, proc.output):
            assert not os.get_blocking(fd)
        os.write(proc.to_worker, frame.encode(frame.CONTROL | frame.CODEC_JSON, b'{"pid":1}'))
        hello = read_frame(proc.from_worker, frame.FrameDecoder())
        assert hello.flags == frame.CONTROL and json.loads(hello.payload) == {"pid": proc.pid}
        assert os.getsid(proc.pid) == proc.pid     # own session: Ctrl-C reaches the master only
        assert select.select([proc.sentinel], [], [], 0)[0] == []
        proc.kill()
        assert select.select([proc.sentinel], [], [], 10)[0] == [proc.sentinel]
        assert proc.reap(10) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.reap(10)
        proc.close()
    for fd in proc.fds():
        with pytest.raises(OSError):
            os.fstat(fd)


def test_launcher_reports_the_exit_status_of_a_stopped_worker(tmp_path):
    proc = CommandLauncher(launcher_config(tmp_path, LEAKY_WORKER)).start([])
    try:
        os.write(proc.to_worker, frame.encode(frame.CONTROL | frame.CODEC_JSON, b'{"pid":1}'))
        read_frame(proc.from_worker, frame.FrameDecoder())
        os.write(proc.to_worker, frame.encode(frame.CONTROL | frame.CODEC_JSON, b'{"stop":true}'))
        assert select.select([proc.sentinel], [], [], 10)[0] == [proc.sentinel]
        assert proc.reap(10) == 0
    finally:
        proc.kill()
        proc.reap(10)
        proc.close()


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    (tmp_path / "worker.php").write_text("<?php\n")
    argv = resolve_command(("php", "worker.php", "-d", "missing.php", "/abs/x.php"), str(tmp_path))
    assert argv == ["php", str(tmp_path / "worker.php"), "-d", "missing.php", "/abs/x.php"]


def test_environment_adds_server_env_and_the_roadrunner_variables():
    env = worker_environment({"HOME": "/root", "RR_MODE": "jobs"}, [("APP_ENV", "test")], "unix:minirr.sock")
    assert env == {"HOME": "/root", "APP_ENV": "test", "RR_RELAY": "pipes", "RR_MODE": "http"}
    env = worker_environment({}, [], "tcp://127.0.0.1:6001")
    assert env["RR_RPC"] == "tcp://127.0.0.1:6001"


def test_a_missing_program_is_a_config_error_at_startup(tmp_path):
    with pytest.raises(ConfigError) as info:
        CommandLauncher(launcher_config(tmp_path, "no-such-program-minirr worker.php"))
    assert (info.value.section, info.value.key) == ("server", "command")
    assert "no-such-program-minirr" in str(info.value)

