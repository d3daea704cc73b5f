"""Exercise 3, a reference solution: exercise 1's worker, which asks to be recycled.

After RECYCLE_AFTER answers (an environment variable, 3 if unset) it answers the next
request with the head {"stop":true} and no body instead: the master stops it (the stop
frame) and runs that request on a fresh worker.

    [server]
    command = python recycling_worker.py
    [server.env]
    RECYCLE_AFTER = 3
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
    first, flags, length, crc = struct.unpack("<BBII", header[:10])
    if crc != zlib.crc32(header[:6]) or first >> 4 != 1:
        sys.exit(f"a broken frame header: {header.hex(' ')}")
    count = (first & 0x0F) - 3                          # the header is 3 words + one per option
    options = struct.unpack(f"<{count}I", read_exactly(fd, 4 * count)) if count else ()
    payload = read_exactly(fd, length) if length else b""
    return flags, options, payload


def write_frame(fd, flags, payload, options=()):
    """One frame, in one write (some readers take the 12-byte header in one read)."""
    head = struct.pack("<BBI", 0x10 | (3 + len(options)), flags, len(payload))
    data = head + struct.pack("<IBB", zlib.crc32(head), 0, 0) + struct.pack(f"<{len(options)}I", *options) + payload
    while data:
        data = data[os.write(fd, data):]


def answer(request, body):
    """The application: `METHOD URI` and the request's body, or a failure for /fail."""
    if urlsplit(request["uri"]).path == "/fail":
        raise RuntimeError("failed on purpose")
    head = {"status": 200, "headers": {"Content-Type": ["text/plain"], "X-Worker-Pid": [str(os.getpid())]}}
    return head, f"{request['method']} {request['uri']}\n".encode() + body


def main():
    stdin, stdout = 0, 1
    if read_frame(stdin) is None:                       # the handshake: {"pid": <the master's>}
        return 0
    # ... a real application would bootstrap here: once, before the first request ...
    write_frame(stdout, CONTROL, json.dumps({"pid": os.getpid()}).encode())
    recycle_after = int(os.environ.get("RECYCLE_AFTER", "3"))
    answered = 0
    while True:
        frame = read_frame(stdin)
        if frame is None:
            return 0                                    # EOF: the master has gone
        flags, options, payload = frame
        if flags & CONTROL:
            if json.loads(payload).get("stop") is True:
                return 0
            continue
        if answered >= recycle_after:                  # instead of an answer: "recycle me"
            stop = json.dumps({"stop": True}).encode()
            write_frame(stdout, CODEC_JSON, stop, (len(stop),))
            continue                                    # the master's stop frame comes next
        request = json.loads(payload[:options[0]])
        try:
            head, body = answer(request, payload[options[0]:])
        except Exception as exc:                        # a soft error: the client gets 500, we go on
            print(f"request failed: {exc}", file=sys.stderr, flush=True)
            write_frame(stdout, ERROR, str(exc).encode())
            continue
        head_json = json.dumps(head).encode()
        write_frame(stdout, CODEC_JSON, head_json + body, (len(head_json),))
        answered += 1


if __name__ == "__main__":
    sys.exit(main())
