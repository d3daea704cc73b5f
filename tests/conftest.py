"""Shared fixtures: `serve` starts real servers and fails the test if a process leaks."""

from __future__ import annotations

import pytest

from serverproc import ServerProcess, child_pids, pid_alive, wait_until


@pytest.fixture
def serve(tmp_path):
    """Factory: serve(config_text, overrides=[...], env={...}, files={...}) -> ServerProcess.

    At teardown every server still running is stopped (SIGTERM) and the test fails if
    the master or any of its worker processes is still alive afterwards.
    """
    started = []

    def start(config_text: str, **kwargs) -> ServerProcess:
        folder = tmp_path / f"srv{len(started)}"
        server = ServerProcess.start(folder, config_text, **kwargs)
        started.append(server)
        return server

    yield start

    leaked = []
    for server in started:
        kids = child_pids(server.proc.pid) if server.proc.poll() is None else []
        tracked = set(kids) | set(server.worker_pids_seen)
        if server.proc.poll() is None:
            try:
                server.stop(timeout=30)
            except AssertionError:
                server.kill()
                leaked.append(f"master {server.proc.pid} ignored SIGTERM")
        try:
            wait_until(lambda: not [p for p in tracked if pid_alive(p)], timeout=10, message="workers to exit")
        except AssertionError:
            alive = [p for p in tracked if pid_alive(p)]
            leaked.append(f"worker processes outlived the master: {alive}")
            import os, signal
            for p in alive:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    assert not leaked, "; ".join(leaked)


@pytest.fixture
def rig():
    """Factory: rig(**kwargs) -> backrig.BackRig (the backend's parts wired as server.py
    wires them, with a fake front and launcher); each is finished at teardown."""
    from backrig import BackRig
    from fakes import made_and_finished
    yield from made_and_finished(BackRig, BackRig.finish)
