"""Exception hierarchy of minirr.

Owns: the three kinds of failure the rest of the code tells apart.
Never: imports anything of minirr; performs I/O.

    MinirrError
      ConfigError(section, key, msg)   bad rr.ini; cli prints one line, exit 2
      ProtocolError(msg, status=400)   bad client bytes; answered with `status`, then closed
      FrameError(msg)                  broken worker channel; worker killed, client gets 502
"""

from __future__ import annotations


class MinirrError(Exception):
    """Base class of every error minirr raises on purpose."""


class ConfigError(MinirrError):
    """A configuration value is missing, unknown or does not parse."""

    def __init__(self, section: str, key: str, msg: str) -> None:
        super().__init__(f"[{section}] {key}: {msg}" if key else f"[{section}]: {msg}")
        self.section = section
        self.key = key
        self.msg = msg


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
