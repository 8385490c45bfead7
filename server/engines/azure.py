"""The Azure escalation engine: Azure OpenAI or Azure AI Foundry through the official ``openai`` SDK.

Three endpoint forms (``MSSERVE_AZURE_API_STYLE``, inferred when ``auto``):

    v1           https://RES.openai.azure.com/openai/v1/chat/completions         (model = deployment, no api-version)
    deployments  https://RES.openai.azure.com/openai/deployments/DEP/chat/completions?api-version=...
    foundry      https://RES.services.ai.azure.com/models/chat/completions?api-version=...   (model in the body)

Auth is the ``api-key`` header or Entra ID (``azure-identity``, imported only when asked for). The SDK's own
retries are off: 429s are retried here, honouring ``retry-after-ms`` / ``retry-after`` within a bounded budget,
and every other failure is translated once into ``server.errors`` so the routing policy can fail over.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import io
import json
import math
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from typing import Any, Literal, TypeVar

import anyio
import httpx2  # the openai SDK's HTTP client: its errors surface while a response body is read
import openai
from openai import AsyncAzureOpenAI, AsyncOpenAI, Omit

from server.config import Settings
from server.engines.base import EngineCapabilities, EngineHealth
from server.engines.extras import refuse_unsupported
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

ApiStyle = Literal["v1", "deployments", "foundry"]
TokenProvider = Callable[[], Awaitable[str]]
Sleep = Callable[[float], Awaitable[None]]
_T = TypeVar("_T")

ENTRA_SCOPE = "https://ai.azure.com/.default"
FOUNDRY_DEFAULT_API_VERSION = "2024-05-01-preview"
_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


def azure_configured(settings: Settings) -> bool:
    """Enough settings to call Azure: an endpoint, a deployment and a credential (a key, or Entra ID)."""
    has_credential = settings.azure_auth == "entra" or settings.azure_api_key is not None
    return bool(settings.azure_endpoint and settings.azure_deployment and has_credential)


def resolve_api_style(endpoint: str, api_version: str | None, style: str = "auto") -> ApiStyle:
    if style in ("v1", "deployments", "foundry"):
        return style  # type: ignore[return-value]
    path = endpoint.rstrip("/").lower()
    if path.endswith("/models") or (".services.ai.azure.com" in path and "/openai" not in path):
        return "foundry"
    if path.endswith("/openai/v1") or api_version in (None, "", "v1"):
        return "v1"
    return "deployments"


def _base_url(endpoint: str, style: ApiStyle) -> str:
    root = endpoint.rstrip("/")
    if style == "foundry":
        return root if root.endswith("/models") else f"{root}/models"
    if style == "v1":
        return root if root.endswith("/openai/v1") else f"{root.removesuffix('/openai')}/openai/v1"
    return root.removesuffix("/openai")  # the SDK appends /openai/deployments/DEP


def resolve_http_client(choice: str = "auto") -> Literal["aiohttp", "httpx"]:
    """aiohttp when asked for or, with ``auto``, when installed; the SDK's httpx client otherwise."""
    if choice == "httpx":
        return "httpx"
    try:
        import aiohttp  # noqa: F401  # the SDK's aiohttp client needs it
    except ImportError:
        if choice == "aiohttp":
            raise ValueError(
                "MSSERVE_AZURE_HTTP_CLIENT=aiohttp needs the aiohttp package (pip install aiohttp)"
            ) from None
        return "httpx"
    return "aiohttp"


def entra_token_provider(scope: str = ENTRA_SCOPE) -> TokenProvider:
    """A bearer-token provider from azure-identity's DefaultAzureCredential (optional dependency)."""
    try:
        from azure.identity.aio import DefaultAzureCredential, get_bearer_token_provider
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "MSSERVE_AZURE_AUTH=entra needs the azure-identity package (pip install azure-identity)"
        ) from exc
    provider: TokenProvider = get_bearer_token_provider(DefaultAzureCredential(), scope)
    return provider


def retry_after_seconds(headers: Any) -> float | None:
    """Azure's wait hint: ``retry-after-ms`` (milliseconds) first, then ``retry-after`` (seconds or HTTP date)."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class AzureEngine:
    """Escalation target. ``name`` is the deployment; chunks carry the model Azure reports having used."""

    # Azure has none of vLLM's options; a cache salt has nothing to do there (no prefix cache shared with us).
    capabilities = EngineCapabilities(
        images=True, tools=True, response_format=True, logprobs=True, extras=frozenset({"cache_salt"})
    )

    def __init__(
        self,
        *,
        endpoint: str,
        deployment: str,
        api_key: str | None = None,
        api_version: str | None = None,
        api_style: str = "auto",
        token_provider: TokenProvider | None = None,
        timeout_s: float = 60.0,
        max_attempts: int = 3,
        max_retry_wait_s: float = 10.0,
        http_client: str = "auto",
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if api_key is None and token_provider is None:
            raise ValueError("AzureEngine needs an api_key or a token_provider")
        self.name = deployment
        self.deployment = deployment
        self.style = resolve_api_style(endpoint, api_version, api_style)
        self.api_version = api_version or (FOUNDRY_DEFAULT_API_VERSION if self.style == "foundry" else None)
        if self.style == "deployments" and not self.api_version:
            raise ValueError("the deployments form needs MSSERVE_AZURE_API_VERSION")
        self.endpoint = endpoint
        self._api_key = api_key
        self._token_provider = token_provider
        self.timeout_s = timeout_s
        self.max_attempts = max(1, max_attempts)
        self.max_retry_wait_s = max_retry_wait_s
        self.http_client = resolve_http_client(http_client)
        self._sleep = sleep
        self._clock = clock
        self._client: AsyncOpenAI | None = None
        self._running = 0
        self._stopped = False

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> AzureEngine | None:
        """The engine the settings describe, or None when Azure is not configured."""
        if not azure_configured(settings):
            return None
        assert settings.azure_endpoint and settings.azure_deployment
        key = settings.azure_api_key.get_secret_value() if settings.azure_api_key else None
        options: dict[str, Any] = {
            "endpoint": settings.azure_endpoint,
            "deployment": settings.azure_deployment,
            "api_version": settings.azure_api_version,
            "api_style": settings.azure_api_style,
            "timeout_s": settings.azure_timeout_s,
            "max_attempts": settings.azure_max_attempts,
            "max_retry_wait_s": settings.azure_max_retry_wait_s,
            "http_client": settings.azure_http_client,
        }
        if settings.azure_auth == "entra":
            options["token_provider"] = entra_token_provider()
        else:
            options["api_key"] = key
        options.update(overrides)
        return cls(**options)

    # -- lifecycle -------------------------------------------------------------------------------------------
    def _make_client(self) -> AsyncOpenAI:
        common: dict[str, Any] = {"max_retries": 0, "timeout": self.timeout_s}  # retries are ours (429 policy)
        if self.http_client == "aiohttp":
            common["http_client"] = openai.DefaultAioHttpClient(timeout=self.timeout_s)
        if self.style == "deployments":
            auth: dict[str, Any] = (
                {"api_key": self._api_key} if self._api_key else {"azure_ad_token_provider": self._token_provider}
            )
            return AsyncAzureOpenAI(
                azure_endpoint=_base_url(self.endpoint, "deployments"),
                azure_deployment=self.deployment,
                api_version=self.api_version,
                **auth,
                **common,
            )
        query = {"api-version": self.api_version} if self.style == "foundry" else None
        if self._api_key:
            # api-key header, and no "Authorization: Bearer <key>" beside it (see _extra_headers).
            return AsyncOpenAI(
                base_url=_base_url(self.endpoint, self.style),
                api_key=self._api_key,
                default_headers={"api-key": self._api_key},
                default_query=query,
                **common,
            )
        return AsyncOpenAI(
            base_url=_base_url(self.endpoint, self.style), api_key=self._token_provider, default_query=query, **common
        )

    def _extra_headers(self) -> dict[str, Any]:
        if self.style != "deployments" and self._api_key:
            return {"Authorization": Omit()}
        return {}

    async def start(self) -> None:
        if self._client is None:
            self._client = self._make_client()
        self._stopped = False

    async def stop(self) -> None:
        self._stopped = True
        if self._client is not None:
            await self._client.close()
            self._client = None

    def health(self) -> EngineHealth:
        if self._stopped:
            return EngineHealth(ready=False, state="stopped", running=self._running)
        ready = self._client is not None
        return EngineHealth(ready=ready, state="ready" if ready else "starting", running=self._running)

    # -- generation ------------------------------------------------------------------------------------------
    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if self._client is None:
            await self.start()
        refuse_unsupported(request.sampling.extra, self.capabilities.extras, "Azure escalation target",
                           "; keep such a request local with the header x-msserve-route: local")
        self._running += 1
        try:
            response = await self._within_deadline(request, self._open(request))
            try:
                payloads = _sse_payloads(response) if request.stream else _whole(response)
                while True:
                    # Each read waits at most until the request's deadline: the SDK's timeout is per read, so a
                    # stream that keeps trickling would otherwise outlive the request by any length.
                    try:
                        data = await self._within_deadline(request, anext(payloads))
                    except StopAsyncIteration:
                        break
                    mapped = map_chunk(data)
                    if mapped is not None:
                        yield mapped
            finally:
                await response.aclose()  # also when the client went away: frees the Azure connection
        finally:
            self._running -= 1

    async def _within_deadline(self, request: GenerationRequest, step: Awaitable[_T]) -> _T:
        """``await step``, cut off (DeadlineExceededError) when the request's deadline passes first."""
        if request.deadline is None:
            return await step
        remaining = request.deadline - self._clock()
        if remaining <= 0:
            if inspect.iscoroutine(step):
                step.close()  # never started: close it rather than leave it unawaited
            raise _deadline_passed()
        try:
            async with asyncio.timeout(remaining) as bound:
                return await step
        except TimeoutError:
            if bound.expired():
                raise _deadline_passed() from None
            raise

    async def _open(self, request: GenerationRequest) -> httpx2.Response:
        """Send the request; the response comes back unread (status checked, 429s retried as Azure says).

        ``client.post`` (the SDK's documented way to a raw response) keeps the SDK's endpoint forms, auth and
        error classes, and skips what this server does not need from it: a typed walk over the body (our body
        is plain JSON already) and a pydantic object per streamed chunk (we read the JSON as it comes).
        """
        assert self._client is not None
        # Encoding images takes milliseconds to tenths of a second: not on the event loop.
        if any(message.images for message in request.messages):
            body = await asyncio.to_thread(build_body, request, self.deployment)
        else:
            body = build_body(request, self.deployment)
        waited = 0.0
        for attempt in range(1, self.max_attempts + 1):
            options: Any = {"timeout": self._timeout_for(request), "headers": self._extra_headers()}  # RequestOptions
            try:
                return await self._client.post(
                    "/chat/completions", body=body, cast_to=httpx2.Response, options=options, stream=True
                )
            except openai.RateLimitError as exc:
                wait = retry_after_seconds(exc.response.headers)
                wait = min(2.0 ** (attempt - 1), 8.0) if wait is None else wait
                if attempt == self.max_attempts or waited + wait > self._retry_budget(request, waited):
                    raise RateLimitError(
                        f"Azure rate limit: gave up after {attempt} attempt(s) and {waited:.1f}s of waiting",
                        code="azure_rate_limited",
                        headers={"retry-after": str(math.ceil(wait))},
                    ) from exc
                await self._sleep(wait)
                waited += wait
            except openai.APIError as exc:
                raise translate_error(exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _retry_budget(self, request: GenerationRequest, waited: float) -> float:
        budget = self.max_retry_wait_s
        if request.deadline is not None:
            budget = min(budget, waited + max(0.0, request.deadline - self._clock()))
        return budget

    def _timeout_for(self, request: GenerationRequest) -> float:
        if request.deadline is None:
            return self.timeout_s
        return max(0.001, min(self.timeout_s, request.deadline - self._clock()))


# -- wire mapping ------------------------------------------------------------------------------------------------


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
