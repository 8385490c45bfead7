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

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from server.engines.base import Engine
from server.errors import (
    DeadlineExceededError,
    EngineUnavailableError,
    InvalidRequestError,
    RateLimitError,
    UpstreamError,
)
from server.routing import streams
from server.routing.azure_call import AzureBlocked, AzureCall
from server.routing.decision import Decision, Tier, local_only
from server.routing.policy import RoutingPolicy, confidence
from server.types import GenerationChunk, GenerationRequest, Usage

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
            call = None
            if unsupported_by(self.azure, request) is None:
                # When Azure cannot take it either, the router decides below, and local it is.
                with contextlib.suppress(AzureBlocked):
                    call = await self.policy.admit(request)
            if call is not None:
                self.policy.counters.escalations_overload += 1
                decision = Decision(tier="azure", reason=f"{why}; escalated", reason_class="overload")
                return await self._azure(request, decision, call=call)
        decision = await self._decide(request)
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
    async def _azure(self, request: GenerationRequest, decision: Decision, *, call: AzureCall | None = None) -> Routed:
        """Azure, or local when Azure is unavailable or fails before its first chunk."""
        assert self.azure is not None
        if call is None:
            unsupported = unsupported_by(self.azure, request)
            if unsupported is not None:
                return await self._failover(request, decision, unsupported)
            try:
                call = await self.policy.admit(request)
            except AzureBlocked as blocked:
                return await self._failover(request, decision, blocked.reason)
        try:
            first, rest = await self._start_azure(call, request)
        except FAILOVER_ERRORS as exc:
            return await self._failover(request, decision, exc.code)
        return self._routed(decision, self.azure, first, rest, "azure", call)

    async def _start_azure(
        self, call: AzureCall, request: GenerationRequest
    ) -> tuple[GenerationChunk, AsyncIterator[GenerationChunk]]:
        """The first chunk from Azure; however the start fails, the call's reservation and permit are settled."""
        assert self.azure is not None
        try:
            first, rest = await streams.start(self.azure, request)
        except BaseException as exc:
            self._account_azure(call.finish(exc))
            raise
        call.observe(first)
        call.answered()
        return first, rest

    def _account_azure(self, billed: Usage | None) -> None:
        if billed is not None:
            self.policy.account([("azure", billed)])

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
            first, rest = await streams.start(self.local, request)
        except (EngineUnavailableError, RateLimitError) as exc:
            if not may_escalate or self.azure is None:
                raise
            try:
                call = await self.policy.admit(request)
            except AzureBlocked:
                raise exc from None
            self.policy.counters.escalations_overload += 1
            up = Decision(
                tier="azure",
                score=decision.score,
                reason=f"local unavailable ({exc.code}); escalated",
                reason_class="overload",  # counted with the queue-depth escalations, as escalations_overload is
            )
            return await self._forced_azure(request, up, call=call)
        return self._routed(decision, self.local, first, rest, "local")

    async def _forced_azure(
        self, request: GenerationRequest, decision: Decision | None = None, *, call: AzureCall | None = None
    ) -> Routed:
        """Azure with no way back: its errors go to the client. The breaker is not asked (the client insists);
        the budget is: a spent budget is a 429 ``azure_budget_exhausted``."""
        assert self.azure is not None
        decision = decision or Decision(tier="azure", reason="x-msserve-route: azure", reason_class="override")
        if call is None:
            try:
                call = await self.policy.admit(request, use_breaker=False)
            except AzureBlocked as blocked:
                raise blocked.client_error() from None
        first, rest = await self._start_azure(call, request)
        return self._routed(decision, self.azure, first, rest, "azure", call)

    def _routed(
        self,
        decision: Decision,
        engine: Engine,
        first: GenerationChunk,
        rest: AsyncIterator[GenerationChunk],
        tier: Tier,
        call: AzureCall | None = None,
    ) -> Routed:
        return Routed(
            decision=decision,
            model=first.model or engine.name,
            first=first,
            rest=self._tracked(tier, first, rest, call),
        )

    def _tracked(
        self, tier: Tier, first: GenerationChunk, rest: AsyncIterator[GenerationChunk], call: AzureCall | None = None
    ) -> AsyncIterator[GenerationChunk]:
        def done(usage: Usage | None, error: BaseException | None) -> None:
            if call is not None:
                # Settles the reservation; a failure mid-stream counts against the breaker (too late to fail
                # over, not to count); a stream cut off before Azure's usage chunk is charged what it streamed.
                usage = call.finish(error, usage)
            self.policy.account([(tier, usage or Usage())])

        return streams.Tracked(rest, first.usage, done, call.observe if call is not None else None)

    # -- cascade ---------------------------------------------------------------------------------------------
    async def _cascade(self, request: GenerationRequest) -> Routed:
        assert self.azure is not None
        probe = request.model_copy(deep=True)
        probe.sampling.logprobs = True
        try:
            local_chunks = await streams.collect(self.local, probe)
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
        local_usage = streams.usage(local_chunks)
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
        blocked = unsupported_by(self.azure, request)
        call = None
        if blocked is None:
            try:
                call = await self.policy.admit(request)
            except AzureBlocked as refused:
                blocked = refused.reason
        if call is not None:
            try:
                azure_chunks, azure_usage = await self._collect_azure(call, request)
            except FAILOVER_ERRORS as exc:
                blocked = exc.code
            else:
                return self._escalated(reason, local_chunks, local_usage, azure_chunks, azure_usage)
        self.policy.counters.failovers += 1
        decision = Decision(
            tier="local",
            reason=f"{reason}; azure unavailable ({blocked}); served locally",
            reason_class="failover",
            cascade=True,
        )
        return self._answer(decision, self.local, local_chunks, [("local", local_usage)])

    async def _collect_azure(self, call: AzureCall, request: GenerationRequest) -> tuple[list[GenerationChunk], Usage]:
        """A whole Azure answer and the usage charged for it; the call is settled however it ends."""
        assert self.azure is not None
        try:
            chunks = await streams.collect(self.azure, request)
        except BaseException as exc:
            self._account_azure(call.finish(exc))
            raise
        for chunk in chunks:
            call.observe(chunk)
        found = [chunk.usage for chunk in chunks if chunk.usage is not None]
        billed = call.finish(None, found[-1] if found else None)
        return chunks, billed or Usage()

    def _escalated(
        self,
        reason: str,
        local_chunks: list[GenerationChunk],
        local_usage: Usage,
        azure_chunks: list[GenerationChunk],
        azure_billed: Usage,
    ) -> Routed:
        assert self.azure is not None
        # The client sees what Azure reported; the budget was charged azure_billed (an estimate if it reported none).
        azure_usage = streams.usage(azure_chunks)
        # The response's usage counts both calls: the client's request paid for both.
        total = Usage(
            prompt_tokens=local_usage.prompt_tokens + azure_usage.prompt_tokens,
            completion_tokens=local_usage.completion_tokens + azure_usage.completion_tokens,
        )
        azure_chunks = [chunk.model_copy(update={"usage": None}) for chunk in azure_chunks]
        azure_chunks[-1] = azure_chunks[-1].model_copy(update={"usage": total})
        decision = Decision(tier="azure", reason=reason, reason_class="cascade", cascade=True)
        calls: list[tuple[Tier, Usage]] = [("local", local_usage), ("azure", azure_billed)]
        return self._answer(decision, self.azure, azure_chunks, calls)

    def _answer(
        self, decision: Decision, engine: Engine, chunks: list[GenerationChunk], calls: list[tuple[Tier, Usage]]
    ) -> Routed:
        """A complete (collected) answer: accounted now, replayed as a stream."""
        self.policy.account(calls)
        model = next((chunk.model for chunk in chunks if chunk.model), None) or engine.name
        return Routed(decision=decision, model=model, first=chunks[0], rest=streams.replay(chunks[1:]))
