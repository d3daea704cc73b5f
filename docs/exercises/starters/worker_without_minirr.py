"""Exercise 1, the starting point: a minirr worker in plain Python, without minirr.

Copy this file, fill in the three TODOs, and check it:

    cp docs/exercises/starters/worker_without_minirr.py my_worker.py
    python docs/exercises/check_worker_without_minirr.py my_worker.py

The wire is in docs/external-workers.md ("What a worker must do" and "Frames").
"""

import json
import os
import struct
import sys
import zlib
from urllib.parse import urlsplit

CONTROL, CODEC_JSON, ERROR = 0x01, 0x08, 0x40


def read_exactly(fd, n):
    """n bytes from fd, or None at EOF (a pipe read may return fewer than asked)."""
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def read_frame(fd):
    """-> (flags, options, payload), or None at EOF."""
    header = read_exactly(fd, 12)
    if header is None:
        return None
    # TODO: unpack the header (struct: little-endian), check its CRC32 (of bytes 0-5) and
    # its version, then read the options and the payload.
    raise NotImplementedError("read_frame")


def write_frame(fd, flags, payload, options=()):
    """One frame, in one write (some readers take the 12-byte header in one read)."""
    # TODO: build the 12-byte header (version/length byte, flags, payload length, CRC32 of
    # bytes 0-5, stream byte 0, reserved 0), then the options, then the payload.
    raise NotImplementedError("write_frame")


def answer(request, body):
    """The application: `METHOD URI` and the request's body, or a failure for /fail."""
    if urlsplit(request["uri"]).path == "/fail":
        raise RuntimeError("failed on purpose")
    head = {"status": 200, "headers": {"Content-Type": ["text/plain"], "X-Worker-Pid": [str(os.getpid())]}}
    return head, f"{request['method']} {request['uri']}\n".encode() + body


def main():
    stdin, stdout = 0, 1
    # TODO: the handshake, then the loop: answer each request frame (a response frame, or an
    # ERROR frame when answer() raises), leave on the stop frame and at EOF.
    raise NotImplementedError("main")


if __name__ == "__main__":
    sys.exit(main())
