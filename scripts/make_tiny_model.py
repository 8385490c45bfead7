#!/usr/bin/env python3
"""Build a tiny Mistral3 (Mistral Small 3.1 architecture) with random weights.

The model answers with nonsense, but it exercises every real code path: the
Tekken tokenizer from mistral_common, the Pixtral vision tower with patch 14
and spatial merge 2, the multimodal projector, and both engines (transformers
and vLLM). Nothing is downloaded: the tokenizer is the Tekken file bundled in
mistral_common.

Output (default ``models/tiny-mistral3``), usable by both loaders:
  config.json, model.safetensors, generation_config.json   HF weights + config
  tekken.json                                              mistral_common tokenizer (v7)
  tokenizer.json, tokenizer_config.json, ...               HF tokenizer made from tekken.json
  preprocessor_config.json, processor_config.json          Pixtral processor configs

The build is seeded and idempotent: a stamp file records the recipe, and a
second run with the same recipe does nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

SEED = 1234
TEKKEN_SOURCE = "tekken_240911.json"
STAMP = ".tiny-model-stamp"

# Mistral Small 3.1 keeps its image geometry; only the widths shrink.
# head_dim stays 64 because vLLM's CPU attention refuses head_dim < 32.
TEXT_CONFIG = {
    "model_type": "mistral",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 64,
    "hidden_act": "silu",
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-05,
    "rope_theta": 1000000000.0,
    "sliding_window": None,
    "vocab_size": 131072,
    "tie_word_embeddings": False,
}
VISION_CONFIG = {
    "model_type": "pixtral",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 1,
    "num_attention_heads": 1,
    "head_dim": 64,
    "num_channels": 3,
    "patch_size": 14,
    "image_size": 1540,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
}
IMAGE_CONFIG = {"image_patch_size": 14, "max_image_size": 1540, "spatial_merge_size": 2}
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


def recipe_digest() -> str:
    """Hash of everything that shapes the output; a change rebuilds the model."""
    recipe = json.dumps(
        [SEED, TEKKEN_SOURCE, TEXT_CONFIG, VISION_CONFIG, IMAGE_CONFIG, Path(__file__).read_bytes().hex()],
        sort_keys=True,
    )
    return hashlib.sha256(recipe.encode()).hexdigest()


def write_tekken(out: Path) -> Path:
    """Copy mistral_common's bundled Tekken vocabulary as a v7 tokenizer with Mistral Small 3.1's image config."""
    import mistral_common

    source = Path(mistral_common.__file__).parent / "data" / TEKKEN_SOURCE
    data = json.loads(source.read_text())
    data["config"]["version"] = "v7"  # Mistral Small 3.1's tokenizer version (system prompt tokens)
    data["image"] = dict(IMAGE_CONFIG)
    target = out / "tekken.json"
    target.write_text(json.dumps(data, ensure_ascii=False))
    return target


def write_hf_tokenizer(tekken: Path, out: Path) -> None:
    from transformers.integrations.mistral.tokenizer import convert_tekken_tokenizer

    tokenizer = convert_tekken_tokenizer(str(tekken))
    tokenizer.save_pretrained(str(out))


def write_processor_configs(out: Path) -> None:
    preprocessor = {
        "image_processor_type": "PixtralImageProcessor",
        "processor_class": "PixtralProcessor",
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": IMAGE_MEAN,
        "image_std": IMAGE_STD,
        "patch_size": {"height": IMAGE_CONFIG["image_patch_size"], "width": IMAGE_CONFIG["image_patch_size"]},
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"longest_edge": IMAGE_CONFIG["max_image_size"]},
    }
    processor = {
        "processor_class": "PixtralProcessor",
        "image_token": "[IMG]",
        "image_break_token": "[IMG_BREAK]",
        "image_end_token": "[IMG_END]",
        "patch_size": IMAGE_CONFIG["image_patch_size"],
        "spatial_merge_size": IMAGE_CONFIG["spatial_merge_size"],
    }
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    (out / "processor_config.json").write_text(json.dumps(processor, indent=2))


def write_weights(out: Path) -> None:
    import torch
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    torch.manual_seed(SEED)
    config = Mistral3Config(
        text_config=dict(TEXT_CONFIG),
        vision_config=dict(VISION_CONFIG),
        image_token_index=10,
        spatial_merge_size=IMAGE_CONFIG["spatial_merge_size"],
        projector_hidden_act="gelu",
        multimodal_projector_bias=False,
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    config.torch_dtype = "bfloat16"
    model = Mistral3ForConditionalGeneration(config)
    model = model.to(torch.bfloat16)
    model.save_pretrained(str(out), safe_serialization=True)


def build(out: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=out.parent))
    try:
        tekken = write_tekken(staging)
        write_hf_tokenizer(tekken, staging)
        write_processor_configs(staging)
        write_weights(staging)
        (staging / STAMP).write_text(recipe_digest())
        staging.chmod(0o755)  # mkdtemp makes 0700; the model is meant to be read by any user
        for path in staging.iterdir():
            path.chmod(0o644)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)  # atomic on one filesystem: readers never see half a model
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "models" / "tiny-mistral3")
    parser.add_argument("--force", action="store_true", help="rebuild even if the stamp matches")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    stamp = out / STAMP
    if not args.force and stamp.exists() and stamp.read_text() == recipe_digest():
        print(f"tiny model up to date: {out}")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    build(out)
    print(f"tiny model written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
