"""What telemetry reads of the running server, as narrow read-only protocols.

Telemetry observes and never drives: it gets these views, not the server's ``Services``, so what it may touch is
written down here. ``server.api.deps.Services`` satisfies ``ServerView``, the concurrency limiter ``LimiterStats``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from server.engines.base import EngineHealth
    from server.routing.policy import CostCounters, Prices


class EngineView(Protocol):
    @property
    def name(self) -> str: ...

    def health(self) -> EngineHealth: ...


class BreakerView(Protocol):
    @property
    def state(self) -> str: ...  # closed | open | half_open


class SpendView(Protocol):
    @property
    def spent_today(self) -> float: ...


class PolicyView(Protocol):
    """The routing policy's running figures: counters, the circuit breaker, prices, today's Azure spend."""

    @property
    def counters(self) -> CostCounters: ...

    @property
    def breaker(self) -> BreakerView: ...

    @property
    def prices(self) -> Prices: ...

    @property
    def spend_cap(self) -> SpendView: ...


class DispatcherView(Protocol):
    @property
    def policy(self) -> PolicyView: ...

    @property
    def azure(self) -> object | None: ...  # None: no Azure endpoint configured


class ServerView(Protocol):
    @property
    def engine(self) -> EngineView: ...

    @property
    def dispatcher(self) -> DispatcherView: ...

    @property
    def draining(self) -> bool: ...


class LimiterStats(Protocol):
    """The server's own model-request slots (server.middleware.concurrency)."""

    @property
    def running(self) -> int: ...

    @property
    def waiting(self) -> int: ...

    @property
    def reading(self) -> int: ...  # bodies still arriving: no slot yet
