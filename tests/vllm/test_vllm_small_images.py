"""Icons, emoji, thumbnails and thin strips through the vLLM engine over HTTP: the sizes that crashed transformers.

Same sizes as tests/api/test_hostile_images.py runs against the transformers engine: up to two 14-px patches a
side, and one-pixel strips. Each must be answered (the pipeline hands the engine at least 2 x 2 token cells).
"""

from __future__ import annotations

import httpx
import pytest

from tests.api.test_hostile_images import SMALL_SIZES
from tests.conftest import LiveServer
from tests.images import image_bytes, png_url

MODEL = "tiny-mistral3"

pytestmark = pytest.mark.vllm


@pytest.mark.parametrize("size", SMALL_SIZES, ids=[f"{w}x{h}" for w, h in SMALL_SIZES])
def test_small_images_are_answered(vllm_server: LiveServer, size: tuple[int, int]) -> None:
    body = {
        "model": MODEL,
        "max_tokens": 2,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": png_url(size)}},
                ],
            }
        ],
    }
    response = httpx.post(f"{vllm_server.v1}/chat/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] > 6


def test_one_pixel_upload_is_captioned(vllm_server: LiveServer) -> None:
    files = {"file": ("pixel.gif", image_bytes("GIF", (1, 1)), "image/gif")}
    response = httpx.post(f"{vllm_server.v1}/captions", files=files, data={"max_tokens": "2"}, timeout=300)
    assert response.status_code == 200, response.text
