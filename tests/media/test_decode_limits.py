"""What decoding may cost: pixels actually decoded (JPEG after draft scaling) and 16-bit conversion memory."""

from __future__ import annotations

import asyncio
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from server.config import Settings
from server.errors import ImageError
from server.media import ImageIntake, decode_image
from tests.images import encode, expect_error, png_bomb

MAX_PIXELS = 50_000_000


def phone_jpeg(width: int, height: int) -> bytes:
    """A large JPEG made cheaply: a gradient (real structure for the codec) without per-pixel noise."""
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    grey = Image.fromarray(x // 2 + y // 2)
    return encode(Image.merge("RGB", (grey, grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT), grey)), "JPEG", quality=80)


@pytest.mark.parametrize(("size", "target"), [((4000, 3000), (1540, 1176)), ((8000, 6000), (1540, 1176))])
def test_12_and_48_megapixel_phone_jpegs_decode_under_a_3_megapixel_decode_cap(
    size: tuple[int, int], target: tuple[int, int]
) -> None:
    # Draft scaling decodes them at 1/2 and 1/4 scale (2000 x 1500): the cap is on that, not on what was sent.
    decoded = decode_image(phone_jpeg(*size), max_pixels=MAX_PIXELS, max_decoded_pixels=2000 * 1500)
    assert decoded.source_size == size and decoded.image.size == target


def test_the_decode_cap_refuses_what_would_be_decoded_at_full_size() -> None:
    # A PNG has no reduced decoding: 2000 x 1501 is decoded as such, just over the same cap.
    png = encode(Image.new("L", (2000, 1501)), "PNG")
    with pytest.raises(ImageError) as caught:
        decode_image(png, max_pixels=MAX_PIXELS, max_decoded_pixels=2000 * 1500)
    assert "2000x1501" in expect_error(caught, 413, "image_too_large").message


def test_default_decode_cap_is_4096_squared_not_the_declared_limit() -> None:
    settings = Settings()
    assert settings.max_decoded_image_pixels == 4096 * 4096 < settings.max_image_pixels
    intake = ImageIntake(settings)
    bomb = png_bomb(4100)  # 16.8 MP of black in ~20 KB: under the declared limit, over the decode cap
    with pytest.raises(ImageError) as caught:
        asyncio.run(intake.from_bytes(bomb, intake.budget(), source="upload", content_type="image/png"))
    expect_error(caught, 413, "image_too_large")


def grey16_png(width: int, height: int) -> bytes:
    ramp = (np.arange(width * height, dtype=np.uint32) * 7919 % 65536).astype(np.uint16).reshape(height, width)
    image = Image.fromarray(ramp)
    assert image.mode == "I;16"
    return encode(image, "PNG")


def test_16_bit_grey_keeps_its_top_byte_without_widening_to_int64() -> None:
    width, height = 1000, 1000
    data = grey16_png(width, height)
    tracemalloc.start()
    try:
        decoded = decode_image(data, max_pixels=MAX_PIXELS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # numpy reports its buffers to tracemalloc. Widening to int64 took 8 bytes a pixel per temporary (two of
    # them: about 1 GB for a 100 KB PNG of 8000 x 8000); in uint16 the conversion stays under one of those.
    assert peak < 8 * width * height
    pixel = decoded.image.getpixel((0, 0))
    assert pixel == (0, 0, 0)  # the ramp starts at 0


@pytest.mark.parametrize("dtype", ["<u2", ">u2", "<i4"])
def test_16_bit_modes_map_to_their_top_byte(dtype: str) -> None:
    from server.media import to_rgb

    image = Image.fromarray(np.array([[0, 255, 256, 65535, 32768, 4660]]).astype(dtype))
    assert image.mode == {"<u2": "I;16", ">u2": "I;16B", "<i4": "I"}[dtype]
    rgb = to_rgb(image)
    assert [rgb.getpixel((x, 0))[0] for x in range(6)] == [0, 0, 1, 255, 128, 18]


def test_32_bit_grey_holding_8_bit_values_stays_on_its_scale() -> None:
    from server.media import to_rgb

    image = Image.fromarray(np.array([[0, 10, 255, -5]], dtype=np.int32))
    assert [to_rgb(image).getpixel((x, 0))[0] for x in range(4)] == [0, 10, 255, 0]
