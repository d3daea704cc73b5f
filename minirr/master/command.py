"""Workers in any language: `[server] command` run as a worker process, as RoadRunner's
`server.command` runs one.

Owns: the program's argv (relative paths from rr.ini's folder), its environment
      (`[server.env]` and the RR_* variables RoadRunner's worker libraries read), the
      start-up check that the program exists, and starting it with its stdin, stdout and
      stderr on the worker's three pipes.
Never: speaks the wire protocol (the program does; see docs/external-workers.md) or
       decides when a worker starts or stops (the backend does).

    master  to_worker   ───pipe───> the program's stdin    (request frames)
            from_worker <──pipe──── the program's stdout   (response frames)
            output      <──pipe──── the program's stderr   (log lines, relayed with its pid)
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import ConfigError
from .launch import WorkerPipes, WorkerProcess


class _CommandChild:
    """A subprocess.Popen, seen through the same three calls."""

    def __init__(self, popen: subprocess.Popen) -> None:
        self.popen = popen

    def poll(self) -> Optional[int]:
        return self.popen.poll()          # waitpid on this pid only, WNOHANG; -N for signal N

    def extra_fds(self) -> List[int]:
        return []

    def release(self) -> None:
        pass



class CommandLauncher:
    """Start `[server] command` (e.g. `php worker.php`): frames on the program's stdin and
    stdout, its stderr relayed to the log, as RoadRunner's `server.command` does.

    `close_in_child` is not needed here: exec with close_fds=True leaves the program only
    fds 0, 1 and 2, so no socket or pipe of the master's can leak into it.
    """

    def __init__(self, config) -> None:
        self.base_dir = config.base_dir
        self.argv = resolve_command(config.server.command, config.base_dir)
        self.env = worker_environment(os.environ, config.server.env, config.rpc.listen)
        _check_program(self.argv[0], self.base_dir, self.env.get("PATH", os.defpath))

    def preflight(self, timeout_s: float) -> None:
        """Nothing to import here: the program was checked when the launcher was made."""

    def start(self, close_in_child: Sequence[object] = (), print_traceback: bool = True) -> WorkerProcess:
        """`print_traceback` is for forked workers; a program decides for itself what it logs."""
        pipes = WorkerPipes()
        try:
            popen = subprocess.Popen(
                self.argv, stdin=pipes.request_r, stdout=pipes.response_w, stderr=pipes.output_w,
                cwd=self.base_dir, env=self.env, close_fds=True,
                # Own session and process group: a terminal's Ctrl-C reaches the master only,
                # which then stops workers gracefully instead of having them die mid-request.
                start_new_session=True,
            )
        except OSError:
            pipes.close()
            raise
        return pipes.hand_over(popen.pid, _CommandChild(popen), lambda: (popen.kill(), popen.wait()))


def resolve_command(argv: Sequence[str], base_dir: str) -> List[str]:
    """Relative arguments that name a file in the config's folder become absolute paths
    (`php worker.php` runs the worker.php next to rr.ini); everything else is kept."""
    resolved = []
    for arg in argv:
        candidate = os.path.join(base_dir, arg)
        if not os.path.isabs(arg) and os.path.isfile(candidate):
            arg = os.path.abspath(candidate)
        resolved.append(arg)
    return resolved


def worker_environment(inherited: Mapping[str, str], configured: Sequence[Tuple[str, str]],
                       rpc_listen: str) -> Dict[str, str]:
    """The master's environment, then `[server.env]`, then the variables RoadRunner's
    worker libraries read to learn how they are connected (these always win)."""
    env = dict(inherited)
    env.update(configured)
    env["RR_RELAY"] = "pipes"          # frames on stdin/stdout
    env["RR_MODE"] = "http"            # the worker serves HTTP requests
    if rpc_listen.startswith("tcp://"):
        env["RR_RPC"] = rpc_listen     # RoadRunner's RPC clients speak TCP only
    return env


def _check_program(program: str, base_dir: str, path: str) -> None:
    """Fail at startup with one line, not once per worker start, if the program is missing.
    A name with a slash is a path (from base_dir, the worker's cwd); a bare name is on PATH."""
    if os.sep in program:
        program_path = os.path.join(base_dir, program)
        found = os.path.isfile(program_path) and os.access(program_path, os.X_OK)
    else:
        found = shutil.which(program, path=path) is not None
    if not found:
        raise ConfigError("server", "command", f"{program!r} is not an executable file or a program on PATH")
