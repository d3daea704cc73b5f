"""How a worker process is started (minirr.master.launch): the handle the master keeps
(WorkerProcess: its descriptors, kill, reap, exited), the pidfd and life without one,
and ForkLauncher's start-up check of the app (preflight). (CommandLauncher is
test_command.py's.) Real processes; every wait is a poll with a deadline."""

from __future__ import annotations

import errno
import json
import logging
import os
import select
import signal
import sys
from pathlib import Path

import pytest

from minirr.wire import frame
from minirr.master.command import CommandLauncher
from minirr.errors import AppLoadError
from minirr.master.launch import ForkLauncher, WorkerProcess, open_pidfd
from test_command import launcher_config, read_frame
from serverproc import pid_alive, wait_until

WORKERS = Path(__file__).resolve().parent / "workers"
APPS = Path(__file__).resolve().parent / "apps"
LEAKY_WORKER = f"{sys.executable} {WORKERS / 'leaky_worker.py'}"


# ---- WorkerProcess -------------------------------------------------------------------------------

class Child:
    """A launcher's handle on a process, as WorkerProcess sees it."""

    def __init__(self, extra=(), status=None) -> None:
        self.extra = list(extra)
        self.status = status
        self.polls = 0
        self.released = False

    def poll(self):
        self.polls += 1
        return self.status

    def extra_fds(self):
        return self.extra

    def release(self):
        self.released = True


def test_fds_lists_each_descriptor_once_without_the_missing_ones():
    proc = WorkerProcess(10, 3, 4, None, 5, Child(extra=[5, 7]))
    assert proc.fds() == [3, 4, 5, 7]
    proc = WorkerProcess(10, 3, 4, 6, None, Child())
    assert proc.fds() == [3, 4, 6]


def test_reap_and_exited_ask_the_child_without_waiting():
    child = Child(status=None)
    proc = WorkerProcess(10, 3, 4, None, None, child)
    assert proc.exited() is False and child.polls == 1        # WNOHANG: never waits
    assert proc.reap() is None and child.polls == 2
    child.status = -9
    assert proc.exited() is True and proc.reap() == -9 and proc.reap(2.5) == -9


def test_close_closes_the_masters_ends_and_releases_the_child():
    fds = [os.pipe()[0] for _ in range(3)]
    child = Child()
    WorkerProcess(10, fds[0], fds[1], fds[2], None, child).close()
    assert child.released
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


# ---- the pidfd, and life without one ---------------------------------------------------------------

def refuse_pidfd(monkeypatch, errno_value):
    def pidfd_open(pid, flags=0):
        raise OSError(errno_value, os.strerror(errno_value))
    monkeypatch.setattr(os, "pidfd_open", pidfd_open, raising=False)


@pytest.mark.parametrize("errno_value", [errno.ENOSYS, errno.EPERM])
def test_open_pidfd_is_none_where_the_kernel_has_none(monkeypatch, errno_value):
    refuse_pidfd(monkeypatch, errno_value)
    assert open_pidfd(os.getpid()) is None


def test_open_pidfd_is_none_where_python_has_none(monkeypatch):
    monkeypatch.delattr(os, "pidfd_open", raising=False)
    assert open_pidfd(os.getpid()) is None


def test_open_pidfd_raises_when_descriptors_run_out(monkeypatch):
    refuse_pidfd(monkeypatch, errno.EMFILE)
    with pytest.raises(OSError):
        open_pidfd(os.getpid())


def test_without_a_pidfd_there_is_no_sentinel_and_exited_polls(tmp_path, monkeypatch):
    refuse_pidfd(monkeypatch, errno.ENOSYS)
    proc = CommandLauncher(launcher_config(tmp_path, LEAKY_WORKER)).start([])
    try:
        assert proc.sentinel is None and len(proc.fds()) == 3
        assert not proc.exited()
        proc.kill()                                         # os.kill on the pid
        wait_until(proc.exited, timeout=10, message="the worker to exit")
        assert proc.reap(10) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.reap(10)
        proc.close()


def test_kill_goes_through_the_pidfd(tmp_path, monkeypatch):
    proc = CommandLauncher(launcher_config(tmp_path, LEAKY_WORKER)).start([])
    sent = []
    real = signal.pidfd_send_signal
    monkeypatch.setattr(signal, "pidfd_send_signal", lambda fd, sig: (sent.append((fd, sig)), real(fd, sig)))
    monkeypatch.setattr(os, "kill", lambda pid, sig: pytest.fail("kill() by pid while a pidfd exists"))
    try:
        proc.kill()
        assert sent == [(proc.sentinel, signal.SIGKILL)]
        assert select.select([proc.sentinel], [], [], 10)[0] == [proc.sentinel]
        assert proc.reap(10) == -signal.SIGKILL
        proc.kill()                                         # reaped: ProcessLookupError is swallowed
        assert len(sent) == 2
    finally:
        monkeypatch.undo()
        proc.kill()
        proc.reap(10)
        proc.close()


# ---- ForkLauncher -----------------------------------------------------------------------------------------

def fork_launcher(app: str, base_dir) -> ForkLauncher:
    return ForkLauncher(app, factory=False, interface="minirr", base_dir=str(base_dir))


def test_a_forked_worker_answers_the_handshake_and_dies_by_its_pidfd():
    proc = fork_launcher("hello_app:app", WORKERS).start([])
    try:
        assert proc.sentinel is not None and {proc.to_worker, proc.from_worker, proc.output} <= set(proc.fds())
        for fd in (proc.to_worker, proc.from_worker, proc.output):
            assert not os.get_blocking(fd)
        os.write(proc.to_worker, frame.encode(frame.CONTROL | frame.CODEC_JSON, b'{"pid":1}'))
        hello = read_frame(proc.from_worker, frame.FrameDecoder())
        assert json.loads(hello.payload) == {"pid": proc.pid}
        proc.kill()
        assert select.select([proc.sentinel], [], [], 10)[0] == [proc.sentinel]
        assert proc.reap(10) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.reap(10)
        proc.close()
    assert not pid_alive(proc.pid)


def test_preflight_of_an_app_that_imports_passes():
    fork_launcher("hello_app:app", WORKERS).preflight(30.0)


@pytest.mark.parametrize("source,app,message", [
    (None, "no_such_module_minirr:app", "ModuleNotFoundError: No module named 'no_such_module_minirr'"),
    ("app = 1\n", "preflight_app:missing", "AttributeError: module 'preflight_app' has no attribute 'missing'"),
    ("def broken(:\n", "preflight_app:app", "SyntaxError: invalid syntax (preflight_app.py, line 1)"),
    ("raise RuntimeError('no database')\n", "preflight_app:app",
     "RuntimeError: no database (at preflight_app.py:1 in <module>)"),
    ("import sys\nsys.exit('bye')\n", "preflight_app:app", "the import called sys.exit('bye')"),
    ("import os\nos._exit(3)\n", "preflight_app:app", "importing it ended the process (exit status 3)"),
])
def test_preflight_of_a_bad_app_says_why(tmp_path, source, app, message):
    if source is not None:
        (tmp_path / "preflight_app.py").write_text(source)
    with pytest.raises(AppLoadError) as info:
        fork_launcher(app, tmp_path).preflight(30.0)
    assert info.value.msg == message
    assert (info.value.section, info.value.key) == ("server", "app")


def test_preflight_of_an_import_that_hangs_is_stopped_and_the_start_goes_on(tmp_path, caplog):
    (tmp_path / "preflight_app.py").write_text("import time\ntime.sleep(60)\napp = 1\n")
    with caplog.at_level(logging.WARNING, logger="minirr"):
        fork_launcher("preflight_app:app", tmp_path).preflight(0.2)
    [record] = caplog.records
    assert "took longer than 0.2s ([pool] allocate_timeout); stopped the check (pid" in record.getMessage()
    pid = int(record.getMessage().split("(pid ")[1].split(")")[0])
    assert not pid_alive(pid)                               # killed and reaped


# ---- a start that fails part way leaves nothing open ------------------------------------------------

def open_fds() -> set:
    return {int(name) for name in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{name}")}


# Run in a child process of its own: it lowers RLIMIT_NOFILE so that exactly `extra`
# descriptors are free, for every `extra` from none to enough, and starts a worker with
# each launcher; every start that fails must leave the descriptors as they were.
RLIMIT_SWEEP = r"""
import json, os, resource, sys
from minirr import config
from minirr.master.command import CommandLauncher
from minirr.master.launch import ForkLauncher

def open_fds():
    return {int(n) for n in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{n}")}

workers, command = sys.argv[1], sys.argv[2]
launchers = {"fork": ForkLauncher("hello_app:app", False, "minirr", workers),
             "command": CommandLauncher(config.parse(f"[server]\ncommand = {command}\n", base_dir=workers))}
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
report = []
for name, launcher in launchers.items():
    for extra in range(16):
        before = open_fds()
        free = [n for n in range(4096) if n not in before]
        resource.setrlimit(resource.RLIMIT_NOFILE, (free[extra], hard))
        try:
            proc = launcher.start([])
        except OSError as exc:
            proc, outcome = None, exc.strerror
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        if proc is not None:
            outcome = "started"
            proc.kill()
            proc.reap(10)
            proc.close()
        leaked = sorted(open_fds() - before)
        report.append([name, extra, outcome, leaked])
        for fd in leaked:
            os.close(fd)
print(json.dumps(report))
"""


def test_a_start_out_of_descriptors_at_any_step_leaves_none_open():
    """After a crash, a retry during back-off that ran out of descriptors left 4 of them
    open for good (18 instead of 14): WorkerPipes' earlier pipes, or multiprocessing's."""
    import subprocess
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root))
    done = subprocess.run([sys.executable, "-c", RLIMIT_SWEEP, str(WORKERS), LEAKY_WORKER], capture_output=True,
                          text=True, timeout=120, env=env, cwd=str(WORKERS))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for name in ("fork", "command"):
        outcomes = [outcome for launcher, _, outcome, _ in report if launcher == name]
        assert "Too many open files" in outcomes and outcomes[-1] == "started", (name, outcomes)
    assert [row for row in report if row[3]] == []


def test_a_fork_that_fails_leaves_none_of_multiprocessings_pipes_open(monkeypatch):
    def fork():
        raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
    launcher = fork_launcher("hello_app:app", WORKERS)
    before = open_fds()
    monkeypatch.setattr(os, "fork", fork)
    with pytest.raises(OSError, match="Resource temporarily unavailable"):
        launcher.start([])
    monkeypatch.undo()
    assert open_fds() == before


def test_worker_pipes_close_what_they_opened_when_a_later_pipe_fails(monkeypatch):
    from minirr.master import launch
    real, calls = os.pipe, []

    def pipe():
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real()
    before = open_fds()
    monkeypatch.setattr(os, "pipe", pipe)
    with pytest.raises(OSError, match="Too many open files"):
        launch.WorkerPipes()
    monkeypatch.undo()
    assert len(calls) == 3 and open_fds() == before


# ---- a helper process the app forked holds multiprocessing's sentinel -----------------------------------

HELPER_APP = '''
import os, time
HERE = os.path.dirname(os.path.abspath(__file__))

def create_app():
    helper = os.fork()               # inherits every descriptor of the worker's, the sentinel's too
    if helper == 0:
        time.sleep(60)
        os._exit(0)
    with open(os.path.join(HERE, "helper.pid"), "w") as f:
        f.write(str(helper))
    return lambda request: None
'''


@pytest.fixture
def worker_with_helper(tmp_path):
    """start() -> a forked worker whose app has forked a helper that outlives it."""
    (tmp_path / "helper_app.py").write_text(HELPER_APP)
    started = []

    def start():
        proc = ForkLauncher("helper_app:create_app", True, "minirr", str(tmp_path)).start([])
        started.append(proc)
        os.write(proc.to_worker, frame.encode(frame.CONTROL | frame.CODEC_JSON, b'{"pid":1}'))
        wait_until((tmp_path / "helper.pid").exists, timeout=10, message="the app's helper")
        return proc, int((tmp_path / "helper.pid").read_text())

    yield start
    for proc in started:
        proc.kill()
        proc.reap(10)
        proc.close()
    if (tmp_path / "helper.pid").exists():
        try:
            os.kill(int((tmp_path / "helper.pid").read_text()), signal.SIGKILL)
        except ProcessLookupError:
            pass


def never_wait_on_a_sentinel(monkeypatch):
    """multiprocessing waits on its sentinel pipe with multiprocessing.connection.wait."""
    import multiprocessing.connection

    def wait(object_list, timeout=None):
        pytest.fail(f"waited on multiprocessing's sentinel (timeout {timeout})")
    monkeypatch.setattr(multiprocessing.connection, "wait", wait)


def test_once_the_pidfd_says_so_reap_takes_the_status_without_waiting_on_the_sentinel(
        worker_with_helper, monkeypatch):
    """reap() used to join() multiprocessing's process, which first waits on its sentinel
    pipe; the helper holds that pipe's write end, so every exit stopped the loop for the
    whole timeout (1 s). The status is taken with waitpid (WNOHANG) instead."""
    proc, helper = worker_with_helper()
    never_wait_on_a_sentinel(monkeypatch)
    proc.kill()
    assert select.select([proc.sentinel], [], [], 10)[0] == [proc.sentinel]
    assert pid_alive(helper)                                # it still holds the sentinel open
    assert proc.reap() == -signal.SIGKILL                   # no timeout given, none needed
    assert proc.exited()


def test_without_a_pidfd_exited_sees_the_exit_while_the_helper_lives(worker_with_helper, monkeypatch):
    refuse_pidfd(monkeypatch, errno.ENOSYS)
    proc, helper = worker_with_helper()
    never_wait_on_a_sentinel(monkeypatch)
    assert proc.sentinel is None and not proc.exited()
    proc.kill()
    wait_until(proc.exited, timeout=10, message="exited() to see the worker's exit")
    assert pid_alive(helper) and proc.reap() == -signal.SIGKILL


def test_a_bounded_reap_waits_on_the_pidfd_not_on_the_sentinel(worker_with_helper, monkeypatch):
    proc, helper = worker_with_helper()
    never_wait_on_a_sentinel(monkeypatch)
    proc.kill()
    assert proc.reap(10) == -signal.SIGKILL and pid_alive(helper)
