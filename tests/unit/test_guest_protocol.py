"""The guest protocol's framing: encoding, the bounded decoder and its refusals."""

from __future__ import annotations

import struct
import tracemalloc

import pytest

from guestagent.protocol import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_DATA,
    MAX_FRAME,
    MAX_JSON,
    VERSION,
    Decoder,
    Frame,
    Kind,
    ProtocolError,
    encode,
)

SAMPLES = [
    Frame(Kind.HELLO, 7, {"version": 1, "agent": "x", "boot_time": 1.5, "hostname": "h"}),
    Frame(Kind.PING, 1),
    Frame(Kind.REQUEST, 2, {"op": "execute", "command": "echo é", "env": {"A": "1"}}),
    Frame(Kind.STDOUT, 2, data=b"\x00\xffbinary"),
    Frame(Kind.GET_DATA, 3, data=bytes(range(256)) * 4096),
    Frame(Kind.EXIT, 2, {"return_code": -9, "timed_out": True}),
    Frame(Kind.ERROR, 0, {"message": "no", "retryable": False}),
]


def header(kind: int = Kind.PING, json_length: int = 0, data_length: int = 0) -> bytes:
    """A frame header with chosen fields."""
    return HEADER.pack(MAGIC, VERSION, kind, 1, json_length, data_length)


@pytest.mark.parametrize("frame", SAMPLES, ids=lambda f: f.kind.name)
def test_round_trip(frame: Frame) -> None:
    """Every kind of frame decodes to what was encoded."""
    assert Decoder().feed(encode(frame)) == [frame]


def test_header_layout_is_sixteen_bytes_big_endian() -> None:
    """Magic, version, kind, request id, JSON length and data length, in that order."""
    raw = encode(Frame(Kind.STDERR, 0x01020304, {"a": 1}, b"xyz"))
    assert raw[:HEADER_SIZE] == b"MC\x01\x06\x01\x02\x03\x04\x00\x00\x00\x07\x00\x00\x00\x03"
    assert raw[HEADER_SIZE:] == b'{"a":1}xyz'


def test_one_byte_feeds() -> None:
    """A frame split into 1-byte feeds comes out whole, once, after its last byte."""
    frame = Frame(Kind.PUT_DATA, 9, {}, bytes(range(256)) * 40)
    raw = encode(frame)
    decoder = Decoder()
    out: list[Frame] = []
    for index in range(len(raw)):
        got = decoder.feed(raw[index : index + 1])
        assert got == [] or index == len(raw) - 1
        out += got
    assert out == [frame]
    assert decoder.buffered == 0


def test_several_frames_in_one_feed_and_a_split_tail() -> None:
    """Frames packed together come out in order; a partial tail waits for the rest."""
    raw = b"".join(encode(frame) for frame in SAMPLES)
    decoder = Decoder()
    first = decoder.feed(raw[:-5])
    assert first == SAMPLES[:-1]
    assert decoder.buffered == len(encode(SAMPLES[-1])) - 5
    assert decoder.feed(raw[-5:]) == SAMPLES[-1:]


@pytest.mark.parametrize(
    "garbage",
    [b"GET / HTTP/1.1\r\n", b"\x00", b"M\x00", b"\xff" * 100, b'{"op": "execute"}'],
)
def test_garbage_is_refused(garbage: bytes) -> None:
    """Bytes that are not a frame raise ProtocolError as soon as they can be judged."""
    with pytest.raises(ProtocolError):
        Decoder().feed(garbage)


def test_broken_decoder_stays_broken_until_reset() -> None:
    """After a ProtocolError every feed raises until reset(); then it works again."""
    decoder = Decoder()
    with pytest.raises(ProtocolError):
        decoder.feed(b"XX")
    with pytest.raises(ProtocolError, match="already broken"):
        decoder.feed(encode(Frame(Kind.PING)))
    decoder.reset()
    assert decoder.feed(encode(Frame(Kind.PING))) == [Frame(Kind.PING)]


def test_frame_claiming_four_gib_is_refused_without_allocating() -> None:
    """A header claiming 4 GiB of data (or JSON) fails at the header, allocating nothing big."""
    for claim in (header(Kind.GET_DATA, 0, 0xFFFFFFFF), header(Kind.HELLO, 0xFFFFFFFF, 0)):
        decoder = Decoder()
        tracemalloc.start()
        try:
            with pytest.raises(ProtocolError, match="claims"):
                decoder.feed(claim + b"\x00" * 1000)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 256 * 1024
        assert decoder.buffered == 0


def test_limits_are_enforced_at_the_boundary() -> None:
    """Exactly the limits decode; one byte more is refused."""
    biggest = Frame(Kind.GET_DATA, 1, {"pad": "x" * (MAX_JSON - 10)}, b"\x01" * MAX_DATA)
    raw = encode(biggest)
    assert len(raw) == MAX_FRAME
    assert Decoder().feed(raw) == [biggest]
    with pytest.raises(ProtocolError):
        Decoder().feed(header(Kind.GET_DATA, 0, MAX_DATA + 1))
    with pytest.raises(ProtocolError):
        Decoder().feed(header(Kind.HELLO, MAX_JSON + 1, 0))
    with pytest.raises(ProtocolError, match="send chunks"):
        encode(Frame(Kind.PUT_DATA, 1, data=b"\x00" * (MAX_DATA + 1)))


def test_decoder_never_holds_more_than_one_frame() -> None:
    """Fed a long stream in odd-sized pieces, the decoder holds at most one unfinished frame."""
    frame = Frame(Kind.GET_DATA, 5, data=b"\xab" * MAX_DATA)
    raw = encode(frame) * 5
    decoder = Decoder()
    count = 0
    for offset in range(0, len(raw), 300_007):
        count += len(decoder.feed(raw[offset : offset + 300_007]))
        assert decoder.buffered < len(encode(frame))
    assert count == 5


def test_unknown_version_is_refused() -> None:
    """A frame of another protocol version raises ProtocolError naming the version."""
    raw = bytearray(encode(Frame(Kind.PING)))
    raw[2] = VERSION + 1
    with pytest.raises(ProtocolError, match="version 2"):
        Decoder().feed(bytes(raw))


def test_unknown_kind_and_data_on_a_dataless_kind_are_refused() -> None:
    """Kind 99, or a PING that carries data, is a protocol error."""
    with pytest.raises(ProtocolError, match="unknown frame kind"):
        Decoder().feed(struct.pack("!2sBB", MAGIC, VERSION, 99))
    with pytest.raises(ProtocolError, match="carry no data"):
        Decoder().feed(header(Kind.PING, 0, 5) + b"12345")
    with pytest.raises(ProtocolError):
        encode(Frame(Kind.PING, 1, data=b"x"))


@pytest.mark.parametrize(
    "body",
    [b"[1, 2]", b"\xff\xfe", b"{not json", b"[" * 60000, b'{"a": NaN}', b'{"n": ' + b"9" * 5000],
    ids=["array", "utf8", "syntax", "deep", "nan", "huge-int"],
)
def test_bad_json_is_refused(body: bytes) -> None:
    """Fields that are not a JSON object (or blow up the parser) raise ProtocolError."""
    with pytest.raises(ProtocolError):
        Decoder().feed(header(Kind.HELLO, len(body), 0) + body)


def test_typed_field_accessors_refuse_wrong_types() -> None:
    """A guest cannot pass a string for a number or a bool for an integer."""
    frame = Frame(Kind.EXIT, 1, {"return_code": True, "timed_out": "no", "t": "x", "f": 1e308})
    with pytest.raises(ProtocolError):
        frame.int_field("return_code")
    with pytest.raises(ProtocolError):
        frame.bool_field("timed_out")
    with pytest.raises(ProtocolError):
        frame.float_field("t")
    with pytest.raises(ProtocolError):
        frame.str_field("missing")
    assert frame.float_field("f") == 1e308
    assert frame.int_field("missing", 3) == 3
