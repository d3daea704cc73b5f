"""The command line: --dotenv parsing, what reaches the config, and that every start-up
error is one line on stderr pointing at its cause, with the documented exit status."""

import socket

import pytest

from minirr.cli import load_config, load_dotenv
from minirr.errors import ConfigError
from serverproc import pid_alive, run_cli, wait_until


def test_dotenv_lines_quotes_comments_and_export():
    env = {}
    load_dotenv('# a comment\nA=1\nexport B="two words"\nC=\'x=y\'\n\nD = spaced \nE="quoted" # note\n', env)
    assert env == {"A": "1", "B": "two words", "C": "x=y", "D": "spaced", "E": "quoted"}


@pytest.mark.parametrize("line,message", [
    ("not a pair", "vars.env:3: expected KEY=VALUE, got 'not a pair'"),
    ("exprot A=1", "vars.env:3: expected KEY=VALUE, got 'exprot A=1'"),
    ("=value", "vars.env:3: expected KEY=VALUE, got '=value'"),
    ('A="no end', "vars.env:3: the \" quote is not closed in '\"no end'"),
    ("A='x' y", "vars.env:3: unexpected 'y' after the closing ' quote"),
])
def test_a_malformed_dotenv_line_is_an_error_naming_the_file_and_line(line, message):
    with pytest.raises(ConfigError) as info:
        load_dotenv(f"# settings\nOK=1\n{line}\n", {}, "vars.env")
    assert str(info.value) == message


def test_dotenv_never_overrides_the_environment():
    env = {"A": "from the shell"}
    load_dotenv("A=from the file\n", env)
    assert env["A"] == "from the shell"


def test_dotenv_is_read_before_the_config_expands_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIRR_TEST_PORT", "unset")   # so that teardown removes what --dotenv sets
    monkeypatch.delenv("MINIRR_TEST_PORT")
    (tmp_path / "vars.env").write_text("MINIRR_TEST_PORT=9123\n")
    (tmp_path / "rr.ini").write_text("[server]\napp = a:b\n[http]\naddress = 127.0.0.1:${MINIRR_TEST_PORT}\n")
    config = load_config(str(tmp_path / "rr.ini"), ["pool.num_workers=3"], str(tmp_path / "vars.env"))
    assert config.http.address == ("127.0.0.1", 9123)
    assert config.pool.num_workers == 3
    assert config.base_dir == str(tmp_path)


# ---- start-up errors as the user sees them ----------------------------------------------

HELLO_APP = "from minirr import Response\n\ndef app(request):\n    return Response(200, {}, b'hi')\n"


def start_up(tmp_path, config_text, *args, files=None):
    """`minirr serve` in tmp_path; -> (exit status, stderr lines, stdout)."""
    for name, text in (files or {}).items():
        (tmp_path / name).write_text(text)
    (tmp_path / "rr.ini").write_text(config_text)
    proc = run_cli("serve", "-c", str(tmp_path / "rr.ini"), "-o", "http.address=127.0.0.1:0", *args)
    return proc.returncode, proc.stderr.strip().splitlines(), proc.stdout


def test_a_bad_override_names_the_override_not_the_file(tmp_path):
    status, lines, _ = start_up(tmp_path, "[server]\napp = hello:app\n", "-o", "pool.num_wokers=3",
                                files={"hello.py": HELLO_APP})
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith("minirr: -o pool.num_wokers=3: unknown key; did you mean num_workers?")
    assert "rr.ini" not in lines[0]


def test_an_ini_syntax_error_is_one_line_with_file_and_line(tmp_path):
    status, lines, _ = start_up(tmp_path, "[server]\napp = hello:app\napp = other:app\n")
    assert status == 2 and lines == [f"minirr: {tmp_path / 'rr.ini'}:3: [server] app is set twice"]


def test_a_malformed_dotenv_line_stops_minirr_with_exit_2(tmp_path):
    (tmp_path / "vars.env").write_text("A=1\nthis is not a pair\n")
    status, lines, _ = start_up(tmp_path, "[server]\napp = hello:app\n", "--dotenv", str(tmp_path / "vars.env"),
                                files={"hello.py": HELLO_APP})
    assert status == 2 and lines == [f"minirr: {tmp_path / 'vars.env'}:2: expected KEY=VALUE, "
                                     "got 'this is not a pair'"]


def test_an_address_in_use_names_the_config_key(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        status, lines, stdout = start_up(tmp_path, "[server]\napp = hello:app\n", "-o", f"http.address=127.0.0.1:{port}",
                                         files={"hello.py": HELLO_APP})
    assert status == 1 and stdout == ""
    assert lines == [f"minirr: cannot listen on 127.0.0.1:{port} ([http] address): Address already in use"]


# ---- [server] app is checked before anything starts ---------------------------------------

@pytest.mark.parametrize("files,app,cause", [
    ({}, "nosuchmod:create_app", "ModuleNotFoundError: No module named 'nosuchmod'"),
    ({"hello.py": HELLO_APP}, "hello:create_app", "AttributeError: module 'hello' has no attribute 'create_app'"),
    ({"broken.py": "import os\n\ndef create_app(:\n    pass\n"}, "broken:create_app",
     "SyntaxError: invalid syntax (broken.py, line 3)"),
    ({"needs.py": "import os\nimport nosuchlib_minirr\n"}, "needs:app",
     "ModuleNotFoundError: No module named 'nosuchlib_minirr' (at needs.py:2 in <module>)"),
])
def test_an_app_that_cannot_be_loaded_stops_minirr_with_one_line_and_exit_3(tmp_path, files, app, cause):
    status, lines, stdout = start_up(tmp_path, f"[server]\napp = {app}\nfactory = true\n", files=files)
    assert status == 3 and stdout == ""
    assert lines == [f"minirr: {tmp_path / 'rr.ini'} [server] app = {app}: {cause}"]


def test_an_app_from_an_override_is_blamed_on_the_override(tmp_path):
    status, lines, _ = start_up(tmp_path, "[server]\napp = hello:app\n", "-o", "server.app=nosuchmod:create_app",
                                files={"hello.py": HELLO_APP})
    assert status == 3
    assert lines == ["minirr: -o server.app=nosuchmod:create_app: ModuleNotFoundError: No module named 'nosuchmod'"]


def test_the_app_is_checked_before_anything_is_bound(tmp_path):
    """With the address taken, a bad app still exits 3, not 1: nothing was bound yet."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        status, lines, _ = start_up(tmp_path, "[server]\napp = nosuchmod:app\n", "-o", f"http.address=127.0.0.1:{port}")
    assert status == 3 and len(lines) == 1 and "nosuchmod" in lines[0]
    assert not (tmp_path / "minirr.sock").exists()


RECORDING_APP = """import os
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "importers"), "a") as f:
    f.write(f"{os.getpid()}\\n")
print("printed while importing", flush=True)
if os.environ.get("MINIRR_TEST_FAIL_IMPORT"):
    raise RuntimeError("no settings at import time")
from minirr import Response

def create_app():
    return lambda request: Response(200, {}, str(os.getpid()))
"""


def test_an_exception_while_importing_is_named_with_the_app_line_and_the_check_leaves_nothing(tmp_path):
    (tmp_path / "recording.py").write_text(RECORDING_APP)
    (tmp_path / "rr.ini").write_text("[server]\napp = recording:create_app\nfactory = true\n")
    proc = run_cli("serve", "-c", str(tmp_path / "rr.ini"), env={"MINIRR_TEST_FAIL_IMPORT": "1"})
    assert proc.returncode == 3 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"minirr: {tmp_path / 'rr.ini'} [server] app = recording:create_app: "
        "RuntimeError: no settings at import time (at recording.py:6 in <module>)"]
    (checker,) = [int(pid) for pid in (tmp_path / "importers").read_text().split()]
    assert not pid_alive(checker)


def test_a_good_app_is_imported_once_in_a_child_that_is_gone_before_workers_start(serve):
    srv = serve("[server]\napp = recording:create_app\nfactory = true\n[pool]\nnum_workers = 2\n",
                files={"recording.py": RECORDING_APP})
    workers = srv.wait_workers(2)
    record = srv.config_path.parent / "importers"

    def importers_when_both_workers_imported():
        pids = [int(pid) for pid in record.read_text().split()]
        return pids if len(pids) == 3 else None
    importers = wait_until(importers_when_both_workers_imported, message="both workers to import the app")
    checker = importers[0]                                  # the check runs before any worker
    assert checker not in workers and not pid_alive(checker)
    assert sorted(importers[1:]) == workers                 # the master itself imported nothing
    assert "printed while importing" not in "".join(srv.stdout_lines)
    assert srv.request("GET", "/")[0] == 200


SLOW_FIRST_IMPORT = """import os, time
marker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imported-once")
if not os.path.exists(marker):          # the first import (the start-up check) hangs
    open(marker, "w").close()
    time.sleep(120)
from minirr import Response

def app(request):
    return Response(200, {}, b"ok")
"""


def test_a_check_that_does_not_finish_in_allocate_timeout_is_killed_and_the_start_goes_on(serve):
    srv = serve("[server]\napp = slow:app\n[pool]\nnum_workers = 1\nallocate_timeout = 2s\n",
                files={"slow.py": SLOW_FIRST_IMPORT}, timeout=30)
    (line,) = srv.wait_for_log(r"importing slow:app took longer than 2s")
    checker = int(line.split("(pid ")[1].split(")")[0])
    assert not pid_alive(checker) and checker not in srv.workers()
    assert srv.request("GET", "/")[2] == b"ok"


# ---- starting without an rr.ini -----------------------------------------------------------------

def serve_here(folder, *args, timeout=20.0):
    """`python -m minirr serve ARGS` run in `folder` (no -c), on port 0 -> ServerProcess."""
    import os
    import subprocess
    import sys
    from serverproc import ROOT, ServerProcess
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "minirr", "serve", *args, "-o", "http.address=127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(folder), env=env, text=True,
                            bufsize=1)
    server = ServerProcess(proc, folder / "rr.ini")
    try:
        server.wait_ready(timeout)
    except AssertionError:
        server.kill()
        raise
    return server


def test_serve_with_neither_an_app_nor_an_rr_ini_says_how_to_start(tmp_path):
    proc = run_cli("serve", cwd=str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"minirr: no rr.ini here ({tmp_path}) and no app named."), proc.stderr
    assert "    minirr serve myapp:app\n" in proc.stderr and "    [server]\n    app = myapp:app\n" in proc.stderr


def test_serve_module_app_without_an_rr_ini_serves_with_the_defaults_from_this_folder(tmp_path):
    (tmp_path / "hello.py").write_text(HELLO_APP)
    srv = serve_here(tmp_path, "hello:app", "-o", "pool.num_workers=1")
    try:
        assert srv.request("GET", "/")[::2] == (200, b"hi")
        assert len(srv.workers()) == 1                            # -o works as ever
        assert (tmp_path / "minirr.sock").exists()                # the defaults: the control socket here
        workers = run_cli("workers", "--json", cwd=str(tmp_path))  # ... found again with no rr.ini
        assert workers.returncode == 0 and '"status": "ready"' in workers.stdout, workers.stderr
    finally:
        assert srv.stop() == 0


def test_an_app_named_on_the_command_line_wins_over_the_rr_ini_and_is_blamed_as_typed(tmp_path):
    (tmp_path / "hello.py").write_text(HELLO_APP)
    (tmp_path / "rr.ini").write_text("[server]\napp = nosuchmodule:app\n[pool]\nnum_workers = 1\n")
    srv = serve_here(tmp_path, "hello:app")
    try:
        assert srv.request("GET", "/")[::2] == (200, b"hi")
    finally:
        assert srv.stop() == 0
    proc = run_cli("serve", "nosuch:app", cwd=str(tmp_path))
    assert proc.returncode == 3
    assert proc.stderr.strip() == "minirr: minirr serve nosuch:app: ModuleNotFoundError: No module named 'nosuch'"
