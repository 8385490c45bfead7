"""What shadow and judge calls may spend: a gate they reserve through before each Azure call and settle after.

``BudgetGate`` is the interface (the spend ledger implements it too); ``PolicyBudgetGate`` is the adapter over the
routing policy's daily spend cap, so learning works without the ledger: a reservation is refused when the day's
budget would be passed, or when learning (shadow + judge) would pass its share of it
(``MSSERVE_ROUTER_SHADOW_BUDGET_SHARE``, default 0.1), so learning never starves real escalations. Settled
spend is added to the day's spend like any Azure call's. Without a daily budget nothing is refused on cost.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Literal, Protocol

from server.routing.policy import RoutingPolicy

Purpose = Literal["shadow", "judge"]
DEFAULT_SHARE = 0.1


@dataclass(frozen=True)
class Reservation:
    id: int
    usd: float
    purpose: Purpose


class BudgetGate(Protocol):
    def reserve(self, usd: float, purpose: Purpose = "shadow") -> Reservation | None: ...

    def settle(self, reservation: Reservation, actual_usd: float) -> None: ...

    def release(self, reservation: Reservation) -> None: ...


class PolicyBudgetGate:
    """The gate for a policy without a spend ledger (no Azure budget kept); thread-safe; UTC days.

    With a ledger, shadow and judge calls go through ``RoutingPolicy.admit`` instead (server.routing.shadow).
    """

    def __init__(
        self,
        policy: RoutingPolicy,
        share: float = DEFAULT_SHARE,
        today: Callable[[], date] = lambda: datetime.now(UTC).date(),
    ) -> None:
        self.policy = policy
        self.share = share
        self._today = today
        self._day = today()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, float] = {}
        self.spent_learning = 0.0  # settled learning spend today

    def _roll(self) -> None:
        today = self._today()
        if today != self._day:
            self._day, self.spent_learning = today, 0.0

    def reserve(self, usd: float, purpose: Purpose = "shadow") -> Reservation | None:
        with self._lock:
            self._roll()
            cap = self.policy.spend_cap
            daily = cap.daily_usd
            if daily is not None:
                pending = sum(self._pending.values())
                if cap.spent_today + pending + usd > daily:
                    return None
                if self.spent_learning + pending + usd > self.share * daily:
                    return None
            reservation = Reservation(next(self._ids), usd, purpose)
            self._pending[reservation.id] = usd
            return reservation

    def settle(self, reservation: Reservation, actual_usd: float) -> None:
        with self._lock:
            self._roll()
            self._pending.pop(reservation.id, None)
            self.spent_learning += actual_usd
            self.policy.counters.spend_azure_usd += actual_usd

    def release(self, reservation: Reservation) -> None:
        with self._lock:
            self._pending.pop(reservation.id, None)
