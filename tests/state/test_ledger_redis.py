"""The Azure spend ledger in a real Redis: several ledgers (replicas) on one store, leases, days, Redis failing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import date

import pytest
import redis

from server.config import Settings
from server.routing.ledger import BudgetRefused, LedgerUnavailable, open_spend_ledger
from server.routing.ledger_redis import RedisSpendLedger
from tests.redis_server import RedisServer
from tests.state.conftest import Clock


class Today:
    def __init__(self) -> None:
        self.day = date(2026, 1, 1)

    def __call__(self) -> date:
        return self.day



@pytest.fixture
def today() -> Today:
    return Today()


@pytest.fixture
def replicas(redis_server: RedisServer, clock: Clock, today: Today) -> Iterator[list[RedisSpendLedger]]:
    ledgers = [
        RedisSpendLedger(redis_server.url, daily_usd=3.0, shadow_share=0.5, lease_s=60.0, clock=clock, today=today)
        for _ in range(3)
    ]
    yield ledgers
    for ledger in ledgers:
        ledger.close()


async def test_three_replicas_reserving_at_once_fit_exactly_the_budget(replicas: list[RedisSpendLedger]) -> None:
    attempts = [ledger.reserve(1.0) for ledger in replicas for _ in range(8)]  # 24 reservations of $1 for $3
    results = await asyncio.gather(*attempts, return_exceptions=True)
    granted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BudgetRefused)]
    assert len(granted) == 3
    assert len(refused) == 21
    assert refused[0].reason == "daily budget spent"
    for ledger in replicas:
        assert await ledger.spent_today() == pytest.approx(3.0)


async def test_settle_and_release_are_seen_by_every_replica(replicas: list[RedisSpendLedger]) -> None:
    a, b, c = replicas
    first = await a.reserve(1.0)
    second = await b.reserve(1.5)
    a.settle(first, 0.25)
    b.release(second)
    b.release(second)  # twice: a no-op
    a.close()  # waits for the queued writes
    assert await c.spent_today() == pytest.approx(0.25)
    snapshot = c.snapshot()
    assert snapshot.settled_usd == pytest.approx(0.25) and snapshot.reserved_usd == 0.0
    assert (await c.reserve(2.75)).usd == 2.75  # what is left fits; a cent more would not
    with pytest.raises(BudgetRefused):
        await c.reserve(0.01)


async def test_tiny_amounts_keep_their_precision(replicas: list[RedisSpendLedger]) -> None:
    ledger = replicas[0]
    reservation = await ledger.reserve(1e-05)
    ledger.settle(reservation, 3.3e-06)
    assert await replicas[1].spent_today() == pytest.approx(3.3e-06, rel=1e-9)


async def test_shadow_and_judge_share_is_enforced_across_replicas(replicas: list[RedisSpendLedger]) -> None:
    a, b, _ = replicas
    await a.reserve(1.0, purpose="shadow")
    await b.reserve(0.5, purpose="judge")  # the share: 50 % of $3 = $1.50, now used
    with pytest.raises(BudgetRefused) as caught:
        await a.reserve(0.1, purpose="shadow")
    assert caught.value.reason == "shadow budget share spent"
    assert (await b.reserve(1.5)).purpose == "escalation"  # escalations may use the rest


async def test_a_crashed_replica_s_reservation_counts_at_its_amount_once_its_lease_ends(
    replicas: list[RedisSpendLedger], clock: Clock
) -> None:
    crashed, survivor, _ = replicas
    held = await crashed.reserve(2.0)  # its replica dies here: never settled
    assert survivor.snapshot().reserved_usd == 0.0  # (this replica has not looked yet)
    assert await survivor.spent_today() == pytest.approx(2.0)
    assert survivor.snapshot().reserved_usd == pytest.approx(2.0)
    clock.now += 61  # the lease is over: settled at the reserved amount, no longer open
    assert await survivor.spent_today() == pytest.approx(2.0)
    assert survivor.snapshot().reserved_usd == 0.0
    assert survivor.snapshot().settled_usd == pytest.approx(2.0)
    # The replica was only slow: its late settle corrects the day's figure to the real cost.
    crashed.settle(held, 0.5)
    crashed.close()
    assert await survivor.spent_today() == pytest.approx(0.5)


async def test_a_settle_redis_no_longer_knows_charges_its_whole_cost(
    redis_server: RedisServer, replicas: list[RedisSpendLedger]
) -> None:
    a, b, _ = replicas
    held = await a.reserve(1.0)
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()  # a Redis restarted without persistence: the reservation is gone
    a.settle(held, 0.25)
    a.close()
    assert await b.spent_today() == pytest.approx(0.25)  # counted in full, never as a -$0.75 correction


async def test_each_utc_day_has_its_own_budget(replicas: list[RedisSpendLedger], today: Today) -> None:
    a, b, _ = replicas
    yesterday = await a.reserve(3.0)
    with pytest.raises(BudgetRefused):
        await b.reserve(1.0)
    today.day = date(2026, 1, 2)
    assert await b.spent_today() == 0.0
    await b.reserve(1.0)
    a.settle(yesterday, 3.0)  # settles on the day it was reserved
    a.close()
    assert await b.spent_today() == pytest.approx(1.0)


async def test_redis_gone_refuses_reservations_and_never_raises_from_settle(
    redis_server: RedisServer, replicas: list[RedisSpendLedger]
) -> None:
    ledger = replicas[0]
    held = await ledger.reserve(1.0)
    redis_server.kill()
    with pytest.raises(LedgerUnavailable):
        await ledger.reserve(0.01)
    with pytest.raises(LedgerUnavailable):
        await ledger.spent_today()
    ledger.settle(held, 1.0)  # logged, not raised: the lease would settle it
    ledger.close()


async def test_a_cancelled_reserve_is_released(replicas: list[RedisSpendLedger]) -> None:
    a, b, _ = replicas
    task = asyncio.create_task(a.reserve(3.0))
    await asyncio.sleep(0)  # the script is queued (or running) on the writer
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    a.close()
    assert await b.spent_today() == 0.0


def test_open_spend_ledger_picks_redis_when_the_url_is_set(redis_server: RedisServer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ledger = open_spend_ledger(Settings(redis_url=redis_server.url, state_dir=tmp_path, azure_daily_budget_usd=3))
    try:
        assert isinstance(ledger, RedisSpendLedger)
        assert ledger.daily_usd == 3
    finally:
        ledger.close()
    assert not (tmp_path / "state.db").exists()  # nothing went to SQLite
