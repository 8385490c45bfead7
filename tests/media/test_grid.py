"""Our target size and token count must be exactly mistral_common's: the model sees what it would have seen."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mistral_common.protocol.instruct.chunk import ImageChunk
from mistral_common.tokens.tokenizers.image import ImageConfig, ImageEncoder, SpecialImageIDs
from PIL import Image

from server.media import MISTRAL_SMALL_3_1, VisionGrid, decode_image, model_pixels
from tests.images import encode, photo

ENCODER = ImageEncoder(ImageConfig(14, 1540, 2), SpecialImageIDs(img=10, img_break=12, img_end=13))
MAX_PIXELS = 50_000_000

# (width, height): photo sizes both ways, squares at and around the limit, cell edges, extreme strips.
SIZES = [
    (4000, 3000), (1500, 2000), (1920, 1080), (1541, 1540), (1540, 1540), (1539, 1), (1541, 1),
    (6000, 29), (29, 3100), (28, 28), (29, 29), (27, 57), (1, 1), (2000, 1999), (1200, 800), (333, 777),
]


def test_defaults_are_mistral_small_3_1_from_tekken_json(tiny_model: Path) -> None:
    config = json.loads((tiny_model / "tekken.json").read_text())["image"]
    assert VisionGrid.from_tekken(config) == MISTRAL_SMALL_3_1 == VisionGrid()
    assert MISTRAL_SMALL_3_1.cell == 28


@pytest.mark.parametrize("size", [*SIZES, (100_000, 3), (3, 100_000), (20_000, 15_000), (1541, 1541)])
def test_token_arithmetic_matches_mistral_common(size: tuple[int, int]) -> None:
    # Only the size matters to the token count; a tiny stand-in keeps huge sizes cheap.
    assert MISTRAL_SMALL_3_1.token_grid(*size) == ENCODER._image_to_num_tokens(_Sized(size))


@pytest.mark.parametrize("size", SIZES)
def test_same_tokens_on_original_and_on_our_image(size: tuple[int, int]) -> None:
    original = photo(*size, seed=size[0])
    ours = decode_image(encode(original, "BMP"), max_pixels=MAX_PIXELS)  # BMP: lossless and quick to write
    from_original = ENCODER(ImageChunk(image=original))
    from_ours = ENCODER(ImageChunk(image=ours.image))
    assert len(from_ours.tokens) == ours.tokens
    if MISTRAL_SMALL_3_1.token_grid(*size) == (1, 1):
        # The one departure: a one-cell image goes in as 2 x 2 cells (one image token crashes transformers).
        assert ours.image.size == (56, 56) and ours.tokens == 6
        assert from_ours.image.shape == (3, 56, 56)
    else:
        assert from_ours.tokens == from_original.tokens
        # Handed over at its final size, the encoder's own resize is a no-op: same shape, our pixels unchanged.
        assert from_ours.image.shape == (3, ours.image.height, ours.image.width) == from_original.image.shape
    np.testing.assert_allclose(model_pixels(ours.image), from_ours.image, atol=1e-5)


@pytest.mark.parametrize("size", [(4032, 3024), (2000, 3000)])
def test_jpeg_reduced_decoding_keeps_the_token_count(size: tuple[int, int]) -> None:
    original = photo(*size, seed=1)
    ours = decode_image(encode(original, "JPEG", quality=90), max_pixels=MAX_PIXELS)
    assert ours.image.size == MISTRAL_SMALL_3_1.target_size(*size)
    assert ENCODER(ImageChunk(image=ours.image)).tokens == ENCODER(ImageChunk(image=original)).tokens
    # and the picture is still the same picture (mean colour per channel within a few levels)
    reference = np.asarray(original.resize(ours.image.size, Image.Resampling.BICUBIC), dtype=np.float32)
    assert np.abs(np.asarray(ours.image, dtype=np.float32).mean((0, 1)) - reference.mean((0, 1))).max() < 3


class _Sized:
    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (5, 3), (14, 14), (27, 27), (28, 28), (28, 10), (1, 28)])
def test_one_cell_images_become_two_by_two_cells(size: tuple[int, int]) -> None:
    assert MISTRAL_SMALL_3_1.token_grid(*size) == (1, 1)  # what mistral_common would make of it: one token
    assert MISTRAL_SMALL_3_1.target_size(*size) == (56, 56)


@pytest.mark.parametrize(("size", "target"), [((29, 29), (56, 56)), ((1, 300), (28, 308)), ((300, 1), (308, 28)),
                                              ((28, 29), (28, 56)), ((57, 1), (84, 28))])
def test_images_of_two_cells_or_more_keep_mistral_commons_size(size: tuple[int, int], target: tuple[int, int]) -> None:
    assert MISTRAL_SMALL_3_1.target_size(*size) == target
