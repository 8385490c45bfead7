"""Where a profile's weights come from: a local folder (built on demand for the tiny model) or the HF hub.

Hub downloads go through huggingface_hub: resumable, with progress bars, honouring HF_TOKEN and
HF_HOME, pinned to the profile's revision. Gated repositories (Mistral Small 3.1 is one) need an
accepted licence on the hub and a token; a refusal becomes a clear ``ModelUnavailableError``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from server.config import ModelProfile
from server.errors import ModelUnavailableError

# A profile's build_script -> the module that builds its model (scripts/make_tiny_model.py wraps the demo's).
BUILDERS = {"make_tiny_model.py": "server.demo_model"}

# Files each checkpoint layout needs; everything else in the repo (other formats, docs) is skipped.
ALLOW_PATTERNS = {
    "mistral": ["params.json", "consolidated*.safetensors", "tekken.json", "*.md"],
    "hf": [
        "config.json",
        "generation_config.json",
        "model*.safetensors",
        "model.safetensors.index.json",
        "tokenizer*",
        "tekken.json",
        "preprocessor_config.json",
        "processor_config.json",
        "chat_template*",
        "special_tokens_map.json",
        "recipe.yaml",
        "*.md",
    ],
}


def hf_token(explicit: str | None = None) -> str | None:
    return explicit or os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def resolve_model_dir(profile: ModelProfile, *, token: str | None = None, download: bool = True) -> Path:
    """Return a folder holding the profile's weights, building or downloading them if allowed."""
    local = profile.local_path()
    if local is not None:
        if not local.exists() and profile.build_script:
            build_local_model(profile, local)
        if not local.exists():
            raise ModelUnavailableError(f"model folder {local} does not exist")
        return local
    return download_model(profile, token=token, local_files_only=not download)


def build_local_model(profile: ModelProfile, target: Path) -> None:
    """Build the profile's model into ``target`` in a child process (torch's memory goes with it)."""
    module = BUILDERS.get(str(profile.build_script))
    if module is None:
        known = ", ".join(BUILDERS)
        raise ModelUnavailableError(f"{profile.name}: unknown build_script {profile.build_script!r} (known: {known})")
    layout = ["--format", "mistral"] if profile.format == "mistral" else []
    result = subprocess.run([sys.executable, "-m", module, "--out", str(target), *layout], check=False)
    if result.returncode != 0:
        raise ModelUnavailableError(f"building {profile.name} with {module} failed (exit {result.returncode})")


def download_model(profile: ModelProfile, *, token: str | None = None, local_files_only: bool = False) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        path = snapshot_download(
            repo_id=profile.model,
            revision=profile.revision,
            token=hf_token(token),
            allow_patterns=ALLOW_PATTERNS[profile.format],
            local_files_only=local_files_only,
        )
    except GatedRepoError as exc:
        raise ModelUnavailableError(
            f"{profile.model} is gated: accept its licence at https://huggingface.co/{profile.model} "
            "and set HF_TOKEN to a token of that account"
        ) from exc
    except RepositoryNotFoundError as exc:
        hint = "" if hf_token(token) else " (no HF_TOKEN is set; gated or private repos need one)"
        raise ModelUnavailableError(f"{profile.model} was not found on the hub or is not accessible{hint}") from exc
    except RevisionNotFoundError as exc:
        raise ModelUnavailableError(f"revision {profile.revision} of {profile.model} does not exist") from exc
    except LocalEntryNotFoundError as exc:
        raise ModelUnavailableError(
            f"{profile.model} is not in the local cache and could not be downloaded; "
            f"run `msserve download --profile {profile.name}` on a machine with network access"
        ) from exc
    return Path(path)
