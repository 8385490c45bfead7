"""``system_fingerprint``: which serving configuration answered, as OpenAI's ``fp_`` plus a short hash.

It is stable while the engine, the profile and the weights stay the same, and changes when any of them changes,
which is what clients pair it with ``seed`` for. The weights' revision is the profile's pinned hub revision, else
the hub snapshot the folder is (its name is the commit), else a digest of the weight and config files' names,
sizes and modification times in the local folder (reading gigabytes of weights per start is not worth it).

Both fingerprints are computed once per server (``Fingerprints``, held by ``Services``), not per response: the
settings and the profile are fixed while it runs, and so is the weights' folder once the engine has loaded it.
The router's weights are no part of it (they choose the tier, not how a tier answers), so a router reload
(``POST /admin/router/reload``, SIGHUP) leaves it as it is.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from server.config import ModelProfile, Settings
from server.engines.base import Engine

if TYPE_CHECKING:  # deps builds Fingerprints when it builds Services
    from server.api.deps import Services
    from server.routing.dispatch import Routed

_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "config.json", "params.json", "tekken.json")


def fingerprint(*parts: str) -> str:
    return "fp_" + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:10]


def weights_revision(profile: ModelProfile, model_dir: Path | None) -> str:
    if profile.revision:
        return profile.revision
    folder = model_dir or profile.local_path()
    if folder is None:
        return "unresolved"  # a hub model not downloaded yet: the engine resolves it when it loads
    if folder.parent.name == "snapshots":
        return folder.name  # huggingface_hub's cache: the folder is named after the commit
    files = sorted({path for pattern in _WEIGHT_PATTERNS for path in folder.glob(pattern) if path.is_file()})
    if not files:
        return "missing"
    stats = [(path.name, path.stat().st_size, path.stat().st_mtime_ns) for path in files]
    return "local-" + hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=16)
def _local(profile_json: str, engine: str, model_dir: str | None) -> str:
    profile = ModelProfile.model_validate_json(profile_json)
    revision = weights_revision(profile, Path(model_dir) if model_dir else None)
    return fingerprint(engine, profile_json, revision)


def local_fingerprint(profile: ModelProfile, model_dir: Path | None) -> str:
    """The local engine's fingerprint: engine kind, every profile setting, the weights' revision (cached)."""
    profile_json = profile.model_dump_json()
    return _local(profile_json, profile.engine, str(model_dir) if model_dir else None)


def azure_fingerprint(endpoint: str | None, deployment: str | None, api_version: str | None) -> str:
    """For an Azure answer that carried no fingerprint of its own: the escalation target's configuration."""
    return fingerprint("azure", endpoint or "", deployment or "", api_version or "")


class Fingerprints:
    """The server's two fingerprints, each computed once."""

    def __init__(self, settings: Settings, profile: ModelProfile, engine: Engine) -> None:
        self.azure = azure_fingerprint(settings.azure_endpoint, settings.azure_deployment, settings.azure_api_version)
        self._profile = profile
        self._engine = engine
        self._local: str | None = None

    @property
    def local(self) -> str:
        if self._local is None:
            model_dir = getattr(self._engine, "model_dir", None)
            value = local_fingerprint(self._profile, model_dir)
            # An engine that resolves its folder as it loads has none before: keep the value only once it is
            # known (nothing answers locally before the engine is ready, so this settles at the first answer).
            if model_dir is not None or not hasattr(self._engine, "model_dir"):
                self._local = value
            return value
        return self._local


def system_fingerprint(routed: Routed, services: Services) -> str:
    """Azure's own fingerprint when it sent one, else that of the configuration that answered."""
    if routed.first.system_fingerprint:
        return routed.first.system_fingerprint
    return services.fingerprints.azure if routed.decision.tier == "azure" else services.fingerprints.local
