"""[server] reload (minirr serve --reload): the app's files are watched and the workers
replaced when one changes; an edit that breaks the import keeps the old workers; the
master never blocks on the check. Polling itself is tested on the Reloader alone (with
no check child, as for `[server] command` workers); the rest against live servers."""

from __future__ import annotations

import logging
import os

import pytest

from fakes import FakeClock, FakeSelector
from minirr.master import reload
from minirr.master.loop import Loop
from serverproc import ServerProcess, child_pids, wait_until

APP = '''import helper
from minirr import Response


def app(request):
    if request.path == "/pid":
        import os
        return Response(200, {}, str(os.getpid()))
    return Response(200, {"Content-Type": "text/plain"}, helper.TEXT)
'''
CONFIG = "[server]\napp = hello:app\n[pool]\nnum_workers = 2\n"


def bump(path, text: str) -> None:
    """Write `text` and move the mtime on: two writes in one clock tick must still differ."""
    before = os.stat(path).st_mtime_ns if os.path.exists(path) else 0
    path.write_text(text)
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


# ---- polling, without a check child ---------------------------------------------------------------

class Reloads:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def reloader(paths, config_file=""):
    reloads = Reloads()
    loop = Loop(selector=FakeSelector(real=True), clock=FakeClock())
    return reload.Reloader(loop, "worker.php", paths, config_file, None, list, reloads), reloads


def test_a_changed_file_reloads_once_and_a_quiet_one_never(tmp_path):
    watched = tmp_path / "worker.php"
    watched.write_text("<?php\n")
    r, reloads = reloader([str(watched)])
    for _ in range(3):
        r.tick(0.0)
    assert reloads.count == 0
    bump(watched, "<?php // edited\n")
    r.tick(1.0)
    r.tick(2.0)
    assert reloads.count == 1


def test_a_deleted_file_is_a_change(tmp_path):
    watched = tmp_path / "a.txt"
    watched.write_text("a")
    r, reloads = reloader([str(watched)])
    r.tick(0.0)
    r.tick(1.0)
    watched.unlink()
    r.tick(2.0)
    assert reloads.count == 1


def test_a_new_file_in_a_watched_folder_is_a_change_and_dot_files_are_not_watched(tmp_path):
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "base.html").write_text("x")
    r, reloads = reloader([str(folder)])
    for _ in range(3):
        r.tick(0.0)
    (folder / ".swp").write_text("editor noise")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "x.pyc").write_text("")
    for _ in range(3):
        r.tick(1.0)
    assert reloads.count == 0
    (folder / "new.html").write_text("y")
    for _ in range(3):
        r.tick(2.0)
    assert reloads.count == 1


def test_stat_calls_a_tick_are_bounded(tmp_path, monkeypatch):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(reload.STATS_PER_TICK + 500):
        (folder / f"f{i}").write_text("")
    r, reloads = reloader([str(folder)])
    r.tick(0.0)                                        # the start
    calls = []
    real = reload._stamp
    monkeypatch.setattr(reload, "_stamp", lambda path: calls.append(path) or real(path))
    r.tick(1.0)
    assert len(calls) <= reload.STATS_PER_TICK
    r.tick(2.0)                                        # the rest of the pass
    assert len(calls) == reload.STATS_PER_TICK + 500
    bump(folder / "f1400", "changed")
    r.tick(3.0)
    r.tick(4.0)
    assert reloads.count == 1


def test_an_edited_config_file_says_a_restart_applies_it(tmp_path, caplog):
    config_file = tmp_path / "rr.ini"
    config_file.write_text("[server]\n")
    r, reloads = reloader([], str(config_file))
    r.tick(0.0)
    r.tick(1.0)
    bump(config_file, "[server]\napp = x:y\n")
    with caplog.at_level(logging.WARNING, logger="minirr"):
        r.tick(2.0)
        r.tick(3.0)
    assert [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.WARNING] == [
        f"{config_file} changed: restart minirr to apply it (a reload replaces the workers, and they keep the "
        f"settings minirr started with)"]
    assert reloads.count == 0


def test_off_by_default_and_the_server_ticks_nothing():
    from minirr import config
    watch = reload.watcher(config.parse("[server]\napp = a:b\n"), None, None, list, None)
    assert isinstance(watch, reload.NoReload) and watch.descriptors() == []


# ---- against live servers -------------------------------------------------------------------------------

@pytest.fixture
def project(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "hello.py").write_text(APP)
    (folder / "helper.py").write_text('TEXT = b"one"\n')
    return folder


def start(project, config=CONFIG, args=("--reload",)) -> ServerProcess:
    (project / "rr.ini").write_text(config)
    return ServerProcess.start(project, config, args=list(args))


def text_of(srv) -> bytes:
    return srv.request("GET", "/")[2]


def workers_serving(srv, pids):
    return sorted(pids) == srv.workers()


def test_an_edit_replaces_the_workers_one_at_a_time_and_a_broken_one_keeps_them(project):
    srv = start(project)
    try:
        srv.wait_for_log(r"reload is on \(for development, not production\): watching the 2 files of hello:app")
        old = srv.wait_workers(2)
        assert text_of(srv) == b"one"
        bump(project / "helper.py", 'TEXT = b"two"\n')
        srv.wait_for_log(r"reload: helper\.py changed; replacing the workers")
        srv.wait_for_log(r"reload complete")
        new = srv.wait_workers(2, exclude=old)
        assert text_of(srv) == b"two"

        bump(project / "helper.py", 'TEXT = b"three\n')               # a syntax error
        [line] = srv.wait_for_log(r"reload: hello:app does not import")
        # (the SyntaxError's own words differ from one Python to the next; the file and line do not)
        assert "reload: hello:app does not import after helper.py changed: SyntaxError: " in line, line
        assert line.endswith("(helper.py, line 1); the old workers keep serving"), line
        assert text_of(srv) == b"two" and srv.workers() == new          # the old workers serve on
        bump(project / "helper.py", 'TEXT = b"four"\n')                 # fixed: reloads
        srv.wait_for_log(r"reload: helper\.py changed; replacing the workers", count=2)
        srv.wait_workers(2, exclude=new)
        wait_until(lambda: text_of(srv) == b"four", message="the fixed code served")
        assert srv.stop() == 0
    finally:
        srv.kill()


def test_an_error_in_a_new_module_is_named_and_watched_until_fixed(project):
    srv = start(project)
    try:
        srv.wait_for_log(r"reload is on")
        old = srv.wait_workers(2)
        (project / "extra.py").write_text("VALUE = undefined_name\n")
        bump(project / "helper.py", 'import extra\nTEXT = b"one"\n')
        [line] = srv.wait_for_log(r"does not import")
        assert "NameError: name 'undefined_name' is not defined (at extra.py:1 in <module>)" in line, line
        bump(project / "extra.py", "VALUE = 1\n")                    # only the new module is edited
        srv.wait_for_log(r"reload: extra\.py changed; replacing the workers")
        srv.wait_workers(2, exclude=old)
        assert srv.stop() == 0
    finally:
        srv.kill()


def test_reload_paths_and_a_config_edit(project):
    (project / "templates").mkdir()
    (project / "templates" / "page.html").write_text("<p>1</p>")
    srv = start(project, CONFIG.replace("[pool]", "reload = true\nreload_paths = templates\n[pool]"), args=())
    try:
        srv.wait_for_log(r"reload is on .* watching the 2 files of hello:app and templates;")
        old = srv.wait_workers(2)
        bump(project / "templates" / "page.html", "<p>2</p>")
        srv.wait_for_log(r"reload: templates/page\.html changed; replacing the workers")
        srv.wait_workers(2, exclude=old)
        bump(project / "rr.ini", (project / "rr.ini").read_text() + "\n")
        srv.wait_for_log(r"rr\.ini changed: restart minirr to apply it")
        assert srv.stop() == 0
    finally:
        srv.kill()


def test_without_reload_an_edit_changes_nothing(project):
    srv = start(project, args=())
    try:
        old = srv.wait_workers(2)
        bump(project / "helper.py", 'TEXT = b"two"\n')
        for _ in range(3):                     # a few ticks' worth of requests, answered by the old code
            assert text_of(srv) == b"one"
        assert srv.workers() == old and "reload is on" not in srv.log and "replacing the workers" not in srv.log
        assert srv.stop() == 0
    finally:
        srv.kill()


def test_the_master_serves_while_a_check_imports_and_the_check_is_gone_after(project):
    """The import after an edit blocks until the test releases it: meanwhile the master
    answers, so the check is watched in the loop, never waited for."""
    gate = project / "gate"
    (project / "helper.py").write_text('TEXT = b"one"\n')
    srv = start(project)
    try:
        srv.wait_for_log(r"reload is on")
        old = srv.wait_workers(2)
        bump(project / "helper.py", 'import os, time\nwhile not os.path.exists(%r):\n    time.sleep(0.01)\n'
                                    'TEXT = b"two"\n' % str(gate))
        # Until the gate opens no reload can begin: a child that is no worker is the check.
        checks = wait_until(lambda: [pid for pid in child_pids(srv.proc.pid) if pid not in old],
                            message="the check child")
        for _ in range(5):
            assert text_of(srv) == b"one"        # answered while the check is still importing
        assert all(os.path.exists(f"/proc/{pid}") for pid in checks)
        gate.write_text("")
        srv.wait_for_log(r"reload: helper\.py changed; replacing the workers")
        srv.wait_workers(2, exclude=old)
        wait_until(lambda: not [pid for pid in checks if pid in child_pids(srv.proc.pid)], message="the check reaped")
        assert srv.stop() == 0
    finally:
        gate.write_text("")
        srv.kill()

