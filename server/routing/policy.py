"""The policy around the router's score: when Azure may be used at all, and what each answer cost.

- ``CircuitBreaker``: after N consecutive Azure failures the circuit opens and Azure is skipped; after a
  cool-down one probe request is let through (half-open); its success closes the circuit, its failure re-opens it.
- ``SpendCap``: a daily (UTC) cap on estimated Azure spend.
- ``Prices`` and ``CostCounters``: estimated spend per tier and savings against sending everything to Azure,
  as plain counters the metrics layer reads.
- ``confidence``: the cascade's measure of a local answer (geometric-mean token probability).

Clocks are injected so tests drive time by hand.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from typing import Literal

from pydantic import BaseModel

from server.config import Settings
from server.engines.base import TokenLogprob, Usage
from server.routing.decision import Tier

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(
        self, failure_threshold: int = 5, cooldown_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ):
        self.failure_threshold = max(1, failure_threshold)
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_in_flight = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.cooldown_s:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        """May a request go to Azure now? In half-open state only one probe at a time is let through."""
        state = self.state
        if state == "closed":
            return True
        if state == "open" or self._probe_in_flight:
            return False
        self._probe_in_flight = True
        return True

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probe_in_flight = False

    def record_failure(self) -> None:
        self._failures += 1
        if self._probe_in_flight or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
        self._probe_in_flight = False


class Prices(BaseModel):
    """USD per million tokens."""

    azure_input: float = 2.50
    azure_output: float = 10.00
    local_input: float = 0.0
    local_output: float = 0.0

    def cost(self, tier: Tier, usage: Usage) -> float:
        if tier == "azure":
            rate_in, rate_out = self.azure_input, self.azure_output
        else:
            rate_in, rate_out = self.local_input, self.local_output
        return (usage.prompt_tokens * rate_in + usage.completion_tokens * rate_out) / 1_000_000


class SpendCap:
    """Estimated Azure spend per UTC day against an optional cap."""

    def __init__(self, daily_usd: float | None, today: Callable[[], date] = lambda: datetime.now(UTC).date()):
        self.daily_usd = daily_usd
        self._today = today
        self._day = today()
        self._spent = 0.0

    @property
    def spent_today(self) -> float:
        self._roll()
        return self._spent

    def exhausted(self) -> bool:
        return self.daily_usd is not None and self.spent_today >= self.daily_usd

    def add(self, usd: float) -> None:
        self._roll()
        self._spent += usd

    def _roll(self) -> None:
        today = self._today()
        if today != self._day:
            self._day, self._spent = today, 0.0


class CostCounters(BaseModel):
    """Monotonic counters since start-up (Prometheus counters read these)."""

    requests_local: int = 0  # engine calls (a cascade that escalates counts one of each)
    requests_azure: int = 0
    prompt_tokens_local: int = 0
    completion_tokens_local: int = 0
    prompt_tokens_azure: int = 0
    completion_tokens_azure: int = 0
    spend_azure_usd: float = 0.0  # estimated Azure spend
    cost_local_usd: float = 0.0  # estimated local cost at the configured local prices
    savings_usd: float = 0.0  # what all-Azure would have cost minus what was spent
    failovers: int = 0  # Azure wanted but unavailable or failing: served locally
    escalations_overload: int = 0  # local overloaded or down: sent to Azure
    azure_errors: int = 0  # failed Azure calls (before or during the stream)


def confidence(logprobs: Sequence[TokenLogprob]) -> float | None:
    """Geometric-mean token probability, exp(mean logprob), in [0, 1]; None without log-probabilities."""
    if not logprobs:
        return None
    return math.exp(sum(item.logprob for item in logprobs) / len(logprobs))


class RoutingPolicy:
    def __init__(
        self,
        *,
        breaker: CircuitBreaker | None = None,
        spend_cap: SpendCap | None = None,
        prices: Prices | None = None,
        escalate_when_queue_over: int | None = 16,
        cascade_threshold: float = 0.60,
        cascade_default: bool = False,
    ) -> None:
        self.breaker = breaker or CircuitBreaker()
        self.spend_cap = spend_cap or SpendCap(None)
        self.prices = prices or Prices()
        self.escalate_when_queue_over = escalate_when_queue_over
        self.cascade_threshold = cascade_threshold
        self.cascade_default = cascade_default
        self.counters = CostCounters()

    @classmethod
    def from_settings(cls, settings: Settings) -> RoutingPolicy:
        return cls(
            breaker=CircuitBreaker(settings.azure_breaker_failures, settings.azure_breaker_cooldown_s),
            spend_cap=SpendCap(settings.azure_daily_budget_usd),
            prices=Prices(
                azure_input=settings.azure_price_input_per_mtok,
                azure_output=settings.azure_price_output_per_mtok,
                local_input=settings.local_price_input_per_mtok,
                local_output=settings.local_price_output_per_mtok,
            ),
            escalate_when_queue_over=settings.escalate_when_queue_over,
            cascade_threshold=settings.cascade_threshold,
            cascade_default=settings.cascade_default,
        )

    def azure_blocked(self) -> str | None:
        """Why Azure may not be used now ("circuit open", "daily budget spent"), or None when it may.

        Call only when about to send: in half-open state a None answer reserves the one probe.
        """
        if self.spend_cap.exhausted():
            return "daily budget spent"
        if not self.breaker.allow():
            return "circuit open"
        return None

    def overloaded(self, waiting: int) -> bool:
        return self.escalate_when_queue_over is not None and waiting > self.escalate_when_queue_over

    def record_azure_success(self) -> None:
        self.breaker.record_success()

    def record_azure_failure(self) -> None:
        self.counters.azure_errors += 1
        self.breaker.record_failure()

    def account(self, calls: Sequence[tuple[Tier, Usage]]) -> None:
        """Count one request's engine calls (a cascade makes two) and its savings against all-Azure.

        The all-Azure baseline is the Azure call's own cost when there was one, else the local tokens at Azure prices.
        """
        c = self.counters
        spent = 0.0
        baseline: float | None = None
        for tier, usage in calls:
            cost = self.prices.cost(tier, usage)
            spent += cost
            if tier == "azure":
                baseline = cost
                c.requests_azure += 1
                c.prompt_tokens_azure += usage.prompt_tokens
                c.completion_tokens_azure += usage.completion_tokens
                c.spend_azure_usd += cost
                self.spend_cap.add(cost)
            else:
                c.requests_local += 1
                c.prompt_tokens_local += usage.prompt_tokens
                c.completion_tokens_local += usage.completion_tokens
                c.cost_local_usd += cost
        if baseline is None:
            baseline = sum(self.prices.cost("azure", usage) for _, usage in calls)
        c.savings_usd += baseline - spent
