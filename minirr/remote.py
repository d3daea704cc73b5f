"""Talking to a running master from the command line: `minirr workers | reset | stop`.

Owns: the blocking control client (connect, one call, its answer, EOF), the workers
      table (human units, relative times), and the three commands' output and exit
      statuses (0 done; 1 no server answers, or the server reports an error).
Never: runs inside the master (blocking is fine here: this is the cli's process), or
       knows the wire format beyond control.py's encode/decode functions.

    cli ──connect──> control socket ──call(seq, method, params)──> master
        <──answer(seq, result) | error──   (reset: when the reload completes)
    stop: after the answer the connection stays open until the master exits (EOF).
"""

from __future__ import annotations

import json
import socket
import sys
import time
from typing import Optional, TextIO

from .master import control
from .master.control import ControlError, UnixAddress
from .errors import FrameError, MinirrError
from .wire.frame import FrameDecoder

EXIT_OK = 0
EXIT_FAILED = 1
CALL_TIMEOUT_S = 10.0
CLEAR_SCREEN = "\x1b[H\x1b[2J"


class NoServer(MinirrError):
    """Nothing answers on the control socket."""


class ControlClient:
    """One connection to a master's control socket; calls are answered in order."""

    def __init__(self, address: control.Address, timeout: Optional[float] = CALL_TIMEOUT_S) -> None:
        self.address = address
        self.sock = _connect(address, timeout)
        self.decoder = FrameDecoder(control.MAX_PAYLOAD_BYTES)
        self._seq = 0
        self._answers: list = []

    def call(self, method: str, params: Optional[dict] = None, timeout: Optional[float] = CALL_TIMEOUT_S) -> dict:
        """Send a call, wait for its answer. Raises ControlError (the server's error message)
        or NoServer (the connection ended first)."""
        self._seq += 1
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(control.encode_call(self._seq, method, params or {}))
        except OSError as exc:
            raise NoServer(f"the server at {self.address} went away ({exc.strerror or exc})") from None
        answer = self._next_answer(method)
        if answer.seq != self._seq:
            raise ControlError(f"answer {answer.seq} does not match call {self._seq}")
        if answer.error:
            raise ControlError(answer.error)
        return answer.result

    def _next_answer(self, method: str) -> control.Answer:
        while not self._answers:
            data = self._recv(f"no answer to {method!r} from {self.address}")
            if not data:
                raise NoServer(f"the server at {self.address} closed the connection before answering {method!r}")
            try:
                self._answers.extend(control.decode_answer(item) for item in self.decoder.feed(data))
            except FrameError as exc:
                raise ControlError(f"the server sent a broken frame: {exc}") from None
        return self._answers.pop(0)

    def wait_closed(self, timeout: Optional[float]) -> bool:
        """Wait for EOF (the master has exited). False if `timeout` passed first."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(4096):
                pass
        except socket.timeout:
            return False
        except OSError:
            pass
        return True

    def _recv(self, what: str) -> bytes:
        try:
            return self.sock.recv(65536)
        except socket.timeout:
            raise ControlError(f"{what} within {self.sock.gettimeout():g}s") from None
        except OSError as exc:
            raise NoServer(f"the server at {self.address} went away ({exc.strerror or exc})") from None

    def close(self) -> None:
        self.sock.close()


def _connect(address: control.Address, timeout: Optional[float]) -> socket.socket:
    if isinstance(address, UnixAddress):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target = address.path
    else:
        sock = socket.socket(socket.AF_INET6 if ":" in address.host else socket.AF_INET, socket.SOCK_STREAM)
        target = (address.host, address.port)
    sock.settimeout(timeout)
    try:
        sock.connect(target)
    except (FileNotFoundError, ConnectionRefusedError, socket.timeout, OSError) as exc:
        sock.close()
        why = "connection timed out" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc)).lower()
        raise NoServer(f"no server answers on {address} ({why})") from None
    return sock


# ---- presentation (pure) ----------------------------------------------------------------------

def human_bytes(count: int) -> str:
    """1536 -> '1.5 KB'; powers of 1024, as the config's sizes."""
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def relative_time(seconds: float) -> str:
    """Seconds ago -> 'just now', '5 seconds ago', '1 minute ago', '2 hours ago', '3 days ago'."""
    seconds = max(0, int(seconds))
    if seconds < 2:
        return "just now"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"


def format_table(rows: list, now_epoch: float) -> str:
    """The `minirr workers` table: PID  Status  Execs  In-flight  Memory  CPU%  Created."""
    header = ("PID", "Status", "Execs", "In-flight", "Memory", "CPU%", "Created")
    lines = [header]
    for row in rows:
        lines.append((str(row["pid"]), row["status"], str(row["execs"]), str(row.get("in_flight", 0)),
                      human_bytes(row["memory_bytes"]), f"{row['cpu_percent']:.1f}",
                      relative_time(now_epoch - row["created_at"])))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in lines) + "\n"


# ---- the commands ------------------------------------------------------------------------------

def _fail(message: str, err: TextIO) -> int:
    print(f"minirr: {message}", file=err)
    return EXIT_FAILED


def run_workers(address: control.Address, interactive: bool = False, as_json: bool = False,
                out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    try:
        client = ControlClient(address)
    except NoServer as exc:
        return _fail(str(exc), err)
    try:
        while True:
            result = client.call("workers")
            if as_json:
                out.write(json.dumps(result) + "\n")
            else:
                out.write((CLEAR_SCREEN if interactive else "") + format_table(result["workers"], time.time()))
                if interactive:
                    out.write(f"\nminirr pid {result['pid']}, {len(result['workers'])} workers "
                              f"(every second; Ctrl-C to quit)\n")
            out.flush()
            if not interactive:
                return EXIT_OK
            time.sleep(1.0)         # the refresh interval of `-i`, like top
    except KeyboardInterrupt:
        return EXIT_OK
    except MinirrError as exc:      # NoServer, ControlError
        return _fail(str(exc), err)
    finally:
        client.close()


def run_reset(address: control.Address, reset_timeout_s: float, out: TextIO = sys.stdout,
              err: TextIO = sys.stderr) -> int:
    timeout = reset_timeout_s + CALL_TIMEOUT_S if reset_timeout_s else None
    try:
        client = ControlClient(address)
    except NoServer as exc:
        return _fail(str(exc), err)
    try:
        result = client.call("reset", timeout=timeout)
    except MinirrError as exc:
        return _fail(f"reset failed: {exc}", err)
    finally:
        client.close()
    replaced = result["replaced"]
    out.write(f"reset: replaced {replaced} worker{'s' if replaced != 1 else ''} in {result['seconds']:.1f}s\n")
    return EXIT_OK


def run_stop(address: control.Address, force: bool, wait_s: Optional[float], out: TextIO = sys.stdout,
             err: TextIO = sys.stderr) -> int:
    """Ask the master to stop; return when it has exited (its end of the connection closes)."""
    try:
        client = ControlClient(address)
    except NoServer as exc:
        return _fail(str(exc), err)
    try:
        result = client.call("stop", {"force": force})
        out.write(f"minirr (pid {result['pid']}) is stopping{' now' if force else ''}\n")
        out.flush()
        if not client.wait_closed(wait_s):
            return _fail(f"the server (pid {result['pid']}) has not exited within {wait_s:g}s", err)
    except MinirrError as exc:
        return _fail(f"stop failed: {exc}", err)
    finally:
        client.close()
    out.write("stopped\n")
    return EXIT_OK
