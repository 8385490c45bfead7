"""The routing policy: circuit breaker, daily spend cap, prices and cost counters, cascade confidence."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from server.config import Settings
from server.errors import InvalidRequestError, UpstreamError
from server.routing.azure_call import AzureBlocked
from server.routing.ledger_sqlite import SQLiteSpendLedger
from server.routing.metering import prompt_tokens
from server.routing.policy import CircuitBreaker, Permit, Prices, RoutingPolicy, confidence
from server.state import StateDB
from server.types import GenerationRequest, Message, TextPart, TokenLogprob, Usage
from tests.fakes.clock import Clock


def _request() -> GenerationRequest:
    return GenerationRequest(request_id="r", messages=[Message(role="user", content=[TextPart(text="hi")])])


def test_breaker_opens_after_n_consecutive_failures() -> None:
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=30, clock=Clock(1000.0))
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # a success in between resets the count
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    assert not breaker.allow()


def test_breaker_half_opens_after_cooldown_and_lets_one_probe_through() -> None:
    clock = Clock(1000.0)
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=30, clock=clock)
    breaker.record_failure()
    clock.now += 29.9
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.state == "half_open"
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one at a time
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow()


def test_failed_probe_reopens_for_a_full_cooldown() -> None:
    clock = Clock(1000.0)
    breaker = CircuitBreaker(failure_threshold=5, cooldown_s=10, clock=clock)
    for _ in range(5):
        breaker.record_failure()
    clock.now += 10
    assert breaker.allow()
    breaker.record_failure()  # one failed probe is enough, whatever the threshold
    assert breaker.state == "open"
    clock.now += 9
    assert not breaker.allow()
    clock.now += 1
    assert breaker.allow()


def test_prices_per_million_tokens() -> None:
    prices = Prices(azure_input=2.0, azure_output=8.0, local_input=0.1, local_output=0.2)
    usage = Usage(prompt_tokens=500_000, completion_tokens=250_000)
    assert prices.cost("azure", usage) == pytest.approx(1.0 + 2.0)
    assert prices.cost("local", usage) == pytest.approx(0.05 + 0.05)


def test_cost_accounting_and_savings() -> None:
    policy = RoutingPolicy(prices=Prices(azure_input=2.0, azure_output=8.0))
    million = Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000)
    policy.account([("local", million)])
    assert policy.counters.savings_usd == pytest.approx(10.0)  # what Azure would have charged
    policy.account([("azure", million)])
    assert policy.counters.spend_azure_usd == pytest.approx(10.0)
    assert policy.counters.savings_usd == pytest.approx(10.0)  # an Azure answer saves nothing
    # A cascade that escalated paid for both calls: its savings are negative (the local call's cost).
    policy.prices = Prices(azure_input=2.0, azure_output=8.0, local_input=1.0, local_output=1.0)
    policy.account([("local", million), ("azure", million)])
    assert policy.counters.savings_usd == pytest.approx(10.0 - 2.0)
    assert policy.counters.requests_local == 2 and policy.counters.requests_azure == 2


async def test_blocked_by_open_circuit() -> None:
    policy = RoutingPolicy(breaker=CircuitBreaker(failure_threshold=1, clock=Clock(1000.0)))
    call = await policy.admit(_request())
    call.finish(UpstreamError("down"))
    with pytest.raises(AzureBlocked) as caught:
        await policy.admit(_request())
    assert caught.value.reason == "circuit open" and caught.value.kind == "circuit"
    await policy.admit(_request(), use_breaker=False)  # a forced call does not ask the breaker


def test_overload_limit() -> None:
    assert RoutingPolicy(escalate_when_queue_over=4).overloaded(5)
    assert not RoutingPolicy(escalate_when_queue_over=4).overloaded(4)
    assert not RoutingPolicy(escalate_when_queue_over=None).overloaded(10_000)


def test_confidence_is_geometric_mean_probability() -> None:
    logprobs = [TokenLogprob(token="a", logprob=math.log(0.9)), TokenLogprob(token="b", logprob=math.log(0.4))]
    assert confidence(logprobs) == pytest.approx(math.sqrt(0.9 * 0.4))
    assert confidence([]) is None


def test_from_settings() -> None:
    settings = Settings(
        azure_daily_budget_usd=5.0,
        azure_price_input_per_mtok=1.0,
        azure_breaker_failures=2,
        cascade_threshold=0.7,
        escalate_when_queue_over=3,
    )
    policy = RoutingPolicy.from_settings(settings)
    assert policy.spend_cap.daily_usd is None  # no ledger given: nothing capped or stored
    assert policy.reserve_max_tokens == 4096
    assert policy.prices.azure_input == 1.0
    assert policy.breaker.failure_threshold == 2
    assert policy.cascade_threshold == 0.7
    assert policy.escalate_when_queue_over == 3


def test_a_probe_with_no_verdict_is_given_back() -> None:
    clock = Clock(1000.0)
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=30, clock=clock)
    breaker.record_failure()
    clock.now += 30
    probe = breaker.acquire()
    assert probe is not None and probe.probe is not None
    assert breaker.acquire() is None  # one probe at a time
    breaker.release(probe)  # the client left: no verdict on Azure
    assert breaker.state == "half_open"
    assert breaker.acquire() is not None  # the next request may probe


def test_a_lost_probe_stops_blocking_after_its_lease() -> None:
    clock = Clock(1000.0)
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=30, clock=clock, probe_lease_s=60)
    breaker.record_failure()
    clock.now += 30
    assert breaker.acquire() is not None  # never given back
    clock.now += 59
    assert breaker.acquire() is None
    clock.now += 1
    assert breaker.acquire() is not None


def test_another_call_failing_does_not_take_the_probe_s_verdict() -> None:
    clock = Clock(1000.0)
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=30, clock=clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 30
    probe = breaker.acquire()
    assert probe is not None
    stale = Permit(probe=(probe.probe or 0) + 99)  # a permit from an earlier probe whose lease ran out
    breaker.release(stale)
    assert breaker.acquire() is None  # the probe in flight is still the one out
    breaker.record_success(probe)
    assert breaker.state == "closed"


async def test_admit_reserves_the_most_a_call_may_cost(tmp_path: Path) -> None:
    ledger = SQLiteSpendLedger(StateDB(tmp_path), daily_usd=None)
    policy = RoutingPolicy(ledger=ledger, prices=Prices(azure_input=1e6, azure_output=1e6), reserve_max_tokens=100)
    request = _request()
    call = await policy.admit(request)
    assert call.reservation is not None
    assert call.reservation.usd == pytest.approx(prompt_tokens(request) + 100)  # no max_tokens: the default
    request.sampling.max_tokens = 7
    capped = await policy.admit(request, purpose="judge")
    assert capped.reservation is not None and capped.reservation.purpose == "judge"
    assert capped.reservation.usd == pytest.approx(prompt_tokens(request) + 7)
    call.finish(None, Usage(prompt_tokens=3, completion_tokens=2))
    capped.finish(InvalidRequestError("refused"))
    assert await ledger.spent_today() == pytest.approx(5.0)
    assert policy.spend_cap.spent_today == pytest.approx(5.0)
