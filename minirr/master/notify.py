"""systemd's service notification protocol (sd_notify(3)), standard library only.

Owns: the NOTIFY_SOCKET address syntax and sending one datagram per state change.
Never: decides when the service is ready or stopping (operations.py does).

When systemd runs a `Type=notify` service it sets NOTIFY_SOCKET to an AF_UNIX datagram
socket: a path, or an abstract name written with a leading `@` (a NUL byte on the wire).
The service sends newline-separated assignments:

    READY=1                      serving (after start, and again after a reload)
    RELOADING=1                  a reload has begun (with MONOTONIC_USEC, systemd >= 253)
    STOPPING=1                   shutting down
    STATUS=...                   free text shown by `systemctl status`

A notification that cannot be sent is logged once and otherwise ignored: systemd being
gone must never stop the server.
"""

from __future__ import annotations

import logging
import socket
from typing import Mapping, Optional

log = logging.getLogger("minirr")


def socket_address(value: str) -> Optional[str]:
    """NOTIFY_SOCKET -> an AF_UNIX address for sendto(), or None if unusable.
    `@name` is an abstract socket: the kernel wants a leading NUL (unix(7))."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None                  # e.g. vsock:... (not supported here)


def reloading_message(monotonic_s: float) -> bytes:
    """RELOADING=1 with the CLOCK_MONOTONIC timestamp systemd >= 253 asks for."""
    return b"RELOADING=1\nMONOTONIC_USEC=%d" % int(monotonic_s * 1_000_000)


class Notifier:
    """Sends notifications to one NOTIFY_SOCKET. `fileno()` is for fork hygiene."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)    # a full receive queue must not stall the loop
        self._failed = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Optional["Notifier"]:
        value = environ.get("NOTIFY_SOCKET", "")
        if not value:
            return None
        address = socket_address(value)
        if address is None:
            log.warning("NOTIFY_SOCKET=%s is not a unix socket path or @name; not notifying systemd", value)
            return None
        return cls(address)

    def send(self, message: bytes) -> None:
        try:
            self.sock.sendto(message, self.address)
        except OSError as exc:   # BlockingIOError, ConnectionRefusedError, FileNotFoundError
            if not self._failed:
                log.warning("cannot notify systemd at %s: %s", self.address.replace("\0", "@"), exc)
                self._failed = True

    def ready(self, status: str = "") -> None:
        self.send(b"READY=1" + (b"\nSTATUS=" + status.encode() if status else b""))

    def reloading(self, now: float) -> None:
        """`now` is time.monotonic() (CLOCK_MONOTONIC, the clock systemd compares with)."""
        self.send(reloading_message(now))

    def stopping(self) -> None:
        self.send(b"STOPPING=1")

    def close(self) -> None:
        self.sock.close()
