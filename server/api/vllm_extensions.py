"""vLLM's chat-completion extension fields: accepted, acted on where an engine can, refused where none can.

Gateways put them in every body (vllm-router adds ``continue_final_message``, ``skip_special_tokens``,
``ignore_eos``, ... at their defaults) and clients written for ``vllm serve`` set them. The list is vLLM's
``ChatCompletionRequest`` (vllm/entrypoints/openai/chat_completion/protocol.py, its documented
"chat-completion-sampling-params" and "chat-completion-extra-params" blocks), plus the four SGLang-lineage
fields vllm-router adds on its own (``no_stop_trim``, ``separate_reasoning``, ``stream_reasoning``,
``return_hidden_states``). Each field is one of:

- honoured: passed to the engine as ``EngineExtras``; the engine that answers acts on it or refuses it
  (400 ``unsupported_parameter``), e.g. ``priority`` needs the vLLM engine;
- without effect here: any valid value is accepted, because it cannot change this server's answer
  (``request_id`` names the request; Mistral Small 3.1 produces no reasoning to include or separate);
- default only: its default value (or null, or an empty list or object) is accepted silently, anything else is a
  400 ``unsupported_parameter`` that says why.

Any other unknown field stays a 400 ``unknown_parameter``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from server.errors import InvalidRequestError
from server.types import EngineExtras

_INT64 = 2**63


class VLLMExtensionFields(BaseModel):
    """The fields, typed as vLLM types them; None means "not sent"."""

    # -- sampling (honoured) --
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    min_tokens: int | None = Field(default=None, ge=0)
    ignore_eos: bool | None = None
    skip_special_tokens: bool | None = None
    spaces_between_special_tokens: bool | None = None
    include_stop_str_in_output: bool | None = None
    no_stop_trim: bool | None = None  # vllm-router's name for include_stop_str_in_output
    stop_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    allowed_token_ids: list[int] | None = None
    priority: int | None = Field(default=None, ge=-_INT64, lt=_INT64)
    cache_salt: str | None = Field(default=None, min_length=1, max_length=1024)
    # -- without effect here --
    request_id: str | None = None
    session_id: str | None = None
    include_reasoning: bool | None = None
    separate_reasoning: bool | None = None
    stream_reasoning: bool | None = None
    return_mm_kwargs: bool | None = None  # vLLM: render endpoints only, ignored when generating
    return_token_offsets: bool | None = None  # vLLM: render endpoints only, ignored when generating
    # -- default only --
    use_beam_search: bool | None = None
    length_penalty: float | None = None
    watermarking: bool | None = None
    truncate_prompt_tokens: int | None = None
    truncation_side: Literal["left", "right"] | None = None
    prompt_logprobs: int | None = None
    logprob_token_ids: list[int] | None = None
    echo: bool | None = None
    add_generation_prompt: bool | None = None
    continue_final_message: bool | None = None
    add_special_tokens: bool | None = None
    documents: list[dict[str, Any]] | None = None
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    media_io_kwargs: dict[str, Any] | None = None
    mm_processor_kwargs: dict[str, Any] | None = None
    structured_outputs: dict[str, Any] | None = None
    kv_transfer_params: dict[str, Any] | None = None
    ec_transfer_params: dict[str, Any] | None = None
    vllm_xargs: dict[str, Any] | None = None
    return_tokens_as_token_ids: bool | None = None
    return_token_ids: bool | None = None
    return_prompt_text: bool | None = None
    return_hidden_states: bool | None = None
    repetition_detection: dict[str, Any] | None = None
    stream_interval: int | None = Field(default=None, ge=1)
    thinking_token_budget: int | None = None
    routed_experts_prompt_start: int | None = Field(default=None, ge=0)


# field -> (its default, why another value cannot be honoured)
DEFAULT_ONLY: dict[str, tuple[Any, str]] = {
    "use_beam_search": (False, "beam search is not implemented"),
    "length_penalty": (1.0, "it only applies to beam search, which is not implemented"),
    "watermarking": (False, "no engine here watermarks"),
    "truncate_prompt_tokens": (None, "prompts are never truncated: an over-long one is a 400 context_length_exceeded"),
    "truncation_side": (None, "prompts are never truncated"),
    "prompt_logprobs": (None, "prompt log-probabilities are not returned"),
    "logprob_token_ids": (None, "log-probabilities come for the sampled and the top_logprobs tokens only"),
    "echo": (False, "the prompt is not echoed"),
    "add_generation_prompt": (True, "prompts come from mistral_common's chat format, which always adds it"),
    "continue_final_message": (False, "mistral_common's chat format does not continue a final message"),
    "add_special_tokens": (False, "mistral_common's chat format places the special tokens"),
    "documents": (None, "mistral_common's chat format has no documents"),
    "chat_template": (None, "prompts come from mistral_common's chat format, not a Jinja template"),
    "chat_template_kwargs": (None, "prompts come from mistral_common's chat format, not a Jinja template"),
    "media_io_kwargs": (None, "images are decoded by this server's own intake"),
    "mm_processor_kwargs": (None, "images are sized by this server's own intake"),
    "structured_outputs": (None, "constrain output with response_format (json_object or json_schema)"),
    "kv_transfer_params": (None, "disaggregated serving is not set up"),
    "ec_transfer_params": (None, "disaggregated serving is not set up"),
    "vllm_xargs": (None, "no custom extensions are installed"),
    "return_tokens_as_token_ids": (False, "tokens are returned as text"),
    "return_token_ids": (False, "token ids are not returned"),
    "return_prompt_text": (False, "the rendered prompt is not returned"),
    "return_hidden_states": (False, "hidden states are not returned"),
    "repetition_detection": (None, "repetition detection is not available"),
    "stream_interval": (None, "streams send every token as it comes"),
    "thinking_token_budget": (None, "Mistral Small 3.1 does not reason in a separate channel"),
    "routed_experts_prompt_start": (0, "the model has no experts"),
}
NO_EFFECT = frozenset(
    {
        "request_id",
        "session_id",
        "include_reasoning",
        "separate_reasoning",
        "stream_reasoning",
        "return_mm_kwargs",
        "return_token_offsets",
    }
)
HONOURED = frozenset(EngineExtras.model_fields) | {"no_stop_trim"}


def is_default(value: Any, default: Any) -> bool:
    return value is None or value == default or (isinstance(value, list | dict) and not value)


def engine_extras(body: VLLMExtensionFields) -> EngineExtras:
    """The honoured fields as the engines take them; 400 ``unsupported_parameter`` for a default-only one set."""
    for name, (default, why) in DEFAULT_ONLY.items():
        value = getattr(body, name)
        if not is_default(value, default):
            raise InvalidRequestError(
                f"{name}={value!r} cannot be honoured here: {why}; leave it out or send its default ({default!r})",
                param=name,
                code="unsupported_parameter",
            )
    sent = {name: getattr(body, name) for name in EngineExtras.model_fields if getattr(body, name) is not None}
    if sent.get("top_k", 0) < 0:
        sent["top_k"] = 0  # vLLM's older "off"
    if body.no_stop_trim:
        sent["include_stop_str_in_output"] = True
    return EngineExtras(**sent)
