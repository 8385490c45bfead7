"""The tiny model in Mistral's native layout: the same tensors under Mistral's names, loadable as vLLM expects."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from server import demo_model
from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "make_tiny_model.py"


def vllm_permute(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """vLLM's load-time permutation for native wq/wk (MistralForCausalLM.maybe_remap_mistral)."""
    rows, cols = weight.shape
    return weight.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def test_native_build_holds_every_tensor_and_is_idempotent(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "native"
    command = [sys.executable, str(SCRIPT), "--format", "mistral", "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True)
    assert {p.name for p in out.iterdir()} == {"consolidated.safetensors", "params.json", "tekken.json",
                                                ".tiny-model-stamp"}
    again = subprocess.run(command, check=True, capture_output=True, text=True)
    assert "up to date" in again.stdout

    hf = load_file(str(tiny_model / "model.safetensors"))
    native = load_file(str(out / "consolidated.safetensors"))
    assert len(native) == len(hf)
    assert "tok_embeddings.weight" in native and "vision_encoder.patch_conv.weight" in native
    params = json.loads((out / "params.json").read_text())
    module = demo_model
    for hf_name, tensor in hf.items():
        name = module.native_name(hf_name)
        stored = native[name]
        if name.endswith((".wq.weight", ".wk.weight")):
            vision = name.startswith("vision_encoder.")
            heads = params["vision_encoder"]["num_attention_heads"] if vision else (
                params["n_heads"] if name.endswith(".wq.weight") else params["n_kv_heads"])
            stored = vllm_permute(stored, heads)  # what vLLM does on load must give back the HF tensor
        assert torch.equal(stored, tensor), hf_name


def test_params_carry_the_fields_vllm_reads() -> None:
    params = demo_model.native_params()
    for key in ("dim", "n_layers", "head_dim", "hidden_dim", "n_heads", "n_kv_heads", "norm_eps", "rope_theta",
                "vocab_size"):
        assert key in params, key
    vision = params["vision_encoder"]
    assert (vision["patch_size"], vision["spatial_merge_size"], vision["image_token_id"]) == (14, 2, 10)
    assert vision["mm_projector_id"] == "patch_merge" and vision["add_pre_mm_projector_layer_norm"] is True
