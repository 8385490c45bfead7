"""Dispatch with the spend ledger and the circuit breaker: every way an Azure call can end settles its
reservation and gives back its half-open probe.

Local is a scripted engine; Azure is the real engine against the fake Azure; the ledger is real SQLite.
"""

from __future__ import annotations

import asyncio
import gc
import math
from contextlib import AbstractAsyncContextManager, suppress
from pathlib import Path
from typing import Any

import pytest

from server.errors import EngineUnavailableError, InvalidRequestError, RateLimitError, UpstreamError
from server.routing.decision import Decision
from server.routing.dispatch import Dispatcher, Routed
from server.routing.ledger_sqlite import SQLiteSpendLedger
from server.routing.metering import prompt_tokens
from server.routing.policy import CircuitBreaker, Prices
from server.state import StateDB
from server.types import GenerationChunk, GenerationRequest, Message, SamplingParams, TextPart
from tests.fakes.clock import Clock
from tests.fakes.fake_azure import Behaviour, ContentFiltered, FakeAzure, RateLimited, Reply, ServerError
from tests.fakes.scripted_engine import ScriptedEngine, answer
from tests.routing.conftest import dispatcher_on

# A dollar a token, in and out: a charge in dollars reads as a token count.
PER_TOKEN = Prices(azure_input=1_000_000.0, azure_output=1_000_000.0)


class HardIsAzure:
    def decide(self, request: GenerationRequest) -> Decision:
        hard = "hard" in request.messages[-1].text
        return Decision(tier="azure" if hard else "local", score=0.9 if hard else 0.1, reason="test")


@pytest.fixture
def ledger(tmp_path: Path) -> SQLiteSpendLedger:
    return SQLiteSpendLedger(StateDB(tmp_path), daily_usd=None)  # no cap: these tests read what is charged


def dispatcher(
    fake: FakeAzure, local: ScriptedEngine | None = None, **policy: Any
) -> AbstractAsyncContextManager[Dispatcher]:
    policy.setdefault("prices", PER_TOKEN)
    return dispatcher_on(fake, HardIsAzure(), local, **policy)


def _request(text: str = "hard", *, max_tokens: int | None = 16, stream: bool = True) -> GenerationRequest:
    return GenerationRequest(
        request_id="r",
        messages=[Message(role="user", content=[TextPart(text=text)])],
        sampling=SamplingParams(max_tokens=max_tokens),
        stream=stream,
    )


async def _drain(routed: Routed) -> list[GenerationChunk]:
    return [routed.first] + [chunk async for chunk in routed.rest]


async def _charged(ledger: SQLiteSpendLedger) -> float:
    spent = await ledger.spent_today()  # runs after every queued settle
    assert ledger.db.query("SELECT count(*) FROM azure_spend_open")[0][0] == 0, "a reservation was left open"
    return spent


async def _until_azure_has_it(fake: FakeAzure) -> None:
    while not fake.requests:
        await asyncio.sleep(0.01)


def _streamed(*texts: str) -> int:
    return max(len(texts), math.ceil(len("".join(texts).encode()) / 3))


# -- money -----------------------------------------------------------------------------------------------------


async def test_a_finished_stream_is_charged_azure_s_own_usage(fake: FakeAzure, ledger: SQLiteSpendLedger) -> None:
    fake.script.append(Reply(text="a b c", prompt_tokens=11))
    async with dispatcher(fake, ledger=ledger) as d:
        await _drain(await d.dispatch(_request(), "auto", stream=True))
    assert await _charged(ledger) == pytest.approx(11 + 3)
    assert d.policy.counters.spend_azure_usd == pytest.approx(11 + 3)


async def test_a_stream_the_client_cut_off_is_charged_what_it_streamed(
    fake: FakeAzure, ledger: SQLiteSpendLedger
) -> None:
    fake.script.append(Reply(text="one two three four five six"))
    request = _request()
    async with dispatcher(fake, ledger=ledger) as d:
        routed = await d.dispatch(request, "auto", stream=True)
        second = await anext(routed.rest)
        await routed.rest.aclose()  # type: ignore[attr-defined]  # the client left before Azure's usage chunk
    assert (routed.first.text, second.text) == ("one", " two")
    expected = prompt_tokens(request) + _streamed("one", " two")
    assert await _charged(ledger) == pytest.approx(expected)
    assert d.policy.counters.spend_azure_usd == pytest.approx(expected)


async def test_a_stream_azure_cut_off_is_charged_what_it_streamed(fake: FakeAzure, ledger: SQLiteSpendLedger) -> None:
    fake.script.append(Reply(text="one two three four", fail_after_chunks=2))
    request = _request()
    async with dispatcher(fake, ledger=ledger) as d:
        routed = await d.dispatch(request, "azure", stream=True)
        with pytest.raises(UpstreamError):
            await _drain(routed)
    assert await _charged(ledger) == pytest.approx(prompt_tokens(request) + _streamed("one", " two"))


async def test_a_stream_dropped_unclosed_is_still_charged(fake: FakeAzure, ledger: SQLiteSpendLedger) -> None:
    fake.script.append(Reply(text="one two three"))
    request = _request()
    async with dispatcher(fake, ledger=ledger) as d:
        routed = await d.dispatch(request, "azure", stream=True)
        del routed  # neither read to its end nor closed
        gc.collect()
        assert await _charged(ledger) == pytest.approx(prompt_tokens(request) + _streamed("one"))


@pytest.mark.parametrize(
    ("behaviour", "route"),
    [
        ([ServerError(500)], "auto"),
        ([ContentFiltered()], "auto"),
        ([RateLimited(retry_after_ms=600)] * 3, "auto"),
        ([ServerError(400)], "azure"),
        ([ServerError(503)], "azure"),
    ],
    ids=["5xx", "content-filter", "429", "forced-4xx", "forced-5xx"],
)
async def test_a_refused_call_is_released_not_charged(
    fake: FakeAzure, ledger: SQLiteSpendLedger, behaviour: list[Behaviour], route: str
) -> None:
    fake.script += behaviour
    async with dispatcher(fake, ledger=ledger) as d:
        with suppress(UpstreamError, InvalidRequestError, RateLimitError):
            await _drain(await d.dispatch(_request(), route, stream=True))
    assert fake.requests
    assert await _charged(ledger) == 0.0


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
async def test_a_call_cancelled_before_its_answer_is_charged_what_azure_may_bill(
    fake: FakeAzure, ledger: SQLiteSpendLedger, stream: bool
) -> None:
    fake.script.append(Reply(delay_s=5.0))
    request = _request(max_tokens=40, stream=stream)
    async with dispatcher(fake, ledger=ledger) as d:
        task = asyncio.create_task(d.dispatch(request, "azure", stream=stream))
        await _until_azure_has_it(fake)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # A stream stops when its connection closes (the prompt was read); a whole answer is finished and billed.
    expected = prompt_tokens(request) + (0 if stream else 40)
    assert await _charged(ledger) == pytest.approx(expected)


async def test_forced_azure_gets_a_clear_error_when_the_budget_cannot_cover_it(fake: FakeAzure, tmp_path: Path) -> None:
    ledger = SQLiteSpendLedger(StateDB(tmp_path), daily_usd=100.0)
    async with dispatcher(fake, ledger=ledger) as d:
        with pytest.raises(RateLimitError) as caught:
            await d.dispatch(_request(max_tokens=200), "azure", stream=True)  # may cost over $200
        routed = await d.dispatch(_request(max_tokens=200), "auto", stream=True)
    assert caught.value.code == "azure_budget_exhausted" and caught.value.status_code == 429
    assert "daily budget too low for this request" in caught.value.message
    assert routed.decision.tier == "local"
    assert routed.decision.reason == "azure unavailable (daily budget too low for this request); served locally"
    assert fake.requests == []


async def test_a_failing_ledger_never_means_unlimited_spend(fake: FakeAzure, tmp_path: Path) -> None:
    ledger = SQLiteSpendLedger(StateDB(tmp_path), daily_usd=100.0)
    ledger.db.close()
    async with dispatcher(fake, ledger=ledger) as d:
        routed = await d.dispatch(_request(), "auto", stream=True)
        with pytest.raises(EngineUnavailableError) as caught:
            await d.dispatch(_request(), "azure", stream=True)
    assert routed.decision.tier == "local" and routed.decision.reason_class == "failover"
    assert caught.value.code == "azure_budget_unavailable" and caught.value.status_code == 503
    assert fake.requests == []


# -- the half-open probe -----------------------------------------------------------------------------------------

ENTRIES = {
    # how the request reaches Azure: (local engine, route, text, stream)
    "router": (lambda: ScriptedEngine(), "auto", "hard", True),
    "local-down": (
        lambda: ScriptedEngine(fail_with=EngineUnavailableError("down", code="engine_down")),
        "auto",
        "easy",
        True,
    ),
    "cascade": (lambda: ScriptedEngine(answer("unsure", prob=0.2)), "cascade", "easy", False),
}


@pytest.mark.parametrize("entry", list(ENTRIES))
@pytest.mark.parametrize("outcome", ["content-filter", "other-4xx", "cancelled"])
async def test_the_half_open_probe_is_given_back_in_every_outcome(
    fake: FakeAzure, ledger: SQLiteSpendLedger, entry: str, outcome: str
) -> None:
    make_local, route, text, stream = ENTRIES[entry]
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=30, clock=clock)
    breaker.record_failure()
    clock.now += 30
    assert breaker.state == "half_open"
    fake.script.append(
        {"content-filter": ContentFiltered(), "other-4xx": ServerError(400), "cancelled": Reply(delay_s=5.0)}[outcome]
    )
    async with dispatcher(fake, make_local(), breaker=breaker, ledger=ledger) as d:
        task = asyncio.create_task(d.dispatch(_request(text, stream=stream), route, stream=stream))
        if outcome == "cancelled":
            await _until_azure_has_it(fake)
            task.cancel()
        with pytest.raises((asyncio.CancelledError, InvalidRequestError)):
            await task
    assert len(fake.requests) == 1  # the probe did reach Azure
    if outcome == "cancelled":
        assert breaker.state == "half_open"  # no verdict on Azure, and the probe is free for the next request
    else:
        assert breaker.state == "closed"  # Azure answered, with a 4xx: it is up
    assert breaker.allow()
    await _charged(ledger)


async def test_a_failed_probe_reopens_and_a_successful_one_closes(fake: FakeAzure, ledger: SQLiteSpendLedger) -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=30, clock=clock)
    breaker.record_failure()
    clock.now += 30
    fake.script.append(ServerError(500))
    async with dispatcher(fake, breaker=breaker, ledger=ledger) as d:
        routed = await d.dispatch(_request(), "auto", stream=True)
        assert routed.decision.reason_class == "failover" and breaker.state == "open"
        clock.now += 30
        await _drain(await d.dispatch(_request(), "auto", stream=True))
    assert breaker.state == "closed"
