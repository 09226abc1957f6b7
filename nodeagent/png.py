"""Screenshots as PNG: QEMU hands libvirt a PPM (P6) image; this turns it into PNG.

Pure Python with ``zlib`` (no imaging library): the PNG is 8-bit RGB, one
IDAT chunk, filter type 0 on every row.
"""

from __future__ import annotations

import struct
import zlib

from nodeagent.errors import NodeAgentError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ImageError(NodeAgentError, ValueError):
    """The bytes are not an image this module understands."""


def parse_ppm(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and RGB bytes of a binary PPM (P6) with maxval 255."""
    fields: list[bytes] = []
    pos = 0
    while len(fields) < 4:
        while pos < len(data) and data[pos : pos + 1].isspace():
            pos += 1
        if pos < len(data) and data[pos : pos + 1] == b"#":
            end = data.find(b"\n", pos)
            if end < 0:
                raise ImageError("PPM header ends inside a comment")
            pos = end + 1
            continue
        start = pos
        while pos < len(data) and not data[pos : pos + 1].isspace():
            pos += 1
        if start == pos:
            raise ImageError("PPM header is truncated")
        fields.append(data[start:pos])
    if fields[0] != b"P6":
        raise ImageError(f"not a binary PPM (magic {fields[0][:8]!r})")
    try:
        width, height, maxval = (int(f) for f in fields[1:])
    except ValueError as exc:
        raise ImageError("PPM header has a non-numeric field") from exc
    if width <= 0 or height <= 0 or maxval != 255:
        raise ImageError(f"unsupported PPM: {width}x{height}, maxval {maxval}")
    pos += 1  # exactly one whitespace byte after maxval
    pixels = data[pos : pos + width * height * 3]
    if len(pixels) != width * height * 3:
        raise ImageError(f"PPM has {len(pixels)} pixel bytes, expected {width * height * 3}")
    return width, height, pixels


def _chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def rgb_to_png(width: int, height: int, pixels: bytes) -> bytes:
    """An 8-bit RGB PNG of the given pixels (row-major, 3 bytes each)."""
    stride = width * 3
    if len(pixels) != stride * height:
        raise ImageError("pixel data does not match the size")
    raw = b"".join(b"\x00" + pixels[row * stride : (row + 1) * stride] for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )


def ppm_to_png(data: bytes) -> bytes:
    """A PNG of a binary PPM image."""
    return rgb_to_png(*parse_ppm(data))


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's header."""
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ImageError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}


def check_png(data: bytes) -> tuple[int, int]:
    """Width and height of an 8-bit PNG after checking every chunk's CRC and the pixel data size."""
    width, height = png_size(data)
    depth, color = data[24], data[25]
    if depth != 8 or color not in _CHANNELS:
        raise ImageError(f"unsupported PNG: bit depth {depth}, colour type {color}")
    pos, idat = len(PNG_SIGNATURE), bytearray()
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        if len(body) != length or zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            raise ImageError(f"PNG chunk {kind!r} is damaged")
        if kind == b"IDAT":
            idat += body
        pos += 12 + length
        if kind == b"IEND":
            break
    else:
        raise ImageError("PNG has no IEND chunk")
    try:
        raw = zlib.decompress(bytes(idat))
    except zlib.error as exc:
        raise ImageError(f"PNG pixel data is unreadable: {exc}") from exc
    if len(raw) != height * (1 + width * _CHANNELS[color]):
        raise ImageError("PNG pixel data does not match its size")
    return width, height
