"""RFC 6455 conformance, case by case, against a real minirr and an echo app: the ground the
Autobahn testsuite's sections 1-7 and 9 cover (framing, pings and pongs, reserved bits,
opcodes, fragmentation, UTF-8, close handling, large and many messages), written as this
project's own cases. Each case is the client's bytes, what must come back, and how the
connection must end; the cases marked `chopped` are sent again one byte per write (the
master must not care how TCP splits them). A failure must be the close code RFC 6455
names, then the TCP close.
"""

from __future__ import annotations

import struct

import pytest

from minirr.http import websocket as ws
from minirr.http.websocket import BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT
from serverproc import ServerProcess
from wire import stop_module_server
from wsclient import MASK, WSClient

OK, FAIL_1002, FAIL_1007 = 1000, ws.PROTOCOL_ERROR, ws.INVALID_DATA


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    server = ServerProcess.start(tmp_path_factory.mktemp("ws-conformance"),
                                 "[server]\napp = websocket_testapp:app\n[pool]\nnum_workers = 1\n",
                                 overrides=["websocket.max_message_size=4MB", "logs.access_log=false"])
    yield server
    stop_module_server(server)


def f(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0) -> bytes:
    """A client frame (masked)."""
    data = ws.encode_frame(opcode, payload, fin, MASK)
    return bytes([data[0] | rsv]) + data[1:]


def close(code=None, reason: bytes = b"") -> bytes:
    return f(CLOSE, b"" if code is None else struct.pack("!H", code) + reason)


class Case:
    """`expect`: what comes back, in order; `cut`: the failure may come first (the echo is
    the app's, later than the master's close: Autobahn calls that non-strict, not wrong)."""

    def __init__(self, name: str, send: bytes, expect=(), end=OK, chopped: bool = False, cut: bool = False) -> None:
        self.name, self.send, self.expect, self.end, self.chopped, self.cut = name, send, list(expect), end, chopped, cut


def text(payload: bytes):
    return ("text", payload)


def binary(payload: bytes):
    return ("binary", payload)


def pong(payload: bytes = b""):
    return ("pong", payload)


# ---- 1: framing: text and binary messages of each length form -----------------------------------------
CASES = []
for size in (0, 125, 126, 127, 128, 65535, 65536):
    CASES.append(Case(f"1.1 text of {size}", f(TEXT, b"*" * size), [text(b"*" * size)], chopped=size < 200))
    CASES.append(Case(f"1.2 binary of {size}", f(BINARY, b"\xfe" * size), [binary(b"\xfe" * size)]))

# ---- 2: pings and pongs ----------------------------------------------------------------------------------
CASES += [
    Case("2.1 ping without a payload", f(PING), [pong()]),
    Case("2.2 ping with text", f(PING, b"Hello, world!"), [pong(b"Hello, world!")]),
    Case("2.3 ping with binary", f(PING, b"\x00\xff\xfe\xfd"), [pong(b"\x00\xff\xfe\xfd")]),
    Case("2.4 ping of 125 bytes", f(PING, b"\xfe" * 125), [pong(b"\xfe" * 125)], chopped=True),
    Case("2.5 ping of 126 bytes", f(PING, b"\xfe" * 126), end=FAIL_1002),
    Case("2.7 an unsolicited pong is ignored", f(PONG) + f(TEXT, b"after"), [text(b"after")]),
    Case("2.8 an unsolicited pong with a payload", f(PONG, b"unsolicited") + f(TEXT, b"x"), [text(b"x")]),
    Case("2.9 an unsolicited pong, then a ping", f(PONG, b"u") + f(PING, b"ping"), [pong(b"ping")]),
    Case("2.10 ten pings, ten pongs", b"".join(f(PING, b"p%d" % i) for i in range(10)),
         [pong(b"p%d" % i) for i in range(10)], chopped=True),
]

# ---- 3: reserved bits (no extension was agreed) ---------------------------------------------------------
for index, (rsv, frame) in enumerate([(0x40, f(TEXT, b"x", rsv=0x40)), (0x20, f(TEXT, b"x", rsv=0x20)),
                                      (0x10, f(TEXT, b"x", rsv=0x10)), (0x50, f(TEXT, b"x", rsv=0x50)),
                                      (0x60, f(BINARY, b"\x00", rsv=0x60)), (0x30, f(PING, b"x", rsv=0x30)),
                                      (0x70, f(CLOSE, struct.pack("!H", 1000), rsv=0x70))]):
    CASES.append(Case(f"3.{index + 1} RSV {rsv >> 4} after a valid message", f(TEXT, b"ok") + frame + f(PING),
                      [text(b"ok")], end=FAIL_1002, cut=True))

# ---- 4: opcodes ------------------------------------------------------------------------------------------------
for opcode in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15):
    CASES.append(Case(f"4 reserved opcode {opcode} after a valid message", f(TEXT, b"ok") + f(opcode, b"p"),
                      [text(b"ok")], end=FAIL_1002, cut=True))

# ---- 5: fragmentation -------------------------------------------------------------------------------------------
CASES += [
    Case("5.1 a fragmented ping", f(PING, b"frag", fin=False) + f(CONTINUATION, b"ment"), end=FAIL_1002),
    Case("5.2 a fragmented pong", f(PONG, b"frag", fin=False) + f(CONTINUATION, b"ment"), end=FAIL_1002),
    Case("5.3 text in two fragments", f(TEXT, b"frag", fin=False) + f(CONTINUATION, b"ment"),
         [text(b"fragment")], chopped=True),
    Case("5.6 a ping between two fragments", f(TEXT, b"frag", fin=False) + f(PING, b"p") + f(CONTINUATION, b"ment"),
         [pong(b"p"), text(b"fragment")], chopped=True),
    Case("5.9 a final continuation with nothing to continue", f(CONTINUATION, b"x") + f(TEXT, b"y"),
         end=FAIL_1002, chopped=True),
    Case("5.12 a continuation with nothing to continue", f(CONTINUATION, b"x", fin=False) + f(CONTINUATION, b"y"),
         end=FAIL_1002),
    Case("5.15 a new message before the last one's end", f(TEXT, b"a", fin=False) + f(CONTINUATION, b"b", fin=False)
         + f(TEXT, b"c", fin=False) + f(CONTINUATION, b"d"), end=FAIL_1002),
    Case("5.18 two first fragments", f(TEXT, b"a", fin=False) + f(TEXT, b"b"), end=FAIL_1002),
    Case("5.19 pings between many fragments", b"".join(
        f(TEXT if i == 0 else CONTINUATION, b"f%d" % i, fin=i == 4) + f(PING, b"p%d" % i) for i in range(5)),
        [pong(b"p%d" % i) for i in range(5)] + [text(b"f0f1f2f3f4")]),     # pongs are the master's: first
    Case("5.x one byte a fragment", b"".join(f(TEXT if i == 0 else CONTINUATION, bytes([c]), fin=i == 9)
                                             for i, c in enumerate(b"0123456789")), [text(b"0123456789")]),
    Case("5.x an empty fragment between", f(BINARY, b"", fin=False) + f(CONTINUATION, b"", fin=False)
         + f(CONTINUATION, b"end"), [binary(b"end")]),
]

# ---- 6: UTF-8 ----------------------------------------------------------------------------------------------------
VALID_UTF8 = [
    ("6.1 empty", b""),
    ("6.2 mixed", "Hello-µ@ßöäüàá-UTF-8!!".encode()),
    ("6.5 kosme", b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"),
    ("6.7 first of each length", b"\x00\xc2\x80\xe0\xa0\x80\xf0\x90\x80\x80"),
    ("6.9 last of each length", b"\x7f\xdf\xbf\xef\xbf\xbf\xf4\x8f\xbf\xbf"),
    ("6.11 other boundaries", b"\xed\x9f\xbf\xee\x80\x80\xef\xbf\xbd"),
    ("6.22 noncharacters", b"\xef\xbf\xbe\xef\xbf\xbf\xf0\x9f\xbf\xbe"),
    ("6.23 a byte order mark", b"\xef\xbb\xbf"),
]
INVALID_UTF8 = [
    ("6.3 a surrogate inside", b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64"),
    ("6.8 a five-byte sequence", b"\xf8\x88\x80\x80\x80"),
    ("6.8 a six-byte sequence", b"\xfc\x84\x80\x80\x80\x80"),
    ("6.10 past U+10FFFF", b"\xf4\x90\x80\x80"),
    ("6.12 a lone continuation byte", b"\x80"),
    ("6.12 continuation bytes", b"\x80\xbf\x80\xbf"),
    ("6.13 a lone start byte", b"\xc0\x20"),
    ("6.14 a missing last byte", b"\xe0\x80"),
    ("6.15 incomplete sequences together", b"\xc0\xe0\x80\xf0\x80\x80"),
    ("6.16 impossible bytes", b"\xfe\xff"),
    ("6.17 overlong ASCII", b"\xc0\xaf"),
    ("6.18 the largest overlong", b"\xf0\x8f\xbf\xbf"),
    ("6.19 an overlong NUL", b"\xe0\x80\x80"),
    ("6.20 a single surrogate", b"\xed\xbf\xbf"),
    ("6.21 a surrogate pair", b"\xed\xa0\x80\xed\xb0\x80"),
]
for name, payload in VALID_UTF8:
    CASES.append(Case(f"{name}: valid", f(TEXT, payload), [text(payload)]))
    if len(payload) > 1:                          # one fragment per byte: a character split across frames
        parts = b"".join(f(TEXT if i == 0 else CONTINUATION, payload[i:i + 1], fin=i == len(payload) - 1)
                         for i in range(len(payload)))
        CASES.append(Case(f"{name}: valid, a fragment per byte", parts, [text(payload)]))
for name, payload in INVALID_UTF8:
    CASES.append(Case(f"{name}: invalid", f(TEXT, payload), end=FAIL_1007, chopped=True))
    parts = b"".join(f(TEXT if i == 0 else CONTINUATION, payload[i:i + 1], fin=i == len(payload) - 1)
                     for i in range(len(payload)))
    CASES.append(Case(f"{name}: invalid, a fragment per byte", parts, end=FAIL_1007))

# ---- 7: close handling ------------------------------------------------------------------------------------------------
CASES += [
    Case("7.1.1 a message echoed, then the client's close", f(TEXT, b"x"), [text(b"x")]),
    Case("7.1.2 a second close is not read", close(1000) + close(1001), end=("closed", 1000)),
    Case("7.1.3 a ping after the close is not answered", close(1000) + f(PING, b"late"), end=("closed", 1000)),
    Case("7.1.4 a message after the close is not echoed", close(1000) + f(TEXT, b"late"), end=("closed", 1000)),
    Case("7.1.5 a close between fragments", f(TEXT, b"frag", fin=False) + close(1000) + f(CONTINUATION, b"x"),
         end=("closed", 1000)),
    Case("7.3.1 a close without a code is answered without one", close(), end=("closed", ws.NO_STATUS)),
    Case("7.3.2 a close with one byte", f(CLOSE, b"\x03"), end=FAIL_1002),
    Case("7.3.3 a close with a code", close(1000), end=("closed", 1000)),
    Case("7.3.5 a close with a reason of 123 bytes", close(1000, b"*" * 123), end=("closed", 1000)),
    Case("7.5.1 a close reason that is not UTF-8", close(1000, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"
                                                       b"\xed\xa0\x80\x65\x64\x69\x74\x65\x64"), end=FAIL_1007),
]
CASES.append(Case("7.3.6 a close of 126 bytes", ws.encode_frame(CLOSE, b"\x03\xe8" + b"*" * 124, mask=MASK),
                  end=FAIL_1002))
for code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999):
    CASES.append(Case(f"7.7 valid close code {code}", close(code), end=("closed", code)))
for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535):
    CASES.append(Case(f"7.9 invalid close code {code}", close(code), end=FAIL_1002))

# ---- 9: large and many messages -------------------------------------------------------------------------------------
for size in (65536, 262144, 1048576, 4194304):
    CASES.append(Case(f"9.1 text of {size}", f(TEXT, b"*" * size), [text(b"*" * size)]))
    CASES.append(Case(f"9.2 binary of {size}", f(BINARY, b"\xfe" * size), [binary(b"\xfe" * size)]))
MIB = 1 << 20
for piece in (64, 256, 1024, 4096, 16384, 65536, 262144, MIB):
    payload = b"*" * MIB
    parts = b"".join(f(TEXT if at == 0 else CONTINUATION, payload[at:at + piece], fin=at + piece >= MIB)
                     for at in range(0, MIB, piece))
    CASES.append(Case(f"9.3 1 MiB of text in fragments of {piece}", parts, [text(payload)]))
CASES.append(Case("9.7 1000 text messages in a row", b"".join(f(TEXT, b"m%04d" % i) for i in range(1000)),
                  [text(b"m%04d" % i) for i in range(1000)]))
CASES.append(Case("9.8 1000 binary messages in a row", b"".join(f(BINARY, b"%04d" % i) for i in range(1000)),
                  [binary(b"%04d" % i) for i in range(1000)]))
CASES.append(Case("9.x a message over max_message_size", f(BINARY, b"x" * (4 * MIB + 1)), end=ws.MESSAGE_TOO_BIG))


def variants():
    for case in CASES:
        yield pytest.param(case, False, id=case.name)
        if case.chopped:
            yield pytest.param(case, True, id=case.name + " (chopped)")


@pytest.mark.parametrize("case,chopped", variants())
def test_conformance(srv, case, chopped):
    with WSClient.connect(srv, "/echo", timeout=30) as c:
        assert c.status == 101
        c.raw(case.send, byte_by_byte=chopped)
        got = []
        while len(got) < len(case.expect):
            event = c.event()
            if case.cut and event[0] == "close":
                c.events.insert(0, event)
                break
            got.append(event)
        assert got == case.expect[:len(got)] if case.cut else got == case.expect
        if isinstance(case.end, tuple):            # the client began the close: echoed, then the TCP close
            c.close_sent = True
            assert c.closed()[0] == case.end[1]
        elif case.end == OK:                       # still open: a clean close handshake ends it
            c.close(1000)
            assert c.closed() == (1000, "")
        else:                                      # failed: the code the RFC names, then the TCP close
            assert c.closed()[0] == case.end
