"""What the exercises' checks share: a server for the learner's file, and one line per result.

Owns: starting `python -m minirr serve` on 127.0.0.1 port 0 in a temporary folder (the
test suite's `tests/serverproc.py` does the starting, waiting and stopping), printing
`ok: ...` for each thing that works and `FAILED: ...` with a hint for the first that does
not, and the exit status (0: all passed, 1: something failed).
Never: leaves a server or a worker behind: `Check` stops what it started, on success,
on failure and on Ctrl-C.

    with Check("docs/exercises/solutions/x.py") as check:
        srv = check.serve("[server]\\ncommand = ...\\n")
        check.expect(status == 200, "GET / answers 200", f"it answered {status}")
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Iterable, List, Optional

EXERCISES = Path(__file__).resolve().parent
ROOT = EXERCISES.parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from serverproc import ServerProcess, pid_alive, run_cli, wait_until  # noqa: E402,F401  (found through the line above)


# How the master logs a first start that failed: the process ended, or what it wrote was not
# a frame (a stray print()): the check reports that line at once, not after a timeout.
FAILED_START = r"before it was ready|broke the frame channel"


class CheckFailed(Exception):
    """One expectation did not hold; the check stops there."""


class Check:
    """The learner's file, the servers started for it, and the verdict."""

    def __init__(self, learner_file: str, default: str) -> None:
        self.path = Path(learner_file or EXERCISES / "solutions" / default).resolve()
        self.servers: List[ServerProcess] = []
        self.worker_pids: set = set()
        self._tmp = tempfile.TemporaryDirectory(prefix="minirr-exercise-")
        self.folder = Path(self._tmp.name)

    def __enter__(self) -> "Check":
        shown = self.path.relative_to(ROOT) if ROOT in self.path.parents else self.path
        print(f"checking {shown}")
        if not self.path.exists():
            print(f"FAILED: {self.path} does not exist")
            raise SystemExit(1)
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        self.stop_all()
        self._tmp.cleanup()
        if kind is CheckFailed:
            print(f"FAILED: {exc}")
            raise SystemExit(1)
        if kind is None:
            print("all checks passed")
        return False

    # ---- servers -------------------------------------------------------------------------
    def serve(self, config: str, overrides: Iterable[str] = (), files: Optional[dict] = None,
              env: Optional[dict] = None) -> ServerProcess:
        folder = self.folder / f"server{len(self.servers) + 1}"
        try:
            srv = ServerProcess.start(folder, config, overrides=list(overrides), files=files, env=env, timeout=20)
        except AssertionError as exc:
            raise CheckFailed(f"the server did not start:\n{exc}") from None
        self.servers.append(srv)
        return srv

    def note_workers(self, srv: ServerProcess) -> List[int]:
        """The server's worker pids now (and every one it has logged, to check at the end)."""
        pids = srv.workers()
        self.worker_pids.update(pids)
        self.worker_pids.update(int(pid) for pid in re.findall(r"worker \d+ \(pid (\d+)\)", srv.log))
        return pids

    def stop_all(self) -> None:
        for srv in self.servers:
            if srv.proc.poll() is None:
                self.note_workers(srv)
                try:
                    srv.stop(timeout=30)
                except AssertionError:
                    srv.kill()
        try:
            wait_until(lambda: not [pid for pid in self.worker_pids if pid_alive(pid)], 10)
        except AssertionError:
            for pid in self.worker_pids:
                if pid_alive(pid):
                    os.kill(pid, 9)

    @staticmethod
    def started(srv: ServerProcess, timeout: float = 10.0) -> bool:
        """Did the first worker finish its handshake (False: it failed, or took too long)?"""
        try:
            lines = srv.wait_for_log(rf"STARTING --hello--> READY|ready in|{FAILED_START}", timeout)
        except AssertionError:
            return False
        return re.search(FAILED_START, lines[0]) is None

    @staticmethod
    def first_start(srv: ServerProcess) -> str:
        """The log of the first worker's start, up to its failure (what the learner needs)."""
        shown = []
        for line in srv.log.split("\n"):
            shown.append(line)
            if re.search(FAILED_START, line):
                break
        return "\n".join(shown[-40:])

    # ---- verdicts ------------------------------------------------------------------------
    @staticmethod
    def expect(condition: object, what: str, otherwise: str) -> None:
        """Print `ok: what`, or stop the check with `FAILED: what: otherwise`."""
        if not condition:
            raise CheckFailed(f"{what}: {otherwise}")
        print(f"ok: {what}")

    @classmethod
    def expect_none(cls, problem: Optional[str], what: str) -> None:
        """`expect` for a step that returns what went wrong, or None when it went right."""
        cls.expect(problem is None, what, problem or "")

    @staticmethod
    def info(text: str) -> None:
        """A figure worth looking at, not a pass/fail."""
        print(f"  {text}")


def learner_file(argv: List[str], usage: str) -> str:
    """The file named on the command line, or "" for the reference solution."""
    args = [arg for arg in argv[1:] if not arg.startswith("-")]
    if len(args) > 1 or any(arg in ("-h", "--help") for arg in argv[1:]):
        print(usage)
        raise SystemExit(2)
    return args[0] if args else ""


def imports_minirr(path: Path) -> bool:
    """Does this Python file import minirr (the exercise asks it not to)?"""
    import ast
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "minirr" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "minirr":
            return True
    return False
