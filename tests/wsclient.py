"""A WebSocket client for tests, over a raw socket, built on minirr.http.websocket: it sends
exactly the bytes a test asks for (masked, or not, with reserved bits, split anyhow), and
reads the server's frames with the same reader the master uses (masked=False: a server's
frames must not be masked). Every wait has a deadline.

    with WSClient.connect(srv, "/echo") as c:
        c.send(TEXT, b"hello")
        assert c.event() == ("text", b"hello")
        c.close(1000)
        assert c.closed() == (1000, "")          # the server's close frame, then EOF
"""

from __future__ import annotations

import base64
import os
import socket
import time
from typing import Dict, List, Optional, Tuple

from minirr.http import websocket as ws

MASK = b"\x11\x22\x33\x44"


def handshake_request(path: str, host: str, protocols=(), extra: Optional[Dict[str, str]] = None,
                      key: Optional[str] = None) -> bytes:
    key = key or base64.b64encode(os.urandom(16)).decode()
    fields = {"Host": host, "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": key,
              "Sec-WebSocket-Version": "13"}
    if protocols:
        fields["Sec-WebSocket-Protocol"] = ", ".join(protocols)
    fields.update(extra or {})
    lines = "".join(f"{name}: {value}\r\n" for name, value in fields.items() if value is not None)
    return f"GET {path} HTTP/1.1\r\n{lines}\r\n".encode()


class WSClient:
    def __init__(self, sock: socket.socket, status: int, headers: Dict[str, str], rest: bytes,
                 timeout: float) -> None:
        self.sock = sock
        self.status = status
        self.headers = headers
        self.timeout = timeout
        self.reader = ws.FrameReader(1 << 26, masked=False)
        self.events: List[Tuple[str, object]] = []
        self.eof = False
        self.close_sent = False
        self.pending = b""              # a refused handshake's body, as far as it came with the head
        if rest and status == 101:
            self.events += self.reader.feed(rest)
        else:
            self.pending = rest

    @classmethod
    def connect(cls, srv, path: str, protocols=(), extra: Optional[Dict[str, str]] = None,
                timeout: float = 10.0, after: bytes = b"") -> "WSClient":
        """The handshake (and `after`, bytes sent in the same write) -> a client; `status`
        says whether it was accepted (101) or what the server answered instead."""
        sock = socket.create_connection((srv.host, srv.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(handshake_request(path, f"{srv.host}:{srv.port}", protocols, extra) + after)
        data = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk or time.monotonic() > deadline:
                raise AssertionError(f"no answer to the handshake: {data!r}")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return cls(sock, status, headers, rest, timeout)

    def __enter__(self) -> "WSClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.sock.close()

    # ---- sending ------------------------------------------------------------------------------
    def send(self, opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0, masked: bool = True) -> None:
        data = ws.encode_frame(opcode, payload, fin, MASK if masked else None)
        self.raw(bytes([data[0] | rsv]) + data[1:])

    def raw(self, data: bytes, byte_by_byte: bool = False) -> None:
        try:
            if byte_by_byte:
                for index in range(len(data)):
                    self.sock.sendall(data[index:index + 1])
            else:
                self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass                        # the server closed first: what it sent is still to be read

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.close_sent = True
        self.raw(ws.close_frame(code, reason, MASK))

    # ---- reading -------------------------------------------------------------------------------
    def event(self, timeout: Optional[float] = None) -> Tuple[str, object]:
        """The server's next event: ("text", bytes), ("binary", ...), ("ping", ...),
        ("close", (code, reason)); ("eof", None) if the connection ended first."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.events:
            if self.eof:
                return "eof", None
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no frame from the server in time")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 20)
            except socket.timeout:
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
                continue
            self.events += self.reader.feed(data)
        return self.events.pop(0)

    def message(self, timeout: Optional[float] = None) -> Tuple[str, object]:
        """The next event that is not a ping (pings are answered, as a client must)."""
        while True:
            kind, data = self.event(timeout)
            if kind != "ping":
                return kind, data
            self.send(ws.PONG, data)

    def closed(self, timeout: Optional[float] = None) -> Tuple[int, str]:
        """Skip to the server's close frame (answered with ours if the server began the
        close handshake, §5.5.1); then the server must close the TCP connection."""
        while True:
            kind, data = self.message(timeout)
            if kind == "close":
                break
            if kind == "eof":
                raise AssertionError("the connection ended without a close frame")
        if not self.close_sent:
            self.close(data[0] if data[0] != ws.NO_STATUS else 1000)
        assert self.event(timeout) == ("eof", None), "the server did not close the TCP connection"
        return data

    def body(self) -> bytes:
        """After a refused handshake: the rest of the server's answer, until it closes or is done."""
        self.sock.settimeout(self.timeout)
        chunks = [self.pending]
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if len(b"".join(chunks)) >= int(self.headers.get("content-length", 1 << 30)):
                    break
        except (socket.timeout, ConnectionResetError):
            pass
        return b"".join(chunks)
