"""POST /v1/captions (multipart and JSON) and the `msserve caption` batch CLI, against the live tiny server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from server.api.captions.service import INSTRUCTIONS
from tests.conftest import REPO, LiveServer
from tests.images import data_url, image_bytes, png_url
from tests.prompt_tokens import expected_prompt_tokens


def test_multipart_upload_of_two_files(live_server: LiveServer) -> None:
    files = [
        ("file", ("cat.png", image_bytes("PNG", (200, 150)), "image/png")),
        ("file", ("dog.jpg", image_bytes("JPEG", (320, 240)), "image/jpeg")),
    ]
    response = httpx.post(
        f"{live_server.v1}/captions",
        files=files,
        data={"style": "alt_text", "max_tokens": "5", "temperature": "0"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["filename"] for item in body["data"]] == ["cat.png", "dog.jpg"]
    for item in body["data"]:
        assert isinstance(item["caption"], str)
        assert item["tier"] == "local" and item["model"] == "tiny-mistral3"
        # Greedy decoding of the random tiny model never picks EOS first: it runs to the cap, exactly.
        assert item["finish_reason"] == "length" and item["usage"]["completion_tokens"] == 5
    # Each caption's prompt is the alt-text instruction with its own image, exactly as mistral_common counts it.
    for item, (_, (_, data, mime)) in zip(body["data"], files, strict=True):
        assert item["usage"]["prompt_tokens"] == expected_prompt_tokens(INSTRUCTIONS["alt_text"], data_url(data, mime))
    assert body["usage"]["total_tokens"] == sum(item["usage"]["total_tokens"] for item in body["data"])
    assert response.headers["x-msserve-tier"] == "local"


def test_json_with_image_urls_and_language(live_server: LiveServer) -> None:
    response = httpx.post(
        f"{live_server.v1}/captions",
        json={"image_urls": [png_url()], "style": "detailed", "language": "French", "max_tokens": 3},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    [item] = response.json()["data"]
    # The style picks the instruction and the language is added to it: both reach the prompt the model sees.
    expected = expected_prompt_tokens(INSTRUCTIONS["detailed"] + " Answer in French.", png_url())
    assert item["usage"]["prompt_tokens"] == expected
    assert expected != expected_prompt_tokens(INSTRUCTIONS["short"], png_url())  # the check can tell them apart


def test_caption_errors(live_server: LiveServer) -> None:
    not_image = httpx.post(f"{live_server.v1}/captions", files={"file": ("x.png", b"<svg></svg>", "image/png")})
    assert not_image.status_code == 415
    assert not_image.json()["error"]["code"] == "image_unsupported_format"
    no_file = httpx.post(
        f"{live_server.v1}/captions", data={"style": "short"}, files={"other": ("a.txt", b"x", "text/plain")}
    )
    assert no_file.status_code == 400
    bad_style = httpx.post(f"{live_server.v1}/captions", json={"image_urls": [png_url()], "style": "poem"})
    assert bad_style.status_code == 400 and bad_style.json()["error"]["param"] == "style"
    wrong_type = httpx.post(f"{live_server.v1}/captions", content=b"hello", headers={"content-type": "text/plain"})
    assert wrong_type.status_code == 415
    # Captions take the local model's names only: an alias or another model's name is a 404 naming `model`.
    other_model = httpx.post(f"{live_server.v1}/captions", json={"image_urls": [png_url()], "model": "gpt-9"})
    assert other_model.status_code == 404 and other_model.json()["error"]["code"] == "model_not_found"
    assert other_model.json()["error"]["param"] == "model"


def test_caption_cli_folder_with_resume(live_server: LiveServer, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(image_bytes("PNG", (100, 80)))
    (folder / "sub" / "b.jpg").write_bytes(image_bytes("JPEG", (90, 120)))
    (folder / "notes.txt").write_text("not an image, not picked up")
    out = tmp_path / "captions.jsonl"
    command = [
        sys.executable,
        "-m",
        "server",
        "caption",
        str(folder),
        "--server",
        live_server.base_url,
        "--out",
        str(out),
        "--max-tokens",
        "3",
    ]
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(Path(r["source"]).name for r in records) == ["a.png", "b.jpg"]
    assert all(r["tier"] == "local" and isinstance(r["caption"], str) for r in records)
    # Resume: a third image appears; only it is captioned on the second run.
    (folder / "c.webp").write_bytes(image_bytes("WEBP", (64, 64)))
    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [Path(r["source"]).name for r in records].count("a.png") == 1
    assert sorted(Path(r["source"]).name for r in records) == ["a.png", "b.jpg", "c.webp"]
