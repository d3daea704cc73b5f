"""Reload while developing (`[server] reload`, `minirr serve --reload`): watch the app's
files, and replace the workers when one changes.

Owns: the list of files to watch (the app's own modules, as a check child reports them,
      plus `[server] reload_paths`), polling their stat a bounded number a tick, the
      check child after a change (it imports the app fresh: does the new code load?),
      and what a change leads to: the rolling reload, or one log line saying why not.
Never: imports the app (the master must not: workers are forked from it; a child does,
       launch.start_app_check), waits for anything (the check child's pipe and pidfd are
       in the loop), or replaces a worker itself (the server's begin_reload does, the
       same rolling reset as SIGHUP and `minirr reset`).

    tick ──stat ≤ STATS_PER_TICK files──> one changed ──> check child: import the app
                                                           │ reports its files ──> begin_reload()
                                                           │ reports an error ───> one log line;
                                                           │                      the old workers serve on
                                                           └ (another change meanwhile: check again)
    the config file changed ──> one log line: a restart applies it

The polling is the standard library's os.stat, no inotify: portable, and cheap for the
few hundred files an app has (STATS_PER_TICK a tick; the server ticks at least once a
second, so a change is seen within about a second). Off by default: it is for
development, and says so when it starts.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..config import Config
from . import launch
from .loop import READ, Handler, Loop

log = logging.getLogger("minirr")

STATS_PER_TICK = 1000                  # os.stat calls a tick, at most
MAX_WATCHED_FILES = 20000              # files under reload_paths folders, at most (then a warning)
MAX_REPORT_BYTES = 8 << 20             # what a check child may write about the app's files
CHECK_TIMEOUT_S = 60.0                 # an import that takes longer is stopped (the workers stay)
SKIPPED_FOLDERS = ("__pycache__", "node_modules")

Stamp = Optional[Tuple[int, int]]      # (mtime_ns, size), or None for a file that is not there


class NoReload:
    """What the server ticks when reload is off: nothing."""

    def tick(self, now: float) -> None:
        pass

    def descriptors(self) -> list:
        return []

    def close(self) -> None:
        pass


def watcher(config: Config, loop: Loop, launcher, child_descriptors: Callable[[], list],
            begin_reload: Callable[[], None]):
    """The part the server ticks: a Reloader when `[server] reload` is on, else NoReload."""
    if not config.server.reload:
        return NoReload()
    server = config.server
    start_check = None
    if isinstance(launcher, launch.ForkLauncher):     # a [server] command is not Python we can import
        def start_check(close_in_child):
            return launch.start_app_check(server.app, config.base_dir, close_in_child)
    extra = [os.path.join(config.base_dir, path) for path in server.reload_paths]
    config_file = os.path.abspath(config.path) if os.path.exists(config.path) else ""
    return Reloader(loop, server.app or " ".join(server.command), extra, config_file, start_check,
                    child_descriptors, begin_reload)


class Reloader:
    """See the module docstring. `start_check(close_in_child)` -> launch.AppCheck, or None
    for workers that are no Python app (then a change reloads at once)."""

    def __init__(self, loop: Loop, app: str, extra_paths: Sequence[str], config_file: str, start_check,
                 child_descriptors: Callable[[], list], begin_reload: Callable[[], None]) -> None:
        self.loop = loop
        self.app = app
        self.extra_paths = [os.path.abspath(path) for path in extra_paths]
        self.config_file = config_file
        self.start_check = start_check
        self.child_descriptors = child_descriptors
        self.begin_reload = begin_reload
        self.app_files: List[str] = []             # as the last check reported them
        self.stamps: Dict[str, Stamp] = {}         # every watched file: its last stamp
        self.config_stamp: Stamp = _stamp(config_file) if config_file else None
        self.pass_paths: List[str] = []            # this polling pass's files ...
        self.pass_at = 0                           # ... and how far it has got
        self.changed = ""                          # a file seen changing, not yet acted on
        self.new_in_folders: set = set()           # this pass: files a reload_paths folder did not have
        self.check: Optional[_Check] = None
        self.started = False

    # ---- the server's tick -------------------------------------------------------------------
    def tick(self, now: float) -> None:
        if not self.started:
            self.started = True
            self._poll()                       # the reload_paths as they are now
            self._start_check(now, "")
            return
        if self.check is not None:
            self.check.poll(now)
            return
        self._poll()
        if self.changed:
            self._act_on_change(now)

    def descriptors(self) -> list:
        """What a worker forked meanwhile must close of ours."""
        return self.check.proc.descriptors() if self.check is not None else []

    def close(self) -> None:
        if self.check is not None:
            self.check.end()

    # ---- polling ---------------------------------------------------------------------------------
    def _poll(self) -> None:
        """Stat up to STATS_PER_TICK watched files; at the end of a pass, start the next."""
        if self.pass_at >= len(self.pass_paths):
            self._start_pass()
        budget = STATS_PER_TICK
        paths = self.pass_paths
        while budget and self.pass_at < len(paths):
            path = paths[self.pass_at]
            self.pass_at += 1
            budget -= 1
            stamp = _stamp(path)
            if path not in self.stamps:
                self.stamps[path] = stamp
                if path in self.new_in_folders:
                    self.changed = self.changed or path        # a new file in a reload_paths folder
            elif stamp != self.stamps[path]:
                self.stamps[path] = stamp
                self.changed = self.changed or path
        if self.config_file and budget:
            stamp = _stamp(self.config_file)
            if stamp != self.config_stamp:
                self.config_stamp = stamp
                log.warning("%s changed: restart minirr to apply it (a reload replaces the workers, and they "
                            "keep the settings minirr started with)", self.config_file)

    def _start_pass(self) -> None:
        """The files to stat this pass: the app's, the reload_paths (folders walked again,
        so that a new file there counts as a change)."""
        paths = list(self.app_files)
        walked: List[str] = []
        for path in self.extra_paths:
            if os.path.isdir(path):
                walked += _walk(path, MAX_WATCHED_FILES - len(walked))
            else:
                paths.append(path)
        # The first pass records what is there; from the second on, a new file is a change.
        self.new_in_folders = {path for path in walked if path not in self.stamps} if self.stamps else set()
        self.pass_paths = list(dict.fromkeys(paths + walked))
        self.pass_at = 0

    # ---- a change ------------------------------------------------------------------------------
    def _act_on_change(self, now: float) -> None:
        changed, self.changed = self.changed, ""
        if self.start_check is None:
            log.info("reload: %s changed; replacing the workers", _shown(changed))
            self.begin_reload()
            return
        self._start_check(now, changed)

    def _start_check(self, now: float, changed: str) -> None:
        """Import the app in a child: does the code load, and which files is it made of?"""
        if self.start_check is None:
            self._watching()
            return
        try:
            proc = self.start_check(self.child_descriptors())
        except OSError as exc:
            log.warning("reload: could not start the check of %s (%s); the workers stay as they are", self.app, exc)
            return
        self.check = _Check(self, proc, changed, now)

    def check_done(self, changed: str, report: dict, why_not: str) -> None:
        """The check child has ended: replace the workers, or say why not."""
        self.check = None
        self._take_files(report.get("files"))
        error = report.get("error") if isinstance(report.get("error"), str) else why_not
        if error:
            log.error("reload: %s does not import%s: %s; the old workers keep serving", self.app,
                      f" after {_shown(changed)} changed" if changed else "", error)
            return
        if not changed:                            # the first check, at start: what to watch
            self._watching()
            return
        log.info("reload: %s changed; replacing the workers", _shown(changed))
        self.begin_reload()

    def _take_files(self, files) -> None:
        """The check's [path, mtime_ns, size] of each file the app was made of. Those stamps
        are what the next polls compare with, so an edit made while the check (or the
        workers) imported is a change too."""
        if not isinstance(files, list):
            return
        self.app_files = []
        for item in files[:MAX_WATCHED_FILES]:
            if (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                    and all(type(n) is int for n in item[1:])):
                self.app_files.append(item[0])
                self.stamps[item[0]] = (item[1], item[2])

    def _watching(self) -> None:
        extra = f" and {', '.join(_shown(path) for path in self.extra_paths)}" if self.extra_paths else ""
        log.info("reload is on (for development, not production): watching the %d files of %s%s; "
                 "a change replaces the workers", len(self.app_files), self.app, extra)


class _Check(Handler):
    """One check child in the loop: its report pipe and its pidfd, both READ."""

    def __init__(self, reloader: Reloader, proc, changed: str, now: float) -> None:
        self.reloader = reloader
        self.proc = proc
        self.changed = changed
        self.deadline_at = now + CHECK_TIMEOUT_S
        self.report = bytearray()
        self.ended = False
        self.loop = reloader.loop
        for fd in proc.descriptors():
            self.loop.register(fd, READ, self)

    def on_event(self, mask: int) -> None:
        self._read()
        if not self.ended and self.proc.exitcode() is not None:
            self._read()
            self._finish("")

    def poll(self, now: float) -> None:
        """From the tick: an exit seen without a pidfd, or a check past its deadline."""
        if self.ended:
            return
        if self.proc.exitcode() is not None:
            self._read()
            self._finish("")
        elif now >= self.deadline_at:
            self._finish(f"importing it took longer than {CHECK_TIMEOUT_S:g}s (the check was stopped)")

    def contain(self, exc: BaseException) -> None:
        log.error("reload: the check of %s failed in the master", self.reloader.app, exc_info=exc)
        self._finish("the check failed in the master")

    def _read(self) -> None:
        if self.ended:
            return
        data, at_eof = self.proc.read()
        self.report += data
        if at_eof:
            self.loop.unregister(self.proc.report_fd)    # EOF stays readable: stop asking
        if len(self.report) > MAX_REPORT_BYTES:
            self._finish(f"the check's report passed {MAX_REPORT_BYTES} bytes")

    def _finish(self, why_not: str) -> None:
        if self.ended:
            return
        report = {}
        if not why_not:
            try:
                report = json.loads(bytes(self.report))
            except (ValueError, RecursionError):
                report = {}
            if not isinstance(report, dict):
                report = {}
            if not report:
                why_not = f"the check ended without a report (exit status {self.proc.exitcode()})"
        self.end()
        self.reloader.check_done(self.changed, report, why_not)

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            for fd in self.proc.descriptors():
                self.loop.unregister(fd)
            self.proc.close()


def _stamp(path: str) -> Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _walk(folder: str, limit: int) -> List[str]:
    """The files under `folder`, dot-names and caches skipped, at most `limit`."""
    found: List[str] = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIPPED_FOLDERS)
        for name in sorted(names):
            if not name.startswith("."):
                found.append(os.path.join(root, name))
                if len(found) >= limit:
                    log.warning("reload: watching the first %d files under %s only", len(found), folder)
                    return found
    return found


def _shown(path: str) -> str:
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return path
    return relative if not relative.startswith("..") else path
