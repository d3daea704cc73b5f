"""The exercises' checks are proven to work: each passes on its reference solution, fails
on its starter (and on a near miss) with the message a learner needs, and leaves no
process behind.

Owns: running `docs/exercises/check_*.py` as a learner would (a subprocess, from the
repository's folder) on the files in docs/exercises/solutions/ and starters/.
Never: changes an exercise. (The doc-tests in docs/exercises/*.md show the same checks'
output on the reference solutions: tests/test_docs.py.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from serverproc import wait_until

ROOT = Path(__file__).resolve().parent.parent
EXERCISES = ROOT / "docs" / "exercises"
CHECK_TIMEOUT_S = 90

# (check script, the learner's file, the line it must print). The reference solutions pass;
# a starter fails at its first TODO.
PASSES = [
    ("check_worker_without_minirr.py", "solutions/worker_without_minirr.py"),
    ("check_header_in_loop.py", "solutions/header_in_loop.py"),
    ("check_recycle.py", "solutions/recycling_worker.py"),
    ("check_backpressure.py", "solutions/slow_client.py"),
    ("check_break_it.py", "solutions/break_it.py"),
]
FAILS = [
    ("check_worker_without_minirr.py", "starters/worker_without_minirr.py", "FAILED: the handshake: "),
    ("check_header_in_loop.py", "starters/header_in_loop.py", "FAILED: X-Served-By is the worker's pid: "),
    # exercise 3 starts from exercise 1's worker, which never asks to be recycled
    ("check_recycle.py", "solutions/worker_without_minirr.py", "FAILED: a new worker after every 3 answers: "),
    ("check_backpressure.py", "starters/slow_client.py", "FAILED: your client got the head"),
    ("check_break_it.py", "starters/break_it.py", "FAILED: /raise goes wrong: "),
]


def run_check(script: str, learner_file: Path) -> subprocess.CompletedProcess:
    """Run one check; fail the test if a process it started (marked by an environment
    variable every child inherits) is still alive after it ends."""
    marker = f"MINIRR_EXERCISE_TEST={uuid.uuid4().hex}"
    env = dict(os.environ, MINIRR_EXERCISE_TEST=marker.split("=", 1)[1])
    env.pop("PYTHONPATH", None)
    try:
        result = subprocess.run([sys.executable, str(EXERCISES / script), str(learner_file)], cwd=str(ROOT),
                                env=env, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S)
    finally:
        try:
            wait_until(lambda: not processes_with(marker), 10, message="the check's processes to exit")
        except AssertionError:
            leftover = processes_with(marker)
            for pid in leftover:
                os.kill(pid, signal.SIGKILL)
            pytest.fail(f"{script} left processes behind: {leftover}")
    return result


def processes_with(marker: str) -> list:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker.encode() in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("script,learner_file", PASSES, ids=[script for script, _ in PASSES])
def test_check_passes_on_the_reference_solution(script, learner_file):
    result = run_check(script, EXERCISES / learner_file)
    assert result.returncode == 0 and result.stdout.rstrip().endswith("all checks passed"), \
        result.stdout + result.stderr


@pytest.mark.parametrize("script,learner_file,message", FAILS, ids=[script for script, _, _ in FAILS])
def test_check_fails_on_the_starter(script, learner_file, message):
    result = run_check(script, EXERCISES / learner_file)
    assert result.returncode == 1 and message in result.stdout, result.stdout + result.stderr


def near_miss(tmp_path: Path, solution: str, old: str, new: str) -> Path:
    """A copy of a reference solution with one line changed."""
    text = (EXERCISES / "solutions" / solution).read_text()
    assert old in text, old
    path = tmp_path / solution
    path.write_text(text.replace(old, new))
    return path


def test_header_check_wants_the_streamed_answer_too(tmp_path):
    """Headers added only to whole answers miss the streamed one, and the check says where."""
    solution = (EXERCISES / "solutions" / "header_in_loop.py").read_text()
    path = tmp_path / "header_in_loop.py"
    line = '    response.headers += [("X-Served-By", str(os.getpid())), ("X-Request-Count", str(served))]\n'
    whole_answer = "        head = encode_head(response)\n"     # the way out for a body that is bytes
    assert line in solution and whole_answer in solution
    path.write_text(solution.replace(line, "").replace(whole_answer, "    " + line + whole_answer))
    result = run_check("check_header_in_loop.py", path)
    assert result.returncode == 1 and "FAILED: the streamed answer carries both headers too" in result.stdout, \
        result.stdout + result.stderr


def test_break_it_check_compares_the_predictions(tmp_path):
    """A wrong prediction fails, naming what happened."""
    path = near_miss(tmp_path, "break_it.py", '"/raise": (500, "kept")', '"/raise": (500, "replaced")')
    result = run_check("check_break_it.py", path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED: /raise: 500, the worker kept, as you predicted: you predicted (500, 'replaced')" in result.stdout


def test_worker_check_refuses_minirr(tmp_path):
    """Exercise 1 is to speak the wire yourself: a worker that imports minirr fails."""
    path = near_miss(tmp_path, "worker_without_minirr.py", "import json\n", "import json\nimport minirr.wire.frame\n")
    result = run_check("check_worker_without_minirr.py", path)
    assert result.returncode == 1 and "FAILED: it does not import minirr" in result.stdout, result.stdout
