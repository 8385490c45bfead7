"""Dispatch: route overrides, failover, circuit breaker, budget, overload escalation and cascade.

The local tier is a scripted engine; the Azure tier is the real Azure engine against the fake Azure endpoint.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from server.errors import EngineUnavailableError, InvalidRequestError, RateLimitError, UpstreamError
from server.routing.decision import Decision
from server.routing.dispatch import Dispatcher, Routed
from server.routing.ledger_sqlite import SQLiteSpendLedger
from server.routing.policy import CircuitBreaker, Prices
from server.state import StateDB
from server.types import GenerationChunk, GenerationRequest, Message, TextPart
from tests.fakes.clock import Clock
from tests.fakes.fake_azure import ContentFiltered, FakeAzure, RateLimited, Reply, ServerError
from tests.fakes.scripted_engine import ScriptedEngine, answer
from tests.routing.conftest import dispatcher_on


class ThresholdRouter:
    """A stand-in scorer: 'hard' prompts score 0.9, others 0.1; threshold 0.5."""

    def decide(self, request: GenerationRequest) -> Decision:
        score = 0.9 if "hard" in request.messages[-1].text else 0.1
        if score >= 0.5:
            return Decision(tier="azure", score=score, reason=f"score {score:.2f} >= 0.50")
        return Decision(tier="local", score=score, reason=f"score {score:.2f} < 0.50")


def dispatcher(
    fake: FakeAzure | None, local: ScriptedEngine | None = None, **policy: Any
) -> AbstractAsyncContextManager[Dispatcher]:
    return dispatcher_on(fake, ThresholdRouter(), local, **policy)


def _request(text: str, *, logprobs: bool = False, max_tokens: int | None = None) -> GenerationRequest:
    request = GenerationRequest(request_id="r", messages=[Message(role="user", content=[TextPart(text=text)])])
    request.sampling.logprobs = logprobs
    request.sampling.max_tokens = max_tokens
    return request


async def _drain(routed: Routed) -> list[GenerationChunk]:
    return [routed.first] + [chunk async for chunk in routed.rest]


def _text(chunks: list[GenerationChunk]) -> str:
    return "".join(chunk.text for chunk in chunks)


async def test_router_sends_hard_prompts_to_azure(fake: FakeAzure) -> None:
    async with dispatcher(fake) as d:
        routed = await d.dispatch(_request("a hard question"), "auto", stream=True)
        chunks = await _drain(routed)
    assert routed.decision.tier == "azure" and routed.decision.score == 0.9
    assert routed.model == "gpt-4o-2024-11-20"  # what Azure says answered
    assert _text(chunks) == "Hello from Azure."
    assert len(fake.requests) == 1
    assert d.policy.counters.requests_azure == 1 and d.policy.counters.spend_azure_usd > 0


async def test_router_keeps_easy_prompts_local(fake: FakeAzure) -> None:
    async with dispatcher(fake) as d:
        routed = await d.dispatch(_request("an easy one"), None, stream=False)
        chunks = await _drain(routed)
    assert routed.decision.tier == "local" and routed.model == "local-test"
    assert _text(chunks) == "local answer"
    assert fake.requests == []
    assert d.policy.counters.requests_local == 1 and d.policy.counters.savings_usd > 0


async def test_server_error_fails_over_to_local_with_reason(fake: FakeAzure) -> None:
    fake.script.append(ServerError(500))
    async with dispatcher(fake) as d:
        routed = await d.dispatch(_request("hard"), "auto", stream=True)
        chunks = await _drain(routed)
    assert routed.decision.tier == "local"
    assert routed.decision.reason == "azure unavailable (azure_server_error); served locally"
    assert routed.decision.reason_class == "failover"
    assert _text(chunks) == "local answer"
    assert d.policy.counters.failovers == 1


async def test_rate_limit_budget_exhausted_fails_over_to_local(fake: FakeAzure) -> None:
    fake.script += [RateLimited(retry_after_ms=600)] * 3  # 1 s wait budget: the second wait does not fit
    async with dispatcher(fake) as d:
        routed = await d.dispatch(_request("hard"), "auto", stream=True)
    assert routed.decision.tier == "local"
    assert routed.decision.reason == "azure unavailable (azure_rate_limited); served locally"
    assert len(fake.requests) == 2


async def test_rate_limit_within_budget_still_answers_from_azure(fake: FakeAzure) -> None:
    fake.script.append(RateLimited(retry_after_ms=500))
    async with dispatcher(fake) as d:
        routed = await d.dispatch(_request("hard"), "auto", stream=True)
        await _drain(routed)
    assert routed.decision.tier == "azure"
    assert len(fake.requests) == 2


async def test_content_filter_goes_to_the_client_not_to_local(fake: FakeAzure) -> None:
    fake.script.append(ContentFiltered())
    local = ScriptedEngine()
    async with dispatcher(fake, local) as d:
        with pytest.raises(InvalidRequestError) as caught:
            await d.dispatch(_request("hard"), "auto", stream=True)
    assert caught.value.code == "content_filter" and caught.value.status_code == 400
    assert local.requests == []
    assert len(fake.requests) == 1


async def test_open_circuit_skips_azure_then_half_opens(fake: FakeAzure) -> None:
    clock = Clock()
    fake.script += [ServerError(500), ServerError(503)]
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=30, clock=clock)
    async with dispatcher(fake, breaker=breaker) as d:
        for _ in range(2):
            await _drain(await d.dispatch(_request("hard"), "auto", stream=True))
        assert breaker.state == "open"
        routed = await d.dispatch(_request("hard"), "auto", stream=True)
        assert routed.decision.reason == "azure unavailable (circuit open); served locally"
        assert routed.decision.reason_class == "failover"
        assert len(fake.requests) == 2  # the open circuit kept the third request away from Azure

        clock.now += 30  # cool-down over: one probe goes through, succeeds, and closes the circuit
        routed = await d.dispatch(_request("hard"), "auto", stream=True)
        await _drain(routed)
    assert routed.decision.tier == "azure"
    assert breaker.state == "closed"
    assert len(fake.requests) == 3


async def test_spent_budget_keeps_requests_local(fake: FakeAzure, tmp_path: Path) -> None:
    # One dollar per completion token; requests ask for one token, so each may cost exactly $1.
    ledger = SQLiteSpendLedger(StateDB(tmp_path), daily_usd=1.0)
    prices = Prices(azure_input=0.0, azure_output=1_000_000.0)
    fake.script.append(Reply(text="one"))
    async with dispatcher(fake, ledger=ledger, prices=prices) as d:
        await _drain(await d.dispatch(_request("hard", max_tokens=1), "auto", stream=True))  # spends the $1
        routed = await d.dispatch(_request("hard"), "auto", stream=True)
        with pytest.raises(RateLimitError) as caught:
            await d.dispatch(_request("hard"), "azure", stream=True)
    assert routed.decision.tier == "local"
    assert routed.decision.reason == "azure unavailable (daily budget spent); served locally"
    assert caught.value.code == "azure_budget_exhausted"
    assert len(fake.requests) == 1


async def test_overloaded_local_engine_escalates(fake: FakeAzure) -> None:
    async with dispatcher(fake, ScriptedEngine(waiting=9), escalate_when_queue_over=8) as d:
        routed = await d.dispatch(_request("easy"), "auto", stream=True)
        await _drain(routed)
    assert routed.decision.tier == "azure"
    assert routed.decision.reason == "local queue 9 > 8; escalated"
    assert routed.decision.reason_class == "overload"


async def test_local_refusal_escalates_in_auto_but_not_when_forced(fake: FakeAzure) -> None:
    local = ScriptedEngine(fail_with=EngineUnavailableError("down", code="engine_down"))
    async with dispatcher(fake, local) as d:
        routed = await d.dispatch(_request("easy"), "auto", stream=True)
        await _drain(routed)
        with pytest.raises(EngineUnavailableError):
            await d.dispatch(_request("easy"), "local", stream=True)
    assert routed.decision.tier == "azure"
    assert routed.decision.reason == "local unavailable (engine_down); escalated"
    assert routed.decision.reason_class == "overload"


async def test_route_overrides(fake: FakeAzure) -> None:
    async with dispatcher(fake) as d:
        local = await d.dispatch(_request("hard"), " LOCAL ", stream=True)
        azure = await d.dispatch(_request("easy"), "azure", stream=True)
        await _drain(local)
        await _drain(azure)
        with pytest.raises(InvalidRequestError) as caught:
            await d.dispatch(_request("easy"), "gpu", stream=True)
    assert (local.decision.tier, local.decision.reason_class) == ("local", "override")
    assert (azure.decision.tier, azure.decision.reason_class) == ("azure", "override")
    assert caught.value.code == "invalid_route"


async def test_forced_azure_errors_reach_the_client(fake: FakeAzure) -> None:
    fake.script.append(ServerError(500))
    async with dispatcher(fake) as d:
        with pytest.raises(UpstreamError):
            await d.dispatch(_request("easy"), "azure", stream=True)


async def test_azure_route_without_azure_is_a_clear_400() -> None:
    async with dispatcher(None) as d:
        with pytest.raises(InvalidRequestError) as caught:
            await d.dispatch(_request("hard"), "azure", stream=True)
        routed = await d.dispatch(_request("hard"), "auto", stream=True)
    assert caught.value.code == "azure_not_configured" and caught.value.status_code == 400
    assert routed.decision.reason_class == "no-azure"


async def test_cascade_escalates_on_low_confidence(fake: FakeAzure) -> None:
    local = ScriptedEngine(answer("unsure answer", prob=0.41, prompt_tokens=10))
    async with dispatcher(fake, local, cascade_threshold=0.6) as d:
        routed = await d.dispatch(_request("easy"), "cascade", stream=False)
        chunks = await _drain(routed)
    assert local.requests[0].sampling.logprobs is True
    assert routed.decision.tier == "azure"
    assert routed.decision.reason == "cascade: local confidence 0.41 < 0.60"
    assert routed.decision.reason_class == "cascade"
    assert _text(chunks) == "Hello from Azure."
    usage = [c.usage for c in chunks if c.usage]
    assert len(usage) == 1
    assert usage[0].prompt_tokens == 10 + 11 and usage[0].completion_tokens == 2 + 3  # both calls
    assert fake.requests[0].body.get("logprobs") is None  # the client did not ask for them
    assert d.policy.counters.requests_local == 1 and d.policy.counters.requests_azure == 1


async def test_cascade_keeps_confident_local_answers(fake: FakeAzure) -> None:
    local = ScriptedEngine(answer("sure answer", prob=0.95))
    async with dispatcher(fake, local, cascade_threshold=0.6) as d:
        routed = await d.dispatch(_request("hard"), "cascade", stream=False)
        chunks = await _drain(routed)
    assert routed.decision.tier == "local"
    assert routed.decision.reason == "cascade: local confidence 0.95 >= 0.60"
    assert all(not c.logprobs for c in chunks)  # asked for internally, not by the client
    assert fake.requests == []


async def test_cascade_falls_back_to_local_when_azure_fails(fake: FakeAzure) -> None:
    fake.script.append(ServerError(500))
    local = ScriptedEngine(answer("unsure", prob=0.2))
    async with dispatcher(fake, local) as d:
        routed = await d.dispatch(_request("easy"), "cascade", stream=False)
    assert routed.decision.tier == "local"
    assert routed.decision.reason == (
        "cascade: local confidence 0.20 < 0.60; azure unavailable (azure_server_error); served locally"
    )


async def test_cascade_default_applies_to_non_streamed_auto_only(fake: FakeAzure) -> None:
    local = ScriptedEngine(answer("sure", prob=0.99))
    async with dispatcher(fake, local, cascade_default=True) as d:
        unstreamed = await d.dispatch(_request("hard"), "auto", stream=False)
        streamed = await d.dispatch(_request("hard"), "auto", stream=True)
        await _drain(streamed)
    assert unstreamed.decision.reason_class == "cascade" and unstreamed.decision.tier == "local"
    assert streamed.decision.tier == "azure" and streamed.decision.reason_class == "score"


async def test_streamed_cascade_is_routed_as_auto(fake: FakeAzure) -> None:
    async with dispatcher(fake) as d:
        routed = await d.dispatch(_request("easy"), "cascade", stream=True)
    assert routed.decision.tier == "local"
    assert routed.decision.reason.startswith("cascade needs a non-streamed request; ")


async def test_closing_the_stream_early_still_accounts(fake: FakeAzure) -> None:
    fake.script.append(Reply(text="a b c d e f"))
    async with dispatcher(fake) as d:
        routed = await d.dispatch(_request("hard"), "auto", stream=True)
        await routed.rest.aclose()  # type: ignore[attr-defined]
    assert d.policy.counters.requests_azure == 1


async def test_prices_drive_the_counters(fake: FakeAzure) -> None:
    prices = Prices(azure_input=1_000_000.0, azure_output=0.0)  # one dollar per prompt token
    async with dispatcher(fake, prices=prices) as d:
        await _drain(await d.dispatch(_request("hard"), "auto", stream=True))
    assert d.policy.counters.spend_azure_usd == pytest.approx(11.0)  # the fake reports 11 prompt tokens
