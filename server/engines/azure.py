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
import inspect
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import parsedate_to_datetime
from typing import Any, Literal, TypeVar

import httpx2  # the openai SDK's HTTP client: its errors surface while a response body is read
import openai
from openai import AsyncAzureOpenAI, AsyncOpenAI, Omit

from server.config import Settings
from server.engines.azure_wire import _deadline_passed, _sse_payloads, _whole, build_body, map_chunk, translate_error
from server.engines.base import EngineCapabilities, EngineHealth
from server.engines.extras import refuse_unsupported
from server.errors import RateLimitError
from server.types import (
    GenerationChunk,
    GenerationRequest,
)

ApiStyle = Literal["v1", "deployments", "foundry"]
TokenProvider = Callable[[], Awaitable[str]]
Sleep = Callable[[float], Awaitable[None]]
_T = TypeVar("_T")

ENTRA_SCOPE = "https://ai.azure.com/.default"
FOUNDRY_DEFAULT_API_VERSION = "2024-05-01-preview"


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
        refuse_unsupported(
            request.sampling.extra,
            self.capabilities.extras,
            "Azure escalation target",
            "; keep such a request local with the header x-msserve-route: local",
        )
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
