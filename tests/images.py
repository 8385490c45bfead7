"""Small real images for tests, made in memory."""

from __future__ import annotations

import base64
import io

from PIL import Image


def image_bytes(
    fmt: str = "PNG", size: tuple[int, int] = (300, 200), color: tuple[int, int, int] = (200, 30, 30)
) -> bytes:
    image = Image.new("RGB", size, color)
    for x in range(0, size[0], 7):  # a little structure so encoders have something to do
        for y in range(0, size[1], 5):
            image.putpixel((x, y), (x % 256, y % 256, (x + y) % 256))
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def png_url(size: tuple[int, int] = (300, 200)) -> str:
    return data_url(image_bytes("PNG", size), "image/png")


def jpeg_url(size: tuple[int, int] = (300, 200)) -> str:
    return data_url(image_bytes("JPEG", size), "image/jpeg")
