"""A factory that fails at run time is not a configuration error: the worker exits 3 and
the master backs off. What the log says about it: one headline with the exception and
the app's own file:line, and the traceback only when the launcher asks for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import traceback
from pathlib import Path

from minirr.wire import frame
from minirr.worker import load, loop as worker

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "tests" / "apps"
HANDSHAKE = frame.encode(frame.CONTROL | frame.CODEC_JSON, json.dumps({"pid": os.getpid()}).encode())
LINE = next(number for number, text in enumerate((APPS / "minirr_testapp.py").read_text().splitlines(), 1)
            if 'json.loads("{")' in text)
HEADLINE = ("bootstrap failed: JSONDecodeError: Expecting property name enclosed in double quotes: "
            f"line 1 column 2 (char 1) (at minirr_testapp.py:{LINE} in stdlib_failing_factory)")


# Run in a process of its own: under pytest, sys.stderr is a capture object, and the forked
# worker's log would go there instead of to its output pipe.
FORK_A_WORKER = """
import json, os, sys
from minirr.wire import frame
from minirr.master.launch import ForkLauncher
launcher = ForkLauncher("minirr_testapp:stdlib_failing_factory", True, "minirr", sys.argv[1])
proc = launcher.start([], **json.loads(sys.argv[2]))
os.set_blocking(proc.to_worker, True)
os.set_blocking(proc.output, True)
os.write(proc.to_worker, frame.encode(frame.CONTROL | frame.CODEC_JSON, b'{"pid": 1}'))
output = b""
while True:
    chunk = os.read(proc.output, 65536)
    if not chunk:
        break
    output += chunk
sys.stdout.write(json.dumps({"status": proc.reap(timeout=20), "output": output.decode()}))
proc.close()
"""


def fork_failing_worker(**kwargs) -> str:
    """Start minirr_testapp:stdlib_failing_factory with ForkLauncher; -> what it logged."""
    done = subprocess.run([sys.executable, "-c", FORK_A_WORKER, str(APPS), json.dumps(kwargs)],
                          capture_output=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == worker.EXIT_BOOT_FAILED
    return result["output"]


def test_a_forked_worker_logs_the_headline_and_by_default_the_traceback():
    output = fork_failing_worker()
    assert f"ERROR minirr.worker: {HEADLINE}\n" in output
    assert "ERROR | Traceback (most recent call last):" in output


def test_a_forked_worker_asked_not_to_prints_the_headline_only():
    output = fork_failing_worker(print_traceback=False)
    assert output == f"ERROR minirr.worker: {HEADLINE}\n"


def test_python_m_minirr_worker_always_prints_the_traceback():
    proc = subprocess.run([sys.executable, "-m", "minirr.worker", "minirr_testapp:stdlib_failing_factory",
                           "--factory", "--path", str(APPS)], input=HANDSHAKE, capture_output=True,
                          timeout=30, env={**os.environ, "PYTHONPATH": str(ROOT)})
    err = proc.stderr.decode()
    assert proc.returncode == 3 and proc.stdout == b""
    assert HEADLINE in err and "Traceback (most recent call last)" in err


def test_the_headline_reaches_the_masters_log(serve):
    srv = serve("[server]\napp = minirr_testapp:stdlib_failing_factory\nfactory = true\n[pool]\nnum_workers = 1\n")
    srv.wait_for_log(r"ERROR minirr: worker \d+ \(pid \d+\): minirr\.worker: " + HEADLINE.replace("(", r"\(").replace(")", r"\)"))
    assert srv.request("GET", "/")[0] == 503


# ---- which frame is the application's -----------------------------------------------------

STDLIB = sysconfig.get_paths()["stdlib"]
SITE = sysconfig.get_paths()["purelib"]
MINIRR = str(ROOT / "minirr")


def frames(*entries):
    return traceback.StackSummary.from_list([(name, line, func, None) for name, line, func in entries])


def test_the_innermost_frame_of_the_app_wins_over_libraries_stdlib_and_minirr():
    found = load.app_frame(frames((f"{MINIRR}/worker/loop.py", 1, "serve"), ("/srv/shop/views.py", 10, "create_app"),
                                    ("/srv/shop/vault.py", 20, "login"), (f"{SITE}/hvac/api.py", 5, "post"),
                                    (f"{STDLIB}/socket.py", 3, "create_connection")))
    assert (found.filename, found.lineno, found.name) == ("/srv/shop/vault.py", 20, "login")


def test_an_installed_app_is_found_in_site_packages_when_nothing_else_is_the_apps():
    found = load.app_frame(frames((f"{MINIRR}/worker/loop.py", 1, "serve"), (f"{SITE}/shop/app.py", 7, "create_app"),
                                    (f"{STDLIB}/json/decoder.py", 3, "decode")))
    assert (found.lineno, found.name) == (7, "create_app")


def test_a_failure_that_never_reached_the_app_has_no_location():
    assert load.app_frame(frames((f"{MINIRR}/worker/loop.py", 1, "load_handler"),
                                   (f"{STDLIB}/importlib/__init__.py", 126, "import_module"),
                                   ("<frozen importlib._bootstrap>", 1204, "_gcd_import"))) is None
