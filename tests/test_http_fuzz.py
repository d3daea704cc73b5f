"""Bounded random-mutation fuzz of http11.RequestParser (fixed seed: every run is the same).

Each mutant of a valid corpus request must end in Requests, NEED_DATA, CONTINUE or
CLOSED, or in a ProtocolError with a status the server knows how to send. No other
exception, nothing unsafe in a Request, and the same outcome however the bytes are
split into reads.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from minirr.errors import ProtocolError
from minirr.http.parser import CLOSED, CONTINUE, NEED_DATA, PAUSED, RequestLimits as Limits, RequestParser
from minirr.wire.messages import Request

CORPUS = Path(__file__).parent / "corpus"
CORPUS_LIMITS = Limits(**json.loads((CORPUS / "limits.json").read_text()))
SEEDS = [path.read_bytes() for path in sorted((CORPUS / "valid").glob("*.http"))]
MUTANTS = 3000
ALLOWED_STATUSES = {400, 413, 414, 431, 501, 505}

# Bytes and fragments that sit on the parser's decision points.
INTERESTING = [
    b"\r", b"\n", b"\r\n", b"\r\n\r\n", b" ", b"\t", b"\x0b", b":", b",", b";", b"=", b'"', b"\\",
    b"0", b"1", b"f", b"F", b"-", b"+", b"%", b"?", b"#", b"/", b"*", b"@", b"[", b"]",
    b"\x00", b"\x7f", b"\x80", b"\xff", b"HTTP/1.0", b"HTTP/2.0", b"chunked", b"close",
    b"Host: x\r\n", b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n",
    b"Expect: 100-continue\r\n", b"Connection: close\r\n", b"X-Forwarded-For: 1.2.3.4\r\n",
    b"0\r\n\r\n", b"5\r\nhello\r\n", b"ffffffff", b"9" * 20, b"a" * 300,
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    """Apply one to three random edits."""
    for _ in range(rng.randint(1, 3)):
        pos = rng.randrange(len(data) + 1)
        op = rng.randrange(7)
        if op == 0:  # replace one byte
            value = rng.choice(INTERESTING)[:1] if rng.random() < 0.7 else bytes([rng.randrange(256)])
            data = data[:pos] + value + data[pos + 1:]
        elif op == 1:  # insert a fragment
            data = data[:pos] + rng.choice(INTERESTING) + data[pos:]
        elif op == 2:  # delete a short range
            data = data[:pos] + data[pos + rng.randint(1, 8):]
        elif op == 3:  # duplicate a range (repeats a line, a header, a chunk...)
            end = min(len(data), pos + rng.randint(1, 40))
            data = data[:end] + data[pos:end] + data[end:]
        elif op == 4:  # truncate
            data = data[:pos]
        elif op == 5:  # flip the case of a range
            end = min(len(data), pos + rng.randint(1, 20))
            data = data[:pos] + data[pos:end].swapcase() + data[end:]
        else:  # splice in a piece of another seed
            other = rng.choice(SEEDS)
            start = rng.randrange(len(other))
            data = data[:pos] + other[start:start + rng.randint(1, 60)] + data[pos:]
    return data


def random_split(rng: random.Random, data: bytes) -> list:
    chunks = []
    while data:
        size = rng.choice((1, 1, 2, 3, 7, 64))
        chunks.append(data[:size])
        data = data[size:]
    return chunks


def check_request(request: Request) -> tuple:
    """Whatever the input, a Request handed to the app carries no CR, LF or NUL."""
    texts = [request.method, request.path, request.query, request.uri]
    texts += [part for pair in request.headers for part in pair]
    for text in texts:
        assert isinstance(text, str)
        assert not set(text) & {"\r", "\n", "\x00"}, repr(text)
    assert isinstance(request.body, bytes)
    assert request.protocol in ("HTTP/1.0", "HTTP/1.1")
    return (request.method, request.path, request.query, tuple(request.headers), request.body,
            request.protocol, request.uri)


def run(limits: Limits, chunks: list) -> tuple:
    """-> (requests, outcome): outcome is the final event or ("error", status)."""
    conn = RequestParser(limits)
    requests = []
    try:
        for chunk in chunks + [b""]:
            conn.receive_data(chunk)
            while True:
                event = conn.next_event()
                if isinstance(event, Request):
                    requests.append((check_request(event), conn.keep_alive))
                    assert conn.next_event() is PAUSED
                    conn.start_next_cycle()
                    continue
                assert event in (NEED_DATA, CONTINUE, CLOSED), event
                if event is not CONTINUE:
                    break
        assert event is CLOSED  # after EOF the connection always ends
        return requests, event
    except ProtocolError as exc:
        assert exc.status in ALLOWED_STATUSES, (exc.status, exc.msg)
        assert exc.msg and "\n" not in exc.msg
        return requests, ("error", exc.status)


@pytest.mark.parametrize("limits_name", ["corpus", "default"])
def test_fuzz_mutants(limits_name):
    limits = CORPUS_LIMITS if limits_name == "corpus" else Limits()
    rng = random.Random(20240611 if limits_name == "corpus" else 1789)
    outcomes = {}
    for _ in range(MUTANTS // 2):
        data = mutate(rng, rng.choice(SEEDS))
        whole = run(limits, [data])
        split = run(limits, random_split(rng, data))
        assert whole == split, data
        outcomes[whole[1]] = outcomes.get(whole[1], 0) + 1
    # the mutants land on both sides: inputs that parse to the end, and refusals
    assert outcomes.get(CLOSED, 0) > 100
    assert outcomes.get(("error", 400), 0) > 100
