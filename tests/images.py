"""Real images for tests, made in memory: plain pictures, data URLs, and hostile structures (bombs, lying
headers, floods of metadata blocks) for the media pipeline's refusals."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image

from server.errors import ImageError


def image_bytes(
    fmt: str = "PNG", size: tuple[int, int] = (300, 200), color: tuple[int, int, int] = (200, 30, 30)
) -> bytes:
    image = Image.new("RGB", size, color)
    for x in range(0, size[0], 7):  # a little structure so encoders have something to do
        for y in range(0, size[1], 5):
            image.putpixel((x, y), (x % 256, y % 256, (x + y) % 256))
    return encode(image, fmt)


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def png_url(size: tuple[int, int] = (300, 200)) -> str:
    return data_url(image_bytes("PNG", size), "image/png")


def jpeg_url(size: tuple[int, int] = (300, 200)) -> str:
    return data_url(image_bytes("JPEG", size), "image/jpeg")


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Gradients plus noise: compresses like a real photo, not like a flat colour."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 200, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 200, height, dtype=np.float32)[:, None, None]
    base = np.concatenate([np.broadcast_to(x, (height, width, 1)), np.broadcast_to(y, (height, width, 1)),
                           (x + y) / 2], axis=2)
    tile = rng.integers(0, 40, size=(min(height, 256), min(width, 256), 3), dtype=np.uint8)  # cheap noise, tiled
    noise = np.tile(tile, (-(-height // tile.shape[0]), -(-width // tile.shape[1]), 1))[:height, :width]
    return Image.fromarray((base.astype(np.uint8) + noise).astype(np.uint8), "RGB")


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge size and carries almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_bomb(side: int, bit_depth: int = 8) -> bytes:
    """A real, valid greyscale PNG of side x side black pixels: tiny file, huge bitmap."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (side * bit_depth // 8 + 1)  # filter byte + pixels
    parts = [compressor.compress(row) for _ in range(side)]
    idat = b"".join(parts) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, bit_depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def jpeg_with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=92, exif=exif.tobytes())


def expect_error(exc_info: Any, status: int, code: str) -> ImageError:
    error = exc_info.value
    assert isinstance(error, ImageError)
    assert (error.status_code, error.code) == (status, code), error.message
    body = error.to_body()["error"]
    assert body["code"] == code and body["type"] == "invalid_request_error" and body["message"]
    return error



# ------------------------------------------------ block structures (see server/media/_prescan.py)


def png_with_chunks(count: int, kind: bytes = b"tEXt", payload: bytes = b"k\x00v") -> bytes:
    """A small valid PNG with ``count`` extra ancillary chunks before its pixels."""
    png = encode(Image.new("RGB", (8, 8), (10, 200, 30)), "PNG")
    ihdr_end = 8 + 12 + 13  # signature, IHDR (length, type, 13 bytes, CRC)
    return png[:ihdr_end] + png_chunk(kind, payload) * count + png[ihdr_end:]


def png_in_idat_pieces(piece: int) -> bytes:
    """A valid PNG whose compressed pixels are split into IDAT chunks of ``piece`` bytes."""
    side = 64
    raw = b"".join(b"\x00" + bytes((x * 3 + y) % 256 for x in range(side)) for y in range(side))
    data = zlib.compress(raw, 9)
    idats = b"".join(png_chunk(b"IDAT", data[i : i + piece]) for i in range(0, len(data), piece))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + idats + png_chunk(b"IEND", b"")


def jpeg_with_comments(count: int, text: bytes = b"hi") -> bytes:
    jpeg = encode(Image.new("RGB", (16, 16), (90, 90, 200)), "JPEG")
    comment = b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text
    return jpeg[:2] + comment * count + jpeg[2:]


def jpeg_with_junk(size: int) -> bytes:
    """Bytes that are no marker after the first segment (APP0): Pillow steps over them one by one."""
    jpeg = encode(Image.new("RGB", (16, 16), (90, 90, 200)), "JPEG")
    assert jpeg[2:4] == b"\xff\xe0"
    app0_end = 4 + struct.unpack(">H", jpeg[4:6])[0]
    return jpeg[:app0_end] + b"\x00" * size + jpeg[app0_end:]


def gif_with_comments(count: int, sub_blocks: int = 1, sub_block_size: int = 1) -> bytes:
    """A valid GIF with ``count`` comment extensions, each of ``sub_blocks`` sub-blocks, before its frame."""
    gif = encode(Image.new("P", (8, 8), 3), "GIF")
    flags = gif[10]
    start = 13 + ((3 << ((flags & 7) + 1)) if flags & 0x80 else 0)
    body = (bytes([sub_block_size]) + b"c" * sub_block_size) * sub_blocks
    comment = b"\x21\xfe" + body + b"\x00"
    return gif[:start] + comment * count + gif[start:]


def webp_with_chunks(count: int, kind: bytes = b"XMP ") -> bytes:
    webp = bytearray(encode(Image.new("RGB", (8, 8), (5, 5, 5)), "WEBP"))
    extra = (kind + struct.pack("<I", 2) + b"<x") * count
    webp += extra
    webp[4:8] = struct.pack("<I", len(webp) - 8)
    return bytes(webp)


def bmp_rle8_header(width: int, height: int) -> bytes:
    """A BMP declaring RLE8 compression (Pillow decodes RLE in Python), with an end-of-bitmap code as data."""
    palette = b"\x00\x00\x00\x00" * 256
    offset = 14 + 40 + len(palette)
    data = b"\x00\x01"  # end of bitmap
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(data), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + info + palette + data
