"""Engines: one module per backend behind the protocol in ``base``. Heavy imports stay inside each module."""

from __future__ import annotations

from server.config import ModelProfile, Settings
from server.engines.base import Engine
from server.errors import ProfileError


def build_engine(profile: ModelProfile, settings: Settings) -> Engine:
    """Create (not start) the engine a profile names; a start-up error when this install cannot."""
    token = settings.hf_token.get_secret_value() if settings.hf_token else None
    if profile.engine == "hf":
        from server.engines.hf import HFEngine

        return HFEngine(profile, max_queue=settings.max_queue, hf_token=token)
    if profile.engine == "vllm":
        try:
            from server.engines.vllm import VLLMEngine  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ProfileError(
                f"profile {profile.name} needs the vLLM engine, which is not available in this install "
                f"({exc}); install the [vllm] extra on a CUDA machine", code="engine_unavailable"
            ) from exc
        return VLLMEngine(profile, settings)  # type: ignore[no-any-return]
    raise ProfileError(f"unknown engine {profile.engine!r}", code="unknown_engine")
