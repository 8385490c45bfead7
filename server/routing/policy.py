"""The policy around the router's score: when Azure may be used at all, and what each answer cost.

- ``CircuitBreaker``: after N consecutive Azure failures the circuit opens and Azure is skipped; after a
  cool-down one probe request is let through (half-open); its success closes the circuit, its failure re-opens it,
  and an outcome with no verdict (the client left) frees it for the next request.
- ``RoutingPolicy.admit``: leave for one Azure call from the breaker and the daily budget (``server.routing.ledger``:
  the call's most possible cost is reserved first); the ``AzureCall`` it returns settles both however it ends.
- ``Prices`` and ``CostCounters``: estimated spend per tier and savings against sending everything to Azure,
  as plain counters the metrics layer reads.
- ``confidence``: the cascade's measure of a local answer (geometric-mean token probability).

Clocks are injected so tests drive time by hand.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

from server.config import Settings
from server.routing.azure_call import AzureBlocked, AzureCall
from server.routing.decision import Tier
from server.routing.ledger import BudgetRefused, LedgerUnavailable, Purpose, SpendLedger
from server.routing.metering import reserve_usage
from server.types import GenerationRequest, TokenLogprob, Usage

BreakerState = Literal["closed", "open", "half_open"]


class Permit(BaseModel):
    """Leave to call Azure; ``probe`` is the half-open probe's number, which its outcome must give back."""

    model_config = ConfigDict(frozen=True)

    probe: int | None = None


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int = 5,
        cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        probe_lease_s: float = 300.0,
    ):
        self.failure_threshold = max(1, failure_threshold)
        self.cooldown_s = cooldown_s
        # A probe whose outcome never comes back (a bug, a lost task) stops blocking the next one after this long.
        self.probe_lease_s = probe_lease_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probe: int | None = None  # the probe in flight
        self._probe_since = 0.0
        self._probes = 0

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.cooldown_s:
            return "half_open"
        return "open"

    def acquire(self) -> Permit | None:
        """Leave to call Azure now, or None. In half-open state one probe at a time gets a numbered permit."""
        state = self.state
        if state == "closed":
            return Permit()
        if state == "open":
            return None
        if self._probe is not None and self._clock() - self._probe_since < self.probe_lease_s:
            return None
        self._probes += 1
        self._probe, self._probe_since = self._probes, self._clock()
        return Permit(probe=self._probe)

    async def acquire_async(self) -> Permit | None:
        """``acquire`` as ``RoutingPolicy.admit`` asks for it: a shared breaker (``server.routing.breaker_redis``)
        asks its store here."""
        return self.acquire()

    def allow(self) -> bool:
        return self.acquire() is not None

    def record_success(self, permit: Permit | None = None) -> None:
        """Azure answered: the circuit closes (also for a verdict such as a content-filter 400)."""
        self._failures = 0
        self._opened_at = None
        self._probe = None

    def record_failure(self, permit: Permit | None = None) -> None:
        """Azure failed. A failed probe re-opens the circuit for a full cool-down, whatever the count."""
        self._failures += 1
        # No permit (older callers): a failure while a probe is out is taken to be the probe's.
        probe = self._probe is not None and (permit is None or permit.probe == self._probe)
        if probe or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
        if probe:
            self._probe = None

    def release(self, permit: Permit | None) -> None:
        """No verdict (the caller left, the call was never made): free the probe, leave the state as it is."""
        if permit is not None and permit.probe is not None and permit.probe == self._probe:
            self._probe = None

    def close(self) -> None:
        """Nothing to let go of in process; a shared breaker finishes its queued writes."""


def open_breaker(settings: Settings) -> CircuitBreaker:
    """The breaker the settings describe: shared through Redis when ``MSSERVE_REDIS_URL`` is set, else in process."""
    # A probe is out at most one call's length: its timeout on every attempt plus the 429 waits.
    probe_lease_s = settings.azure_timeout_s * settings.azure_max_attempts + settings.azure_max_retry_wait_s
    if settings.redis_url is not None:
        from server.routing.breaker_redis import SharedCircuitBreaker  # the redis package is an extra

        return SharedCircuitBreaker(
            settings.redis_url.get_secret_value(),
            settings.azure_breaker_failures,
            settings.azure_breaker_cooldown_s,
            probe_lease_s=probe_lease_s,
            timeout_s=settings.redis_timeout_s,
        )
    return CircuitBreaker(settings.azure_breaker_failures, settings.azure_breaker_cooldown_s,
                          probe_lease_s=probe_lease_s)


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


class SpendView:
    """Today's Azure spend as the metrics and the dashboard read it: the ledger's last figures, no I/O."""

    def __init__(self, ledger: SpendLedger | None) -> None:
        self._ledger = ledger

    @property
    def daily_usd(self) -> float | None:
        return self._ledger.daily_usd if self._ledger is not None else None

    @property
    def spent_today(self) -> float:
        return self._ledger.snapshot().spent_usd if self._ledger is not None else 0.0


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
        ledger: SpendLedger | None = None,
        prices: Prices | None = None,
        reserve_max_tokens: int = 4096,
        escalate_when_queue_over: int | None = 16,
        cascade_threshold: float = 0.60,
        cascade_default: bool = False,
    ) -> None:
        self.breaker = breaker or CircuitBreaker()
        self.ledger = ledger  # None: Azure spend is counted but neither capped nor stored
        self.prices = prices or Prices()
        self.reserve_max_tokens = reserve_max_tokens
        self.escalate_when_queue_over = escalate_when_queue_over
        self.cascade_threshold = cascade_threshold
        self.cascade_default = cascade_default
        self.counters = CostCounters()

    @classmethod
    def from_settings(cls, settings: Settings, *, ledger: SpendLedger | None = None) -> RoutingPolicy:
        return cls(
            breaker=open_breaker(settings),
            ledger=ledger,
            prices=Prices(
                azure_input=settings.azure_price_input_per_mtok,
                azure_output=settings.azure_price_output_per_mtok,
                local_input=settings.local_price_input_per_mtok,
                local_output=settings.local_price_output_per_mtok,
            ),
            reserve_max_tokens=settings.azure_reserve_max_tokens,
            escalate_when_queue_over=settings.escalate_when_queue_over,
            cascade_threshold=settings.cascade_threshold,
            cascade_default=settings.cascade_default,
        )

    @property
    def spend_cap(self) -> SpendView:
        return SpendView(self.ledger)

    async def admit(
        self, request: GenerationRequest, *, purpose: Purpose = "escalation", use_breaker: bool = True
    ) -> AzureCall:
        """Leave for one Azure call: the circuit breaker's (unless ``use_breaker`` is off) and a budget
        reservation of the most the call may cost. Raises ``AzureBlocked`` with the reason when either says no.

        The returned call must be finished (``AzureCall.finish``) however it ends: that settles both.
        """
        permit = await self.breaker.acquire_async() if use_breaker else Permit()
        if permit is None:
            raise AzureBlocked("circuit open", kind="circuit")
        estimate = reserve_usage(request, self.reserve_max_tokens)
        reservation = None
        if self.ledger is not None:
            try:
                reservation = await self.ledger.reserve(self.prices.cost("azure", estimate), purpose=purpose)
            except BudgetRefused as refused:
                self.breaker.release(permit)
                raise AzureBlocked(refused.reason, kind="budget", detail=refused.detail) from None
            except LedgerUnavailable as exc:
                self.breaker.release(permit)
                raise AzureBlocked("spend ledger unavailable", kind="ledger", detail=str(exc)) from None
            except BaseException:
                self.breaker.release(permit)
                raise
        return AzureCall(self, reservation=reservation, permit=permit, estimate=estimate, whole=not request.stream)

    def overloaded(self, waiting: int) -> bool:
        return self.escalate_when_queue_over is not None and waiting > self.escalate_when_queue_over

    def record_azure_success(self, permit: Permit | None = None) -> None:
        self.breaker.record_success(permit)

    def record_azure_failure(self, permit: Permit | None = None) -> None:
        self.counters.azure_errors += 1
        self.breaker.record_failure(permit)

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
                c.spend_azure_usd += cost  # the budget is charged through the ledger (AzureCall.finish)
            else:
                c.requests_local += 1
                c.prompt_tokens_local += usage.prompt_tokens
                c.completion_tokens_local += usage.completion_tokens
                c.cost_local_usd += cost
        if baseline is None:
            baseline = sum(self.prices.cost("azure", usage) for _, usage in calls)
        c.savings_usd += baseline - spent
