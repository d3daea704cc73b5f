"""Exercise 4, the starting point: a client that holds a streamed answer back.

    python slow_client.py HOST PORT PATH

It must send GET PATH, read the response head and print `head received`; then read
nothing until a line arrives on stdin; then read the rest of the answer, undo the chunked
transfer coding (RFC 9112 §7.1: a size in hex, CRLF, the data, CRLF; size 0 ends it) and
print `body N bytes sha256 HEX`. Copy it, fill in the TODOs, and check it:

    cp docs/exercises/starters/slow_client.py my_client.py
    python docs/exercises/check_backpressure.py my_client.py
"""

import hashlib
import socket
import sys


def main():
    host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    sock = socket.create_connection((host, port), timeout=60)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    # TODO: read until the end of the head (b"\r\n\r\n"); keep what came after it: it is
    # the start of the body. Then say so:
    #     print("head received", flush=True)
    # TODO: hold back: wait for a line on stdin (sys.stdin.readline()), reading nothing.
    # TODO: read the chunked body to its end, counting its bytes and hashing them:
    digest, total = hashlib.sha256(), 0
    raise NotImplementedError("the three TODOs above")
    print(f"body {total} bytes sha256 {digest.hexdigest()}", flush=True)


if __name__ == "__main__":
    main()
