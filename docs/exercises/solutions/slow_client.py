"""Exercise 4, a reference solution: a client that holds a streamed answer back.

    python slow_client.py HOST PORT PATH

Sends GET PATH, reads the response head and says `head received`; then reads nothing
until a line arrives on stdin; then reads the rest, undoing the chunked transfer coding
by hand (RFC 9112 §7.1), and says `body N bytes sha256 HEX`.
"""

import hashlib
import socket
import sys


class Reader:
    """Bytes from a socket, a line or an exact count at a time."""

    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""

    def fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the server closed the connection mid-answer")
        self.buffer += data

    def until(self, marker):
        """Everything up to and including `marker`."""
        while marker not in self.buffer:
            self.fill()
        end = self.buffer.index(marker) + len(marker)
        data, self.buffer = self.buffer[:end], self.buffer[end:]
        return data

    def exactly(self, n):
        while len(self.buffer) < n:
            self.fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data


def main():
    host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    sock = socket.create_connection((host, port), timeout=60)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    reader = Reader(sock)
    head = reader.until(b"\r\n\r\n").decode("latin-1")
    if "transfer-encoding: chunked" not in head.lower():
        sys.exit(f"expected a chunked answer, got:\n{head}")
    print("head received", flush=True)
    sys.stdin.readline()                          # hold back: the socket is not read meanwhile
    digest, total = hashlib.sha256(), 0
    while True:
        size = int(reader.until(b"\r\n").split(b";")[0], 16)   # chunk size in hex (extensions after ;)
        if size == 0:
            while reader.until(b"\r\n") != b"\r\n":
                pass                              # trailer fields, if any, then an empty line
            break
        data = reader.exactly(size)
        reader.exactly(2)                         # the CRLF after each chunk's data
        digest.update(data)
        total += len(data)
    print(f"body {total} bytes sha256 {digest.hexdigest()}", flush=True)
    sock.close()


if __name__ == "__main__":
    main()
