"""The vLLM engine's pure mapping: our request as vLLM's sampling, structured-output and chat inputs, and its outputs
(finish reasons, log-probabilities, tool-call ids) back. No engine state: server.engines.vllm drives vLLM with it.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from server.config import ModelProfile
from server.errors import (
    EngineUnavailableError,
    InvalidRequestError,
)
from server.types import (
    FinishReason,
    GenerationRequest,
    ImagePart,
    Message,
    TextPart,
    TokenLogprob,
    TopLogprob,
)

log = logging.getLogger(__name__)


BITSANDBYTES = ("bnb-4bit", "bnb-8bit", "bitsandbytes")
INLINE_RENDER_MAX_CHARS = 2000  # ~1.7 ms of template and tokenizer work on the benchmark machine's CPU
INLINE_ENCODE_MAX_PIXELS = 512 * 512  # ~4 ms to a BMP data URL there; larger images are encoded in a thread
# Requests' `priority` needs vLLM's priority scheduler. With every request at the default priority 0 it schedules
# in arrival order, as the default first-come-first-served one does.
DEFAULT_SCHEDULING_POLICY = "priority"


def renders_inline(request: GenerationRequest) -> bool:
    """Whether a request's prompt is rendered on the event loop rather than through vLLM's renderer pools.

    For a text prompt the async render hands the work on six times (three tasks, a template thread, a tokenizer
    thread, the template's timeout), and on a loop busy with other streams each hand-off waits its turn: a short
    prompt took ~16 ms there for ~1 ms of template and tokenizer work (measured under the serving benchmark's load
    on a 2-vCPU VM). Only
    short, text-only, tool-free prompts come inline: images must go through vLLM's multimodal thread (its cache
    is not thread-safe), and a long prompt's tokenization would hold the loop (~0.6 ms + 0.6 ms per 1000
    characters here). The tokenizer is then used from two threads at once, which vLLM allows itself
    (``renderer_num_workers`` > 1); the multimodal processor has its own copy.
    """
    if request.tools or request.image_count:
        return False
    return sum(len(message.text) for message in request.messages) <= INLINE_RENDER_MAX_CHARS


def check_quantization(profile: ModelProfile) -> None:
    if (profile.quantization or "").lower() in BITSANDBYTES:
        raise EngineUnavailableError(
            f"profile {profile.name} asks vLLM for {profile.quantization}: bitsandbytes runs through the "
            "transformers engine here (engine: hf, e.g. profile mistral-small-3.1-bnb4); for vLLM use fp8 "
            "or a compressed-tensors checkpoint",
            code="quantization_unsupported",
        )


def engine_args(profile: ModelProfile, model_dir: Path) -> dict[str, Any]:
    """AsyncEngineArgs keyword arguments for a profile: its fields, then its engine_options as given."""
    args: dict[str, Any] = {
        "model": str(model_dir),
        "served_model_name": profile.model_name,
        "max_model_len": profile.max_model_len,
        "dtype": profile.dtype,
        "disable_log_stats": True,  # vLLM's periodic log lines stay off; our stat logger records if asked for
        "scheduling_policy": DEFAULT_SCHEDULING_POLICY,
    }
    if profile.quantization:
        args["quantization"] = profile.quantization
    if profile.format == "mistral":
        args.update(tokenizer_mode="mistral", config_format="mistral", load_format="mistral")
    args.update(profile.engine_options)
    return args


def finish_reason(vllm_reason: str | None, called_tools: bool) -> FinishReason:
    if vllm_reason == "length":
        return "length"
    return "tool_calls" if called_tools else "stop"


def sampling_kwargs(request: GenerationRequest, max_tokens: int) -> dict[str, Any]:
    """Our sampling parameters, one to one onto vLLM's SamplingParams fields."""
    sampling = request.sampling
    kwargs: dict[str, Any] = {
        "max_tokens": max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "seed": sampling.seed,
        "stop": list(sampling.stop) or None,
        "frequency_penalty": sampling.frequency_penalty,
        "presence_penalty": sampling.presence_penalty,
    }
    if sampling.logprobs:
        # vLLM returns the sampled token's logprob and the top_logprobs most likely ones (ranked 1..k).
        kwargs["logprobs"] = sampling.top_logprobs
    extra = sampling.extra
    kwargs.update(
        top_k=extra.top_k,
        min_p=extra.min_p,
        repetition_penalty=extra.repetition_penalty,
        min_tokens=extra.min_tokens,
        ignore_eos=extra.ignore_eos,
        skip_special_tokens=extra.skip_special_tokens,
        spaces_between_special_tokens=extra.spaces_between_special_tokens,
        include_stop_str_in_output=extra.include_stop_str_in_output,
        stop_token_ids=list(extra.stop_token_ids) or None,
        bad_words=list(extra.bad_words) or None,
        allowed_token_ids=extra.allowed_token_ids,
    )
    return kwargs


def structured_output_kwargs(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """OpenAI response_format -> StructuredOutputsParams keyword arguments (None: unconstrained)."""
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequestError(
                "response_format json_schema needs a 'schema' object",
                code="invalid_response_format",
                param="response_format.json_schema.schema",
            )
        return {"json": schema}
    if kind in (None, "text"):
        return None
    raise InvalidRequestError(f"unknown response_format type {kind!r}", param="response_format.type")


def to_openai_message(message: Message, *, image_urls: Iterator[str] | None = None) -> dict[str, Any]:
    """Our message -> the OpenAI-shaped dict vLLM's renderer parses.

    Images go in as PIL images (``image_pil``) for HF checkpoints; mistral_common (format mistral)
    only reads ``image_url``, so there each image takes the next of ``image_urls`` (``image_data_urls``).
    """
    out: dict[str, Any] = {"role": message.role}
    if message.images:
        parts: list[dict[str, Any]] = []
        for part in message.content:
            if isinstance(part, TextPart):
                parts.append({"type": "text", "text": part.text})
            elif isinstance(part, ImagePart):
                parts.append(
                    {"type": "image_url", "image_url": {"url": next(image_urls)}}
                    if image_urls is not None
                    else {"type": "image_pil", "image_pil": part.image}
                )
        out["content"] = parts
    else:
        out["content"] = message.text
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": mistral_call_id(call.id),
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = mistral_call_id(message.tool_call_id)
    if message.name is not None:
        out["name"] = message.name
    return out


def _already_shut_down(timeout: float | None = None) -> None:
    """Stands in for a stopped AsyncLLM's shutdown(), which its __del__ would otherwise call again at exit."""


async def image_data_urls(messages: list[Message]) -> list[str]:
    """Every image of ``messages``, in order, as a data URL; large ones encoded in a worker thread.

    BMP, not PNG: lossless either way, and the decoders on the other side (vLLM's media loader and
    mistral_common) open any format, but zlib made a PNG cost ~340 ms for a 1540 x 1540 photo against
    ~34 ms as BMP (one core of a 2-vCPU VM).
    """
    urls = []
    for message in messages:
        for image in message.images:
            if image.width * image.height <= INLINE_ENCODE_MAX_PIXELS:
                urls.append(bmp_data_url(image))
            else:
                urls.append(await asyncio.to_thread(bmp_data_url, image))
    return urls


def bmp_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="BMP")
    return "data:image/bmp;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _logprobs(completion: Any, top_logprobs: int = 0) -> list[TokenLogprob]:
    """vLLM's per-position candidates ({token id: Logprob(logprob, rank, decoded_token)}, the sampled token always
    among them) -> the sampled token with the ``top_logprobs`` best-ranked candidates, most likely first."""
    if not completion.logprobs:
        return []
    out = []
    for token_id, candidates in zip(completion.token_ids, completion.logprobs, strict=False):
        chosen = candidates.get(token_id)
        if chosen is None:
            continue
        ranked = sorted(
            (c for c in candidates.values() if c.rank is not None and c.rank <= top_logprobs), key=lambda c: c.rank
        )
        top = [TopLogprob(token=c.decoded_token or "", logprob=max(float(c.logprob), -9999.0)) for c in ranked]
        out.append(
            TokenLogprob(
                token=chosen.decoded_token or "", logprob=max(float(chosen.logprob), -9999.0), top_logprobs=top
            )
        )
    return out


def mistral_call_id(call_id: str) -> str:
    """Mistral's template takes 9-character alphanumeric ids; OpenAI-style ids ("call_...") keep their last 9."""
    alnum = "".join(ch for ch in call_id if ch.isalnum())
    return alnum[-9:] if len(alnum) >= 9 else alnum.rjust(9, "0")
