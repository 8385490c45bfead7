"""The Azure spend ledger: the daily (UTC) budget is reserved before a call and settled after it.

Checking the budget and charging it as two steps let any number of concurrent calls through a nearly spent
budget. Here a call first *reserves* what it may cost; the reservation counts against the day at once, and
is refused when it does not fit. After the call it is *settled* to what Azure really charged (or
*released* when Azure charged nothing).

API (``SpendLedger``; every Azure caller goes through it, escalations, shadow calls and the judge alike)::

    try:
        reservation = await ledger.reserve(estimate_usd, purpose="shadow")   # "escalation" | "shadow" | "judge"
    except BudgetRefused as refused:       # the day's budget (or the shadow share) cannot cover the estimate
        ...skip the call; refused.reason says why
    except LedgerUnavailable:              # the store is failing: treat as refused, never as unlimited
        ...skip the call
    try:
        usage = await call_azure()
    except BaseException:
        ledger.release(reservation)        # Azure charged nothing (refused before any work)
        raise                              # (or settle at an estimate when it may have worked: see below)
    ledger.settle(reservation, prices.cost("azure", usage))

- ``reserve(usd, purpose=...)`` is async (it takes a write lock on the store) and raises ``BudgetRefused``
  or ``LedgerUnavailable``. A reservation counts against the UTC day it was made on, and settles there.
- ``settle(reservation, usd)`` and ``release(reservation)`` are plain calls on purpose: they run in
  ``finally`` blocks and cancellation paths, where an ``await`` may itself be cancelled before it runs and the
  reservation would leak. The write is queued and done in order; both are idempotent per reservation.
- ``await spent_today()``: settled spend plus open reservations, this UTC day, after every queued write.
- ``snapshot()``: the last figures seen, without I/O (metrics, dashboard).
- Purposes other than ``"escalation"`` together may use at most ``shadow_share`` of the daily budget
  (``MSSERVE_ROUTER_SHADOW_BUDGET_SHARE``, default 0.1), so learning never starves real escalations.
  Without a daily budget nothing is capped, shadow calls included; spend is still recorded.
- The simplest way for a shadow or judge caller: ``call = await policy.admit(request, purpose="shadow")``
  (``server.routing.policy``) asks the circuit breaker and reserves the request's most possible cost in one
  step, raising ``AzureBlocked`` when either says no; then ``call.observe(chunk)`` for what streams and
  ``call.finish(error, usage)`` exactly once, however the call ends (``server.routing.azure_call``).

``SQLiteSpendLedger`` (``server.routing.ledger_sqlite``) is the one-box implementation: the day's totals live in the
shared state database (``server.state``), so a restart or a crash loop cannot reset the cap, and every reservation
is one ``BEGIN IMMEDIATE`` transaction, so processes sharing the folder cannot overspend together either. A
reservation left open by a process that died is settled *at its reserved amount* when the next ledger opens the
store: the real cost is unknown, and the reserved amount is the most that call could have cost, so the cap errs on
the safe side (the day's figure may overstate the spend; it never understates it).
``RedisSpendLedger`` (``server.routing.ledger_redis``) is the same protocol for N replicas, one Lua script per
operation; ``open_spend_ledger`` picks it when ``MSSERVE_REDIS_URL`` is set.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, date, datetime
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from server.config import Settings
from server.state import StateDB, default_state_dir

log = logging.getLogger(__name__)

Purpose = Literal["escalation", "shadow", "judge"]
PURPOSES: tuple[Purpose, ...] = ("escalation", "shadow", "judge")
class Reservation(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    day: str  # ISO UTC date it counts against
    purpose: Purpose
    usd: float


class SpendSnapshot(BaseModel):
    day: str
    daily_usd: float | None
    settled_usd: float = 0.0
    reserved_usd: float = 0.0  # open reservations
    by_purpose: dict[str, float] = Field(default_factory=dict)  # settled + reserved

    @property
    def spent_usd(self) -> float:
        return self.settled_usd + self.reserved_usd


class BudgetRefused(Exception):
    """The day's budget, or the share non-escalation purposes may use, cannot cover the estimate."""

    def __init__(self, reason: str, detail: str, *, purpose: Purpose, estimate_usd: float, spent_usd: float) -> None:
        super().__init__(detail)
        self.reason = reason  # short, for routing reasons ("daily budget spent")
        self.detail = detail
        self.purpose = purpose
        self.estimate_usd = estimate_usd
        self.spent_usd = spent_usd


class LedgerUnavailable(Exception):
    """The store behind the ledger failed: callers treat it as a refusal, so spend never becomes unlimited."""


class SpendLedger(Protocol):
    daily_usd: float | None
    shadow_share: float

    async def reserve(self, usd: float, *, purpose: Purpose = "escalation") -> Reservation: ...

    def settle(self, reservation: Reservation, usd: float) -> None: ...

    def release(self, reservation: Reservation) -> None: ...

    async def spent_today(self) -> float: ...

    def snapshot(self) -> SpendSnapshot: ...

    def close(self) -> None: ...


def utc_today() -> date:
    return datetime.now(UTC).date()


def refusal(
    snapshot: SpendSnapshot, usd: float, purpose: Purpose, budget: float | None, shadow_share: float
) -> BudgetRefused | None:
    """Why ``usd`` more for ``purpose`` does not fit the day's figures (None: it fits). Every ledger's one rule."""
    if budget is None:
        return None
    spent = snapshot.spent_usd
    if spent + usd > budget + 1e-9:
        reason = "daily budget spent" if spent >= budget else "daily budget too low for this request"
        return BudgetRefused(
            reason,
            f"{reason}: ${spent:.4f} of ${budget:.2f} spent or reserved today, this call may cost ${usd:.4f}",
            purpose=purpose,
            estimate_usd=usd,
            spent_usd=spent,
        )
    if purpose != "escalation":
        share = shadow_share * budget
        used = sum(v for k, v in snapshot.by_purpose.items() if k != "escalation")
        if used + usd > share + 1e-9:
            return BudgetRefused(
                "shadow budget share spent",
                f"shadow budget share spent: ${used:.4f} of ${share:.4f} "
                f"({shadow_share:.0%} of the daily budget) used by shadow and judge calls today",
                purpose=purpose,
                estimate_usd=usd,
                spent_usd=spent,
            )
    return None


def open_spend_ledger(settings: Settings) -> SpendLedger:
    """The ledger the settings describe: Redis when ``MSSERVE_REDIS_URL`` is set (shared by every replica; opening
    it never fails on a Redis that is down: reservations are then refused), else the state database under
    ``MSSERVE_STATE_DIR``."""
    if settings.redis_url is not None:
        from server.routing.ledger_redis import RedisSpendLedger  # the redis package is an extra

        return RedisSpendLedger(
            settings.redis_url.get_secret_value(),
            daily_usd=settings.azure_daily_budget_usd,
            shadow_share=settings.router_shadow_budget_share,
            timeout_s=settings.redis_timeout_s,
        )
    from server.routing.ledger_sqlite import SQLiteSpendLedger  # builds on this module's base class

    directory = settings.state_dir or default_state_dir()
    try:
        return SQLiteSpendLedger(
            StateDB(directory),
            daily_usd=settings.azure_daily_budget_usd,
            shadow_share=settings.router_shadow_budget_share,
        )
    except (OSError, sqlite3.Error) as exc:
        # Refuse to start rather than call Azure with spend that cannot be counted.
        raise RuntimeError(
            f"cannot open the Azure spend ledger in {directory} ({exc}); set MSSERVE_STATE_DIR to a writable folder"
        ) from exc


class QueuedLedger:
    """What every ``SpendLedger`` shares: its store's calls run on writer threads of its own, so ``settle`` and
    ``release`` stay plain calls whose writes run even when the task that made them is cancelled; a reservation
    settles or releases once. Subclasses give ``_reserve``, ``_close`` and ``_refresh`` (run on a writer thread)."""

    def __init__(
        self, *, daily_usd: float | None, shadow_share: float, today: Callable[[], date], workers: int, name: str
    ) -> None:
        self.daily_usd = daily_usd
        self.shadow_share = min(1.0, max(0.0, shadow_share))
        self._today = today
        self._writer = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._open: set[str] = set()  # this ledger's reservations not yet settled or released
        self._open_lock = threading.Lock()
        self._snapshot = SpendSnapshot(day=today().isoformat(), daily_usd=daily_usd)

    # -- the protocol --------------------------------------------------------------------------------------------
    async def reserve(self, usd: float, *, purpose: Purpose = "escalation") -> Reservation:
        if purpose not in PURPOSES:
            raise ValueError(f"unknown purpose {purpose!r}")
        future = self._writer.submit(self._reserve, max(0.0, usd), purpose)
        try:
            return await asyncio.shield(asyncio.wrap_future(future))
        except asyncio.CancelledError:
            # The caller left while the write was queued or running: release what it reserved, once it is made
            # (with one writer thread this job runs after the reservation's, and before anything asked for later).
            self._submit(self._release_abandoned, future)
            raise

    def settle(self, reservation: Reservation, usd: float) -> None:
        if self._claim(reservation):
            self._submit(self._close, reservation, max(0.0, usd))

    def release(self, reservation: Reservation) -> None:
        if self._claim(reservation):
            self._submit(self._close, reservation, None)

    async def spent_today(self) -> float:
        future = self._writer.submit(self._refresh)
        return (await asyncio.wrap_future(future)).spent_usd

    def snapshot(self) -> SpendSnapshot:
        today = self._today().isoformat()
        if self._snapshot.day != today:  # a new UTC day: nothing spent yet, as far as this process knows
            return SpendSnapshot(day=today, daily_usd=self.daily_usd)
        return self._snapshot

    def close(self) -> None:
        """Finish the queued writes (start-up and shutdown only: it blocks)."""
        self._writer.shutdown(wait=True)

    # -- for subclasses, on a writer thread -----------------------------------------------------------------------
    def _reserve(self, usd: float, purpose: Purpose) -> Reservation:
        raise NotImplementedError

    def _close(self, reservation: Reservation, usd: float | None) -> None:
        """Settle (``usd``) or release (None) one reservation."""
        raise NotImplementedError

    def _refresh(self) -> SpendSnapshot:
        raise NotImplementedError

    # -- helpers ----------------------------------------------------------------------------------------------------
    def _opened(self, reservation: Reservation) -> None:
        with self._open_lock:
            self._open.add(reservation.id)

    def _claim(self, reservation: Reservation) -> bool:
        """True once per reservation: a second settle or release is a no-op."""
        with self._open_lock:
            if reservation.id not in self._open:
                return False
            self._open.discard(reservation.id)
            return True

    def _submit(self, fn: Callable[..., None], *args: object) -> None:
        try:
            self._writer.submit(fn, *args)
        except RuntimeError:  # the writer is shut down (process exiting): write here rather than lose it
            fn(*args)

    def _release_abandoned(self, future: Future[Reservation]) -> None:
        if not future.cancelled() and future.exception() is None:  # waits for the reservation's job
            reservation = future.result()
            if self._claim(reservation):
                self._close(reservation, None)
