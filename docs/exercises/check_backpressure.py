"""Check for exercise 4: backpressure (docs/exercises/4-backpressure.md).

    python docs/exercises/check_backpressure.py [YOUR_CLIENT.py]

Serves the tour app (one worker) and runs your client on `/big?mb=32`, a 32 MiB answer
a generator makes in 64 KiB blocks. While your client holds the answer back it waits
until the worker is blocked writing to its pipe, and shows how far the app got and what
the master's memory did; then it lets your client read the rest and checks every byte.
Without an argument it checks the reference solution, docs/exercises/solutions/slow_client.py.
"""

from __future__ import annotations

import hashlib
import platform
import re
import subprocess
import sys
import threading

from checking import ROOT, Check, CheckFailed, learner_file, wait_until

USAGE = __doc__.split("\n\n")[1]
MIB = 1024 * 1024
SIZE_MIB = 32
BLOCK = bytes(range(256)) * 256
WRITE_SYSCALL = {"x86_64": "1", "aarch64": "64"}.get(platform.machine())


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) / 1024


def blocked_writing(pid: int) -> bool:
    """Is the process asleep in a write to a pipe? (/proc/PID/wchan names the kernel
    function it sleeps in; /proc/PID/syscall the system call, where wchan says nothing.)"""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            wchan = f.read()
        if wchan not in ("", "0"):
            return "pipe_write" in wchan
        with open(f"/proc/{pid}/syscall") as f:
            return f.read().split()[0] == WRITE_SYSCALL
    except (OSError, IndexError):
        return False


class Client:
    """The learner's client as a process, its output lines collected as they come."""

    def __init__(self, path, host: str, port: int) -> None:
        self.proc = subprocess.Popen([sys.executable, str(path), host, str(port), f"/big?mb={SIZE_MIB}"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def said(self, prefix: str):
        return next((line for line in self.lines if line.startswith(prefix)), None)

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def end(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(5)


def main(argv) -> int:
    with Check(learner_file(argv, USAGE), "slow_client.py") as check:
        srv = check.serve("[server]\napp = tour_app:create_app\nfactory = true\n[pool]\nnum_workers = 1\n",
                          env={"PYTHONPATH": f"{ROOT}:{ROOT / 'docs' / 'examples'}"})
        [worker] = check.note_workers(srv)
        master_before = rss_mib(srv.proc.pid)
        client = Client(check.path, srv.host, srv.port)
        try:
            try:
                wait_until(lambda: client.said("head received") or client.proc.poll() is not None, 15)
            except AssertionError:
                pass
            ended = client.proc.poll()
            check.expect(client.said("head received"), "your client got the head and said `head received`",
                         ("it did not say so within 15 s" if ended is None else f"it exited with status {ended}")
                         + ". It printed:\n" + "\n".join(client.lines[-20:]))
            try:
                wait_until(lambda: blocked_writing(worker), 20)
            except AssertionError:
                raise CheckFailed("the worker never blocked writing its answer: does your client stop reading "
                                  "after the head until it gets a line on stdin?") from None
            made = [int(m) for m in re.findall(r"made (\d+) MiB", srv.log)]
            made_mib = max(made, default=0)
            grew = rss_mib(srv.proc.pid) - master_before
            check.expect(made_mib < SIZE_MIB, "the worker is blocked: it cannot write more to its pipe",
                         f"it has made all {SIZE_MIB} MiB")
            check.info(f"the app had made {made_mib} MiB of {SIZE_MIB} when its write blocked")
            check.info(f"the master's memory grew by {grew:.1f} MiB meanwhile")
            check.expect(grew < 16, "the master did not buffer the answer", f"its RSS grew by {grew:.1f} MiB")
            client.go()
            try:
                wait_until(lambda: client.proc.poll() is not None, 30)
            except AssertionError:
                raise CheckFailed("your client did not finish within 30 s of `go`") from None
            expected = hashlib.sha256(BLOCK * (SIZE_MIB * 16)).hexdigest()
            got = client.said("body ")
            check.expect(got == f"body {SIZE_MIB * MIB} bytes sha256 {expected}",
                         f"then it read all {SIZE_MIB} MiB, chunked encoding undone",
                         f"it said {got!r}; expected 'body {SIZE_MIB * MIB} bytes sha256 {expected}'")
        finally:
            client.end()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
