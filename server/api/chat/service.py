"""Chat completions: OpenAI request -> normalized GenerationRequest -> routed engine stream -> OpenAI response."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from server.api.chat.protocol import ChatCompletionRequest, ChatMessage, ImageContentPart, completion_id
from server.api.collected import collect, logprob_entry
from server.api.deps import Services
from server.api.lifetime import new_deadline, until
from server.api.sse import DONE, ChunkEvents, error_event
from server.api.vllm_extensions import engine_extras
from server.errors import InvalidRequestError, MSServeError
from server.media import ImageBudget
from server.routing.dispatch import Routed
from server.types import (
    ContentPart,
    GenerationChunk,
    GenerationRequest,
    Message,
    SamplingParams,
    TextPart,
    ToolCall,
    Usage,
)


def check_request(body: ChatCompletionRequest, services: Services) -> None:
    unknown = body.unknown_fields()
    if unknown:
        raise InvalidRequestError(f"unknown parameter: {unknown[0]}", param=unknown[0], code="unknown_parameter")
    if body.n is not None and body.n > 1:
        raise InvalidRequestError(
            "n > 1 is not supported: send one request per completion", param="n", code="unsupported_n"
        )
    # The model name is checked where it is resolved to a route (server.api.aliases).
    if body.top_logprobs and not body.logprobs:
        raise InvalidRequestError("top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value")


async def to_generation_request(
    body: ChatCompletionRequest, services: Services, request_id: str, *, deadline: float | None = None
) -> GenerationRequest:
    extra = engine_extras(body)  # refusals first: before any image is fetched
    settings = services.settings
    deadline = deadline or new_deadline(settings)  # taken before image fetches: they count against it
    budget = services.intake.budget()
    async with until(deadline):
        messages = [await _normalize(message, index, services, budget) for index, message in enumerate(body.messages)]
    max_tokens = body.max_completion_tokens or body.max_tokens or settings.default_max_tokens
    sampling = SamplingParams(
        max_tokens=max_tokens,
        temperature=0.15 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        stop=body.stop_list(),
        frequency_penalty=body.frequency_penalty or 0.0,
        presence_penalty=body.presence_penalty or 0.0,
        logprobs=bool(body.logprobs),
        top_logprobs=body.top_logprobs or 0,
        extra=extra,
    )
    tools = [tool.model_dump(exclude_none=True) for tool in body.tools] if body.tools else None
    if body.tool_choice == "none":
        tools = None  # the model may not call tools, so it need not see them
    return GenerationRequest(
        request_id=request_id,
        messages=messages,
        sampling=sampling,
        tools=tools,
        tool_choice=body.tool_choice if tools else None,
        response_format=body.response_format.model_dump(exclude_none=True)
        if body.response_format and body.response_format.type != "text"
        else None,
        deadline=deadline,
        stream=bool(body.stream),
    )


async def _normalize(message: ChatMessage, index: int, services: Services, budget: ImageBudget) -> Message:
    role = "system" if message.role == "developer" else message.role
    parts: list[ContentPart] = []
    if isinstance(message.content, str):
        parts.append(TextPart(text=message.content))
    elif message.content is not None:
        for part_index, part in enumerate(message.content):
            if isinstance(part, ImageContentPart):
                if role != "user":
                    raise InvalidRequestError(
                        f"images are only accepted in user messages (messages[{index}] is {message.role})",
                        param=f"messages[{index}].content[{part_index}]",
                        code="invalid_image_placement",
                    )
                try:
                    parts.append(await services.intake.from_url(part.image_url.url, budget))
                except MSServeError as exc:
                    exc.param = exc.param or f"messages[{index}].content[{part_index}].image_url"
                    raise
            else:
                parts.append(TextPart(text=part.text))
    calls = [
        ToolCall(id=call.id, name=call.function.name, arguments=call.function.arguments)
        for call in message.tool_calls or []
    ]
    return Message(role=role, content=parts, name=message.name, tool_calls=calls, tool_call_id=message.tool_call_id)


# -- responses -------------------------------------------------------------------------------------


async def complete(
    routed: Routed, body: ChatCompletionRequest, system_fingerprint: str, response_id: str | None = None
) -> dict[str, Any]:
    collected = await collect(routed)
    tool_calls = [
        {"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}
        for _, call in sorted(collected.tool_calls.items())
    ]
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(collected.text) if not tool_calls or any(collected.text) else None,
        "refusal": None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    usage = collected.usage
    return {
        "id": response_id or completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": collected.model or routed.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": {"content": collected.logprobs, "refusal": None} if body.logprobs else None,
                "finish_reason": collected.finish_reason or "stop",
            }
        ],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        },
        "system_fingerprint": system_fingerprint,
    }


async def stream(
    routed: Routed, body: ChatCompletionRequest, system_fingerprint: str, response_id: str | None = None
) -> AsyncIterator[bytes]:
    """OpenAI's chunk sequence: role first, content deltas, a finish chunk, the usage chunk if asked, [DONE].

    The engines keep the request's deadline while they stream (one timer per stream, not one per token) and
    end it with ``DeadlineExceededError``, which goes out as the final error event.
    """
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    base = {
        "id": response_id or completion_id(),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": routed.model,
        "system_fingerprint": system_fingerprint,
    }
    usage = Usage()
    events = ChunkEvents(base, include_usage=include_usage)

    # Frames produced back to back go out in one body message (one socket write): the role frame with the
    # first delta, a finish frame with its delta, the usage frame with [DONE]. The bytes are the same.
    pending = [events.chunk({"role": "assistant", "content": "", "refusal": None})]
    try:
        chunk: GenerationChunk | None = routed.first
        rest = routed.rest
        while chunk is not None:
            if chunk.model:
                base["model"] = chunk.model
            logprobs = (
                {"content": [logprob_entry(i) for i in chunk.logprobs], "refusal": None}
                if body.logprobs and chunk.logprobs
                else None
            )
            if chunk.text and not chunk.tool_calls and logprobs is None:
                pending.append(events.text(chunk.text))  # nearly every event: only text
            else:
                delta: dict[str, Any] = {}
                if chunk.text:
                    delta["content"] = chunk.text
                if chunk.tool_calls:
                    delta["tool_calls"] = [_tool_call_delta(call) for call in chunk.tool_calls]
                if delta or logprobs:
                    pending.append(events.chunk(delta, logprobs=logprobs))
            if chunk.usage:
                usage = chunk.usage
            if chunk.finish_reason:
                pending.append(events.chunk({}, finish=chunk.finish_reason))
            if pending:
                yield b"".join(pending)  # before waiting for the next chunk: the client has this one now
                pending = []
            chunk = await anext(rest, None)
        if include_usage:
            pending.append(events.usage(usage.prompt_tokens, usage.completion_tokens))
        yield b"".join([*pending, DONE])
    except MSServeError as exc:
        yield error_event(exc)
        yield DONE
    finally:
        await routed.rest.aclose()  # type: ignore[attr-defined]


def _tool_call_delta(call: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"index": call.index, "function": {"arguments": call.arguments}}
    if call.id:
        out["id"] = call.id
        out["type"] = "function"
    if call.name:
        out["function"]["name"] = call.name
    return out

