"""The vLLM engine's pure mappings (profile -> engine args, request -> sampling, messages), without vLLM installed."""

from __future__ import annotations

import asyncio
import time
from collections import namedtuple
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from server.config import Settings, load_profile
from server.engines.base import max_new_tokens
from server.engines.extras import refuse_unsupported
from server.engines.vllm import VLLMEngine, _until
from server.engines.vllm_mapping import (
    INLINE_RENDER_MAX_CHARS,
    _logprobs,
    engine_args,
    finish_reason,
    image_data_urls,
    renders_inline,
    sampling_kwargs,
    structured_output_kwargs,
    to_openai_message,
)
from server.errors import EngineUnavailableError, InvalidRequestError
from server.types import EngineExtras, GenerationRequest, ImagePart, Message, SamplingParams, TextPart, ToolCall


def test_mistral_format_sets_all_three_mistral_flags(tmp_path) -> None:
    profile = load_profile("mistral-small-3.1-fp8")
    args = engine_args(profile, tmp_path)
    assert (args["tokenizer_mode"], args["config_format"], args["load_format"]) == ("mistral",) * 3
    assert args["quantization"] == "fp8"
    assert args["limit_mm_per_prompt"] == {"image": 8}
    assert args["max_model_len"] == 32768 and args["served_model_name"] == "mistral-small-3.1"


def test_hf_format_keeps_the_hf_tokenizer(tmp_path) -> None:
    args = engine_args(load_profile("tiny-mistral3-vllm"), tmp_path)
    assert "tokenizer_mode" not in args and "load_format" not in args
    assert args["model"] == str(tmp_path) and args["enforce_eager"] is True


def test_bitsandbytes_is_refused_with_a_pointer_to_the_transformers_engine() -> None:
    profile = load_profile("mistral-small-3.1-bnb4").model_copy(update={"engine": "vllm"})
    with pytest.raises(EngineUnavailableError) as caught:
        VLLMEngine(profile, Settings())
    assert "transformers engine" in caught.value.message and caught.value.code == "quantization_unsupported"


def test_sampling_maps_one_to_one() -> None:
    sampling = SamplingParams(max_tokens=5, temperature=0.3, top_p=0.9, seed=7, stop=["\n\n"],
                              frequency_penalty=0.5, presence_penalty=0.25, logprobs=True)
    kwargs = sampling_kwargs(GenerationRequest(request_id="r", messages=[], sampling=sampling), 5)
    assert kwargs == {"max_tokens": 5, "temperature": 0.3, "top_p": 0.9, "seed": 7, "stop": ["\n\n"],
                      "frequency_penalty": 0.5, "presence_penalty": 0.25, "logprobs": 0,
                      # vLLM's extension fields at their defaults
                      "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0, "min_tokens": 0, "ignore_eos": False,
                      "skip_special_tokens": True, "spaces_between_special_tokens": True,
                      "include_stop_str_in_output": False, "stop_token_ids": None, "bad_words": None,
                      "allowed_token_ids": None}


def test_top_logprobs_and_extension_fields_reach_vllm() -> None:
    extra = EngineExtras(top_k=5, min_p=0.1, repetition_penalty=1.2, min_tokens=2, ignore_eos=True,
                         skip_special_tokens=False, stop_token_ids=[7], bad_words=["x"], allowed_token_ids=[1, 2])
    sampling = SamplingParams(logprobs=True, top_logprobs=3, extra=extra)
    kwargs = sampling_kwargs(GenerationRequest(request_id="r", messages=[], sampling=sampling), 5)
    assert kwargs["logprobs"] == 3
    assert {key: kwargs[key] for key in ("top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos",
                                         "skip_special_tokens", "stop_token_ids", "bad_words", "allowed_token_ids")} \
        == {"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.2, "min_tokens": 2, "ignore_eos": True,
            "skip_special_tokens": False, "stop_token_ids": [7], "bad_words": ["x"], "allowed_token_ids": [1, 2]}


def test_vllm_logprobs_keep_the_top_ranked_alternatives_most_likely_first() -> None:
    candidate = namedtuple("candidate", "logprob rank decoded_token")
    # vLLM's candidates at one position: the sampled token (rank 4 here) and the top 2, in no particular order.
    position = {9: candidate(-3.0, 4, "d"), 5: candidate(-0.5, 2, "b"), 3: candidate(-0.1, 1, "a")}
    completion = SimpleNamespace(token_ids=[9], logprobs=[position])
    (entry,) = _logprobs(completion, top_logprobs=2)
    assert (entry.token, entry.logprob) == ("d", -3.0)
    assert [(top.token, top.logprob) for top in entry.top_logprobs] == [("a", -0.1), ("b", -0.5)]
    assert _logprobs(completion, top_logprobs=0)[0].top_logprobs == []


def test_priority_is_acted_on_only_under_the_priority_scheduler(tmp_path: Path) -> None:
    profile = load_profile("tiny-mistral3-vllm")
    assert engine_args(profile, tmp_path)["scheduling_policy"] == "priority"
    asked = GenerationRequest(request_id="r", messages=[], sampling=SamplingParams(extra=EngineExtras(priority=-1)))
    refuse_unsupported(asked.sampling.extra, VLLMEngine(profile, Settings()).capabilities.extras, "vLLM engine")
    fcfs = profile.model_copy(update={"engine_options": {**profile.engine_options, "scheduling_policy": "fcfs"}})
    with pytest.raises(InvalidRequestError) as caught:
        refuse_unsupported(asked.sampling.extra, VLLMEngine(fcfs, Settings()).capabilities.extras, "vLLM engine")
    assert caught.value.code == "unsupported_parameter" and caught.value.param == "priority"


def test_max_tokens_defaults_to_the_room_left_and_rejects_overflow() -> None:
    request = GenerationRequest(request_id="r", messages=[])
    assert max_new_tokens(request, 96, 4096) == 4000
    request.sampling.max_tokens = 4001
    with pytest.raises(InvalidRequestError) as caught:
        max_new_tokens(request, 96, 4096)
    assert caught.value.code == "context_length_exceeded"


def test_response_format_becomes_structured_outputs() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert structured_output_kwargs({"type": "json_object"}) == {"json_object": True}
    assert structured_output_kwargs({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}) == {
        "json": schema
    }
    assert structured_output_kwargs(None) is None
    with pytest.raises(InvalidRequestError):
        structured_output_kwargs({"type": "json_schema", "json_schema": {"name": "x"}})


def test_messages_become_openai_dicts_with_images_in_place() -> None:
    image = Image.new("RGB", (8, 8))
    message = Message(role="user", content=[TextPart(text="a"), ImagePart(image=image), TextPart(text="b")])
    assert to_openai_message(message)["content"] == [
        {"type": "text", "text": "a"}, {"type": "image_pil", "image_pil": image}, {"type": "text", "text": "b"}
    ]
    as_url = to_openai_message(message, image_urls=iter(["data:image/bmp;base64,Qk0="]))["content"][1]
    assert as_url == {"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk0="}}
    call = Message(role="assistant", tool_calls=[ToolCall(id="abcDEF123", name="f", arguments="{}")])
    assert to_openai_message(call)["tool_calls"][0]["function"] == {"name": "f", "arguments": "{}"}
    assert to_openai_message(Message(role="system", content=[TextPart(text="s")])) == {"role": "system", "content": "s"}


def test_native_tiny_profile_loads_in_mistral_format(tmp_path) -> None:
    args = engine_args(load_profile("tiny-mistral3-vllm-native"), tmp_path)
    assert (args["tokenizer_mode"], args["config_format"], args["load_format"]) == ("mistral",) * 3
    assert args["served_model_name"] == "tiny-mistral3-native"


def test_finish_reason_reports_tool_calls_unless_cut_by_length() -> None:
    assert finish_reason("stop", called_tools=True) == "tool_calls"
    assert finish_reason("stop", called_tools=False) == "stop"
    assert finish_reason("length", called_tools=True) == "length"
    assert VLLMEngine(load_profile("tiny-mistral3-vllm"), Settings()).capabilities.tools


def test_openai_tool_call_ids_become_mistral_ids() -> None:
    from server.engines.vllm_mapping import mistral_call_id

    assert mistral_call_id("call_abc123XYZ789") == "123XYZ789"
    assert mistral_call_id("a1b2c3d4e") == "a1b2c3d4e"
    assert len(mistral_call_id("x")) == 9


async def _ready_then_stall(ready: int) -> AsyncIterator[int]:
    """``ready`` items without suspending, then a wait that only a cancellation ends: an engine that stalled.

    Nothing here depends on how fast the machine is: the items come before the loop runs any timer, and the stall
    lasts until the deadline cuts it, however late that timer fires on a loaded machine."""
    for n in range(ready):
        yield n
    await asyncio.Event().wait()
    yield ready  # never reached


async def test_until_passes_a_stream_through_before_its_deadline() -> None:
    async def three() -> AsyncIterator[int]:
        for n in range(3):
            await asyncio.sleep(0)
            yield n

    assert [n async for n in _until(three(), time.monotonic() + 3600)] == [0, 1, 2]
    assert [n async for n in _until(three(), None)] == [0, 1, 2]


async def test_until_stops_a_stalled_stream_at_the_deadline() -> None:
    seen: list[int] = []
    with pytest.raises(TimeoutError):
        async for n in _until(_ready_then_stall(2), time.monotonic() + 0.05):
            seen.append(n)
    assert seen == [0, 1]  # what came before the stall, then the deadline ended the wait


async def test_until_never_cancels_the_consumer_between_items() -> None:
    """A consumer busy past the deadline is not cancelled mid-work; the next item then times out."""
    iterator = _until(_ready_then_stall(10), time.monotonic() + 0.01)
    assert await anext(iterator) == 0
    # The consumer's own work ends on a later timer than the deadline's, so the deadline passes during it (timers
    # fire in order of their times); it must finish undisturbed.
    await asyncio.sleep(0.05)
    with pytest.raises(TimeoutError):
        await anext(iterator)  # item 1 is ready at once: only the passed deadline refuses it


async def test_until_times_out_a_wait_in_another_task_than_the_first() -> None:
    """The dispatcher awaits the first item, the response's task the rest: the deadline follows the waiting task."""
    iterator = _until(_ready_then_stall(1), time.monotonic() + 0.05)
    assert await anext(iterator) == 0

    async def read_rest() -> list[int]:
        return [n async for n in iterator]

    with pytest.raises(TimeoutError):  # were the first task cancelled instead, this await would be cancelled
        await asyncio.create_task(read_rest())


async def test_until_leaves_an_outside_cancellation_a_cancellation() -> None:
    """A client gone mid-stream cancels the reading task: that must not turn into a timeout, nor be swallowed."""
    iterator = _until(_ready_then_stall(0), time.monotonic() + 3600)
    started = asyncio.Event()

    async def read() -> int:
        started.set()
        return await anext(iterator)  # runs on to the stall within this same step of the reader's task

    reader = asyncio.create_task(read())
    await started.wait()
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert reader.cancelled()


def _text_request(*texts: str, **fields: object) -> GenerationRequest:
    messages = [Message(role="user", content=[TextPart(text=t)]) for t in texts]
    return GenerationRequest(request_id="r", messages=messages, **fields)  # type: ignore[arg-type]


def test_short_text_prompts_render_inline_and_long_ones_in_vllms_pool() -> None:
    assert renders_inline(_text_request("Tell me about tides."))
    # The limit counts every message's text: two halves together are exactly at it, one more character is over.
    half = "x" * (INLINE_RENDER_MAX_CHARS // 2)
    assert renders_inline(_text_request(half, half))
    assert not renders_inline(_text_request(half, half + "x"))


def test_images_and_tools_always_take_vllms_async_render() -> None:
    picture = Message(role="user", content=[TextPart(text="Describe it."), ImagePart(image=Image.new("RGB", (8, 8)))])
    assert not renders_inline(GenerationRequest(request_id="r", messages=[picture]))
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    assert not renders_inline(_text_request("Call f.", tools=[tool]))


@pytest.mark.parametrize("size", [(40, 30), (700, 500)])  # encoded on the event loop / in a worker thread
def test_images_travel_to_mistral_common_as_lossless_data_urls_in_order(size: tuple[int, int], monkeypatch) -> None:
    import base64
    import io

    import numpy as np

    from server.engines import vllm_mapping as vllm

    offloaded = []

    async def to_thread(function, *args):  # type: ignore[no-untyped-def]
        offloaded.append(args)
        return function(*args)

    monkeypatch.setattr(vllm.asyncio, "to_thread", to_thread)

    pixels = np.random.default_rng(7).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    first, second = Image.fromarray(pixels), Image.fromarray(255 - pixels)
    messages = [Message(role="user", content=[TextPart(text="a"), ImagePart(image=first)]),
                Message(role="user", content=[ImagePart(image=second)])]
    urls = asyncio.run(image_data_urls(messages))
    assert len(urls) == 2 and all(url.startswith("data:image/bmp;base64,") for url in urls)
    for url, image in zip(urls, (first, second), strict=True):
        decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert decoded.size == size and np.array_equal(np.asarray(decoded.convert("RGB")), np.asarray(image))
    assert len(offloaded) == (2 if size[0] * size[1] > vllm.INLINE_ENCODE_MAX_PIXELS else 0)
