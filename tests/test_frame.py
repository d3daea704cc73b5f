"""Goridge frame coding: the worked examples of wire-protocol.md, fed three ways."""

import pytest

from minirr import frame
from minirr.errors import FrameError

HANDSHAKE = bytes.fromhex("13 09 0c 00 00 00 5f 0c 46 73 00 00") + b'{"pid":4242}'
RESPONSE = bytes.fromhex("14 08 20 00 00 00 d1 05 c7 b9 00 00 1b 00 00 00") + b'{"status":200,"headers":{}}Hello'
STREAM_STOP = bytes.fromhex("13 00 00 00 00 00 96 d1 80 34 02 00")
SOFT_ERROR = bytes.fromhex("13 40 04 00 00 00 88 1e 11 e3 00 00") + b"boom"

EXAMPLES = [
    (HANDSHAKE, frame.Frame(frame.CONTROL | frame.CODEC_JSON, b'{"pid":4242}', (), 0)),
    (RESPONSE, frame.Frame(frame.CODEC_JSON, b'{"status":200,"headers":{}}Hello', (27,), 0)),
    (STREAM_STOP, frame.Frame(0, b"", (), frame.STOP)),
    (SOFT_ERROR, frame.Frame(frame.ERROR, b"boom", (), 0)),
]


@pytest.mark.parametrize("wire,expected", EXAMPLES)
def test_encode_reproduces_worked_examples(wire, expected):
    assert frame.encode(expected.flags, expected.payload, expected.options, expected.stream) == wire


def feed_whole(data):
    return frame.FrameDecoder().feed(data)


def feed_bytewise(data):
    decoder = frame.FrameDecoder()
    out = []
    for i in range(len(data)):
        out += decoder.feed(data[i:i + 1])
    return out


@pytest.mark.parametrize("wire,expected", EXAMPLES)
@pytest.mark.parametrize("feed", [feed_whole, feed_bytewise])
def test_decode_worked_examples(wire, expected, feed):
    assert feed(wire) == [expected]


def test_decode_with_trailing_partial_frame():
    decoder = frame.FrameDecoder()
    assert decoder.feed(HANDSHAKE + RESPONSE[:5]) == [EXAMPLES[0][1]]
    assert decoder.feed(RESPONSE[5:] + SOFT_ERROR) == [EXAMPLES[1][1], EXAMPLES[3][1]]


def test_three_frames_in_one_read():
    assert feed_whole(HANDSHAKE + STREAM_STOP + SOFT_ERROR) == [EXAMPLES[0][1], EXAMPLES[2][1], EXAMPLES[3][1]]


def test_bad_crc_is_a_frame_error():
    bad = bytearray(HANDSHAKE)
    bad[6] ^= 0xFF
    with pytest.raises(FrameError, match="CRC"):
        feed_whole(bytes(bad))


def test_stray_text_is_caught_by_crc():
    with pytest.raises(FrameError):
        feed_whole(b"hello from a stray echo\n")


def test_bad_version_and_header_length():
    # A valid CRC over a wrong version nibble / header length is still refused.
    import struct
    import zlib
    for first in (0x23, 0x12, 0x1F):
        head = struct.pack("<BBI", first, 0, 0)
        data = head + struct.pack("<I", zlib.crc32(head)) + b"\0\0" + b"\0" * 60
        with pytest.raises(FrameError):
            feed_whole(data)


def test_oversized_payload_refused():
    data = frame.encode(0, b"x" * 100)
    with pytest.raises(FrameError, match="exceeds"):
        frame.FrameDecoder(max_payload_bytes=99).feed(data)


def test_too_many_options_refused_on_encode():
    with pytest.raises(FrameError):
        frame.encode(0, b"", options=tuple(range(11)))


def test_round_trip_with_options_and_large_payload():
    payload = bytes(range(256)) * 4000
    data = frame.encode(frame.CODEC_JSON, payload, (7, 8, 9), frame.STREAM)
    assert feed_whole(data) == [frame.Frame(frame.CODEC_JSON, payload, (7, 8, 9), frame.STREAM)]
