"""Token estimates for Azure spend: they err high before a call, and count what a cut-off stream carried."""

from __future__ import annotations

from PIL import Image

from server.routing.metering import StreamMeter, image_tokens, prompt_tokens, reserve_usage, text_tokens
from server.types import (
    GenerationChunk,
    GenerationRequest,
    ImagePart,
    Message,
    SamplingParams,
    TextPart,
    TokenLogprob,
    ToolCallDelta,
)


def test_text_is_counted_high() -> None:
    english = "The quick brown fox jumps over the lazy dog. " * 20  # ~200 tokens for Azure's tokenizers
    assert text_tokens(english) >= len(english) / 4.5
    assert text_tokens("日本語") == 3  # 9 UTF-8 bytes: multi-byte scripts count more per character


def test_images_follow_azure_s_tiles() -> None:
    assert image_tokens(512, 512) == 85 + 170  # one tile
    assert image_tokens(1024, 1024) == 85 + 170 * 4  # scaled to 768 on the short side: 2x2 tiles
    assert image_tokens(4096, 1024) == 85 + 170 * 4  # fitted into 2048 first: 2048x512, one row of 4


def test_the_reservation_is_prompt_plus_max_tokens() -> None:
    request = GenerationRequest(
        request_id="r",
        messages=[
            Message(role="system", content=[TextPart(text="be brief")]),
            Message(role="user", content=[TextPart(text="hi"), ImagePart(image=Image.new("RGB", (20, 20)))]),
        ],
        sampling=SamplingParams(max_tokens=50),
    )
    prompt = prompt_tokens(request)
    assert prompt == (4 + text_tokens("be brief")) + (4 + text_tokens("hi") + image_tokens(20, 20))
    assert reserve_usage(request, 4096).model_dump() == {"prompt_tokens": prompt, "completion_tokens": 50}
    request.sampling.max_tokens = None
    assert reserve_usage(request, 4096).completion_tokens == 4096


def test_the_meter_counts_the_most_of_deltas_logprobs_and_bytes() -> None:
    meter = StreamMeter()
    assert not meter.started
    meter.observe(GenerationChunk())  # metadata only
    assert not meter.started and meter.completion_tokens == 0
    for word in ("a", " b", " c"):
        meter.observe(GenerationChunk(text=word, logprobs=[TokenLogprob(token=word, logprob=-0.1)]))
    assert meter.completion_tokens == 3  # 3 deltas, 3 logprobs, 5 bytes
    meter.observe(GenerationChunk(text="x" * 30))  # Azure batched many tokens into one delta
    assert meter.completion_tokens == 35 // 3 + 1
    meter.observe(GenerationChunk(tool_calls=[ToolCallDelta(index=0, name="f", arguments='{"a": 1}')]))
    assert meter.started and meter.completion_tokens == -(-(35 + 9) // 3)
