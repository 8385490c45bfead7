"""Sampling and scheduling options beyond OpenAI's, as vLLM's server defines them (``top_k``, ``min_p``, ...).

Gateways such as vllm-router and clients written for ``vllm serve`` send them. The API layer turns the request's
fields into one ``EngineExtras``; each engine acts on what it can and refuses (400 ``unsupported_parameter``) any
other field whose value differs from the default, so no option is ever dropped silently.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from server.errors import InvalidRequestError


class EngineExtras(BaseModel):
    """Each field at its default means "not asked for"; the defaults are vLLM's own."""

    top_k: int = 0  # 0: no top-k cut (vLLM also takes -1 and null for that; the API layer maps them to 0)
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    stop_token_ids: list[int] = Field(default_factory=list)
    bad_words: list[str] = Field(default_factory=list)
    allowed_token_ids: list[int] | None = None
    priority: int = 0  # vLLM's priority scheduling: lower runs earlier
    cache_salt: str | None = None  # isolates a tenant's prefix-cache entries (engines without one: no effect)

    def asked(self) -> dict[str, Any]:
        """The fields set to something other than their default, by name."""
        defaults = EngineExtras()
        return {name: value for name, value in self if value != getattr(defaults, name)}


# Other names clients send for a field (vllm-router's SGLang-lineage name), for refusals to mention.
ALSO_SENT_AS = {"include_stop_str_in_output": "no_stop_trim"}


def refuse_unsupported(extras: EngineExtras, supported: frozenset[str], engine: str, hint: str = "") -> None:
    """400 for the first field asked for that ``engine`` cannot honour; ``supported`` names those it can."""
    for name in sorted(extras.asked()):
        if name not in supported:
            also = f" (or {ALSO_SENT_AS[name]})" if name in ALSO_SENT_AS else ""
            raise InvalidRequestError(
                f"{name}{also} is not supported by the {engine}; send it at its default value or leave it out{hint}",
                param=name,
                code="unsupported_parameter",
            )
