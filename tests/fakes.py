"""Stand-ins for the loop's selector and clock and for worker processes, so the master's
parts run one step at a time.

Owns: FakeSelector (the selector methods loop.Loop uses, with the events a test scripts,
      or the readiness of real descriptors asked with a zero timeout), FakeClock (a clock
      that moves only when the test says so), FakeProcess (launch.WorkerProcess's
      attributes over real pipes, no process), FakeLauncher (hands those out),
      FakeConnection (what answer.py and backend.py call on a client connection,
      recorded), read_answer (a recorded answer read back as HTTP) and FixedDates (the
      one Date every answer gets); the body of the factory fixtures (made_and_finished).
Never: fakes the bytes. Tests use real socketpairs and pipes: only waiting, time and
       process creation are taken out of the picture, so no test sleeps and none depends
       on the machine's speed.

    loop = Loop(selector=FakeSelector(), clock=FakeClock())
    loop.selector.ready(fd, READ)        # scripted: the next select() returns this event
    loop.run_once(0)                     # one round: the handler of fd runs
    loop.clock.advance(10.0)             # ten seconds pass, at once

    FakeSelector(real=True)              # select() asks the kernel (timeout 0) which of the
                                         # registered descriptors are ready

    proc = FakeProcess()                 # the test plays the worker on the other ends:
    proc.send(frame_bytes)               #   frames for the master
    proc.read_requests()                 #   what the master wrote
    proc.exit(3)                         #   its "pidfd" turns readable; reap() -> 3

    conn = FakeConnection()              # a client: the bytes answer.py wrote, call by call
    read_answer(conn.sent())             # -> Answer(status, headers, body, complete)
"""

from __future__ import annotations

import os
import select
import selectors
import types
from typing import Dict, List, NamedTuple, Tuple

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE


def fd_of(fileobj) -> int:
    return fileobj if isinstance(fileobj, int) else fileobj.fileno()


class FakeSelector(selectors.BaseSelector):
    """A selector whose select() never waits. Events come from `ready()` (scripted, used
    once), or, with `real=True` and nothing scripted, from select.select(..., 0) on the
    registered descriptors. `timeouts` records what each select() was asked to wait."""

    def __init__(self, real: bool = False) -> None:
        self.real = real
        self._keys: Dict[int, selectors.SelectorKey] = {}
        self._scripted: List[Tuple[int, int]] = []
        self.timeouts: List[float] = []
        self.closed = False

    # ---- the selector interface ------------------------------------------------------------
    def register(self, fileobj, events, data=None):
        fd = fd_of(fileobj)
        if not events or events & ~(READ | WRITE):
            raise ValueError(f"invalid events {events!r}")
        if fd in self._keys:
            raise KeyError(f"{fileobj!r} (fd {fd}) is already registered")
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fd] = key
        return key

    def unregister(self, fileobj):
        return self._keys.pop(fd_of(fileobj))

    def modify(self, fileobj, events, data=None):
        # A new key, as CPython's selectors make one: the loop tells keys apart by identity.
        self.unregister(fileobj)
        return self.register(fileobj, events, data)

    def get_key(self, fileobj):
        return self._keys[fd_of(fileobj)]

    def get_map(self):
        return types.MappingProxyType(self._keys)   # live, as CPython's mapping is

    def select(self, timeout=None):
        self.timeouts.append(timeout)
        if self._scripted:
            scripted, self._scripted = self._scripted, []
            return [(self._keys[fd], mask & self._keys[fd].events) for fd, mask in scripted
                    if fd in self._keys and mask & self._keys[fd].events]
        if self.real:
            return self._real_events()
        return []

    def close(self):
        self.closed = True
        self._keys.clear()

    # ---- for tests --------------------------------------------------------------------------
    def ready(self, fileobj, mask: int = READ) -> None:
        """The next select() reports `mask` for `fileobj` (if it is registered for it then)."""
        self._scripted.append((fd_of(fileobj), mask))

    def events_of(self, fileobj) -> int:
        """What `fileobj` is registered for (0: not registered)."""
        key = self._keys.get(fd_of(fileobj))
        return key.events if key is not None else 0

    def handler_of(self, fileobj):
        return self._keys[fd_of(fileobj)].data

    def _real_events(self) -> list:
        reads = [fd for fd, key in self._keys.items() if key.events & READ]
        writes = [fd for fd, key in self._keys.items() if key.events & WRITE]
        if not reads and not writes:
            return []
        readable, writable, _ = select.select(reads, writes, [], 0)
        masks: Dict[int, int] = {}
        for fd in readable:
            masks[fd] = masks.get(fd, 0) | READ
        for fd in writable:
            masks[fd] = masks.get(fd, 0) | WRITE
        return [(self._keys[fd], mask) for fd, mask in masks.items()]


class FakeClock:
    """The loop's clock: `clock()` is the time now; `advance(seconds)` moves it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def read_available(read) -> bytes:
    """All that `read()` (a read of a non-blocking descriptor) gives until it would block
    or reaches the end."""
    chunks = []
    while True:
        try:
            data = read()
        except BlockingIOError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def made_and_finished(build, finish):
    """The body of a factory fixture: yields `make(**kwargs)`, which builds with `build`,
    and at teardown runs `finish` on everything made (`yield from` it in the fixture)."""
    made = []

    def make(**kwargs):
        made.append(build(**kwargs))
        return made[-1]

    yield make
    for thing in made:
        finish(thing)


def spin(loop, rounds: int = 20) -> None:
    """Run `rounds` rounds of the loop (timeout 0: nothing waits)."""
    for _ in range(rounds):
        loop.run_once(0)


class FakeProcess:
    """Stands in for launch.WorkerProcess: real pipes (the master's ends non-blocking, as
    the launcher makes them), no process. The test plays the worker on the other ends:
    `requests_r` (what the master wrote), `responses_w` (frames for the master),
    `output_w` (its stdout and stderr) and `exit_w` (write a byte: the "pidfd" is readable)."""

    def __init__(self, pid: int = 4242, output: bool = True, sentinel: bool = True) -> None:
        self.pid = pid
        self.requests_r, self.to_worker = os.pipe()
        self.from_worker, self.responses_w = os.pipe()
        self.output, self.output_w = os.pipe() if output else (None, None)
        self.sentinel, self.exit_w = os.pipe() if sentinel else (None, None)
        for fd in (self.to_worker, self.from_worker, self.output):
            if fd is not None:
                os.set_blocking(fd, False)
        for fd in (self.requests_r, self.responses_w, self.output_w):
            if fd is not None:
                os.set_blocking(fd, False)   # a test that overfills a pipe fails, it does not hang
        self.status = 0                   # what reap() returns
        self.has_exited = False           # what exited() returns (no pidfd)
        self.kills = 0
        self.closed = False

    def fds(self) -> List[int]:
        return [fd for fd in (self.to_worker, self.from_worker, self.output, self.sentinel) if fd is not None]

    def kill(self) -> None:
        self.kills += 1

    def reap(self, timeout: float = 1.0):
        return self.status

    def exited(self) -> bool:
        return self.has_exited

    def close(self) -> None:
        self.closed = True
        for fd in (self.to_worker, self.from_worker, self.output, self.sentinel):
            _close_quietly(fd)

    # ---- the worker's side ------------------------------------------------------------------
    def exit(self, status: int = 0) -> None:
        """The process has exited: its sentinel turns readable."""
        self.status = status
        self.has_exited = True
        if self.exit_w is not None:
            os.write(self.exit_w, b"x")

    def read_requests(self) -> bytes:
        """Everything the master has written to the worker so far."""
        return read_available(lambda: os.read(self.requests_r, 1 << 20))

    def send(self, data: bytes) -> None:
        _write_all(self.responses_w, data, "the frame pipe")

    def print(self, text: bytes) -> None:
        _write_all(self.output_w, text, "the output pipe")

    def finish(self) -> None:
        """Close the worker's ends (test teardown)."""
        for fd in (self.requests_r, self.responses_w, self.output_w, self.exit_w):
            _close_quietly(fd)
        if not self.closed:
            self.close()


def _write_all(fd: int, data: bytes, what: str) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            raise AssertionError(f"{what} is full: the master does not read it (write less, or run a round)") from None


def _close_quietly(fd) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


class FakeLauncher:
    """launch's launcher interface: start() hands out FakeProcesses (pids 1001, 1002 ...);
    `fail_with` makes the next start() raise it."""

    def __init__(self) -> None:
        self.started: List[FakeProcess] = []
        self.fail_with = None
        self.close_in_child: list = []
        self.tracebacks: list = []

    def start(self, close_in_child, print_traceback: bool = True) -> FakeProcess:
        if self.fail_with is not None:
            exc, self.fail_with = self.fail_with, None
            raise exc
        self.close_in_child.append(list(close_in_child))
        self.tracebacks.append(print_traceback)
        proc = FakeProcess(pid=1001 + len(self.started))
        self.started.append(proc)
        return proc

    def preflight(self, timeout_s: float) -> None:
        pass

    def finish(self) -> None:
        for proc in self.started:
            proc.finish()


DATE = b"Sun, 06 Nov 1994 08:49:37 GMT"


class FixedDates:
    """responses.DateCache with one date (RFC 9110 §5.6.7's example): answers' bytes are
    then the same in every test run."""

    @staticmethod
    def get(epoch_seconds: float) -> bytes:
        return DATE


class FakeConnection:
    """What answer.py and backend.py call on a client connection (connection.Connection),
    recorded in `calls` as (method, bytes, keep_alive) tuples, with the real connection's
    rules that matter to them: nothing is written once it is closed (a write tried then
    is recorded as ("after_close", method): the real one drops it silently), and an
    answer without keep-alive makes it `closing`. `backlogged` is the test's to set."""

    def __init__(self, peer: str = "192.0.2.7", closing: bool = False) -> None:
        self.peer = peer
        self.calls: list = []
        self.closing = closing
        self.closed = False
        self.backlogged = False
        self.drain_waits = 0
        self.job = None

    def __repr__(self) -> str:
        return self.peer

    def respond(self, data: bytes, keep_alive: bool) -> None:
        if self._open("respond"):
            self.calls.append(("respond", bytes(data), keep_alive))
            self.closing = self.closing or not keep_alive

    def start_stream(self, head: bytes) -> None:
        if self._open("start_stream"):
            self.calls.append(("start_stream", bytes(head)))

    def write(self, data: bytes) -> None:
        if self._open("write"):
            self.calls.append(("write", bytes(data)))

    def _open(self, method: str) -> bool:
        if self.closed:
            self.calls.append(("after_close", method))
        return not self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.calls.append(("close",))

    def wait_for_drain(self) -> None:
        self.drain_waits += 1

    def kinds(self) -> List[str]:
        return [call[0] for call in self.calls]

    def sent(self) -> bytes:
        """Every byte written, in order."""
        return b"".join(call[1] for call in self.calls if call[0] not in ("close", "after_close"))


class Answer(NamedTuple):
    status: int
    headers: Dict[str, str]            # by lower-case name (the tests send each name once)
    body: bytes                        # de-chunked
    complete: bool                     # the framing says the body is all there


def read_answer(data: bytes, head_only: bool = False, closed: bool = False) -> Answer:
    """One HTTP/1.1 answer as a client reads it (RFC 9112 §6.3): Content-Length, chunked,
    or (`closed`) the bytes up to the connection's end. Not a parser for untrusted bytes:
    the master wrote these."""
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    if head_only or status in (204, 304):
        return Answer(status, headers, rest, not rest)
    if headers.get("transfer-encoding") == "chunked":
        body, complete = _dechunk(rest)
        return Answer(status, headers, body, complete)
    if "content-length" in headers:
        length = int(headers["content-length"])
        return Answer(status, headers, rest, len(rest) == length)
    return Answer(status, headers, rest, closed)


def _dechunk(data: bytes) -> Tuple[bytes, bool]:
    body = b""
    while True:
        size_line, sep, data = data.partition(b"\r\n")
        if not sep:
            return body, False
        size = int(size_line, 16)
        if size == 0:
            return body, data == b"\r\n"
        if len(data) < size + 2:
            return body + data[:size], False
        body += data[:size]
        data = data[size + 2:]
