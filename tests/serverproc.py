"""Start a real `python -m minirr serve` for a test, and make sure nothing outlives it.

    srv = ServerProcess.start(tmp_path, config_text, overrides=["pool.num_workers=2"])
    status, headers, body = srv.request("GET", "/")
    srv.stop()                      # SIGTERM, wait, assert exit status 0 (or returns it)

Every wait is a poll with a deadline; nothing sleeps to let time pass.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

ROOT = Path(__file__).resolve().parent.parent
READY_RE = re.compile(r"minirr listening on http://([\d.]+):(\d+)")


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02, message: str = ""):
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate}")
        time.sleep(interval)  # a poll interval, not a wait for time to pass


def child_pids(pid: int) -> List[int]:
    """Direct children of `pid`, read from /proc."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        if int(fields[1]) == pid and fields[0] != b"Z":
            children.append(int(entry))
    return children


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2:].split()[0] != b"Z"


class ServerProcess:
    """A running minirr master, its stdout ready line parsed, its stderr collected."""

    def __init__(self, proc: subprocess.Popen, config_path: Path) -> None:
        self.proc = proc
        self.config_path = config_path
        self.stdout_lines: List[str] = []
        self.stderr_lines: List[str] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._pump, args=(stream, lines), daemon=True)
                         for stream, lines in ((proc.stdout, self.stdout_lines), (proc.stderr, self.stderr_lines))
                         if stream is not None]
        for t in self._threads:
            t.start()
        self.host = ""
        self.port = 0
        self.worker_pids_seen: set = set()

    # ---- starting -------------------------------------------------------------------
    @classmethod
    def start(cls, folder: Path, config_text: str, overrides: Iterable[str] = (), env: Optional[Dict[str, str]] = None,
              files: Optional[Dict[str, str]] = None, args: Iterable[str] = (), wait_ready: bool = True,
              timeout: float = 20.0, entry: Optional[List[str]] = None, stderr=subprocess.PIPE) -> "ServerProcess":
        """Write `config_text` to folder/rr.ini (and `files`), start the server on port 0.
        `entry` replaces `python -m minirr` (e.g. a script that patches the master first);
        `stderr` may be any Popen target (a pipe nobody reads, for instance)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in (files or {}).items():
            (folder / name).write_text(text)
        config_path = folder / "rr.ini"
        config_path.write_text(config_text)
        cmd = (entry or [sys.executable, "-m", "minirr"]) + [
            "serve", "-c", str(config_path), "-o", "http.address=127.0.0.1:0"]
        for item in overrides:
            cmd += ["-o", item]
        cmd += list(args)
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests" / "apps"), full_env.get("PYTHONPATH", "")])
        full_env.pop("VAULT_HOST", None)
        full_env.update(env or {})
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, cwd=str(folder),
                                env=full_env, text=True, bufsize=1)
        server = cls(proc, config_path)
        if wait_ready:
            server.wait_ready(timeout)
        return server

    def _pump(self, stream, lines: List[str]) -> None:
        for line in stream:
            with self._lock:
                lines.append(line.rstrip("\n"))

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log}")
            for line in list(self.stdout_lines):
                m = READY_RE.search(line)
                if m:
                    return m
            return None
        m = wait_until(ready, timeout, message="the ready line")
        self.host, self.port = m.group(1), int(m.group(2))

    # ---- observing ------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log(self) -> str:
        with self._lock:
            return "\n".join(self.stderr_lines)

    def wait_for_log(self, pattern: str, timeout: float = 10.0, count: int = 1) -> List[str]:
        """Wait until at least `count` stderr lines match the regex `pattern`; return them."""
        rx = re.compile(pattern)

        def found():
            with self._lock:
                hits = [line for line in self.stderr_lines if rx.search(line)]
            return hits if len(hits) >= count else None
        try:
            return wait_until(found, timeout, message=f"log line /{pattern}/ x{count}")
        except AssertionError as exc:   # show the log as it is now, not as it was when we began
            raise AssertionError(f"{exc}\n--- log:\n{self.log}") from None

    def workers(self) -> List[int]:
        """Pids of the master's live child processes."""
        return child_pids(self.proc.pid)

    def wait_workers(self, n: int, timeout: float = 10.0, exclude: Iterable[int] = ()) -> List[int]:
        """Wait until exactly `n` worker processes are alive, none of them in `exclude`."""
        exclude = set(exclude)

        def ok():
            pids = self.workers()
            return sorted(pids) if len(pids) == n and not exclude & set(pids) else None
        return wait_until(ok, timeout, message=f"{n} workers (excluding {sorted(exclude)})")

    # ---- talking --------------------------------------------------------------------
    def connection(self, timeout: float = 10.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method: str = "GET", path: str = "/", body=None, headers: Optional[dict] = None,
                timeout: float = 10.0):
        """One request on a fresh connection -> (status, headers dict (lower-case names), body bytes)."""
        conn = self.connection(timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def raw(self, data: bytes, timeout: float = 10.0, shutdown: bool = False) -> bytes:
        """Send raw bytes on a new connection, read until the server closes it (or timeout)."""
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            sock.sendall(data)
            if shutdown:
                sock.shutdown(socket.SHUT_WR)
            chunks = []
            while True:
                try:
                    chunk = sock.recv(65536)
                except socket.timeout:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks)

    # ---- stopping -------------------------------------------------------------------
    def send_signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send `signum`, wait for the master to exit, return its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        return self.wait_exit(timeout)

    def kill(self) -> None:
        """Kill the master and every child it still has (teardown of last resort)."""
        kids = child_pids(self.proc.pid) if self.proc.poll() is None else []
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def wait_exit(self, timeout: float = 30.0) -> int:
        """Wait for the master to exit by itself (after a signal or `minirr stop` the test
        sent); unlike stop(), sends nothing: a second SIGTERM would force an exit 1."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"server did not exit within {timeout}s:\n{self.log}")
        for t in self._threads:
            t.join(5)
        return self.proc.returncode


class RequestLoop:
    """`threads` threads that GET `path` from `server` again and again while the block runs;
    every status other than 200 lands in `failures`.

        with RequestLoop(srv, threads=4) as loop:
            srv.send_signal(signal.SIGHUP)
            srv.wait_workers(2, exclude=old)
        assert loop.failures == []

    Leaving the block stops the loops and joins the threads (the request in flight ends first).
    """

    def __init__(self, server: "ServerProcess", path: str = "/", threads: int = 2) -> None:
        self.server = server
        self.path = path
        self.failures: List[int] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop) for _ in range(threads)]

    def _loop(self) -> None:
        while not self._stop.is_set():
            status = self.server.request("GET", self.path)[0]
            if status != 200:
                self.failures.append(status)

    def __enter__(self) -> "RequestLoop":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


def run_cli(*args: str, timeout: float = 60.0, env: Optional[Dict[str, str]] = None,
            cwd: Optional[str] = None) -> subprocess.CompletedProcess:
    """Run `python -m minirr ARGS...` (e.g. "workers", "-c", path) to completion."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), full_env.get("PYTHONPATH", "")])
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "minirr", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd)
