"""Goridge frame coding: the worked examples of docs/external-workers.md, fed three ways."""

import pytest

from minirr.wire import frame
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


# ---- large payloads: gathered in one buffer, which a caller may read straight into ------

LARGE = bytes(range(256)) * ((frame.LARGE_PAYLOAD_BYTES + 1000) // 256)
LARGE_FRAME = frame.encode(frame.CODEC_JSON, LARGE, (27,))
LARGE_EXPECTED = frame.Frame(frame.CODEC_JSON, LARGE, (27,), 0)


def feed_in_chunks(data, size=65536):
    decoder = frame.FrameDecoder()
    out = []
    for i in range(0, len(data), size):
        out += decoder.feed(data[i:i + size])
    return out


def read_into_buffer(data, size=65536):
    """What the worker and the master do: feed() until a large payload has begun, then
    read straight into payload_buffer() (here from `data`, as os.readv would)."""
    decoder = frame.FrameDecoder()
    out = []
    pos = 0
    while pos < len(data):
        view = decoder.payload_buffer()
        if view is None:
            out += decoder.feed(data[pos:pos + size])
            pos += size
        else:
            chunk = data[pos:pos + min(size, len(view))]
            view[:len(chunk)] = chunk
            out += decoder.payload_received(len(chunk))
            pos += len(chunk)
    return out


def _as_bytes(frames):
    return [f._replace(payload=bytes(f.payload)) for f in frames]


@pytest.mark.parametrize("feed", [feed_whole, feed_in_chunks, read_into_buffer,
                                  lambda data: feed_in_chunks(data, 4099),
                                  lambda data: read_into_buffer(data, 4099)])
def test_a_large_payload_arrives_whole_however_it_is_read(feed):
    frames = _as_bytes(feed(LARGE_FRAME + SOFT_ERROR + LARGE_FRAME + HANDSHAKE))
    assert frames == [LARGE_EXPECTED, EXAMPLES[3][1], LARGE_EXPECTED, EXAMPLES[0][1]]


def test_a_large_payload_is_gathered_in_one_buffer_of_its_size():
    decoder = frame.FrameDecoder()
    assert decoder.payload_buffer() is None
    assert decoder.feed(LARGE_FRAME[:10]) == []          # not even the header yet
    assert decoder.payload_buffer() is None
    assert decoder.feed(LARGE_FRAME[10:1000]) == []
    view = decoder.payload_buffer()
    assert len(view) == len(LARGE_FRAME) - 1000          # what is still to come, no more
    view[:] = LARGE_FRAME[1000:]
    [got] = decoder.payload_received(len(view))
    assert bytes(got.payload) == LARGE and got.options == (27,)
    assert decoder.payload_buffer() is None              # done: small frames go on as before
    assert decoder.feed(HANDSHAKE) == [EXAMPLES[0][1]]


def test_a_small_payload_split_over_reads_is_not_gathered_in_place():
    data = frame.encode(0, b"x" * (frame.LARGE_PAYLOAD_BYTES - 1))
    decoder = frame.FrameDecoder()
    assert decoder.feed(data[:100]) == []
    assert decoder.payload_buffer() is None
    [got] = decoder.feed(data[100:])
    assert type(got.payload) is bytes and len(got.payload) == frame.LARGE_PAYLOAD_BYTES - 1


def test_a_large_frame_with_a_bad_header_is_refused_before_any_buffer():
    bad = bytearray(LARGE_FRAME[:100])
    bad[6] ^= 0xFF
    decoder = frame.FrameDecoder()
    with pytest.raises(FrameError, match="CRC"):
        decoder.feed(bytes(bad))
    assert decoder.payload_buffer() is None
