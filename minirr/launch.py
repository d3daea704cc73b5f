"""How a worker process is started: the one seam between the pool and the OS.

Owns: creating a worker process and its pipes, the child's side of fork hygiene, and
      the handle the master keeps (pid, its ends of the pipes, exit sentinel, kill, reap).
Never: decides when to start or stop a worker (pool and server do), reads frames.

    master                         forked worker
    to_worker   (write) ───pipe───> request fd   (read)
    from_worker (read)  <──pipe──── response fd  (write)
    output      (read)  <──pipe──── fd 1 and fd 2 (the app's print() and logging)
    sentinel    (read)  ─── becomes readable when the process exits (multiprocessing)

A launcher is any object with `start(close_in_child) -> WorkerProcess`. ForkLauncher
forks this interpreter; the command launcher runs an external program.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
from typing import Callable, List, Optional, Sequence

from . import worker as worker_module

_fork = multiprocessing.get_context("fork")   # named: the platform default changes in 3.14


class WorkerProcess:
    """The master's handle on one running worker process."""

    def __init__(self, pid: int, to_worker: int, from_worker: int, output: Optional[int],
                 sentinel: int, process=None) -> None:
        self.pid = pid
        self.to_worker = to_worker        # master writes request frames here
        self.from_worker = from_worker    # master reads response frames here
        self.output = output              # master reads the worker's stdout/stderr lines here
        self.sentinel = sentinel          # readable once the process has exited
        self._process = process

    def fds(self) -> List[int]:
        """Every descriptor of the master's that belongs to this worker."""
        fds = [self.to_worker, self.from_worker, self.output, self.sentinel] + _multiprocessing_fds(self._process)
        return [fd for fd in dict.fromkeys(fds) if fd is not None]

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def reap(self, timeout: float = 1.0) -> Optional[int]:
        """Wait (bounded) for the exit status. The sentinel fires a moment before the
        child can be reaped, hence the short join. A negative status is a signal number."""
        self._process.join(timeout)
        return self._process.exitcode

    def close(self) -> None:
        for fd in (self.to_worker, self.from_worker, self.output):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._process.close()   # closes the sentinel


def _multiprocessing_fds(process) -> List[int]:
    """multiprocessing keeps a second pipe per child besides the sentinel (the write end the
    child watches for `parent_process()`). It has no public name, but a later child must not
    inherit it, so read it from the fork Popen's finalizer (same layout in 3.9 through 3.13)."""
    finalizer = getattr(getattr(process, "_popen", None), "finalizer", None)
    args = getattr(finalizer, "_args", None)
    return [fd for fd in args or () if isinstance(fd, int)]


def _pipe() -> tuple:
    r, w = os.pipe()
    return r, w


class ForkLauncher:
    """Start workers with multiprocessing's fork context; the child runs worker.serve()."""

    def __init__(self, app: str, factory: bool, interface: str, base_dir: str) -> None:
        self.app = app
        self.factory = factory
        self.interface = interface
        self.base_dir = base_dir

    def start(self, close_in_child: Sequence[object]) -> WorkerProcess:
        req_r, req_w = _pipe()
        resp_r, resp_w = _pipe()
        out_r, out_w = _pipe()
        master_ends = [req_w, resp_r, out_r]
        sys.stdout.flush()
        sys.stderr.flush()
        process = _fork.Process(
            target=_child_main,
            args=(list(close_in_child) + master_ends, req_r, resp_w, out_w,
                  self.app, self.factory, self.interface, self.base_dir),
            name="minirr-worker",
        )
        process.start()
        for fd in (req_r, resp_w, out_w):   # the child's ends: the master must not keep them
            os.close(fd)
        for fd in master_ends:
            os.set_blocking(fd, False)
        return WorkerProcess(process.pid, req_w, resp_r, out_r, process.sentinel, process)


def close_inherited(items: Sequence[object]) -> None:
    """Close, by name, what the child inherited from the master (sockets, selector, fds)."""
    for item in items:
        try:
            if isinstance(item, int):
                os.close(item)
            else:
                item.close()
        except OSError:
            pass


def _reset_signals() -> None:
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGPIPE):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _child_main(close_in_child, req_r: int, resp_w: int, out_w: int,
                app: str, factory: bool, interface: str, base_dir: str) -> None:
    """Runs in the forked child. Never returns normally: exits with the worker's status."""
    close_inherited(close_in_child)
    _reset_signals()
    # Own process group: a terminal's Ctrl-C reaches the master only, which then stops
    # workers gracefully instead of having them die mid-request.
    os.setpgid(0, 0)
    os.dup2(out_w, 1)
    os.dup2(out_w, 2)
    os.close(out_w)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    worker_module.configure_worker_logging()
    channel = worker_module.Channel(req_r, resp_w)
    status = worker_module.serve(
        channel, lambda: worker_module.load_handler(app, factory, interface, base_dir))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
