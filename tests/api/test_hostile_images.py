"""The hostile image corpus through the live server: exact status and code, and the server keeps answering.

Only loopback URLs appear here: private, link-local and metadata addresses are tested at the address check
itself (tests/media/test_netguard.py, test_fetch.py), never over the network.
"""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import LiveServer
from tests.images import image_bytes, png_url
from tests.media.test_hostile import REFUSED


@pytest.mark.parametrize(("name", "data", "declared", "status", "code"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_upload_over_http(live_server: LiveServer, name: str, data: bytes, declared: str | None,
                                  status: int, code: str) -> None:
    files = {"file": (f"{name}.bin", data, declared or "application/octet-stream")}
    response = httpx.post(f"{live_server.v1}/captions", files=files, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "url",
    ["https://127.0.0.1/cat.png", "https://localhost/cat.png", "https://[::1]/cat.png", "https://0x7f000001/cat.png",
     "https://[::ffff:127.0.0.1]/cat.png", "http://127.0.0.1:1/cat.png"],
)
def test_loopback_urls_are_refused(live_server: LiveServer, url: str) -> None:
    body = {"model": "tiny-mistral3", "max_tokens": 2,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}
    response = httpx.post(f"{live_server.v1}/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "image_url_forbidden"


def test_server_still_answers_after_the_corpus(live_server: LiveServer) -> None:
    assert httpx.get(f"{live_server.base_url}/health").status_code == 200
    response = httpx.post(f"{live_server.v1}/captions", json={"image_urls": [png_url()], "max_tokens": 2}, timeout=60)
    assert response.status_code == 200, response.text


# Icons, emoji, thumbnails and thin strips: up to two 14-px patches a side (one 28-px token cell) used to crash
# the transformers engine ("split_with_sizes expects split_sizes to sum exactly to 128"), a 503.
SMALL_SIZES = [(1, 1), (2, 2), (3, 5), (14, 14), (27, 27), (28, 28), (29, 29), (56, 56), (1, 300), (300, 1), (28, 1)]


@pytest.mark.parametrize("size", SMALL_SIZES, ids=[f"{w}x{h}" for w, h in SMALL_SIZES])
def test_small_images_are_answered(live_server: LiveServer, size: tuple[int, int]) -> None:
    body = {"model": "tiny-mistral3", "max_tokens": 2,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                                      {"type": "image_url", "image_url": {"url": png_url(size)}}]}]}
    response = httpx.post(f"{live_server.v1}/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] > 6  # the image's tokens (at least 2 x 2 cells) + the text


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "JPEG", "WEBP", "BMP"])
def test_one_pixel_upload_in_every_format_is_captioned(live_server: LiveServer, fmt: str) -> None:
    files = {"file": (f"pixel.{fmt.lower()}", image_bytes(fmt, (1, 1)), f"image/{fmt.lower()}")}
    response = httpx.post(f"{live_server.v1}/captions", files=files, data={"max_tokens": "2"}, timeout=120)
    assert response.status_code == 200, response.text
