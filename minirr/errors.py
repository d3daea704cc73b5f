"""Exception hierarchy of minirr.

Owns: the kinds of failure the rest of the code tells apart.
Never: imports anything of minirr; performs I/O.

    MinirrError
      ConfigError(section, key, msg, origin)   bad rr.ini or -o; cli prints one line, exit 2
        AppLoadError(msg, origin, key)         [server] app cannot be imported, or is wired up
                                               wrong (key: the [server] key to change); exit 3
      ProtocolError(msg, status=400)   bad client bytes; answered with `status`, then closed
      FrameError(msg)                  broken worker channel; worker killed, client gets 502
      ClientDisconnected(msg)          (also an OSError) a streamed response's client left;
                                       raised in a worker, by a WSGI app's write()
"""

from __future__ import annotations


class MinirrError(Exception):
    """Base class of every error minirr raises on purpose."""


class ConfigError(MinirrError):
    """A configuration value is missing, unknown or does not parse.

    `origin` says where the value was written, as the user wrote it: `rr.ini [pool]
    num_workers = -1`, `-o pool.num_workers=-1`, or `rr.ini:7` for a line that is not
    ini at all. Without one, the message names the section and key only."""

    def __init__(self, section: str, key: str, msg: str, origin: str = "") -> None:
        self.section = section
        self.key = key
        self.msg = msg
        self.origin = origin or (f"[{section}] {key}" if key else f"[{section}]")
        super().__init__(f"{self.origin}: {msg}")


class AppLoadError(ConfigError):
    """`[server] app` cannot be imported, has a syntax error or names no such attribute,
    or the object it names does not fit `factory` or `interface` (then `key` names the
    one to change): found once at start-up, before anything is bound (gunicorn: "worker
    failed to boot")."""

    def __init__(self, msg: str, origin: str = "", key: str = "app") -> None:
        super().__init__("server", key, msg, origin)


class ProtocolError(MinirrError):
    """The client sent bytes that are not acceptable HTTP/1.1.

    `status` is what the client is answered with; the connection is closed after it.
    """

    def __init__(self, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.msg = msg
        self.status = status


class FrameError(MinirrError):
    """The byte stream from (or to) a worker is not a valid Goridge frame stream."""


class ClientDisconnected(MinirrError, OSError):
    """The client of a response being streamed went away: the master said STOP
    (docs/external-workers.md, Streamed responses). Raised in a worker by a WSGI app's write() callable, so an
    app that writes in a loop stops there; an OSError, as a broken socket is in servers
    where the app's process writes to the client itself."""
