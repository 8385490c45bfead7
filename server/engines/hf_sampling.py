"""The transformers engine's sampling: our parameters and vLLM's extension fields as ``model.generate`` arguments.

No torch here: the mapping is plain data, unit-tested without a model.
"""

from __future__ import annotations

from typing import Any

from server.types import SamplingParams

# vLLM's extension fields the transformers engine acts on (see generate_kwargs); cache_salt has nothing to isolate
# there (no prefix cache is shared between requests). Any other one asked for is refused.
HF_EXTRAS = frozenset({"top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos", "cache_salt"})


def generate_kwargs(sampling: SamplingParams, max_new: int, eos_id: int | None) -> dict[str, Any]:
    """``model.generate`` keyword arguments for our sampling parameters and the vLLM extensions we act on."""
    extra = sampling.extra
    do_sample = sampling.temperature > 0
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new,
        "do_sample": do_sample,
        # ignore_eos: generation runs on through EOS to max_tokens (vLLM's meaning); _stream does not stop there
        "eos_token_id": None if extra.ignore_eos else eos_id,
        "pad_token_id": eos_id,
    }
    if do_sample:
        # top_k 0 turns off transformers' own default cut (50), which OpenAI's and vLLM's sampling do not have.
        kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=extra.top_k)
        if extra.min_p > 0:
            kwargs["min_p"] = extra.min_p
    if extra.repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = extra.repetition_penalty
    elif sampling.frequency_penalty > 0:
        kwargs["repetition_penalty"] = 1.0 + sampling.frequency_penalty / 2
    if extra.min_tokens > 0 and not extra.ignore_eos:
        kwargs["min_new_tokens"] = min(extra.min_tokens, max_new)  # EOS is masked until then
    return kwargs
