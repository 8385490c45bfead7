"""Chat completions through the real openai SDK against a live server running the tiny model."""

from __future__ import annotations

import httpx
from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
from mistral_common.protocol.instruct.tool_calls import Function, Tool

from tests.conftest import LiveServer
from tests.images import jpeg_url, png_url
from tests.prompt_tokens import expected_prompt_tokens, expected_tokens

MODEL = "tiny-mistral3"


def test_text_chat(openai_client) -> None:
    response = openai_client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=6, temperature=0
    )
    completion = response.parse()
    assert completion.object == "chat.completion"
    assert completion.model == MODEL
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert completion.usage.prompt_tokens == expected_prompt_tokens("Say hello.")
    # Greedy decoding of the random tiny model runs to the cap: every generated token is counted, no more.
    assert choice.finish_reason == "length" and completion.usage.completion_tokens == 6
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert response.headers["x-msserve-tier"] == "local"
    assert response.headers["x-msserve-reason"].startswith("no Azure endpoint configured")
    assert 0.0 <= float(response.headers["x-msserve-score"]) <= 1.0  # scored even when Azure is absent
    assert response.headers["x-request-id"]


def test_max_tokens_limits_output(openai_client) -> None:
    completion = openai_client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count to one hundred."}],
        max_completion_tokens=3,
        temperature=0,
    )
    # Greedy decoding of the random tiny model never picks EOS first: it runs to the cap, exactly.
    assert completion.usage.completion_tokens == 3 and completion.choices[0].finish_reason == "length"


def test_png_image_reaches_the_model(openai_client) -> None:
    url = png_url((300, 200))
    completion = openai_client.chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe this."},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ],
        max_tokens=4,
    )
    # 300x200 -> 11x8 patches of 28 px -> (11 + 1) * 8 = 96 image tokens, plus the text: same count as mistral_common.
    assert completion.usage.prompt_tokens == expected_prompt_tokens("Describe this.", url)


def test_jpeg_image_reaches_the_model(openai_client) -> None:
    url = jpeg_url((640, 480))
    completion = openai_client.chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is it?"}],
            }
        ],
        max_tokens=4,
    )
    # 640x480 costs (23 + 1) * 18 = 432 image tokens; the whole prompt is exactly mistral_common's count
    assert completion.usage.prompt_tokens == expected_prompt_tokens("What is it?", url, image_first=True)
    assert completion.choices[0].message.content is not None


def test_greedy_is_deterministic_and_seed_reproduces_sampling(openai_client) -> None:
    def ask(**kwargs):  # type: ignore[no-untyped-def]
        return (
            openai_client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=12, **kwargs
            )
            .choices[0]
            .message.content
        )

    assert ask(temperature=0) == ask(temperature=0)
    assert ask(temperature=1.0, seed=7) == ask(temperature=1.0, seed=7)


def test_stop_string_cuts_the_answer(openai_client) -> None:
    messages = [{"role": "user", "content": "Write a long sentence."}]
    full = openai_client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0)
    text = full.choices[0].message.content
    assert len(text) >= 6, text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = openai_client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=24, temperature=0, stop=[stop]
    )
    assert cut.choices[0].message.content == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_streaming_with_usage(openai_client) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "Caption:"},
                                             {"type": "image_url", "image_url": {"url": png_url((120, 90))}}]}]
    stream = openai_client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
        temperature=0,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish in (["stop"], ["length"])
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None and 1 <= usage_chunk.usage.completion_tokens <= 8
    assert all(c.usage is None for c in chunks[:-1])
    streamed = "".join(c.choices[0].delta.content for c in content_chunks)
    whole = openai_client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=8,
        temperature=0,
    )
    assert streamed == whole.choices[0].message.content


def test_stream_wire_format_ends_with_done(live_server: LiveServer) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{live_server.v1}/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    assert '"usage"' not in "".join(events)  # only with stream_options.include_usage


def test_logprobs(openai_client) -> None:
    completion = openai_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, logprobs=True, temperature=0
    )
    entries = completion.choices[0].logprobs.content
    assert len(entries) == completion.usage.completion_tokens or completion.choices[0].finish_reason == "stop"
    assert all(entry.logprob <= 0 for entry in entries)


def test_multi_turn_with_system_prompt(openai_client) -> None:
    completion = openai_client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi."},
            {"role": "user", "content": "And again?"},
        ],
        max_tokens=3,
    )
    assert completion.usage.prompt_tokens == expected_tokens([
        SystemMessage(content="You are terse."), UserMessage(content="Hello"), AssistantMessage(content="Hi."),
        UserMessage(content="And again?"),
    ])


def test_tools_are_templated_into_the_prompt(openai_client) -> None:
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    plain = openai_client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    with_tools = openai_client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2, tools=tools)
    assert plain.usage.prompt_tokens == expected_tokens([UserMessage(content=messages[0]["content"])])
    function = Function(name="get_weather", description="Weather for a city",
                        parameters={"type": "object", "properties": {"city": {"type": "string"}}})
    assert with_tools.usage.prompt_tokens == expected_tokens([UserMessage(content=messages[0]["content"])],
                                                             tools=[Tool(function=function)])
    assert with_tools.choices[0].finish_reason in ("stop", "length", "tool_calls")
