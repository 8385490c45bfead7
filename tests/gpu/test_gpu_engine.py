"""The engine on a CUDA GPU, run by scripts/gpu_check.sh on the lent machine (marker `gpu`; never in `make test`).

gpu_check.py serves the tiny model through each variant (transformers bf16, bitsandbytes 4-bit, vLLM when the image
has it) by putting a `tiny-mistral3.yaml` of that variant in MSSERVE_PROFILES_DIR, which wins over the packaged
profile, and names the variant in GPU_CHECK_VARIANT. The captions tests (tests/api/test_captions.py) run beside these.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.conftest import TINY_MODEL, LiveServer
from tests.images import png_url

pytestmark = pytest.mark.gpu

# What each variant's server log says once its engine is on the GPU.
LOADED_ON_GPU = {"bf16": "loaded tiny-mistral3 on cuda", "4bit": "loaded tiny-mistral3 on cuda", "vllm": "cuda"}
QUESTION = "Describe this picture in one word."


def variant() -> str:
    name = os.environ.get("GPU_CHECK_VARIANT", "")
    assert name in LOADED_ON_GPU, f"GPU_CHECK_VARIANT must be one of {sorted(LOADED_ON_GPU)} (set by gpu_check.py)"
    return name


def exact_prompt_tokens(content: list[dict[str, Any]]) -> int:
    """mistral_common's count for one user turn, image included: what the engine must have been given."""
    from mistral_common.protocol.instruct.messages import ImageURLChunk, TextChunk, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    chunks = [
        TextChunk(text=c["text"]) if c["type"] == "text" else ImageURLChunk(image_url=c["image_url"]["url"])
        for c in content
    ]
    request = ChatCompletionRequest(messages=[UserMessage(content=chunks)])  # type: ignore[arg-type]
    return len(MistralTokenizer.from_file(str(TINY_MODEL / "tekken.json")).encode_chat_completion(request).tokens)


def test_the_engine_is_on_the_gpu(live_server: LiveServer) -> None:
    assert LOADED_ON_GPU[variant()] in live_server.log()


def test_chat_and_image_prompts_reach_the_model_exactly(openai_client) -> None:  # type: ignore[no-untyped-def]
    for content in (
        [{"type": "text", "text": QUESTION}],
        [{"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": png_url()}}],
    ):
        answer = openai_client.chat.completions.create(
            model="tiny-mistral3", max_tokens=8, temperature=0, messages=[{"role": "user", "content": content}]
        )
        assert answer.usage.prompt_tokens == exact_prompt_tokens(content)
        assert 0 < answer.usage.completion_tokens <= 8 and answer.choices[0].finish_reason in ("length", "stop")
        assert isinstance(answer.choices[0].message.content, str)


def test_streaming_gives_the_same_greedy_answer(openai_client) -> None:  # type: ignore[no-untyped-def]
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": QUESTION},
                {"type": "image_url", "image_url": {"url": png_url((120, 90))}},
            ],
        }
    ]
    whole = openai_client.chat.completions.create(
        model="tiny-mistral3", max_tokens=12, temperature=0, messages=messages
    )
    stream = openai_client.chat.completions.create(
        model="tiny-mistral3",
        max_tokens=12,
        temperature=0,
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert len(chunks) > 2 and usage is not None
    assert (text, usage.completion_tokens) == (whole.choices[0].message.content, whole.usage.completion_tokens)
