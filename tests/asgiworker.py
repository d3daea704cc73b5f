"""A test plays the master of one real async worker process, over real pipes.

    worker = AsgiWorker("asgi_testapp:app")           # python -m minirr.worker ... --interface asgi
    hello = worker.handshake()                         # {"pid": ..., "ids": N}
    worker.request("/echo", request_id=3, body=b"x")   # request_id 0: the classic wire
    frames = worker.answer(3)                          # its frames, through its final frame
    worker.stop()                                      # the stop frame; -> the exit status

Frames of several requests may interleave: `answer(id)` keeps the others for later. The
worker's stderr is collected by a thread (`wait_for_log`). Every wait has a deadline;
`close()` kills the process if it still runs.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

from minirr.wire import frame, multiplex
from minirr.wire.frame import CODEC_JSON, CONTROL, ERROR, STREAM, Frame, FrameDecoder
from minirr.wire.messages import Request
from minirr.wire.heads import encode_request_head

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "tests" / "apps"
TIMEOUT_S = 20.0
STOP_FRAME = frame.encode(CONTROL | CODEC_JSON, b'{"stop":true}')
CLASSIC_STOP = frame.encode(0, b"", (), frame.STOP)


def request_head(path: str, method: str = "GET", headers=(), remote_addr: str = "127.0.0.1",
                 protocol: str = "HTTP/1.1", host: str = "test:8080") -> bytes:
    target, _, query = path.partition("?")
    return encode_request_head(Request(method, target, query, [("Host", host)] + list(headers), b"", remote_addr,
                                       protocol, f"http://{host}{path}"))


class AsgiWorker:
    def __init__(self, app: str = "asgi_testapp:app", interface: str = "asgi", args=(), factory: bool = False,
                 env: Optional[Dict[str, str]] = None, path: Path = APPS) -> None:
        cmd = [sys.executable, "-m", "minirr.worker", app, "--interface", interface, "--path", str(path), *args]
        if factory:
            cmd.append("--factory")
        self.proc = subprocess.Popen(cmd, cwd=str(path), env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)},
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.decoder = FrameDecoder()
        self.received: List[Frame] = []          # decoded, not yet taken
        self.answers: Dict[int, List[Frame]] = {}   # frames of a request not yet asked for
        self.log_lines: List[str] = []
        self._lock = threading.Lock()
        self._pump = threading.Thread(target=self._read_stderr, daemon=True)
        self._pump.start()

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            with self._lock:
                self.log_lines.append(line.decode("utf-8", "replace").rstrip("\n"))

    @property
    def log(self) -> str:
        with self._lock:
            return "\n".join(self.log_lines)

    def wait_for_log(self, pattern: str, timeout: float = TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.log)
            if found:
                return found.group(0)
            assert time.monotonic() < deadline, f"the worker did not log {pattern!r}; it logged:\n{self.log}"
            time.sleep(0.01)                     # a poll interval, not a wait for time to pass

    # ---- frames -----------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def handshake(self) -> dict:
        self.send(frame.encode(CONTROL | CODEC_JSON, json.dumps({"pid": os.getpid()}).encode()))
        hello = self.frame()
        assert hello.flags == CONTROL and hello.options == () and hello.stream == 0, hello
        return json.loads(hello.payload)

    def request(self, path: str, request_id: int = 0, body: bytes = b"", method: str = "GET", **head) -> None:
        self.send(multiplex.request_frame(request_head(path, method, **head), body, request_id))

    def frame(self, timeout: float = TIMEOUT_S) -> Frame:
        """The worker's next frame (fails after `timeout`, or if it closes stdout)."""
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while not self.received:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no frame from the worker in {timeout}s; it logged:\n{self.log}"
            if select.select([fd], [], [], remaining)[0]:
                data = os.read(fd, 1 << 20)
                assert data, f"the worker closed its stdout; it logged:\n{self.log}"
                self.received.extend(self.decoder.feed(data))
        return self.received.pop(0)

    def answer(self, request_id: int = 0) -> List[Frame]:
        """Every frame of request `request_id`, through its final one (no STREAM)."""
        frames = self.answers.setdefault(request_id, [])
        while not frames or frames[-1].stream & STREAM:
            item = self.frame()
            self.answers.setdefault(id_of(item), []).append(item)
        return self.answers.pop(request_id)

    def frames_of(self, request_id: int, count: int) -> List[Frame]:
        """The next `count` frames of request `request_id` (others kept for later)."""
        taken: List[Frame] = []
        while len(taken) < count:
            pending = self.answers.get(request_id)
            if pending:
                taken.append(pending.pop(0))
                continue
            item = self.frame()
            self.answers.setdefault(id_of(item), []).append(item)
        return taken

    def nothing_more(self) -> bool:
        """Nothing is waiting from the worker beyond what was taken (checked after a full
        answer to a later request, so anything stray would have come before it)."""
        fd = self.proc.stdout.fileno()
        return not self.received and not any(self.answers.values()) and not select.select([fd], [], [], 0)[0]

    # ---- ending -----------------------------------------------------------------------
    def wait_exit(self, timeout: float = TIMEOUT_S) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the worker did not exit within {timeout}s; it logged:\n{self.log}") from None

    def stop(self) -> int:
        self.send(STOP_FRAME)
        return self.wait_exit()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self._pump.join(10)
        self.proc.stderr.close()


def id_of(item: Frame) -> int:
    return item.options[1] if len(item.options) == 2 else 0


def head_of(item: Frame) -> Optional[dict]:
    head_len = item.options[0] if item.options else 0
    return json.loads(bytes(item.payload[:head_len])) if head_len else None


def body_of(frames: List[Frame]) -> bytes:
    """The body the frames of one answer carry (the first one's head skipped)."""
    body = b""
    for item in frames:
        if item.flags & ERROR:
            continue
        head_len = item.options[0] if item.options else 0
        body += bytes(item.payload[head_len:])
    return body


def is_error(item: Frame) -> bool:
    return bool(item.flags & ERROR)
