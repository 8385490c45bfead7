"""Model profiles: one YAML file per way of serving a model (engine, weights, options).

The user's folder (``MSSERVE_PROFILES_DIR``) is searched first, then the profiles shipped in
server/resources/profiles; the first file of a name wins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field

from server import resources
from server.errors import ProfileError

DEFAULT_PROFILES_DIR = resources.PROFILES_DIR  # the packaged profiles
DEFAULT_PROFILE = "tiny-mistral3"


def resolve_model_path(model: str, *, built: bool, checkout: Path | None, cache: Path) -> Path:
    """Where a profile's relative model path points.

    From a source checkout: the checkout's root (``models/tiny-mistral3`` is the model the tests build). Elsewhere
    (a wheel install) a model the server builds itself goes to the cache folder, since site-packages is no place
    for it, and any other relative path means the current directory.
    """
    path = Path(model).expanduser()
    if path.is_absolute():
        return path
    if checkout is not None:
        return checkout / path
    return cache / path.name if built else path.resolve()


class ModelProfile(BaseModel):
    """One way to serve one model: which engine, which weights, which options."""

    name: str
    description: str = ""
    engine: Literal["hf", "vllm"]
    model: str  # Hugging Face hub id, or a path (relative: see resolve_model_path)
    revision: str | None = None  # pinned hub revision (commit sha or tag)
    format: Literal["hf", "mistral"] = "hf"  # checkpoint layout: HF (config.json) or Mistral-native (params.json)
    tokenizer_file: str = "tekken.json"  # mistral_common tokenizer inside the model folder
    served_model_name: str | None = None
    max_model_len: int = 131072
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    quantization: str | None = None  # fp8, compressed-tensors, bnb-4bit, bnb-8bit, ...
    requires_gpu: bool = False
    demo: bool = False  # random weights: answers are meaningless, say so loudly
    # Builds a local model on demand. make_tiny_model.py (the only one) is server.demo_model, which the script of
    # that name in a checkout's scripts/ wraps.
    build_script: str | None = None
    gated: bool = False  # hub repo needs an accepted licence and HF_TOKEN
    gpu_memory_gib: float | None = None  # documented need, for README and start-up checks
    engine_options: dict[str, Any] = Field(default_factory=dict)  # passed to the engine as is

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.name

    def local_path(self) -> Path | None:
        """The model folder when ``model`` names a path on disk, else None (a hub id)."""
        candidate = resolve_model_path(self.model, built=self.build_script is not None,
                                       checkout=resources.source_checkout(), cache=resources.cache_dir())
        # A profile that builds its model is local even before the first build (a fresh clone).
        if self.build_script or self.model.startswith((".", "/", "~")) or candidate.exists():
            return candidate
        return None


def profile_dirs(profiles_dir: Path | None = None) -> list[Path]:
    """The folders searched for profiles, first match wins: the user's (if any), then the packaged ones."""
    if profiles_dir is not None and not profiles_dir.is_dir():
        raise ProfileError(f"profiles folder {profiles_dir} does not exist", code="unknown_profile")
    return [profiles_dir, DEFAULT_PROFILES_DIR] if profiles_dir is not None else [DEFAULT_PROFILES_DIR]


def list_profiles(profiles_dir: Path | None = None) -> list[ModelProfile]:
    """Every profile by name; a user's profile hides a packaged one of the same name."""
    found: dict[str, Path] = {}
    for folder in profile_dirs(profiles_dir):
        for path in folder.glob("*.yaml"):
            found.setdefault(path.stem, path)
    return [load_profile_file(found[name]) for name in sorted(found)]


def load_profile_file(path: Path) -> ModelProfile:
    data = yaml.safe_load(path.read_text()) or {}
    data.setdefault("name", path.stem)
    return ModelProfile.model_validate(data)


def load_profile(name: str, profiles_dir: Path | None = None) -> ModelProfile:
    for folder in profile_dirs(profiles_dir):
        path = folder / f"{name}.yaml"
        if path.is_file():
            return load_profile_file(path)
    known = ", ".join(p.name for p in list_profiles(profiles_dir)) or "none"
    raise ProfileError(f"unknown profile {name!r}; known profiles: {known}", code="unknown_profile")
