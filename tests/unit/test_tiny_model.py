"""The tiny model is deterministic and usable by mistral_common and HF loaders alike."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from tests.conftest import REPO


def test_second_build_is_a_no_op(tiny_model: Path) -> None:
    before = (tiny_model / "model.safetensors").stat().st_mtime_ns
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "make_tiny_model.py"), "--out", str(tiny_model)],
                            capture_output=True, text=True, check=True)
    assert "up to date" in result.stdout
    assert (tiny_model / "model.safetensors").stat().st_mtime_ns == before


def test_rebuild_is_bit_identical(tiny_model: Path, tmp_path: Path) -> None:
    other = tmp_path / "again"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_tiny_model.py"), "--out", str(other)], check=True)
    digest = lambda path: hashlib.sha256(path.read_bytes()).hexdigest()  # noqa: E731
    assert digest(other / "model.safetensors") == digest(tiny_model / "model.safetensors")


def test_files_for_both_loaders(tiny_model: Path) -> None:
    for name in ("config.json", "model.safetensors", "tekken.json", "tokenizer.json", "preprocessor_config.json",
                 "processor_config.json"):
        assert (tiny_model / name).is_file(), name
    config = json.loads((tiny_model / "config.json").read_text())
    assert config["text_config"]["head_dim"] >= 32  # vLLM's CPU attention refuses smaller heads
    assert config["vision_config"]["patch_size"] == 14 and config["spatial_merge_size"] == 2
    tokenizer = MistralTokenizer.from_file(str(tiny_model / "tekken.json"))
    image = tokenizer.instruct_tokenizer.tokenizer.image
    assert (image.image_patch_size, image.max_image_size, image.spatial_merge_size) == (14, 1540, 2)
