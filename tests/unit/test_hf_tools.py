"""The transformers engine's output path for tool calls: real Tekken token ids in, OpenAI tool-call deltas out."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from server.config import load_profile
from server.engines.hf import _DONE, HFEngine
from server.engines.mistral_format import EncodedPrompt, MistralChatFormat
from server.errors import InvalidRequestError
from server.types import GenerationRequest, Message, TextPart

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def engine_with_tokenizer(tiny_model: Path) -> tuple[HFEngine, MistralChatFormat]:
    engine = HFEngine(load_profile("tiny-mistral3"), model_dir=tiny_model)
    chat_format = MistralChatFormat.from_file(tiny_model / "tekken.json")
    engine._format = chat_format  # the output path needs only the tokenizer, not the weights
    return engine, chat_format


def stream_tokens(engine: HFEngine, request: GenerationRequest, token_ids: list[int]) -> list[Any]:
    async def run() -> list[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        for token in token_ids:
            queue.put_nowait((token, None, []))  # (token id, logprob, top alternatives)
        queue.put_nowait(_DONE)
        prompt = EncodedPrompt(tokens=[1, 2, 3], images=[])
        return [chunk async for chunk in engine._stream(request, prompt, 1000, threading.Event(), queue)]

    return asyncio.run(run())


def request(**extra: Any) -> GenerationRequest:
    return GenerationRequest(request_id="t", messages=[Message(role="user", content=[TextPart(text="weather?")])],
                             **extra)


def test_tool_call_tokens_become_tool_call_deltas(tiny_model: Path) -> None:
    engine, chat_format = engine_with_tokenizer(tiny_model)
    raw = chat_format.tokenizer.instruct_tokenizer.tokenizer
    call = '[{"name": "get_weather", "arguments": {"city": "Paris"}}]'
    ids = [raw.get_special_token("[TOOL_CALLS]"), *raw.encode(call, bos=False, eos=False)]
    chunks = stream_tokens(engine, request(tools=TOOLS), ids)
    deltas = [delta for chunk in chunks for delta in chunk.tool_calls]
    assert "".join(chunk.text for chunk in chunks) == ""  # the marker and the JSON never leak into content
    assert [delta.name for delta in deltas if delta.name] == ["get_weather"]
    assert json.loads("".join(delta.arguments for delta in deltas)) == {"city": "Paris"}
    assert len(deltas[0].id or "") == 9 and (deltas[0].id or "").isalnum()
    assert chunks[-1].finish_reason == "tool_calls"


def test_plain_text_with_tools_stays_content(tiny_model: Path) -> None:
    engine, chat_format = engine_with_tokenizer(tiny_model)
    raw = chat_format.tokenizer.instruct_tokenizer.tokenizer
    chunks = stream_tokens(engine, request(tools=TOOLS), raw.encode("It is sunny.", bos=False, eos=False))
    assert "".join(chunk.text for chunk in chunks) == "It is sunny."
    assert chunks[-1].finish_reason == "stop" and not any(chunk.tool_calls for chunk in chunks)


@pytest.mark.parametrize(
    ("extra", "code"),
    [({"tools": TOOLS, "tool_choice": "required"}, "tool_choice_unsupported"),
     ({"response_format": {"type": "json_object"}}, "response_format_unsupported")],
)
def test_what_needs_constrained_decoding_is_refused(tiny_model: Path, extra: dict[str, Any], code: str) -> None:
    engine, _ = engine_with_tokenizer(tiny_model)
    engine._state, engine._model = "ready", object()

    async def first() -> None:
        await anext(engine.generate(request(**extra)))

    with pytest.raises(InvalidRequestError) as caught:
        asyncio.run(first())
    assert caught.value.code == code
