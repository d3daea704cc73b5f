"""Files under the `[static]` mounts, answered by the master itself: no worker sees them.

Owns: the mounts (a URL prefix and the folder it serves), matching a request to one,
      finding the file (its real path inside the folder, no dot-names on the way, a
      regular file; `name.br` or `name.gz` beside it when the client accepts them),
      opening it, its Content-Type, and the answer with its access log line and metrics.
Never: decides HTTP semantics (http/files.py does: refusals, validators, 304, ranges,
       codings, the head), sends a byte itself (connection.respond_file does, with
       sendfile), or hands a request under a mount to a worker: a path there that names
       no file is a 404 from here.

    Frontend.on_request ──> answer(conn, request, keep_alive, now) ── False: not under a mount
        mount ──files.relative_path──> "css/base.css" | 400 / 404
        realpath inside the folder? open (O_NOFOLLOW, O_NONBLOCK), fstat: a regular file?
        files.codings_to_try ──> lstat name.br, name.gz (regular files, not links)
        files.plan ──> head ──> conn.respond_file(head, fd, offset, length) | conn.respond(head)

The stat and open calls run in the loop. On a local disk they take microseconds once
the page cache holds the folder (as in nginx without its thread pool); a folder on a
network filesystem would stall every client meanwhile, so serve that from nginx instead.
A symlink inside the folder may point anywhere inside it; one whose target is outside
(or hidden: a dot-name) is not found. The check and the open are two steps: someone
who can rename files inside the folder between them could race it, and so the folder
must not be writable by anyone you do not trust with the files it points at.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import stat
import time
from typing import Dict, Optional, Sequence, Tuple

from ..config import Config, StaticConfig
from ..errors import ConfigError
from ..http import files
from ..http.responses import DateCache, error_response

log = logging.getLogger("minirr")

ROOT_CHECK_S = 1.0                     # a real path is looked up again this often (a deploy may switch a link)
RESOLVED_ENTRIES = 4096                # real paths remembered per mount (names come from clients: bounded)
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC   # NONBLOCK: a FIFO must not hang the loop
# Types an older Python (or a bare container without /etc/mime.types) does not know.
WEB_TYPES = {".woff2": "font/woff2", ".woff": "font/woff", ".webp": "image/webp", ".avif": "image/avif",
             ".js": "text/javascript", ".mjs": "text/javascript", ".map": "application/json",
             ".wasm": "application/wasm", ".webmanifest": "application/manifest+json"}
# A file asked for by its compressed name (app.tar.gz) is sent as what it is, not decoded.
ENCODED_TYPES = {"gzip": "application/gzip", "br": "application/x-brotli", "bzip2": "application/x-bzip2",
                 "xz": "application/x-xz", "compress": "application/x-compress"}
TEXT_TYPES = ("text/", "application/javascript", "application/json", "application/manifest+json",
              "image/svg+xml")


def check_folders(config: Config) -> None:
    """At start-up: every mount's folder exists. Raises ConfigError naming the mount's dir."""
    for mount in config.static:
        folder = os.path.join(config.base_dir, mount.dir)
        if not os.path.isdir(folder):
            hint = " (for Django: python manage.py collectstatic)" if mount.url == "/static/" else ""
            raise ConfigError(mount.section, "dir", f"{os.path.abspath(folder)} is not a folder{hint}")


class Mount:
    """One `[static]` section: its URL prefix, its folder, its Cache-Control."""

    def __init__(self, config: StaticConfig, base_dir: str) -> None:
        self.prefix = config.url
        self.folder = os.path.abspath(os.path.join(base_dir, config.dir))
        self.cache_control = config.cache_control
        self._real = ""
        self._resolved: Dict[str, str] = {}
        self._resolved_at = float("-inf")

    def resolve(self, name: str, now: float) -> Optional[str]:
        """The real path of `name` in the folder, or None if it leads out of the folder (a
        link whose target is outside) or to a dot-name. realpath costs an lstat per
        component, so results are remembered, and all forgotten every ROOT_CHECK_S (a
        deploy that switches a linked folder is followed within a second)."""
        if now - self._resolved_at >= ROOT_CHECK_S:
            self._real = os.path.join(os.path.realpath(self.folder), "")
            self._resolved = {}
            self._resolved_at = now
        real = self._resolved.get(name)
        if real is None:
            real = os.path.realpath(self._real + name)
            if not real.startswith(self._real) or _hidden(real[len(self._real):]):
                real = ""                  # remembered as "not ours" too
            if len(self._resolved) < RESOLVED_ENTRIES:
                self._resolved[name] = real
        return real or None


class Found:
    """An open file, ready to be answered: its descriptor, what fstat said, its coding."""

    __slots__ = ("fd", "info", "coding")

    def __init__(self, fd: int, info: files.FileInfo, coding: str) -> None:
        self.fd = fd
        self.info = info
        self.coding = coding


class StaticFiles:
    """The master's file server (see the module docstring)."""

    def __init__(self, mounts: Sequence[Mount], metrics, access_log, dates: DateCache, clock=time.time) -> None:
        self.mounts = list(mounts)     # longest prefix first (config._check_mounts)
        self.metrics = metrics
        self.access_log = access_log   # None when [logs] access_log is off
        self.dates = dates
        self.clock = clock             # wall time: Last-Modified and Date are calendar times
        self.types = mimetypes.MimeTypes()   # reads the system's mime.types, once, at start
        self._type_of: Dict[str, str] = {}

    @classmethod
    def from_config(cls, config: Config, metrics, access_log, dates: DateCache) -> Optional["StaticFiles"]:
        if not config.static:
            return None
        mounts = [Mount(mount, config.base_dir) for mount in config.static]
        for mount in mounts:
            log.info("serving the files of %s under %s", mount.folder, mount.prefix)
        return cls(mounts, metrics, access_log, dates)

    # ---- the frontend's question ------------------------------------------------------------
    def answer(self, conn, request, keep_alive: bool, now: float) -> bool:
        """Answer `request` if its path is under a mount (True); otherwise leave it (False)."""
        path = request.path
        for mount in self.mounts:
            if path.startswith(mount.prefix):
                break
        else:
            return False
        status, body_bytes = self._answer(mount, conn, request, keep_alive)
        self.metrics.request_answered(status, 0.0)
        if self.access_log is not None:
            target = path + ("?" + request.query if request.query else "")
            self.access_log.log(request.remote_addr, request.method, target, request.protocol, status, body_bytes,
                                0.0, "-")
        return True

    def _answer(self, mount: Mount, conn, request, keep_alive: bool) -> Tuple[int, int]:
        """-> (status, body bytes), once the answer is with the connection."""
        method = request.method
        if method not in ("GET", "HEAD"):
            return self._error(conn, 405, "a static file answers GET and HEAD only", keep_alive,
                               (("Allow", "GET, HEAD"),))
        name = files.relative_path(request.path, mount.prefix)
        if isinstance(name, files.Refusal):
            return self._error(conn, name.status, name.message, keep_alive)
        wall = self.clock()
        fields = files.request_fields(request.headers)
        found = self._find(mount, name, fields.get("accept-encoding"), wall)
        if found is None:
            return self._error(conn, 404, "not found", keep_alive)
        plan = files.plan(method, fields, found.info, found.coding, self._content_type(name),
                          mount.cache_control, wall)
        head = files.answer_head(plan, keep_alive, self.dates.get(wall), request.protocol)
        if plan.length:
            conn.respond_file(head, found.fd, plan.offset, plan.length, keep_alive)
        else:
            os.close(found.fd)
            conn.respond(head, keep_alive)
        return plan.status, plan.length

    def _error(self, conn, status: int, message: str, keep_alive: bool, headers: tuple = ()) -> Tuple[int, int]:
        conn.respond(error_response(status, message, date=self.dates.get(self.clock()), keep_alive=keep_alive,
                                    extra_headers=headers), keep_alive)
        return status, len(message) + 1

    # ---- finding the file -------------------------------------------------------------------------
    def _find(self, mount: Mount, name: str, accept_encoding: Optional[str], wall: float) -> Optional[Found]:
        """The open file `name` names in the mount's folder, or its br/gzip file when the
        client takes one; None if there is no such regular file inside the folder."""
        real = mount.resolve(name, wall)
        if real is None:
            return None                  # a link that leaves the folder, or lands on a dot-name
        opened = _open_regular(real)
        if opened is None:
            return None
        fd, info = opened
        for coding in files.codings_to_try(accept_encoding):
            variant = _open_variant(real + dict(files.PRECOMPRESSED)[coding])
            if variant is not None:
                os.close(fd)
                return Found(variant[0], variant[1], coding)
        return Found(fd, info, "identity")

    def _content_type(self, name: str) -> str:
        """From the name, as mimetypes knows it (and WEB_TYPES); text in UTF-8."""
        suffix = name[name.rfind("."):].lower() if "." in name.rsplit("/", 1)[-1] else ""
        known = self._type_of.get(suffix)
        if known is not None:
            return known
        guessed, encoding = self.types.guess_type(name, strict=False)
        if encoding is not None:
            guessed = ENCODED_TYPES.get(encoding, "application/octet-stream")
        else:
            guessed = WEB_TYPES.get(suffix) or guessed or "application/octet-stream"
        if guessed.startswith(TEXT_TYPES):
            guessed += "; charset=utf-8"
        if len(self._type_of) < 1024:    # suffixes come from clients: remember a bounded few
            self._type_of[suffix] = guessed
        return guessed


def _hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.split("/"))


def _open_regular(path: str) -> Optional[Tuple[int, files.FileInfo]]:
    """Open `path` if it is a regular file (not a folder, FIFO or device) -> (fd, info)."""
    try:
        fd = os.open(path, OPEN_FLAGS)
    except OSError:                    # missing, a link swapped in (ELOOP), not readable
        return None
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd, files.FileInfo(st.st_size, st.st_mtime_ns)


def _open_variant(path: str) -> Optional[Tuple[int, files.FileInfo]]:
    """name.br / name.gz beside a file whose folder is already resolved: a regular file
    there, not a link (lstat), so it cannot lead out of the folder."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return _open_regular(path) if stat.S_ISREG(st.st_mode) else None

