"""`python -m minirr.worker` over stdin/stdout speaks docs/external-workers.md's worked examples,
byte for byte: driven here directly with pipes and minirr.wire.frame, no master involved."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minirr.wire import frame
from minirr.wire.messages import Request
from minirr.wire.heads import encode_request_head

ROOT = Path(__file__).resolve().parent.parent
WORKERS = ROOT / "tests" / "workers"

# docs/external-workers.md, worked examples
HANDSHAKE = bytes.fromhex("13 09 0c 00 00 00 5f 0c 46 73 00 00") + b'{"pid":4242}'
RESPONSE = bytes.fromhex("14 08 20 00 00 00 d1 05 c7 b9 00 00 1b 00 00 00") + b'{"status":200,"headers":{}}Hello'
STOP = frame.encode(frame.CONTROL | frame.CODEC_JSON, b'{"stop":true}')


class Worker:
    """`python -m minirr.worker hello_app:app` with pipes on all three standard streams."""

    def __init__(self, app: str = "hello_app:app") -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "minirr.worker", app], cwd=str(WORKERS), env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.received = b""

    def send(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def read(self, size: int, timeout: float = 20.0) -> bytes:
        """Exactly `size` more bytes from the worker's stdout (fails after `timeout`)."""
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while len(self.received) < size:
            remaining = deadline - time.monotonic()
            assert remaining > 0 and select.select([fd], [], [], remaining)[0], \
                f"worker sent {self.received!r}, expected {size} bytes"
            chunk = os.read(fd, 65536)
            assert chunk, f"worker closed stdout after {self.received!r}"
            self.received += chunk
        data, self.received = self.received[:size], self.received[size:]
        return data

    def read_frame(self) -> frame.Frame:
        header = self.read(frame.HEADER_SIZE)
        options_len = ((header[0] & 0x0F) - 3) * 4
        length = int.from_bytes(header[2:6], "little")
        rest = self.read(options_len + length)
        (item,) = frame.FrameDecoder().feed(header + rest)
        return item

    def finish(self, timeout: float = 20.0):
        """Close stdin and wait: -> (exit status, everything else on stdout, stderr)."""
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, self.received + out, err.decode()


@pytest.fixture
def worker():
    w = Worker()
    yield w
    if w.proc.poll() is None:
        w.proc.kill()
        w.proc.communicate(timeout=20)


def request_frame(path: str, body: bytes = b"") -> bytes:
    head = encode_request_head(Request("GET", path, "", [("Host", "x")], body, "127.0.0.1", "HTTP/1.1",
                                       f"http://x{path}"))
    return frame.encode(frame.CODEC_JSON, head + body, (len(head),))


def handshake(worker: Worker) -> frame.Frame:
    worker.send(HANDSHAKE)
    return worker.read_frame()


def test_handshake_reply_is_control_only_with_the_worker_pid(worker):
    reply = handshake(worker)
    assert reply.flags == frame.CONTROL and reply.options == () and reply.stream == 0
    assert json.loads(reply.payload) == {"pid": worker.proc.pid}


def test_response_is_the_worked_example_byte_for_byte(worker):
    handshake(worker)
    worker.send(request_frame("/"))
    assert worker.read(len(RESPONSE)) == RESPONSE


def test_an_exception_is_an_error_frame_and_the_worker_carries_on(worker):
    handshake(worker)
    worker.send(request_frame("/raise"))
    error = worker.read_frame()
    assert error.flags == frame.ERROR and error.options == () and error.payload == b"RuntimeError: boom"
    worker.send(request_frame("/"))
    assert worker.read(len(RESPONSE)) == RESPONSE


def test_print_goes_to_stderr_not_the_frame_channel(worker):
    handshake(worker)
    worker.send(request_frame("/print"))
    assert worker.read(len(RESPONSE)) == RESPONSE
    worker.send(STOP)
    status, rest, err = worker.finish()
    assert (status, rest) == (0, b"")
    assert "a print() in the app" in err


def test_stop_frame_exits_0_and_sends_nothing(worker):
    handshake(worker)
    worker.send(STOP)
    assert worker.finish()[:2] == (0, b"")


def test_eof_exits_0(worker):
    handshake(worker)
    assert worker.finish()[:2] == (0, b"")           # communicate() closes stdin: the master is gone


def test_a_failing_bootstrap_exits_3_without_a_handshake_reply():
    w = Worker(app="hello_app:no_such_attribute")
    w.send(HANDSHAKE)
    status, out, err = w.finish()
    assert (status, out) == (3, b"")
    assert "bootstrap failed" in err and "no_such_attribute" in err
