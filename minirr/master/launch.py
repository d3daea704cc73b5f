"""How a worker process is started: the one seam between the pool and the OS.

Owns: creating a worker process and its pipes, the child's side of fork hygiene, an
      external program's argv and environment, and the handle the master keeps (pid,
      its ends of the pipes, exit sentinel, kill, reap); the start-up check that the
      app imports (preflight), in a child of its own; and reload's check of the app
      (start_app_check), a child the loop watches.
Never: decides when to start or stop a worker (pool and server do), reads frames,
       imports the app in the master.

    master                         worker
    to_worker   (write) ───pipe───> requests   (forked: a pipe fd;  command: stdin)
    from_worker (read)  <──pipe──── responses  (forked: a pipe fd;  command: stdout)
    output      (read)  <──pipe──── log lines  (forked: fd 1 and 2; command: stderr)
    sentinel    (read)  ─── a pidfd: readable when the process itself exits

Why a pidfd (Linux 5.3+), and not multiprocessing's sentinel or EOF on a pipe: those are
descriptors, and a helper process the app starts (fork, multiprocessing, subprocess)
inherits them and holds them open after the worker is gone, hiding its exit. A pidfd
belongs to the process, not to its descriptors. Where the kernel has no pidfd_open,
`sentinel` is None and the master asks `exited()` (waitpid on this pid, WNOHANG) every
tick instead.

A launcher is any object with `start(close_in_child, print_traceback=True) ->
WorkerProcess` and `preflight(timeout_s)`. ForkLauncher (here) forks this interpreter;
command.CommandLauncher runs `[server] command`, any program that speaks the wire
protocol (RoadRunner's `server.command`), on the same WorkerPipes.

ForkLauncher.preflight() is the start-up check of `[server] app`: the master must not
import the app itself (workers are forked from it, and each imports the app after the
fork), so a short-lived forked child imports it, looks at what it names, and reports
back over a pipe:

    master ──fork──> preflight child: import module, follow attributes, check the object
                     against factory and interface (worker.load.check_app; no call)
       <──pipe────── "" (it loads)  or  "app\nModuleNotFoundError: No module named 'x'"
                     or  "factory\nflask_app:app is a Flask object ...; set factory = false"
       join(timeout_s); still running -> kill it, warn, start anyway

`start_app_check` is the same import for `[server] reload` (master/reload.py), made while
the master serves: it returns at once with an AppCheck whose report pipe and pidfd the
loop watches, and the child reports the app's own files with their stamps, or why the
import failed (one line, and the file it failed in):

    master ──fork──> check child: import module, list sys.modules' files outside the
       <──pipe────── {"files": [[path, mtime_ns, size], ...]}    stdlib, site-packages, minirr
                     {"error": "SyntaxError: ... (app.py, line 3)", "file": ..., "files": [...]}
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import multiprocessing
import os
import select
import signal
import stat
import sys
import sysconfig
import traceback
import time
from typing import Callable, List, Optional, Sequence, Tuple

from ..worker import load as worker_load, loop as worker_loop
from ..errors import AppLoadError

log = logging.getLogger("minirr")

_fork = multiprocessing.get_context("fork")   # named: the platform default changes in 3.14
# A report fits in one pipe write (PIPE_BUF), so the child never blocks writing it while
# the master waits for it to exit.
PREFLIGHT_REPORT_BYTES = 4000


class WorkerProcess:
    """The master's handle on one running worker process, whichever launcher started it.

    `child` is the launcher's own handle on the process (a _ForkedChild, or a
    command._CommandChild): it knows how to ask for the exit status (`poll()`: waitpid on
    this pid, WNOHANG) and what else to close.
    """

    def __init__(self, pid: int, to_worker: int, from_worker: int, output: Optional[int],
                 sentinel: Optional[int], child) -> None:
        self.pid = pid
        self.to_worker = to_worker        # master writes request frames here
        self.from_worker = from_worker    # master reads response frames here
        self.output = output              # master reads the worker's log lines here
        self.sentinel = sentinel          # a pidfd, readable once the process has exited (or None)
        self._child = child

    def fds(self) -> List[int]:
        """Every descriptor of the master's that belongs to this worker."""
        fds = [self.to_worker, self.from_worker, self.output, self.sentinel] + self._child.extra_fds()
        return [fd for fd in dict.fromkeys(fds) if fd is not None]

    def kill(self) -> None:
        """SIGKILL, through the pidfd where there is one: it names this process even if the
        pid has been reaped and reused meanwhile."""
        try:
            if self.sentinel is not None:
                signal.pidfd_send_signal(self.sentinel, signal.SIGKILL)
            else:
                os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def reap(self, timeout: float = 0.0) -> Optional[int]:
        """The exit status (negative: killed by that signal), or None while the process runs.

        Without a timeout this never waits: once the pidfd is readable, or exited() has
        said so, the status is there to take (the process is a zombie until it is taken).
        With one (at shutdown, after kill()) it waits that long at most, on the pidfd, or
        asking again every POLL_S where there is none."""
        status = self._child.poll()
        if status is None and timeout > 0:
            status = self._wait(timeout)
        return status

    def _wait(self, timeout: float) -> Optional[int]:
        deadline_at = time.monotonic() + timeout
        exit_poll = None
        if self.sentinel is not None:      # poll(), not select(): the pidfd may be past FD_SETSIZE
            exit_poll = select.poll()
            exit_poll.register(self.sentinel, select.POLLIN)
        status = None
        while status is None:
            left = deadline_at - time.monotonic()
            if left <= 0:
                break
            if exit_poll is not None:
                exit_poll.poll(left * 1000)
            else:
                time.sleep(min(POLL_S, left))
            status = self._child.poll()
        return status

    def exited(self) -> bool:
        """Has the process exited? (waitpid on its pid, WNOHANG: for when there is no pidfd)"""
        return self._child.poll() is not None

    def close(self) -> None:
        _close_all([self.to_worker, self.from_worker, self.output, self.sentinel])
        self._child.release()


class _ForkedChild:
    """A multiprocessing.Process, seen through the three calls WorkerProcess needs."""

    def __init__(self, process) -> None:
        self.process = process

    def poll(self) -> Optional[int]:
        """`exitcode` is waitpid(pid, WNOHANG) on this pid, kept once it has the status.
        Not join(timeout): that first waits for multiprocessing's sentinel pipe to close,
        and a helper process the app forked holds its write end, so every reap waited out
        the whole timeout (a second), with the loop stopped for every client."""
        return self.process.exitcode

    def extra_fds(self) -> List[int]:
        return [self.process.sentinel] + _multiprocessing_fds(self.process)

    def release(self) -> None:
        try:
            self.process.close()   # closes multiprocessing's sentinel
        except ValueError:         # not reaped yet (a bounded reap gave up): leave it to the OS
            pass

    def undo(self) -> None:
        """A start that cannot be completed: kill the child, reap it, let go of it.
        (join() without a timeout is waitpid on the pid: no sentinel is involved.)"""
        self.process.kill()
        self.process.join()
        self.release()


def open_pidfd(pid: int) -> Optional[int]:
    """A pidfd for `pid`, or None where the kernel (before Linux 5.3) or Python has none.
    Raises OSError when descriptors have run out (the start is then undone)."""
    try:
        return os.pidfd_open(pid)
    except AttributeError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EPERM):
            return None
        raise


def _multiprocessing_fds(process) -> List[int]:
    """multiprocessing keeps a second pipe per child besides the sentinel (the write end the
    child watches for `parent_process()`). It has no public name, but a later child must not
    inherit it, so read it from the fork Popen's finalizer (same layout in 3.9 through 3.13)."""
    finalizer = getattr(getattr(process, "_popen", None), "finalizer", None)
    args = getattr(finalizer, "_args", None)
    return [fd for fd in args or () if isinstance(fd, int)]


def _close_all(fds: Sequence[Optional[int]]) -> None:
    for fd in fds:
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


POLL_S = 0.01                          # a bounded reap without a pidfd asks waitpid this often
PIPE_SIZE_BYTES = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)   # the constant is named in fcntl from 3.10


def _grow_pipe(fd: int) -> None:
    """Linux pipes hold 64 KB by default, so a 5 MB body costs 80 wake-ups of the reader.
    1 MB (the unprivileged maximum, /proc/sys/fs/pipe-max-size) cuts that to 5; if the
    kernel refuses, the default still works."""
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE_BYTES)
    except OSError:
        pass


def open_pipes(count: int) -> List[Tuple[int, int]]:
    """`count` pipes, or none: out of descriptors (EMFILE, ENFILE) part way, the ones
    already opened are closed again before the OSError goes on. (os.pipe() fds are not
    inheritable, PEP 446.)"""
    pipes: List[Tuple[int, int]] = []
    try:
        for _ in range(count):
            pipes.append(os.pipe())
    except OSError:
        _close_all([fd for pipe in pipes for fd in pipe])
        raise
    return pipes


class WorkerPipes:
    """The three pipes of one worker. Both launchers create them the same way and hand
    the master's ends over the same way; only what the child does with its ends differs.
    Out of descriptors, none of them stays open (a master that leaked a few at every
    failed restart would run out for good)."""

    def __init__(self) -> None:
        request, response, output = open_pipes(3)
        self.request_r, self.request_w = request
        self.response_r, self.response_w = response
        self.output_r, self.output_w = output
        for fd in (self.request_w, self.response_w):
            _grow_pipe(fd)

    def master_ends(self) -> List[int]:
        return [self.request_w, self.response_r, self.output_r]

    def child_ends(self) -> List[int]:
        return [self.request_r, self.response_w, self.output_w]

    def hand_over(self, pid: int, child, undo: Callable[[], None]) -> WorkerProcess:
        """The child holds its ends now: close the master's copies of them, make the
        master's own ends non-blocking (only select() may wait in the master), and watch
        the process through a pidfd. Out of descriptors for the pidfd, the start is undone
        (`undo` kills and reaps the child) and the OSError raised."""
        try:
            sentinel = open_pidfd(pid)
        except OSError:
            self.close()
            undo()
            raise
        _close_all(self.child_ends())
        for fd in self.master_ends():
            os.set_blocking(fd, False)
        return WorkerProcess(pid, self.request_w, self.response_r, self.output_r, sentinel, child)

    def close(self) -> None:
        """The start failed: nobody will use any of them."""
        _close_all(self.master_ends() + self.child_ends())


class ForkLauncher:
    """Start workers with multiprocessing's fork context; the child runs worker.serve()."""

    def __init__(self, app: str, factory: bool, interface: str, base_dir: str,
                 max_concurrency: int = worker_load.ASYNC_MAX_CONCURRENCY) -> None:
        self.app = app
        self.factory = factory
        self.interface = interface
        self.base_dir = base_dir
        self.max_concurrency = max_concurrency    # an ASGI worker offers this many request ids

    def start(self, close_in_child: Sequence[object], print_traceback: bool = True) -> WorkerProcess:
        """Fork a worker. `print_traceback`: if its bootstrap fails, log the traceback
        under the one-line headline (the master asks for it once per run of failures)."""
        pipes = WorkerPipes()
        sys.stdout.flush()
        sys.stderr.flush()
        process = _fork.Process(
            target=_child_main,
            args=(list(close_in_child) + pipes.master_ends(), pipes.request_r, pipes.response_w,
                  pipes.output_w, self.app, self.factory, self.interface, self.base_dir, print_traceback,
                  self.max_concurrency),
            name="minirr-worker",
        )
        try:
            start_process(process)
        except OSError:
            pipes.close()
            raise
        child = _ForkedChild(process)
        return pipes.hand_over(process.pid, child, child.undo)

    def preflight(self, timeout_s: float) -> None:
        """Check at start-up, in a short-lived child, that `[server] app` imports, names
        an existing attribute, and is what `factory` and `interface` say it is (the
        factory is not called: a factory failing at run time is retried by the master,
        and what it returns is checked by each worker's bootstrap). Raises AppLoadError
        saying why not, naming the `[server]` key to change. A check that does not end
        within `timeout_s` is killed, and the start goes on with a warning.
        Call it before the master opens anything: the child inherits whatever is open."""
        report_r, report_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        process = _fork.Process(target=_preflight_main, name="minirr-preflight",
                                args=(report_r, report_w, self.app, self.base_dir, self.factory, self.interface))
        try:
            try:
                start_process(process)
            except OSError as exc:       # out of processes or memory: the workers will say more
                log.warning("could not check that %s imports (%s); starting anyway", self.app, exc)
                return
            os.close(report_w)
            report_w = None
            process.join(timeout_s)
            if process.exitcode is None:
                log.warning("importing %s took longer than %gs ([pool] allocate_timeout); stopped the "
                            "check (pid %d) and starting anyway", self.app, timeout_s, process.pid)
                return
            report, exitcode = _read_report(report_r), process.exitcode
        finally:
            _end_preflight(process)
            _close_all([report_r, report_w])
        if report:
            key, _, message = report.partition("\n")
            raise AppLoadError(message, key=key)
        if exitcode != 0:                # os._exit() or a signal during the import
            raise AppLoadError(f"importing it ended the process ({_exit_status_text(exitcode)})")


class AppCheck:
    """A short-lived child that imports the app and reports the files it was made of (for
    `[server] reload`), watched in the loop: never joined. The master reads `report_fd`
    as it becomes readable and learns of the exit from `pidfd` (None on a kernel without
    pidfd_open: then `exitcode()` is asked every tick)."""

    def __init__(self, process, report_fd: int, pidfd: Optional[int]) -> None:
        self.process = process
        self.pid = process.pid
        self.report_fd = report_fd
        self.pidfd = pidfd

    def read(self) -> Tuple[bytes, bool]:
        """What the child has written since the last read, and whether its end is closed."""
        chunks = []
        while True:
            try:
                chunk = os.read(self.report_fd, 1 << 16)
            except BlockingIOError:
                return b"".join(chunks), False
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)

    def exitcode(self) -> Optional[int]:
        """Its exit status once it has exited (reaped now, without waiting), else None."""
        self.process.join(0)
        return self.process.exitcode

    def descriptors(self) -> List[int]:
        return [fd for fd in (self.report_fd, self.pidfd) if fd is not None]

    def close(self) -> None:
        """Kill it if it still runs, reap it (it is dead, or dying of SIGKILL), close its fds."""
        _end_preflight(self.process)
        _close_all(self.descriptors())


def start_app_check(app: str, base_dir: str, close_in_child: Sequence[object]) -> AppCheck:
    """Fork a child that imports `app` and writes, as JSON, the files of every module it
    imported from outside the standard library, installed packages and minirr, or why
    the import failed. Returns at once. Raises OSError if the fork fails."""
    report_r, report_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    process = _fork.Process(target=_app_files_main, args=(list(close_in_child) + [report_r], report_w, app, base_dir),
                            name="minirr-reload-check")
    try:
        process.start()
    except OSError:
        _close_all([report_r, report_w])
        raise
    os.close(report_w)
    os.set_blocking(report_r, False)
    try:
        pidfd = open_pidfd(process.pid)
    except OSError:
        process.kill()
        process.join()
        _close_all([report_r])
        raise
    return AppCheck(process, report_r, pidfd)


def _app_files_main(close_in_child, report_w: int, app: str, base_dir: str) -> None:
    """Runs in the reload check child: import the app, write {"files": [...]} or
    {"error": one line, "file": path}, exit at once (os._exit: no atexit, no threads)."""
    close_inherited(close_in_child)
    _reset_signals()
    os.setpgid(0, 0)                     # a terminal's Ctrl-C is the master's to handle
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        worker_load.import_app(app, base_dir)
        report = {"files": app_files(list(sys.modules.values()))}
    except BaseException as exc:         # SyntaxError, ImportError, SystemExit at import time
        broken = _failure_file(exc)     # watched from now on, even if no module of it was left imported
        report = {"error": worker_load.describe_failure(exc), "file": broken,
                  "files": app_files(list(sys.modules.values()), [broken] if broken else [])}
    data = json.dumps(report).encode("utf-8", "replace")
    try:
        while data:
            data = data[os.write(report_w, data):]
    except OSError:                      # the master has gone
        pass
    os._exit(0)


def app_files(modules, also: Sequence[str] = ()) -> List[list]:
    """The source files of `modules` that are the app's own (not the standard library's,
    an installed package's in site-packages or dist-packages, or minirr's), each as
    [path, mtime_ns, size] when it was imported: an edit made after is a change."""
    paths = sysconfig.get_paths()
    skipped = tuple(sorted({os.path.join(os.path.realpath(paths[name]), "") for name in
                            ("stdlib", "platstdlib", "purelib", "platlib")}))
    minirr_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "")
    found = set(also)
    for module in modules:
        filename = getattr(module, "__file__", None)
        if not isinstance(filename, str) or not filename:
            continue
        real = os.path.realpath(filename)
        parts = real.split(os.sep)
        if real.startswith(skipped + (minirr_dir,)) or "site-packages" in parts or "dist-packages" in parts:
            continue
        found.add(real)
    stamped = []
    for path in sorted(found):
        try:
            st = os.stat(path)
        except OSError:
            continue
        stamped.append([path, st.st_mtime_ns, st.st_size])
    return stamped


def _failure_file(exc: BaseException) -> str:
    """The app's file the import failed in (a SyntaxError's own file), or ""."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return os.path.realpath(exc.filename)
    frame = worker_load.app_frame(traceback.extract_tb(exc.__traceback__))
    return os.path.realpath(frame.filename) if frame is not None else ""


# multiprocessing's fork start opens two pipes (its sentinel, and the one the child
# watches for parent_process()) and then forks; if the second pipe or the fork fails, it
# closes neither (popen_fork.Popen._launch, CPython 3.9 through 3.13).
_MULTIPROCESSING_PIPES = 2


def start_process(process) -> None:
    """`process.start()`, leaving nothing open when it fails.

    Two pipes are opened here first and closed just before the start. The kernel hands
    out the lowest free descriptor numbers (POSIX), and the master has one thread, so
    multiprocessing's two pipes then get exactly those numbers: they cannot fail for
    want of descriptors, and if the fork itself fails (EAGAIN: too many processes;
    ENOMEM), the descriptors it leaves open are known and closed here."""
    spare = [fd for pipe in open_pipes(_MULTIPROCESSING_PIPES) for fd in pipe]
    _close_all(spare)
    try:
        process.start()
    except OSError:
        _close_all([fd for fd in spare if _is_pipe(fd)])
        raise


def _is_pipe(fd: int) -> bool:
    try:
        return stat.S_ISFIFO(os.fstat(fd).st_mode)
    except OSError:                      # not open: multiprocessing never got that far
        return False


def _end_preflight(process) -> None:
    """Nothing of the check may outlive it: kill it if it still runs, reap it."""
    if process.pid is None:              # never started
        return
    if process.exitcode is None:
        process.kill()
        process.join()
    process.close()


def _read_report(fd: int) -> str:
    """What the exited child wrote. Non-blocking: a process the app's import forked may
    still hold the write end, so EOF might never come."""
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, PREFLIGHT_REPORT_BYTES)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def _exit_status_text(exitcode: int) -> str:
    if exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit status {exitcode}"


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


def _child_main(close_in_child, req_r: int, resp_w: int, out_w: int, app: str, factory: bool,
                interface: str, base_dir: str, print_traceback: bool, max_concurrency: int) -> None:
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
    worker_loop.configure_worker_logging()
    channel = worker_loop.FramePipe(req_r, resp_w)
    status = worker_loop.serve(
        channel, lambda: worker_load.load_handler(app, factory, interface, base_dir, max_concurrency), print_traceback)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _preflight_main(report_r: int, report_w: int, app: str, base_dir: str, factory: bool, interface: str) -> None:
    """Runs in the preflight child: import the app, look at it, write "" or `key\nwhy not`
    (the `[server]` key to change), exit at once.

    What the import prints goes to /dev/null: the master's stdout carries its one ready
    line, and the workers' own imports log the same output with their pid anyway.
    os._exit: no atexit handlers, no wait for threads the import may have started."""
    os.close(report_r)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    report = ""
    try:
        worker_load.check_app(worker_load.import_app(app, base_dir), factory, interface, app)
    except worker_load.AppShapeError as exc:   # imports, but is wired up wrong
        report = f"{exc.key}\n{exc.what}; set {exc.fix}"
    except SystemExit as exc:            # sys.exit("...") at import time
        report = f"app\nthe import called sys.exit({exc.code!r})"
    except Exception as exc:
        report = "app\n" + worker_load.describe_failure(exc)
    try:
        os.write(report_w, report.encode("utf-8", "replace")[:PREFLIGHT_REPORT_BYTES])
    except OSError:                      # the master has gone
        pass
    os._exit(0)
