"""Azure's wire format: our request as an OpenAI chat body (images re-encoded), its chunks and errors back.

Pure mapping, no connection: the engine (server.engines.azure) sends and reads; this module says what the bytes
mean. Azure's errors become our hierarchy here (429 with its retry hint, content filter, auth, timeouts).
"""

from __future__ import annotations

import base64
import io
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import httpx2  # the openai SDK's HTTP client: its errors surface while a response body is read
import openai

from server.errors import DeadlineExceededError, InvalidRequestError, MSServeError, RateLimitError, UpstreamError
from server.types import (
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    ImagePart,
    Message,
    TextPart,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


def forwarded_image(part: ImagePart) -> tuple[bytes, str]:
    """(bytes, MIME type) Azure receives: the pixels the local model sees, re-encoded.

    No metadata and nothing the client appended travels on. Photos (JPEG/WebP sources) go as JPEG, lossless
    sources (screenshots, diagrams) as PNG at its fastest setting. Done here, only for a request that is
    forwarded: a PNG of a 1540 px photo costs a quarter of a second, which a local request should not pay.
    """
    buffer = io.BytesIO()
    if part.mime_type in ("image/jpeg", "image/webp"):
        part.image.save(buffer, format="JPEG", quality=90)
        return buffer.getvalue(), "image/jpeg"
    part.image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue(), "image/png"


def _image_url(part: ImagePart) -> str:
    data, mime = forwarded_image(part)
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _content(message: Message) -> str | list[dict[str, Any]]:
    if not any(isinstance(part, ImagePart) for part in message.content):
        return message.text
    parts: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, TextPart):
            parts.append({"type": "text", "text": part.text})
        else:
            parts.append({"type": "image_url", "image_url": {"url": _image_url(part)}})
    return parts


def _message(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": _content(message)}
    if message.name:
        out["name"] = message.name
    if message.role == "tool":
        out["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        out["content"] = out["content"] or None
        out["tool_calls"] = [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            for call in message.tool_calls
        ]
    return out


def build_body(request: GenerationRequest, model: str) -> dict[str, Any]:
    """The chat-completions body: streamed (usage in the last chunk) when the caller streams, else whole."""
    sampling = request.sampling
    body: dict[str, Any] = {
        "model": model,
        "messages": [_message(m) for m in request.messages],
        "stream": request.stream,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
    }
    optional: dict[str, Any] = {
        "max_tokens": sampling.max_tokens,
        "seed": sampling.seed,
        "stop": sampling.stop or None,
        "frequency_penalty": sampling.frequency_penalty or None,
        "presence_penalty": sampling.presence_penalty or None,
        "tools": request.tools,
        "tool_choice": request.tool_choice,
        "response_format": request.response_format,
    }
    if sampling.logprobs:
        optional["logprobs"] = True
        optional["top_logprobs"] = sampling.top_logprobs or None
    if request.stream:
        optional["stream_options"] = {"include_usage": True}
    body.update({key: value for key, value in optional.items() if value is not None})
    return body


def map_chunk(data: dict[str, Any]) -> GenerationChunk | None:
    """One chat-completion chunk, or a whole completion, as JSON -> a GenerationChunk.

    None for Azure's metadata-only chunks (prompt filter results, the empty role delta).
    """
    out = GenerationChunk(model=data.get("model") or None, system_fingerprint=data.get("system_fingerprint") or None)
    usage = data.get("usage")
    if usage:
        out.usage = Usage(
            prompt_tokens=usage.get("prompt_tokens") or 0, completion_tokens=usage.get("completion_tokens") or 0
        )
    for choice in data.get("choices") or []:
        if choice.get("index", 0) != 0:
            continue
        # A stream carries a "delta", a whole completion a "message"; filter annotations carry neither.
        delta = choice.get("delta") or choice.get("message") or {}
        out.text += delta.get("content") or ""
        for position, call in enumerate(delta.get("tool_calls") or []):
            function = call.get("function") or {}
            out.tool_calls.append(
                ToolCallDelta(
                    index=call.get("index", position),
                    id=call.get("id"),
                    name=function.get("name"),
                    arguments=function.get("arguments") or "",
                )
            )
        for item in (choice.get("logprobs") or {}).get("content") or []:
            # Azure's entries pass on as they came: bytes and alternatives included.
            out.logprobs.append(TokenLogprob.model_validate({**item, "top_logprobs": item.get("top_logprobs") or []}))
        finish = choice.get("finish_reason")
        if finish:
            out.finish_reason = _FINISH.get(finish, "stop")
    if not (out.text or out.tool_calls or out.logprobs or out.finish_reason or out.usage):
        return None
    return out


async def _sse_payloads(response: httpx2.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON payload of each server-sent event up to ``[DONE]``; an ``error`` payload raises."""
    data: list[str] = []
    with _reading_errors():
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
                continue
            if line or not data:
                continue  # event:, id:, comments; blank lines between events
            payload, data = "\n".join(data), []
            if payload == "[DONE]":
                return
            event = json.loads(payload)
            if isinstance(event, dict) and event.get("error"):
                error = event["error"] if isinstance(event["error"], dict) else {"message": str(event["error"])}
                raise UpstreamError(
                    f"Azure failed mid-answer: {error.get('message') or 'no message'}", code="azure_server_error"
                )
            yield event


async def _whole(response: httpx2.Response) -> AsyncIterator[dict[str, Any]]:
    """A whole (non-streamed) completion as JSON: one payload, mapped like a stream's."""
    with _reading_errors():
        completion = json.loads(await response.aread())
    if not isinstance(completion, dict):
        raise UpstreamError("unexpected answer from Azure: not a JSON object", code="azure_bad_response")
    yield completion


@contextmanager
def _reading_errors() -> Iterator[None]:
    """Failures while the body is read (after the status line) -> the same errors as failures before it."""
    try:
        yield
    except httpx2.TimeoutException as exc:
        if _connection_failed(exc):
            raise UpstreamError(f"lost Azure mid-answer ({_root_cause(exc)})", code="azure_unreachable") from exc
        raise UpstreamError("Azure stopped answering mid-answer", code="azure_timeout", status_code=504) from exc
    except (httpx2.RequestError, ssl.SSLError, anyio.EndOfStream) as exc:
        raise UpstreamError(f"lost Azure mid-answer ({_root_cause(exc)})", code="azure_unreachable") from exc
    except ValueError as exc:  # json.JSONDecodeError and undecodable text
        raise UpstreamError(f"unexpected answer from Azure: {exc}", code="azure_bad_response") from exc


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = exc
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:
        visited.add(id(seen))
        yield seen
        seen = seen.__cause__ or seen.__context__


def _root_cause(exc: BaseException) -> str:
    """The innermost error's type: says what broke without repeating addresses to the client."""
    *_, root = _causes(exc)
    return type(root).__name__


def _connection_failed(exc: BaseException) -> bool:
    """A "timeout" that was really a refused or dropped connection.

    The SDK's aiohttp adapter reports every aiohttp connection error as a connect timeout; the cause chain
    still holds the original error.
    """
    try:
        from aiohttp import ClientConnectionError
    except ImportError:  # pragma: no cover - aiohttp is a dependency; httpx errors are classified right
        return False
    return any(
        isinstance(cause, (ClientConnectionError, ConnectionError)) and not isinstance(cause, TimeoutError)
        for cause in _causes(exc)
    )


def _deadline_passed() -> DeadlineExceededError:
    return DeadlineExceededError("the request's deadline passed while Azure was answering", code="deadline_exceeded")


def _error_fields(exc: openai.APIError) -> tuple[str | None, str]:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body) if isinstance(body.get("error", body), dict) else body
    code = error.get("code") or getattr(exc, "code", None)
    message = error.get("message") or exc.message
    return (str(code) if code is not None else None), str(message)


def translate_error(exc: openai.APIError) -> MSServeError:
    """The one place where openai SDK errors become server errors."""
    code, message = _error_fields(exc)
    if isinstance(exc, openai.APITimeoutError) and not _connection_failed(exc):
        return UpstreamError("Azure did not answer in time", code="azure_timeout", status_code=504)
    if isinstance(exc, openai.APIConnectionError):
        return UpstreamError(f"cannot reach Azure: {exc.message}", code="azure_unreachable")
    if not isinstance(exc, openai.APIStatusError):
        return UpstreamError(f"unexpected answer from Azure: {exc.message}", code="azure_bad_response")
    status = exc.status_code
    if status == 400 and code == "content_filter":
        # The prompt tripped Azure's content filter: the client's problem, said in Azure's words.
        return InvalidRequestError(message, code="content_filter", param="prompt")
    if status in (400, 413, 422):
        return InvalidRequestError(f"Azure rejected the request: {message}", code="azure_invalid_request")
    if status in (401, 403):
        return UpstreamError(f"Azure refused our credentials ({status})", code="azure_auth_failed")
    if status == 404:
        return UpstreamError("Azure deployment or endpoint not found (404)", code="azure_not_found")
    if status == 429:
        return RateLimitError(f"Azure rate limit: {message}", code="azure_rate_limited")
    return UpstreamError(f"Azure failed ({status}): {message}", code="azure_server_error")
