"""The engine interface: what every backend (transformers, vLLM, Azure) implements.

Engines never see HTTP. They receive a ``GenerationRequest`` (server.types) whose messages are already normalized
(images decoded and size-capped by ``server.media``) and yield ``GenerationChunk``s. Closing the async generator
early means the client went away: the engine must abort the request and free its resources.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel

from server.errors import InvalidRequestError
from server.types import GenerationChunk, GenerationRequest


class EngineCapabilities(BaseModel):
    images: bool = True
    tools: bool = False
    response_format: bool = False
    logprobs: bool = False
    max_images_per_request: int | None = None
    extras: frozenset[str] = frozenset()  # the EngineExtras fields (vLLM's options) it acts on; others are refused


class EngineHealth(BaseModel):
    ready: bool
    state: Literal["starting", "ready", "draining", "stopped", "failed"]
    detail: str = ""
    running: int = 0  # requests generating now
    waiting: int = 0  # requests queued for the engine
    # Share of the KV cache in use (0..1), only where the engine measures it (vLLM with scheduler stats); None
    # otherwise: the gateways that read it must never see an invented figure.
    kv_cache_usage: float | None = None


@runtime_checkable
class Engine(Protocol):
    """One backend. ``name`` is the model name reported to clients."""

    name: str
    capabilities: EngineCapabilities

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def health(self) -> EngineHealth: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]: ...


def max_new_tokens(request: GenerationRequest, prompt_tokens: int, max_model_len: int) -> int:
    """Tokens a local engine may generate: max_tokens, else what the context leaves; a 400 when they do not fit."""
    room = max_model_len - prompt_tokens
    if room <= 0:
        raise InvalidRequestError(
            f"the prompt is {prompt_tokens} tokens; this model's context is {max_model_len}",
            code="context_length_exceeded",
            param="messages",
        )
    wanted = request.sampling.max_tokens
    if wanted is not None and wanted > room:
        raise InvalidRequestError(
            f"max_tokens {wanted} + prompt {prompt_tokens} tokens exceed the context of {max_model_len} tokens",
            code="context_length_exceeded",
            param="max_tokens",
        )
    return wanted or room
