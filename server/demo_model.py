"""Build the tiny demo model: a Mistral3 (Mistral Small 3.1 architecture) with random weights.

The model answers with nonsense, but it exercises every real code path: the
Tekken tokenizer from mistral_common, the Pixtral vision tower with patch 14
and spatial merge 2, the multimodal projector, and both engines (transformers
and vLLM). Nothing is downloaded: the tokenizer is the Tekken file bundled in
mistral_common.

Output (default ``models/tiny-mistral3`` in a source checkout, else ``$XDG_CACHE_HOME/msserve/tiny-mistral3``,
where ``msserve serve`` builds it on first use), usable by both loaders:
  config.json, model.safetensors, generation_config.json   HF weights + config
  tekken.json                                              mistral_common tokenizer (v7)
  tokenizer.json, tokenizer_config.json, ...               HF tokenizer made from tekken.json
  preprocessor_config.json, processor_config.json          Pixtral processor configs

With ``--format mistral`` (default ``tiny-mistral3-native`` beside it) the same weights are written in
Mistral's native layout, the one Mistral publishes and vLLM loads with tokenizer_mode, config_format
and load_format ``mistral``: consolidated.safetensors (native tensor names, rotary q/k rows in
Mistral's interleaved order), params.json (text fields plus a ``vision_encoder`` block) and
tekken.json. The HF model is built first (or reused if current) and converted.

The build is seeded and idempotent: a stamp file records the recipe, and a
second run with the same recipe does nothing. Run it as ``python -m server.demo_model`` (or, in a checkout,
``scripts/make_tiny_model.py``, which wraps it). torch and transformers (the ``hf`` extra) are needed to build.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from server import resources

SEED = 1234
TEKKEN_SOURCE = "tekken_240911.json"
STAMP = ".tiny-model-stamp"
HF_NAME, NATIVE_NAME = "tiny-mistral3", "tiny-mistral3-native"

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
# Tekken's special tokens for images: [IMG], [IMG_BREAK], [IMG_END].
IMAGE_TOKEN_ID, IMAGE_BREAK_TOKEN_ID, IMAGE_END_TOKEN_ID = 10, 12, 13
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
        image_token_index=IMAGE_TOKEN_ID,
        spatial_merge_size=IMAGE_CONFIG["spatial_merge_size"],
        projector_hidden_act="gelu",
        multimodal_projector_bias=False,
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    config.torch_dtype = "bfloat16"  # type: ignore[misc]  # recorded in config.json; transformers' stubs say read-only
    model = Mistral3ForConditionalGeneration(config).to(torch.bfloat16)  # type: ignore[arg-type]
    model.save_pretrained(str(out), safe_serialization=True)


def build(out: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=out.parent))
    try:
        tekken = write_tekken(staging)
        write_hf_tokenizer(tekken, staging)
        write_processor_configs(staging)
        write_weights(staging)
        (staging / STAMP).write_text(recipe_digest())
        publish(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def publish(staging: Path, out: Path) -> None:
    staging.chmod(0o755)  # mkdtemp makes 0700; the model is meant to be read by any user
    for path in staging.iterdir():
        path.chmod(0o644)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)  # atomic on one filesystem: readers never see half a model


# -- Mistral-native layout (--format mistral) ------------------------------------------------------

# HF name inside a decoder layer -> Mistral's native name (the inverse of transformers' Mistral3 converter).
NATIVE_LAYER_NAMES = {
    "self_attn.q_proj": "attention.wq",
    "self_attn.k_proj": "attention.wk",
    "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo",
    "attention.q_proj": "attention.wq",
    "attention.k_proj": "attention.wk",
    "attention.v_proj": "attention.wv",
    "attention.o_proj": "attention.wo",
    "mlp.gate_proj": "feed_forward.w1",
    "mlp.down_proj": "feed_forward.w2",
    "mlp.up_proj": "feed_forward.w3",
    "feed_forward.gate_proj": "feed_forward.w1",
    "feed_forward.down_proj": "feed_forward.w2",
    "feed_forward.up_proj": "feed_forward.w3",
    "input_layernorm": "attention_norm",
    "post_attention_layernorm": "ffn_norm",
    "attention_norm": "attention_norm",
    "ffn_norm": "ffn_norm",
}
# HF names outside the decoder layers (after dropping the "model." / "language_model." wrappers).
NATIVE_TOP_NAMES = {
    "lm_head.weight": "output.weight",
    "embed_tokens.weight": "tok_embeddings.weight",
    "norm.weight": "norm.weight",
    "vision_tower.ln_pre.weight": "vision_encoder.ln_pre.weight",
    "vision_tower.patch_conv.weight": "vision_encoder.patch_conv.weight",
    "multi_modal_projector.norm.weight": "pre_mm_projector_norm.weight",
    "multi_modal_projector.patch_merger.merging_layer.weight": "patch_merger.merging_layer.weight",
    "multi_modal_projector.linear_1.weight": "vision_language_adapter.w_in.weight",
    "multi_modal_projector.linear_2.weight": "vision_language_adapter.w_out.weight",
}


def native_name(hf_name: str) -> str:
    """An HF Mistral3 tensor name (either transformers layout) -> its name in consolidated.safetensors."""
    name = hf_name
    for wrapper in ("model.language_model.", "language_model.model.", "language_model.", "model."):
        if name.startswith(wrapper):
            name = name[len(wrapper):]
            break
    vision = name.startswith("vision_tower.transformer.layers.")
    prefix = "vision_tower.transformer.layers." if vision else "layers."
    if name.startswith(prefix):
        index, rest = name[len(prefix):].split(".", 1)
        module, leaf = rest.rsplit(".", 1)
        if module not in NATIVE_LAYER_NAMES:
            raise KeyError(f"no native name for {hf_name}")
        native_prefix = "vision_encoder.transformer.layers." if vision else "layers."
        return f"{native_prefix}{index}.{NATIVE_LAYER_NAMES[module]}.{leaf}"
    if name not in NATIVE_TOP_NAMES:
        raise KeyError(f"no native name for {hf_name}")
    return NATIVE_TOP_NAMES[name]


def unpermute_rotary(weight: Any, n_heads: int) -> Any:
    """Undo transformers' q/k row permutation: HF rotates halves of a head, Mistral rotates adjacent pairs."""
    rows, cols = weight.shape
    return weight.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def native_params() -> dict[str, Any]:
    """params.json: Mistral's text fields plus the vision_encoder block (Mistral Small 3.1's shape)."""
    return {
        "dim": TEXT_CONFIG["hidden_size"],
        "n_layers": TEXT_CONFIG["num_hidden_layers"],
        "head_dim": TEXT_CONFIG["head_dim"],
        "hidden_dim": TEXT_CONFIG["intermediate_size"],
        "n_heads": TEXT_CONFIG["num_attention_heads"],
        "n_kv_heads": TEXT_CONFIG["num_key_value_heads"],
        "rope_theta": TEXT_CONFIG["rope_theta"],
        "norm_eps": TEXT_CONFIG["rms_norm_eps"],
        "vocab_size": TEXT_CONFIG["vocab_size"],
        "max_position_embeddings": TEXT_CONFIG["max_position_embeddings"],
        "vision_encoder": {
            "hidden_size": VISION_CONFIG["hidden_size"],
            "num_channels": VISION_CONFIG["num_channels"],
            "max_image_size": IMAGE_CONFIG["max_image_size"],
            "image_size": VISION_CONFIG["image_size"],
            "patch_size": VISION_CONFIG["patch_size"],
            "rope_theta": VISION_CONFIG["rope_theta"],
            "intermediate_size": VISION_CONFIG["intermediate_size"],
            "num_hidden_layers": VISION_CONFIG["num_hidden_layers"],
            "num_attention_heads": VISION_CONFIG["num_attention_heads"],
            "image_token_id": IMAGE_TOKEN_ID,
            "image_break_token_id": IMAGE_BREAK_TOKEN_ID,
            "image_end_token_id": IMAGE_END_TOKEN_ID,
            "adapter_bias": False,
            "spatial_merge_size": IMAGE_CONFIG["spatial_merge_size"],
            "add_pre_mm_projector_layer_norm": True,
            "mm_projector_id": "patch_merge",
        },
    }


def native_digest() -> str:
    """The native folder's recipe: the HF recipe it is converted from, plus the native params."""
    recipe = json.dumps([recipe_digest(), "mistral", native_params()], sort_keys=True)
    return hashlib.sha256(recipe.encode()).hexdigest()


def build_native(hf_source: Path, out: Path) -> None:
    from safetensors.torch import load_file, save_file

    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=out.parent))
    try:
        params = native_params()
        heads = {"layers.": (params["n_heads"], params["n_kv_heads"])}
        vision_heads = params["vision_encoder"]["num_attention_heads"]
        heads["vision_encoder.transformer.layers."] = (vision_heads, vision_heads)
        tensors = {}
        for hf_name, tensor in load_file(str(hf_source / "model.safetensors")).items():
            name = native_name(hf_name)
            for prefix, (q_heads, kv_heads) in heads.items():
                if name.startswith(prefix) and name.endswith((".wq.weight", ".wk.weight")):
                    tensor = unpermute_rotary(tensor, q_heads if name.endswith(".wq.weight") else kv_heads)
            tensors[name] = tensor.contiguous()
        save_file(tensors, str(staging / "consolidated.safetensors"))
        (staging / "params.json").write_text(json.dumps(params, indent=2))
        shutil.copyfile(hf_source / "tekken.json", staging / "tekken.json")
        (staging / STAMP).write_text(native_digest())
        publish(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def default_out(native: bool) -> Path:
    """models/ of a source checkout (the tests' model), else the cache folder (see server.config's model paths)."""
    checkout = resources.source_checkout()
    folder = checkout / "models" if checkout is not None else resources.cache_dir()
    return folder / (NATIVE_NAME if native else HF_NAME)


def can_build() -> bool:
    """torch and transformers (the ``hf`` extra) are importable: a build can start."""
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers"))


def is_current(out: Path, native: bool = False) -> bool:
    """True when ``out`` holds a model built from this recipe (nothing to do)."""
    stamp = out / STAMP
    return stamp.is_file() and stamp.read_text() == (native_digest() if native else recipe_digest())


def ensure(out: Path, native: bool = False, *, force: bool = False) -> bool:
    """Build the model into ``out`` unless it is current; True when it built."""
    out = out.resolve()
    if not force and is_current(out, native):
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    if native:
        hf_source = default_out(False).resolve()  # the HF build the native one is converted from
        if not is_current(hf_source):
            hf_source.parent.mkdir(parents=True, exist_ok=True)
            build(hf_source)
        build_native(hf_source, out)
    else:
        build(out)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help=f"output folder (default {default_out(False)}; "
                        f"{default_out(True)} for --format mistral)")
    parser.add_argument("--format", choices=("hf", "mistral"), default="hf", help="checkpoint layout to write")
    parser.add_argument("--force", action="store_true", help="rebuild even if the stamp matches")
    args = parser.parse_args(argv)
    native = args.format == "mistral"
    out: Path = (args.out or default_out(native)).resolve()
    if ensure(out, native, force=args.force):
        print(f"tiny model written: {out}")
    else:
        print(f"tiny model up to date: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
