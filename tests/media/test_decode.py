"""Formats, orientation and colour conversion: every supported input becomes an upright RGB image."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from server.media import MISTRAL_SMALL_3_1, decode_image
from tests.images import encode, jpeg_with_orientation, photo

MAX_PIXELS = 50_000_000
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def pixel(image: Image.Image, x: float, y: float) -> tuple[int, ...]:
    return tuple(image.getpixel((int(x * (image.width - 1)), int(y * (image.height - 1)))))  # type: ignore[arg-type]


def close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


@pytest.mark.parametrize(
    ("fmt", "mime"),
    [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp"), ("GIF", "image/gif"), ("BMP", "image/bmp")],
)
def test_each_supported_format_decodes_to_rgb_at_grid_size(fmt: str, mime: str) -> None:
    decoded = decode_image(encode(photo(300, 200), fmt), max_pixels=MAX_PIXELS)
    assert (decoded.format, decoded.mime_type, decoded.image.mode) == (fmt, mime, "RGB")
    assert decoded.image.size == (308, 224) == MISTRAL_SMALL_3_1.target_size(300, 200)
    assert decoded.tokens == (11 + 1) * 8


def halves(width: int, height: int) -> Image.Image:
    """Left half red, right half blue."""
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width // 2, height))
    return image


@pytest.mark.parametrize("size", [(400, 200), (4000, 2000)])  # the large one goes through reduced JPEG decoding
def test_exif_orientation_is_applied(size: tuple[int, int]) -> None:
    # Orientation 6: the camera was turned; viewers rotate 90 degrees clockwise, so the left half ends on top.
    decoded = decode_image(jpeg_with_orientation(halves(*size), 6), max_pixels=MAX_PIXELS)
    assert decoded.source_size == (size[1], size[0])
    assert decoded.image.size == MISTRAL_SMALL_3_1.target_size(size[1], size[0])
    assert close(pixel(decoded.image, 0.5, 0.1), RED) and close(pixel(decoded.image, 0.5, 0.9), BLUE)


def test_orientation_3_turns_upside_down() -> None:
    decoded = decode_image(jpeg_with_orientation(halves(400, 200), 3), max_pixels=MAX_PIXELS)
    assert decoded.image.size == MISTRAL_SMALL_3_1.target_size(400, 200)
    assert close(pixel(decoded.image, 0.1, 0.5), BLUE) and close(pixel(decoded.image, 0.9, 0.5), RED)


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = Image.new("CMYK", (120, 80), (0, 255, 255, 0))  # pure red in CMYK
    decoded = decode_image(encode(cmyk, "JPEG", quality=95), max_pixels=MAX_PIXELS)
    assert decoded.image.mode == "RGB" and close(pixel(decoded.image, 0.5, 0.5), RED, 20)


def test_alpha_is_flattened_onto_white() -> None:
    rgba = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (0, 0, 50, 100))
    decoded = decode_image(encode(rgba, "PNG"), max_pixels=MAX_PIXELS)
    assert close(pixel(decoded.image, 0.1, 0.5), RED) and close(pixel(decoded.image, 0.9, 0.5), WHITE)


def test_palette_with_transparency_is_flattened_onto_white() -> None:
    palette = Image.new("P", (60, 60), 0)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.paste(1, (30, 0, 60, 60))
    decoded = decode_image(encode(palette, "PNG", transparency=0), max_pixels=MAX_PIXELS)
    assert close(pixel(decoded.image, 0.1, 0.5), WHITE) and close(pixel(decoded.image, 0.9, 0.5), BLUE)


def test_sixteen_bit_grey_keeps_its_brightness() -> None:
    grey16 = Image.fromarray(np.full((40, 40), 32768, dtype=np.uint16))  # mid grey on a 16-bit scale
    decoded = decode_image(encode(grey16, "PNG"), max_pixels=MAX_PIXELS)
    assert close(pixel(decoded.image, 0.5, 0.5), (128, 128, 128), 2)


def test_la_and_one_bit_images_convert() -> None:
    for image in (Image.new("LA", (30, 30), (200, 255)), Image.new("1", (30, 30), 1)):
        decoded = decode_image(encode(image, "PNG"), max_pixels=MAX_PIXELS)
        assert decoded.image.mode == "RGB"


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (50, 50), colour) for colour in (RED, BLUE, WHITE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    decoded = decode_image(data, max_pixels=MAX_PIXELS)
    assert close(pixel(decoded.image, 0.5, 0.5), RED)
