"""WebSocket (RFC 6455) as bytes: the opening handshake checked and answered, frames read
and built (no I/O).

Owns: telling an upgrade request (`upgrade_requested`), checking its handshake (§4.2.1:
      400, or 426 with `Sec-WebSocket-Version: 13` for a version this server does not
      speak, §4.4), the 101 that accepts it (`accept_response`, §4.2.2), the incremental
      frame reader (`FrameReader`: masking, reserved bits and opcodes, control frames,
      fragmented messages reassembled, UTF-8 checked as it arrives, even across
      fragments, close codes, `max_message_size`), and the frames a server or a test's
      client sends (`encode_frame`, `close_frame`).
Never: touches a socket or a clock, or decides what a message means: master/websocket.py
       owns a connection's session, and the app gets the messages.

    bytes ──FrameReader.feed──> [("text", b"..."), ("ping", b""), ("close", (1000, "bye"))]
                                  and, last, ("fail", WebSocketError(code, reason)) when the
                                  peer broke the protocol: fail the connection with that
                                  close code (§7.1.7)

A reader is for one direction: `masked=True` reads what a client sends (every frame must
be masked, §5.1), `masked=False` what a server sends (no frame may be). Events are tuples
(kind, data): "text" and "binary" carry the whole message (its fragments joined), "ping"
and "pong" their payload, "close" a (code, reason) pair (1005 when the frame had no code).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import struct
from typing import List, NamedTuple, Optional, Sequence, Tuple

from ..errors import MinirrError, ProtocolError
from .responses import response_head

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"     # §1.3: appended to the key, then SHA-1
VERSION = "13"                                     # §4.1: the only version this server speaks

# Opcodes (§5.2)
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
DATA_OPCODES = {TEXT: "text", BINARY: "binary"}
KNOWN_OPCODES = frozenset((CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG))
MAX_CONTROL_PAYLOAD = 125                          # §5.5: control frames, never fragmented

# Close codes (§7.4.1) this code names
NORMAL = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
NO_STATUS = 1005          # never on the wire: "the close frame had no code"
ABNORMAL = 1006           # never on the wire: "the connection dropped without a close frame"
INVALID_DATA = 1007
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
# Codes a close frame may carry (§7.4.1, §7.4.2, and the IANA registry's 1012-1014); the
# rest of 1000-2999 is reserved, below 1000 unused, 3000-4999 for libraries and apps.
_SENDABLE = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))


def valid_close_code(code: int) -> bool:
    """May a close frame carry `code` (§7.4)?"""
    return code in _SENDABLE or 3000 <= code <= 4999


class WebSocketError(MinirrError):
    """The peer broke RFC 6455: fail the connection with close `code` (§7.1.7)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class HandshakeError(ProtocolError):
    """An upgrade request that is no valid WebSocket handshake: its answer's status, and
    the header fields that go with it (426 says which version this server speaks)."""

    def __init__(self, msg: str, status: int = 400, headers: Tuple[Tuple[str, str], ...] = ()) -> None:
        super().__init__(msg, status)
        self.headers = headers


# ---- the opening handshake (§4.2) ---------------------------------------------------------

class Handshake(NamedTuple):
    key: str                              # Sec-WebSocket-Key, as sent
    subprotocols: Tuple[str, ...]         # Sec-WebSocket-Protocol, in the client's order


def upgrade_requested(headers: Sequence[Tuple[str, str]]) -> bool:
    """Does the request ask for a WebSocket (`Upgrade: websocket`, §4.2.1 item 3)? Only
    such a request is checked further; any other is an ordinary request."""
    for name, value in headers:
        if len(name) == 7 and name.lower() == "upgrade" and "websocket" in _tokens(value):
            return True
    return False


def check_handshake(method: str, protocol: str, headers: Sequence[Tuple[str, str]]) -> Handshake:
    """The handshake of an upgrade request, checked (§4.2.1); HandshakeError otherwise."""
    if method != "GET":
        raise HandshakeError(f"a WebSocket handshake is a GET, not {method}")
    if protocol != "HTTP/1.1":
        raise HandshakeError(f"a WebSocket handshake needs HTTP/1.1, not {protocol}")
    fields = {}
    for name, value in headers:
        fields.setdefault(name.lower(), []).append(value)
    if "upgrade" not in _tokens(",".join(fields.get("connection", ()))):
        raise HandshakeError("a WebSocket handshake needs Connection: Upgrade")
    if "transfer-encoding" in fields or any(v.strip() != "0" for v in fields.get("content-length", ())):
        raise HandshakeError("a WebSocket handshake has no body")
    versions = fields.get("sec-websocket-version", [])
    if versions != [VERSION]:
        shown = ", ".join(versions) or "none"
        raise HandshakeError(f"Sec-WebSocket-Version {shown}: this server speaks version {VERSION}", 426,
                             (("Sec-WebSocket-Version", VERSION),))
    keys = fields.get("sec-websocket-key", [])
    if len(keys) != 1 or not _valid_key(keys[0].strip()):
        raise HandshakeError("a WebSocket handshake needs one Sec-WebSocket-Key: 16 bytes in base64")
    offered = tuple(item for value in fields.get("sec-websocket-protocol", ())
                    for item in (part.strip() for part in value.split(",")) if item)
    return Handshake(keys[0].strip(), offered)


def _tokens(value: str) -> List[str]:
    return [part.strip().lower() for part in value.split(",")]


def _valid_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def accept_value(key: str) -> str:
    """Sec-WebSocket-Accept for `key` (§4.2.2 item 5.4): base64 of SHA-1 of key ‖ GUID."""
    # Imported here, not at the top: hashlib loads OpenSSL, 3.5 MB of the master's memory,
    # which a server that never accepts a WebSocket should not pay.
    import hashlib
    return base64.b64encode(hashlib.sha1((key + GUID).encode("ascii")).digest()).decode("ascii")


# Fields of the 101 that are the server's, never the app's (§4.2.2).
_OWNED_101 = frozenset(("upgrade", "connection", "sec-websocket-accept", "sec-websocket-protocol",
                        "sec-websocket-extensions", "content-length", "transfer-encoding"))


def accept_response(handshake: Handshake, subprotocol: Optional[str], headers: Sequence[Tuple[str, str]],
                    date: bytes) -> bytes:
    """The 101 that completes the handshake. `subprotocol` must be one the client offered
    (§4.2.2 item 5.5), and the app's `headers` valid header fields; ValueError otherwise."""
    if subprotocol is not None and subprotocol not in handshake.subprotocols:
        raise ValueError(f"subprotocol {subprotocol!r} was not offered by the client "
                         f"(offered: {', '.join(handshake.subprotocols) or 'none'})")
    extra = [(name, value) for name, value in headers if name.lower() not in _OWNED_101]
    head = response_head(101, extra)
    fields = [b"Upgrade: websocket\r\nConnection: Upgrade\r\n",
              b"Sec-WebSocket-Accept: %s\r\n" % accept_value(handshake.key).encode("ascii")]
    if subprotocol is not None:
        fields.append(b"Sec-WebSocket-Protocol: %s\r\n" % subprotocol.encode("latin-1"))
    return b"%s%sDate: %s\r\n\r\n" % (head, b"".join(fields), date)


# ---- frames (§5) ------------------------------------------------------------------------------

def mask_bytes(data: bytes, mask: bytes) -> bytes:
    """XOR `data` with the 4-byte `mask` (§5.3): masking and unmasking are the same. One
    big-integer XOR in C instead of a Python loop per byte."""
    size = len(data)
    if not size:
        return b""
    key = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(size, "little")


def encode_header(opcode: int, length: int, fin: bool = True, mask: Optional[bytes] = None) -> bytes:
    """A frame's header: FIN, opcode, the length in its shortest form (§5.2), the mask key."""
    first = (0x80 if fin else 0) | opcode
    bit = 0x80 if mask is not None else 0
    if length < 126:
        head = struct.pack("!BB", first, bit | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", first, bit | 126, length)
    else:
        head = struct.pack("!BBQ", first, bit | 127, length)
    return head + mask if mask is not None else head


def encode_frame(opcode: int, payload: bytes = b"", fin: bool = True, mask: Optional[bytes] = None) -> bytes:
    """One frame. A server sends unmasked frames; a client's are masked with `mask`."""
    body = mask_bytes(payload, mask) if mask is not None else payload
    return encode_header(opcode, len(payload), fin, mask) + body


def close_payload(code: int, reason: str = "") -> bytes:
    """A close frame's payload (§5.5.1): the code, then the reason in UTF-8, cut to fit 125 bytes."""
    data = reason.encode("utf-8")[:MAX_CONTROL_PAYLOAD - 2]
    while data:
        try:
            data.decode("utf-8")       # a cut must not leave half a character
            break
        except UnicodeDecodeError:
            data = data[:-1]
    return struct.pack("!H", code) + data


def close_frame(code: int, reason: str = "", mask: Optional[bytes] = None) -> bytes:
    return encode_frame(CLOSE, close_payload(code, reason), mask=mask)


def parse_close(payload: bytes) -> Tuple[int, str]:
    """A close frame's payload -> (code, reason); 1005 for none (§7.1.5). WebSocketError for
    one byte, a code no frame may carry (1002), or a reason that is not UTF-8 (1007)."""
    if not payload:
        return NO_STATUS, ""
    if len(payload) == 1:
        raise WebSocketError(PROTOCOL_ERROR, "a close frame with a one-byte payload")
    code = struct.unpack("!H", payload[:2])[0]
    if not valid_close_code(code):
        raise WebSocketError(PROTOCOL_ERROR, f"close code {code} is not one a close frame may carry")
    try:
        reason = bytes(payload[2:]).decode("utf-8")
    except UnicodeDecodeError:
        raise WebSocketError(INVALID_DATA, "a close reason that is not UTF-8") from None
    return code, reason


_utf8_decoder = codecs.getincrementaldecoder("utf-8")
# One feed() reads at most this many frames: a read of tiny frames (a client may send ten
# thousand 6-byte fragments in 64 KiB) is work the caller spreads over rounds of its loop.
FRAMES_PER_FEED = 256


def utf8_checker():
    """An incremental UTF-8 check: `.decode(piece, final)` raises UnicodeDecodeError at
    the first piece that cannot be part of UTF-8 text, even mid-character."""
    return _utf8_decoder()


class FrameReader:
    """Frames of one direction in, events out (see the module docstring). After a
    WebSocketError, or once a close frame is read, nothing more is read."""

    def __init__(self, max_message_bytes: int, masked: bool = True) -> None:
        self.max_message_bytes = max_message_bytes
        self.masked = masked
        self.buffer = bytearray()
        self.done = False                 # a close frame was read, or the peer broke the protocol
        self.more = False                 # feed() stopped at FRAMES_PER_FEED: feed(b"") reads on
        self._kind: Optional[str] = None  # a fragmented message in progress: "text" or "binary"
        self._parts: List[bytes] = []
        self._size = 0                    # its bytes so far
        self._utf8 = None                 # its text checked as it arrives (incremental decoder)

    @property
    def buffered_bytes(self) -> int:
        return len(self.buffer) + self._size

    def feed(self, data: bytes) -> list:
        """Bytes in (any split), the events they complete out (`more`: frames are left for
        the next call, FRAMES_PER_FEED). A fault is the last event,
        ("fail", WebSocketError): what came before it in the same bytes is still the
        peer's (a message, then a frame with a reserved bit: the message is delivered)."""
        if self.done:
            return []
        buf = self.buffer
        buf += data
        events: list = []
        self.more = False
        try:
            for _ in range(FRAMES_PER_FEED):
                if self.done:
                    break
                frame = self._next_frame(buf)
                if frame is None:
                    break
                fin, opcode, payload = frame
                event = self._on_frame(fin, opcode, payload)
                if event is not None:
                    events.append(event)
            else:
                self.more = not self.done and len(buf) >= 2
        except WebSocketError as exc:
            events.append(("fail", exc))
        return events

    def _next_frame(self, buf: bytearray):
        """(fin, opcode, unmasked payload) of the first complete frame in `buf` (removed
        from it), or None. A header is checked as soon as it is in: a frame too large or
        not masked fails before its payload arrives."""
        if len(buf) < 2:
            return None
        first, second = buf[0], buf[1]
        fin, opcode = bool(first & 0x80), first & 0x0F
        length = second & 0x7F
        at = 2
        if length == 126:
            if len(buf) < 4:
                return None
            length = struct.unpack_from("!H", buf, 2)[0]
            at = 4
        elif length == 127:
            if len(buf) < 10:
                return None
            length = struct.unpack_from("!Q", buf, 2)[0]
            at = 10
        self._check_header(first, second, fin, opcode, length)
        mask = None
        if second & 0x80:
            mask = bytes(buf[at:at + 4])
            at += 4
        end = at + length
        if len(buf) < end:
            return None
        payload = bytes(buf[at:end])
        del buf[:end]
        return fin, opcode, mask_bytes(payload, mask) if mask is not None else payload

    def _check_header(self, first: int, second: int, fin: bool, opcode: int, length: int) -> None:
        if first & 0x70:
            self._fail(PROTOCOL_ERROR, "reserved bits set (no extension was agreed, §5.2)")
        if opcode not in KNOWN_OPCODES:
            self._fail(PROTOCOL_ERROR, f"opcode {opcode:#x} is reserved")
        if bool(second & 0x80) != self.masked:
            self._fail(PROTOCOL_ERROR, "an unmasked frame from the client (§5.1)" if self.masked
                       else "a masked frame from the server (§5.1)")
        if opcode >= CLOSE:
            if not fin:
                self._fail(PROTOCOL_ERROR, "a fragmented control frame (§5.5)")
            if length > MAX_CONTROL_PAYLOAD:
                self._fail(PROTOCOL_ERROR, f"a control frame of {length} bytes (at most 125, §5.5)")
            return
        if opcode == CONTINUATION and self._kind is None:
            self._fail(PROTOCOL_ERROR, "a continuation frame with no message to continue (§5.4)")
        if opcode != CONTINUATION and self._kind is not None:
            self._fail(PROTOCOL_ERROR, "a new message before the last one's final fragment (§5.4)")
        if self._size + length > self.max_message_bytes:
            self._fail(MESSAGE_TOO_BIG, f"a message over {self.max_message_bytes} bytes (max_message_size)")

    def _on_frame(self, fin: bool, opcode: int, payload: bytes):
        if opcode >= CLOSE:
            return self._on_control(opcode, payload)
        if opcode != CONTINUATION:
            self._kind = DATA_OPCODES[opcode]
            self._utf8 = _utf8_decoder() if opcode == TEXT else None
        if self._utf8 is not None:
            try:
                self._utf8.decode(payload, fin)      # §8.1: fail as soon as the text is not UTF-8
            except UnicodeDecodeError:
                self._fail(INVALID_DATA, "a text message that is not UTF-8 (§8.1)")
        if fin and not self._parts:                 # the usual case: one frame, one message
            kind = self._kind
            self._kind = self._utf8 = None
            return kind, payload
        self._parts.append(payload)
        self._size += len(payload)
        if not fin:
            return None
        kind, data = self._kind, b"".join(self._parts)
        self._kind = self._utf8 = None
        self._parts = []
        self._size = 0
        return kind, data

    def _on_control(self, opcode: int, payload: bytes):
        if opcode == PING:
            return "ping", payload
        if opcode == PONG:
            return "pong", payload
        try:
            code_reason = parse_close(payload)
        except WebSocketError:
            self.done = True
            raise
        self.done = True                            # §5.5.1: nothing is read after a close
        self.buffer.clear()
        return "close", code_reason

    def _fail(self, code: int, reason: str) -> None:
        self.done = True
        self.buffer.clear()
        self._parts = []
        raise WebSocketError(code, reason)
