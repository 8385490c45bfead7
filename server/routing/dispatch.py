"""Send a request to the engine its decision names, and hand back the stream with the decision.

The first chunk is fetched before ``dispatch`` returns, so that a failure before any output
(engine down, queue full, Azure failing) surfaces as an HTTP error or a failover, not as a broken
stream, and so that the response headers can carry the final decision.

Routes (the raw ``x-msserve-route`` header value):

    auto      the router decides; the policy may overrule it (Azure unavailable -> local,
              local overloaded -> Azure); with ``cascade_default`` non-streamed requests cascade
    local     always local
    azure     always Azure; its errors go to the client (400 ``azure_not_configured`` without Azure)
    cascade   non-streamed: answer locally with log-probabilities, escalate when confidence is low;
              streamed requests cannot be taken back, so they are routed as ``auto``
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from server.engines.base import Engine, GenerationChunk, GenerationRequest, Usage
from server.errors import (
    DeadlineExceededError,
    EngineUnavailableError,
    InvalidRequestError,
    MSServeError,
    RateLimitError,
    UpstreamError,
)
from server.routing.decision import Decision, Tier, local_only
from server.routing.policy import RoutingPolicy, confidence

ROUTE_VALUES = ("auto", "local", "azure", "cascade")
# Failures of one tier that another tier can make up for. Anything else (a 400, a content filter) is the answer.
FAILOVER_ERRORS = (UpstreamError, RateLimitError, DeadlineExceededError, EngineUnavailableError)


class Scorer(Protocol):
    """What the dispatcher needs from the router (server.routing.router.Router)."""

    def decide(self, request: GenerationRequest) -> Decision | Awaitable[Decision]: ...


class Routed(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    decision: Decision
    model: str  # the model that answers
    first: GenerationChunk
    rest: AsyncIterator[GenerationChunk]


async def _aclose(stream: AsyncIterator[GenerationChunk]) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()


async def _start(engine: Engine, request: GenerationRequest) -> tuple[GenerationChunk, AsyncIterator[GenerationChunk]]:
    chunks = engine.generate(request)
    try:
        return await anext(chunks), chunks
    except StopAsyncIteration:
        return GenerationChunk(finish_reason="stop"), chunks
    except BaseException:
        await _aclose(chunks)
        raise


async def _collect(engine: Engine, request: GenerationRequest) -> list[GenerationChunk]:
    chunks = engine.generate(request)
    try:
        return [chunk async for chunk in chunks] or [GenerationChunk(finish_reason="stop")]
    finally:
        await _aclose(chunks)


async def _replay(chunks: Sequence[GenerationChunk]) -> AsyncIterator[GenerationChunk]:
    for chunk in chunks:
        yield chunk


class _Tracked:
    """Pass a stream through and report its usage once when it ends, however it ends.

    A class, not an async generator: a generator closed before its first ``__anext__`` never runs its
    ``finally``, and the API layer may close ``rest`` without reading it (client gone after the first chunk).
    """

    def __init__(
        self,
        inner: AsyncIterator[GenerationChunk],
        usage: Usage | None,
        on_done: Callable[[Usage | None, BaseException | None], None],
    ) -> None:
        self._inner = inner
        self._usage = usage
        self._on_done = on_done
        self._done = False

    def __aiter__(self) -> _Tracked:
        return self

    async def __anext__(self) -> GenerationChunk:
        if self._done:
            raise StopAsyncIteration
        try:
            chunk = await anext(self._inner)
        except StopAsyncIteration:
            await self._finish(None)
            raise
        except BaseException as exc:
            await self._finish(exc)
            raise
        if chunk.usage is not None:
            self._usage = chunk.usage
        return chunk

    async def aclose(self) -> None:
        await self._finish(None)

    async def _finish(self, error: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        try:
            await _aclose(self._inner)
        finally:
            self._on_done(self._usage, error)


def _usage(chunks: Sequence[GenerationChunk]) -> Usage:
    found = [chunk.usage for chunk in chunks if chunk.usage is not None]
    return found[-1] if found else Usage()


def unsupported_by(engine: Engine | None, request: GenerationRequest) -> str | None:
    """Why ``engine`` cannot take ``request`` (an option only another engine has, e.g. vLLM's top_k), or None.

    A request the router would send there is served locally instead; one forced there gets the engine's 400.
    """
    if engine is None:
        return None
    asked = sorted(set(request.sampling.extra.asked()) - engine.capabilities.extras)
    return f"{asked[0]} is not supported there" if asked else None


def parse_route(route: str | None) -> str:
    value = (route or "auto").strip().lower()
    if value not in ROUTE_VALUES:
        raise InvalidRequestError(
            f"x-msserve-route must be one of {', '.join(ROUTE_VALUES)}", param="x-msserve-route", code="invalid_route"
        )
    return value


class Dispatcher:
    """Routes between the local engine and, when configured, Azure; ``policy.counters`` holds the cost counters."""

    def __init__(
        self,
        local: Engine,
        azure: Engine | None = None,
        *,
        router: Scorer | None = None,
        policy: RoutingPolicy | None = None,
    ) -> None:
        self.local = local
        self.azure = azure
        self.router = router
        self.policy = policy or RoutingPolicy()

    async def dispatch(self, request: GenerationRequest, route: str | None = None, *, stream: bool) -> Routed:
        route = parse_route(route)
        if self.azure is None:
            if route == "azure":
                raise InvalidRequestError(
                    "x-msserve-route: azure was asked for, but no Azure endpoint is configured",
                    param="x-msserve-route",
                    code="azure_not_configured",
                )
            if route == "local":
                decision = await self._override(request, "local")
            else:
                decision = await self._without_azure(request)
            return await self._local(request, decision, may_escalate=False)
        if route == "local":
            return await self._local(request, await self._override(request, "local"), may_escalate=False)
        if route == "azure":
            return await self._forced_azure(request, await self._override(request, "azure"))
        wants_cascade = route == "cascade" or self.policy.cascade_default
        if wants_cascade and not stream:
            return await self._cascade(request)
        return await self._auto(request, stream=stream, streamed_cascade=route == "cascade")

    # -- auto ------------------------------------------------------------------------------------------------
    async def _auto(self, request: GenerationRequest, *, stream: bool, streamed_cascade: bool = False) -> Routed:
        health = self.local.health()
        if not health.ready or self.policy.overloaded(health.waiting):
            why = (
                f"local engine {health.state}"
                if not health.ready
                else f"local queue {health.waiting} > {self.policy.escalate_when_queue_over}"
            )
            blocked = unsupported_by(self.azure, request) or self.policy.azure_blocked()
            if blocked is None:
                self.policy.counters.escalations_overload += 1
                decision = Decision(tier="azure", reason=f"{why}; escalated", reason_class="overload")
                return await self._azure(request, decision, reserved=True)
        decision = await self._decide(request)
        if decision.cascade and not stream:  # the router itself may ask for a cascade
            return await self._cascade(request)
        if streamed_cascade:
            decision = decision.model_copy(
                update={"reason": f"cascade needs a non-streamed request; {decision.reason}"}
            )
        if decision.tier == "azure":
            return await self._azure(request, decision)
        return await self._local(request, decision)

    async def _override(self, request: GenerationRequest, tier: Tier) -> Decision:
        """A forced tier still carries the router's score, so operators see what auto would have done."""
        scored = await self._decide(request) if self.router is not None else None
        score = scored.score if scored else None
        note = f" (score {score:.2f} not used)" if score is not None else ""
        return Decision(tier=tier, score=score, reason=f"x-msserve-route: {tier}{note}", reason_class="override")

    async def _without_azure(self, request: GenerationRequest) -> Decision:
        if self.router is None:
            return local_only()
        scored = await self._decide(request)
        verdict = "would escalate" if scored.tier == "azure" else "local anyway"
        return Decision(tier="local", score=scored.score, reason=f"no Azure endpoint configured; {verdict}: "
                        f"{scored.reason}", reason_class="no-azure")

    async def _decide(self, request: GenerationRequest) -> Decision:
        if self.router is None:
            return Decision(tier="local", reason="no router configured", reason_class="no-router")
        decision = self.router.decide(request)
        if inspect.isawaitable(decision):
            decision = await decision
        return decision

    # -- engines with failover ---------------------------------------------------------------------------------
    async def _azure(self, request: GenerationRequest, decision: Decision, *, reserved: bool = False) -> Routed:
        """Azure, or local when Azure is unavailable or fails before its first chunk."""
        assert self.azure is not None
        blocked = unsupported_by(self.azure, request) or (None if reserved else self.policy.azure_blocked())
        if blocked is not None:
            return await self._failover(request, decision, blocked)
        try:
            first, rest = await _start(self.azure, request)
        except FAILOVER_ERRORS as exc:
            self.policy.record_azure_failure()
            return await self._failover(request, decision, exc.code)
        except MSServeError:
            self.policy.record_azure_success()  # Azure answered (e.g. content filter): it is up
            raise
        except BaseException:
            self.policy.record_azure_failure()  # also frees a half-open probe on cancellation
            raise
        self.policy.record_azure_success()
        return self._routed(decision, self.azure, first, rest, "azure")

    async def _failover(self, request: GenerationRequest, decision: Decision, why: str) -> Routed:
        self.policy.counters.failovers += 1
        local = Decision(
            tier="local",
            score=decision.score,
            reason=f"azure unavailable ({why}); served locally",
            reason_class="failover",
        )
        return await self._local(request, local, may_escalate=False)

    async def _local(self, request: GenerationRequest, decision: Decision, *, may_escalate: bool = True) -> Routed:
        """Local, or Azure when the local engine refuses (down, queue full) and escalation is allowed."""
        try:
            first, rest = await _start(self.local, request)
        except (EngineUnavailableError, RateLimitError) as exc:
            if not may_escalate or self.azure is None or self.policy.azure_blocked() is not None:
                raise
            self.policy.counters.escalations_overload += 1
            up = Decision(
                tier="azure",
                score=decision.score,
                reason=f"local unavailable ({exc.code}); escalated",
                reason_class="overload",  # counted with the queue-depth escalations, as escalations_overload is
            )
            return await self._forced_azure(request, up)
        return self._routed(decision, self.local, first, rest, "local")

    async def _forced_azure(self, request: GenerationRequest, decision: Decision | None = None) -> Routed:
        """Azure with no way back: its errors go to the client."""
        assert self.azure is not None
        decision = decision or Decision(tier="azure", reason="x-msserve-route: azure", reason_class="override")
        if self.policy.spend_cap.exhausted():
            raise RateLimitError("the daily Azure budget is spent", code="azure_budget_exhausted")
        try:
            first, rest = await _start(self.azure, request)
        except FAILOVER_ERRORS:
            self.policy.record_azure_failure()
            raise
        self.policy.record_azure_success()
        return self._routed(decision, self.azure, first, rest, "azure")

    def _routed(
        self,
        decision: Decision,
        engine: Engine,
        first: GenerationChunk,
        rest: AsyncIterator[GenerationChunk],
        tier: Tier,
    ) -> Routed:
        return Routed(
            decision=decision, model=first.model or engine.name, first=first, rest=self._tracked(tier, first, rest)
        )

    def _tracked(
        self, tier: Tier, first: GenerationChunk, rest: AsyncIterator[GenerationChunk]
    ) -> AsyncIterator[GenerationChunk]:
        def done(usage: Usage | None, error: BaseException | None) -> None:
            if tier == "azure" and isinstance(error, FAILOVER_ERRORS):
                self.policy.record_azure_failure()  # failed mid-stream: too late to fail over, not to count
            self.policy.account([(tier, usage or Usage())])

        return _Tracked(rest, first.usage, done)

    # -- cascade ---------------------------------------------------------------------------------------------
    async def _cascade(self, request: GenerationRequest) -> Routed:
        assert self.azure is not None
        probe = request.model_copy(deep=True)
        probe.sampling.logprobs = True
        try:
            local_chunks = await _collect(self.local, probe)
        except (EngineUnavailableError, RateLimitError) as exc:
            decision = Decision(
                tier="azure",
                reason=f"cascade: local unavailable ({exc.code}); escalated",
                reason_class="failover",
                cascade=True,
            )
            return await self._forced_azure(request, decision)
        score = confidence([lp for chunk in local_chunks for lp in chunk.logprobs])
        if not request.sampling.logprobs:
            local_chunks = [chunk.model_copy(update={"logprobs": []}) for chunk in local_chunks]
        local_usage = _usage(local_chunks)
        threshold = self.policy.cascade_threshold
        if score is None or score >= threshold:
            reason = (
                "cascade: no local log-probabilities; served locally"
                if score is None
                else f"cascade: local confidence {score:.2f} >= {threshold:.2f}"
            )
            return self._answer(
                Decision(tier="local", reason=reason, reason_class="cascade", cascade=True),
                self.local,
                local_chunks,
                [("local", local_usage)],
            )
        reason = f"cascade: local confidence {score:.2f} < {threshold:.2f}"
        blocked = unsupported_by(self.azure, request) or self.policy.azure_blocked()
        if blocked is None:
            try:
                azure_chunks = await _collect(self.azure, request)
            except FAILOVER_ERRORS as exc:
                self.policy.record_azure_failure()
                blocked = exc.code
            except MSServeError:
                self.policy.record_azure_success()
                raise
            else:
                self.policy.record_azure_success()
                return self._escalated(reason, local_chunks, local_usage, azure_chunks)
        self.policy.counters.failovers += 1
        decision = Decision(
            tier="local",
            reason=f"{reason}; azure unavailable ({blocked}); served locally",
            reason_class="failover",
            cascade=True,
        )
        return self._answer(decision, self.local, local_chunks, [("local", local_usage)])

    def _escalated(
        self, reason: str, local_chunks: list[GenerationChunk], local_usage: Usage, azure_chunks: list[GenerationChunk]
    ) -> Routed:
        assert self.azure is not None
        azure_usage = _usage(azure_chunks)
        # The response's usage counts both calls: the client's request paid for both.
        total = Usage(
            prompt_tokens=local_usage.prompt_tokens + azure_usage.prompt_tokens,
            completion_tokens=local_usage.completion_tokens + azure_usage.completion_tokens,
        )
        azure_chunks = [chunk.model_copy(update={"usage": None}) for chunk in azure_chunks]
        azure_chunks[-1] = azure_chunks[-1].model_copy(update={"usage": total})
        decision = Decision(tier="azure", reason=reason, reason_class="cascade", cascade=True)
        calls: list[tuple[Tier, Usage]] = [("local", local_usage), ("azure", azure_usage)]
        return self._answer(decision, self.azure, azure_chunks, calls)

    def _answer(
        self, decision: Decision, engine: Engine, chunks: list[GenerationChunk], calls: list[tuple[Tier, Usage]]
    ) -> Routed:
        """A complete (collected) answer: accounted now, replayed as a stream."""
        self.policy.account(calls)
        model = next((chunk.model for chunk in chunks if chunk.model), None) or engine.name
        return Routed(decision=decision, model=model, first=chunks[0], rest=_replay(chunks[1:]))
