"""The documents stay true: the commands the walkthroughs show are run, and what they print
is checked against what the documents say they print.

Owns: finding the marked blocks in README.md and docs/**/*.md, running them from the
repository's folder on loopback (a server per session, commands with bash, every wait a
poll with a deadline), comparing their output with the document's, and checking that every
`module.name` a document cites exists in minirr.
Never: edits a document, or leaves a process behind: every server is stopped, every
command runs in a session of its own that is killed when it ends, and a worker that
outlives its master fails the test.

A marker is an HTML comment (invisible when the markdown is rendered) on the line before
a fenced block:

    <!-- doc-test: serve -->   the block's `$ python -m minirr serve ...` starts a server in
                               the background (on a free port and a control socket of the
                               test's own); the lines after it are what it prints on stdout.
                               Each serve block begins a new session: one test.
    <!-- doc-test: run -->     each `$ command` runs with bash (a `<<'EOF'` here-document and
                               its lines included); the lines after it, up to the next `$`,
                               are its output (stdout and stderr).
    <!-- doc-test: log -->     lines the session's server must log in answer to the commands
                               of the last run block (polled until they appear, or a deadline).
    <!-- doc-test: stop -->    the server is stopped as Ctrl-C stops it (SIGINT to the master);
                               the lines are what it must log while stopping; exit status 0.
    <!-- doc-test: file path=P -->  the block's text is written to P in the session's project
                               folder (a reader's own project: hello.py, rr.ini, mysite/...).

Projects. A block with `project=NAME` begins a session of its own that runs in a new
folder (a project's, outside the repository: minirr is found as an installed package
would be), so that a recipe can create files, run a framework's commands, then serve;
its serve block does not begin another session. `needs=MODULE[,MODULE]` on that first
block skips the session, saying what to install, when a module it needs is missing
(Flask, Django: test tools, never dependencies).

Options after the kind: `timeout=S` (seconds; 30 for a command or a stop, 10 for a log block), `check=NAME` (an extra check
of a run block's output, from CHECKS) and `digits=any` (in this block any number matches
any number: for output that is nothing but a pid; pair it with a check).

Comparing. Both sides are normalised first (VARYING: timestamps, pids, ports, durations,
the curl version, HTTP dates; in log blocks also frame lengths, which follow the port's
and curl's lengths). Then `…` inside a line matches any text, and a line that is only `…`
matches any number of lines (run blocks). A run block's output must match whole and in
order. A log block's lines must each appear; the lines that trace one worker (its frames
and state moves) must appear in the order shown, since one worker's events happen in
order; lines from different sources (a worker's own output, the access log) may interleave.

In commands, `http://127.0.0.1:8080` becomes the session's server address, and `python -m minirr
reset|workers|stop` gets the session's control socket.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest

from serverproc import READY_RE, ServerProcess, child_pids, pid_alive, wait_until

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md"] + list((ROOT / "docs").rglob("*.md")))
MARKER_RE = re.compile(r"^<!-- doc-test: (\w+)((?: [\w-]+=[\w.,/-]+)*) -->$")
KINDS = ("serve", "run", "log", "stop", "file")
DEFAULT_TIMEOUT_S = 30.0
LOG_TIMEOUT_S = 10.0                 # a log block: lines not there by then are missing
ELLIPSIS = "…"
DOC_ADDRESS = "127.0.0.1:8080"
# Documents that must keep their walkthroughs under test (a lost marker fails here).
MUST_HAVE = {"docs/life-of-a-request.md": ("serve", "run", "log", "stop"), "docs/bootstrap-once.md": ("run",),
             "README.md": ("file", "serve", "run")}     # the Flask and Django recipes

VARYING: List[Tuple[str, str]] = [
    (r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", ""),            # the log's timestamps
    (r'(pid[ =]|"pid": ?)\d+', r"\1N"),                           # process ids
    (r"127\.0\.0\.1:\d+", "127.0.0.1:PORT"),                      # ports
    (r"\b\d+(\.\d+)?ms\b", "Tms"), (r"\b\d+\.\d+s\b", "Ts"),      # durations
    (r"curl/[\d.]+", "curl/V"),
    (r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT", "DATE"),   # HTTP dates
]
VARYING_IN_LOGS: List[Tuple[str, str]] = [
    (r"length=\d+", "length=N"), (r"options=\[\d+\]", "options=[N]"), (r"body=\d+ bytes", "body=N bytes"),
]
TRACE_LINE_RE = re.compile(r"minirr: (?:frame (?:master → )?worker (\d+)|worker (\d+) \(pid N\): [A-Z]+ --)")


# ---- reading the documents ---------------------------------------------------------------

@dataclass
class Block:
    kind: str
    options: Dict[str, str]
    lines: List[str]
    where: str                      # "docs/x.md:LINE", for messages
    heading: str


@dataclass
class Session:
    doc: str
    blocks: List[Block] = field(default_factory=list)
    project: str = ""               # runs in a project folder of its own (see the module docstring)
    needs: Tuple[str, ...] = ()     # modules it needs, or it is skipped

    @property
    def serves(self) -> bool:
        return any(block.kind == "serve" for block in self.blocks)

    @property
    def title(self) -> str:
        first = self.blocks[0]
        return f"{self.doc}: {first.heading}" if first.heading else self.doc


def read_blocks(path: Path) -> List[Block]:
    """The marked blocks of one document, in order. Raises ValueError on a malformed marker."""
    rel = path.relative_to(ROOT).as_posix()
    lines = path.read_text().split("\n")
    blocks: List[Block] = []
    heading = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if line.startswith("<!-- doc-test"):
            match = MARKER_RE.match(line)
            if match is None or match.group(1) not in KINDS:
                raise ValueError(f"{rel}:{i + 1}: a doc-test marker must read <!-- doc-test: KIND [opt=value ...] -->"
                                 f" with KIND one of {', '.join(KINDS)}: {line!r}")
            if i + 1 >= len(lines) or not lines[i + 1].startswith("```"):
                raise ValueError(f"{rel}:{i + 1}: a doc-test marker must be followed by a fenced block")
            end = i + 2
            while end < len(lines) and not lines[end].startswith("```"):
                end += 1
            options = dict(item.split("=", 1) for item in match.group(2).split())
            blocks.append(Block(match.group(1), options, lines[i + 2:end], f"{rel}:{i + 1}", heading))
            i = end
        i += 1
    return blocks


def sessions_of(path: Path) -> List[Session]:
    """Blocks split at each serve block: a session is a server and the commands that use it."""
    rel = path.relative_to(ROOT).as_posix()
    sessions: List[Session] = []
    for block in read_blocks(path):
        current = sessions[-1] if sessions else None
        project = block.options.get("project", "")
        first_serve_of_a_project = current is not None and current.project and not current.serves
        if current is None or project or (block.kind == "serve" and not first_serve_of_a_project):
            needs = tuple(name for name in block.options.get("needs", "").split(",") if name)
            sessions.append(Session(rel, project=project, needs=needs))
        sessions[-1].blocks.append(block)
    return sessions


def commands_of(block: Block) -> List[Tuple[str, List[str]]]:
    """(command, expected output lines) for each `$ ` line of a block."""
    items: List[Tuple[str, List[str]]] = []
    lines = block.lines
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("$ "):
            if not items:
                raise ValueError(f"{block.where}: output before the first `$ ` command: {line!r}")
            items[-1][1].append(line)
            i += 1
            continue
        command = line[2:]
        while command.endswith("\\") and i + 1 < len(lines):
            i += 1
            command = command[:-1] + "\n" + lines[i]
        heredoc = re.search(r"<<-?'?(\w+)'?\s*$", command)
        if heredoc:
            terminator = heredoc.group(1)
            while i + 1 < len(lines):
                i += 1
                command += "\n" + lines[i]
                if lines[i] == terminator:
                    break
        items.append((command, []))
        i += 1
    return items


def all_sessions() -> List[Session]:
    found: List[Session] = []
    for path in DOCS:
        found += [s for s in sessions_of(path) if s.blocks]
    return found


# ---- comparing ----------------------------------------------------------------------------

def normalise(line: str, in_log: bool = False, any_digits: bool = False) -> str:
    for pattern, replacement in VARYING + (VARYING_IN_LOGS if in_log else []):
        line = re.sub(pattern, replacement, line)
    if any_digits:
        line = re.sub(r"\d+", "N", line)
    return line.rstrip()


def line_pattern(expected: str, in_log: bool = False, any_digits: bool = False) -> "re.Pattern":
    parts = normalise(expected, in_log, any_digits).split(ELLIPSIS)
    return re.compile(".*".join(re.escape(part) for part in parts), re.S)


def output_matches(expected: List[str], actual: List[str], any_digits: bool = False) -> bool:
    """Whole and in order; a line that is only `…` stands for any number of lines."""
    while expected and expected[-1] == "":
        expected = expected[:-1]
    actual = [normalise(line, any_digits=any_digits) for line in actual]
    while actual and actual[-1] == "":
        actual = actual[:-1]
    patterns = [None if line.strip() == ELLIPSIS else line_pattern(line, any_digits=any_digits) for line in expected]

    def match(p: int, a: int) -> bool:
        if p == len(patterns):
            return a == len(actual)
        if patterns[p] is None:
            return any(match(p + 1, k) for k in range(a, len(actual) + 1))
        return a < len(actual) and patterns[p].fullmatch(actual[a]) is not None and match(p + 1, a + 1)
    return match(0, 0)


def missing_log_lines(expected: List[str], actual: List[str]) -> List[str]:
    """The expected lines not found (see the module docstring for the order rule)."""
    actual = [normalise(line, in_log=True) for line in actual]
    last_of_worker: Dict[str, int] = {}
    missing = []
    for line in expected:
        if not line.strip():
            continue
        pattern = line_pattern(line, in_log=True)
        trace = TRACE_LINE_RE.search(normalise(line, in_log=True))
        worker = (trace.group(1) or trace.group(2)) if trace else None
        start = last_of_worker.get(worker, -1) + 1 if worker else 0
        found = next((k for k in range(start, len(actual)) if pattern.fullmatch(actual[k])), None)
        if found is None:
            missing.append(line)
        elif worker:
            last_of_worker[worker] = found
    return missing


def check_bootstrap(output: str) -> None:
    """docs/bootstrap-once.md: a fresh bootstrap per request costs at least the Vault
    double's login delay (a sleep, so no machine is too fast for it), and more than once;
    Vault sees one login in the first run and one per request in the second."""
    rows = {mode: (float(p50), int(logins)) for mode, p50, logins in re.findall(
        r"^(once|per request) +p50 +([\d.]+) ms.*Vault logins (\d+)$", output, re.M)}
    assert set(rows) == {"once", "per request"}, output
    requests = int(re.search(r"^(\d+) requests", output, re.M).group(1))
    assert rows["per request"][0] >= 85.0 and rows["once"][0] < rows["per request"][0], output
    assert rows["once"][1] == 1 and rows["per request"][1] >= requests, output


def check_two_pids(output: str) -> None:
    """docs/life-of-a-request.md, max_jobs = 1: two requests, two different workers."""
    pids = re.findall(r"^\d+$", output, re.M)
    assert len(pids) == 2 and pids[0] != pids[1], output


CHECKS: Dict[str, Callable[[str], None]] = {"bootstrap": check_bootstrap, "two_pids": check_two_pids}


# ---- running ------------------------------------------------------------------------------

class Runner:
    """One session: its server (if it has one), its commands, and their clean-up."""

    def __init__(self, tmp: Path, project: str = "") -> None:
        self.tmp = tmp
        self.server: Optional[ServerProcess] = None
        self.log_mark = 0                # log lines before the last run block began
        self.worker_pids: set = set()
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        # `python` in a command is this Python. A script, not a symlink: a symlink to a
        # venv's python, run from elsewhere, finds no pyvenv.cfg beside it and loses the venv.
        (bin_dir / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
        (bin_dir / "python").chmod(0o755)
        self.env = dict(os.environ)
        self.env["PATH"] = f"{bin_dir}{os.pathsep}{self.env.get('PATH', '')}"
        for name in ("PYTHONPATH", "VAULT_HOST", "MINIRR_ADDRESS"):
            self.env.pop(name, None)
        self.folder = ROOT               # where commands run: the repository, or a project's folder
        if project:
            self.folder = tmp / project
            self.folder.mkdir()
            self.env["PYTHONPATH"] = str(ROOT)   # minirr as if installed; the project's own folder is its own

    def file(self, block: Block) -> None:
        path = self.folder / block.options["path"]
        assert self.folder != ROOT, f"{block.where}: a file block belongs to a project session (project=NAME)"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(block.lines) + "\n")

    @property
    def socket(self) -> str:
        return f"unix:{self.tmp / 'minirr.sock'}"

    def rewrite(self, command: str) -> str:
        """The session's address and control socket in place of the document's."""
        if self.server is not None:
            command = command.replace(f"http://{DOC_ADDRESS}", f"http://{self.server.host}:{self.server.port}")
        return re.sub(r"(python -m minirr (?:reset|workers|stop))\b", rf"\1 -o rpc.listen={self.socket}", command)

    def serve(self, block: Block) -> None:
        [(command, expected)] = commands_of(block)
        argv = shlex.split(command) + ["-o", "http.address=127.0.0.1:0", "-o", f"rpc.listen={self.socket}"]
        assert argv[:4] == ["python", "-m", "minirr", "serve"], f"{block.where}: not a serve command: {command}"
        proc = subprocess.Popen([sys.executable] + argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=str(self.folder), env=self.env, text=True, bufsize=1, start_new_session=True)
        self.server = ServerProcess(proc, self.folder / "rr.ini")
        self.server.wait_ready(float(block.options.get("timeout", DEFAULT_TIMEOUT_S)))
        self.log_mark = 0
        stdout = [line for line in self.server.stdout_lines if READY_RE.search(line)]
        assert output_matches(expected, stdout), f"{block.where}: the server printed {stdout}, the doc shows {expected}"

    def run(self, block: Block) -> None:
        timeout = float(block.options.get("timeout", DEFAULT_TIMEOUT_S))
        if self.server is not None:
            self.log_mark = len(self.server.stderr_lines)
        for command, expected in commands_of(block):
            output = self.shell(self.rewrite(command), timeout, block)
            any_digits = block.options.get("digits") == "any"
            assert output_matches(expected, output.split("\n"), any_digits), (
                f"{block.where}: `{command}` printed:\n{output}\n--- the doc shows:\n" + "\n".join(expected)
                + self.server_log())
            check = block.options.get("check")
            if check:
                CHECKS[check](output)
            self.note_workers()

    def shell(self, command: str, timeout: float, block: Block) -> str:
        proc = subprocess.Popen(["bash", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                cwd=str(self.folder), env=self.env, text=True, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            output = ""
            pytest.fail(f"{block.where}: `{command}` did not finish within {timeout:g}s" + self.server_log())
        finally:
            _kill_group(proc.pid)        # whatever the command left behind goes with it
            proc.wait()
        return output

    def log(self, block: Block) -> None:
        assert self.server is not None, f"{block.where}: a log block needs a serve block before it"
        timeout = float(block.options.get("timeout", LOG_TIMEOUT_S))
        server, mark = self.server, self.log_mark
        try:
            wait_until(lambda: not missing_log_lines(block.lines, server.stderr_lines[mark:]), timeout)
        except AssertionError:
            missing = missing_log_lines(block.lines, server.stderr_lines[mark:])
            pytest.fail(f"{block.where}: the server did not log (in this order):\n" + "\n".join(missing)
                        + self.server_log())
        self.note_workers()

    def stop(self, block: Block) -> None:
        assert self.server is not None, f"{block.where}: a stop block needs a serve block before it"
        self.note_workers()
        self.log_mark = len(self.server.stderr_lines)
        status = self.server.stop(signal.SIGINT, float(block.options.get("timeout", DEFAULT_TIMEOUT_S)))
        assert status == 0, f"{block.where}: the server exited with status {status}" + self.server_log()
        missing = missing_log_lines(block.lines, self.server.stderr_lines[self.log_mark:])
        assert not missing, f"{block.where}: the server did not log:\n" + "\n".join(missing) + self.server_log()

    def note_workers(self) -> None:
        if self.server is not None:
            self.worker_pids.update(self.server.workers())
            self.worker_pids.update(int(pid) for pid in re.findall(r"worker \d+ \(pid (\d+)\)", self.server.log))

    def server_log(self) -> str:
        return f"\n--- server log:\n{self.server.log}" if self.server is not None else ""

    def close(self) -> None:
        """Stop the server (if the document did not), then make sure no worker outlives it."""
        if self.server is None:
            return
        self.note_workers()
        if self.server.proc.poll() is None:
            try:
                self.server.stop(signal.SIGTERM, 30)
            finally:
                self.server.kill()
        try:
            wait_until(lambda: not [pid for pid in self.worker_pids if pid_alive(pid)], 10,
                       message="the workers to exit")
        except AssertionError:
            alive = [pid for pid in self.worker_pids if pid_alive(pid)]
            for pid in alive:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            raise AssertionError(f"worker processes outlived their master: {alive}")


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ---- the tests ----------------------------------------------------------------------------

SESSIONS = all_sessions()


def session_id(session: Session) -> str:
    """docs/x.md#N: the Nth session of that document (from 1), in reading order."""
    return f"{session.doc}#{[s for s in SESSIONS if s.doc == session.doc].index(session) + 1}"


@pytest.mark.parametrize("session", SESSIONS, ids=session_id)
def test_walkthrough(session: Session, tmp_path: Path) -> None:
    """Each session of each document, block by block, as a reader would run it."""
    import importlib.util
    missing = [name for name in session.needs if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"{session.doc} {session.title}: needs {', '.join(missing)} (`pip install "
                    f"{' '.join(missing)}`; .ci/run installs them)")
    runner = Runner(tmp_path, session.project)
    try:
        for block in session.blocks:
            getattr(runner, block.kind)(block)
    finally:
        runner.close()


def test_documents_keep_their_walkthroughs() -> None:
    """A document that must stay tested still has its marked blocks (a lost marker fails
    here instead of silently leaving the walkthrough unchecked)."""
    for doc, kinds in MUST_HAVE.items():
        found = {block.kind for block in read_blocks(ROOT / doc)}
        assert set(kinds) <= found, f"{doc}: expected doc-test blocks of kinds {kinds}, found {sorted(found)}"
    for exercise in sorted((ROOT / "docs" / "exercises").glob("[0-9]*.md")):
        assert [b for b in read_blocks(exercise) if b.kind == "run"], f"{exercise}: its check is not run"


# ---- the names the documents cite ---------------------------------------------------------

# Modules by their path in the package (`master.backend`, `http.parser`, `cli`), longest first
# so that `master.loop` is found before a shorter name that starts it.
MODULES = sorted((".".join(p.relative_to(ROOT / "minirr").with_suffix("").parts)
                  for p in (ROOT / "minirr").rglob("*.py") if p.stem not in ("__main__", "__init__")),
                 key=len, reverse=True)
NAME_RE = re.compile(r"`(?:minirr\.)?(" + "|".join(re.escape(m) for m in MODULES) + r")\.([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)"
                     r"(?:\(\))?`")
FILE_SUFFIXES = ("py", "php", "ini", "md", "sock", "env", "js", "go")
# `layer.module.name` in backquotes, for a module the package may no longer have (a module
# removed or renamed leaves names NAME_RE no longer sees).
LAYERED_RE = re.compile(r"`(?:minirr\.)?((?:master|http|wire|worker)\.[a-z_]+)\.[A-Za-z_][A-Za-z0-9_.]*(?:\(\))?`")
# Spelled like a minirr name, but something else: WSGI environ keys, RoadRunner's config keys.
NOT_MINIRR = frozenset(("wsgi.input", "wsgi.errors", "wsgi.version", "wsgi.url_scheme", "server.command"))
# ASGI's message types look like layered names too (`http.response.start`): they are the spec's.
ASGI_MESSAGES = frozenset(("http.request", "http.response", "http.disconnect", "websocket.connect", "websocket.accept",
                           "websocket.receive", "websocket.send", "websocket.close", "websocket.disconnect",
                           "lifespan.startup", "lifespan.shutdown"))


def cited_names(text: str) -> List[str]:
    """`module.function`, `module.Class.method` (and `minirr.`-prefixed) names in backquotes."""
    names = []
    for module, attrs in NAME_RE.findall(text):
        name = f"{module}.{attrs}"
        if attrs.split(".")[0] in FILE_SUFFIXES or name in NOT_MINIRR:
            continue                     # a file name (worker.php), or not minirr's
        names.append(name)
    return names


def resolve(name: str) -> object:
    import importlib
    module = next(m for m in MODULES if name.startswith(m + "."))
    attrs = name[len(module) + 1:].split(".")
    obj = importlib.import_module(f"minirr.{module}")
    for attr in attrs:
        obj = getattr(obj, attr)
    return obj


@pytest.mark.parametrize("doc", DOCS, ids=[p.relative_to(ROOT).as_posix() for p in DOCS])
def test_cited_names_exist(doc: Path) -> None:
    """Every `module.name` a document cites is in minirr: a rename breaks the document here."""
    text = doc.read_text()
    missing = [f"{module} (no such module)" for module in LAYERED_RE.findall(text)
               if module not in MODULES and module not in ASGI_MESSAGES]
    for name in cited_names(text):
        try:
            resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    assert not missing, f"{doc.relative_to(ROOT)} cites names minirr does not have: {sorted(set(missing))}"


def test_life_of_a_request_cites_each_step() -> None:
    """The walkthrough names the function of every step it follows."""
    text = (ROOT / "docs" / "life-of-a-request.md").read_text()
    cited = set(cited_names(text))
    steps = ["master.listener.Listener.on_event", "master.connection.Connection._on_readable",
             "http.parser.RequestParser.next_event", "master.frontend.Frontend.on_request", "master.jobs.Jobs.submit",
             "master.jobs.TRANSITIONS", "master.backend.Backend.dispatch", "wire.frame.describe", "worker.loop.serve",
             "worker.loop._answer", "master.channel.WorkerChannel.on_event", "master.backend.Backend.on_frames",
             "master.reply.ReplyReader.read", "master.jobs.Jobs.on_reply", "master.answer.Answers.whole",
             "master.connection.Connection.respond", "master.backend.Backend._release",
             "master.backend.Backend.on_exit", "master.backend.Backend.begin_reload",
             "worker.stream.ResponseStream.send_body", "master.frontend.Frontend.on_closed",
             "master.jobs.Jobs.client_gone", "master.backend.Backend.client_gone"]
    assert not [step for step in steps if step not in cited], sorted(set(steps) - cited)


# ---- the figures and moves the documents show -----------------------------------------------

# A frame as wire.frame.describe words it (the trace's lines, and the walkthrough's outputs).
FRAME_RE = re.compile(r"length=(\d+) crc=\w+ options=\[([\d, ]*)\](?: head=(\{.*?\}))?"
                      r"(?: body=(\d+) bytes (b'.*?'|b\".*?\"))?(?: \(|$)")
MOVE_RE = re.compile(r"\b([A-Z][A-Z_]+) --(\w+)--> (?=([A-Z][A-Z_]+)\b)")


def frame_figures_wrong(line: str) -> Optional[str]:
    """What does not add up in a described frame: the payload is the head and the body,
    the first option is the head's length, a body shown whole is as long as it says.
    (A head or body with `…` in it, or cut off by describe, is not counted.)"""
    import ast
    match = FRAME_RE.search(line)
    if match is None:
        return None
    length, options, head, body_len, body = match.groups()
    options = [int(o) for o in options.split(",") if o.strip()]
    head_len = len(head.encode()) if head else 0
    body_len = int(body_len) if body_len else 0
    if head and ELLIPSIS not in head and options and options[0] != head_len:
        return f"options=[{options[0]}], but the head shown is {head_len} bytes"
    if head and ELLIPSIS in head:
        return None
    if int(length) != head_len + body_len:
        return f"length={length}, but head ({head_len}) + body ({body_len}) = {head_len + body_len}"
    if body and ELLIPSIS not in body and not body.endswith("..."):
        shown = len(ast.literal_eval(body))
        if shown != body_len and shown < 40:
            return f"body={body_len} bytes, but {body} is {shown}"
    return None


def test_described_frames_add_up() -> None:
    """Log blocks compare frame lengths loosely (they follow the port's and curl's lengths),
    so the numbers a document shows are checked here instead: each frame line adds up."""
    wrong = []
    for path in DOCS:
        for number, line in enumerate(path.read_text().split("\n"), 1):
            why = frame_figures_wrong(line)
            if why:
                wrong.append(f"{path.relative_to(ROOT)}:{number}: {why}")
    assert not wrong, "\n".join(wrong)


def test_moves_the_walkthrough_names_are_rows_of_a_table() -> None:
    """Every `STATE --event--> STATE` the walkthrough writes is a row of the job's, the
    worker's or the connection's table: a renamed event or state breaks the page here."""
    from minirr.master import jobs, lifecycle, pool
    rows = {(old.name, event, new.name) for table in (jobs.TRANSITIONS, pool.TRANSITIONS, lifecycle.TRANSITIONS)
            for (old, event), new in table.items()}
    text = (ROOT / "docs" / "life-of-a-request.md").read_text()
    written = set(MOVE_RE.findall(text))
    assert written, "the walkthrough names no moves"
    assert not written - rows, sorted(written - rows)


def test_follow_request_ends_quietly_when_its_reader_leaves() -> None:
    """`python docs/examples/follow_request.py | head`: once head has gone, the script's
    writes fail (EPIPE); it must end without a traceback. A pipe nobody reads from makes
    that happen on the first write, every time."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "docs/examples/follow_request.py"], stdout=write_end,
                                stderr=subprocess.PIPE, cwd=str(ROOT), timeout=60)
    finally:
        os.close(write_end)
    assert result.returncode == 0 and result.stderr == b"", result.stderr.decode()


def test_name_extraction() -> None:
    """The extractor finds what the documents write, and skips file names."""
    text = ("see `master.listener.Listener.on_event`, `minirr.wire.frame.describe()`, `worker.php`, `rr.ini`, "
            "`wsgi.input`, `master.connection.HIGH_WATER_BYTES`")
    assert cited_names(text) == ["master.listener.Listener.on_event", "wire.frame.describe",
                                 "master.connection.HIGH_WATER_BYTES"]
    with pytest.raises(AttributeError):
        resolve("master.listener.Listener.no_such_method")
    assert LAYERED_RE.findall("`master.replies.Replies.on_frame`, `worker.php`, `http.parser.TRANSITIONS`") == [
        "master.replies", "http.parser"]


def test_frame_arithmetic() -> None:
    """frame_figures_wrong finds the two slips an earlier walkthrough had, and passes lines that add up."""
    good = "frame worker 1 (pid 4120) → master: v1 flags=JSON stream=- length=70 crc=ok options=[56] " \
           "head={\"status\":200,\"headers\":{\"Content-Type\":[\"text/plain\"]}} body=14 bytes b'Hello, world!\\n'"
    assert frame_figures_wrong(good) is None
    assert frame_figures_wrong(good.replace("length=70", "length=72")) is not None
    assert frame_figures_wrong("v1 flags=CONTROL stream=- length=14 crc=ok options=[] body=14 bytes b'{\"pid\": 4120}'")
    assert frame_figures_wrong("v1 flags=CONTROL stream=- length=13 crc=ok options=[] body=13 bytes b'{\"pid\": 4120}'") is None
    assert frame_figures_wrong('v1 flags=JSON stream=- length=4 crc=ok options=[3] head={"a"} body=1 bytes b"…"') \
        is not None
    assert frame_figures_wrong("v1 flags=JSON stream=- length=… crc=ok options=[] body=… bytes b'x'") is None
    assert MOVE_RE.findall("`STARTING --hello--> READY --assign--> WORKING`, `AT_WORKER --failed--> DONE`") == [
        ("STARTING", "hello", "READY"), ("READY", "assign", "WORKING"), ("AT_WORKER", "failed", "DONE")]


def test_comparison() -> None:
    """`…` and the normalisations do what the module docstring says, and no more."""
    assert output_matches(["a …", "…", "z"], ["a b c", "x", "y", "z"])
    assert not output_matches(["a", "z"], ["a", "x", "z"])
    assert output_matches(["pid 123 on 127.0.0.1:8080 in 3.2ms"], ["pid 98765 on 127.0.0.1:40123 in 10ms"])
    assert not output_matches(["status 502"], ["status 504"])
    log = ["2026-12-06 09:12:23,050 INFO minirr: worker 1 (pid 7): READY --assign--> WORKING",
           "2026-12-06 09:12:23,051 INFO minirr.access: GET / 200",
           "2026-12-06 09:12:23,052 INFO minirr: worker 1 (pid 7): WORKING --done--> READY"]
    assert not missing_log_lines(["INFO minirr.access: GET / 200",
                                  "INFO minirr: worker 1 (pid 9): READY --assign--> WORKING",
                                  "INFO minirr: worker 1 (pid 9): WORKING --done--> READY"], log)
    assert missing_log_lines(["INFO minirr: worker 1 (pid 9): WORKING --done--> READY",
                              "INFO minirr: worker 1 (pid 9): READY --assign--> WORKING"], log)
