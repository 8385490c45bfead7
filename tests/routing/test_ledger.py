"""The Azure spend ledger on real SQLite: reservations hold under concurrency, survive reopening and a killed
process, roll over per UTC day, and cap what shadow and judge calls may use."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from datetime import date
from pathlib import Path

import pytest

from server.config import Settings
from server.routing.ledger import BudgetRefused, LedgerUnavailable, open_spend_ledger
from server.routing.ledger_sqlite import SQLiteSpendLedger
from server.state import StateDB


def _ledger(directory: Path, daily_usd: float | None = 3.0, **options: object) -> SQLiteSpendLedger:
    return SQLiteSpendLedger(StateDB(directory), daily_usd=daily_usd, **options)  # type: ignore[arg-type]


async def test_concurrent_reservations_never_exceed_the_budget(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, 3.0)
    results = await asyncio.gather(*(ledger.reserve(1.0) for _ in range(12)), return_exceptions=True)
    granted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BudgetRefused)]
    assert len(granted) == 3 and len(refused) == 9
    assert refused[0].reason == "daily budget spent"
    assert await ledger.spent_today() == pytest.approx(3.0)  # open reservations count at once


async def test_settle_charges_the_real_cost_and_release_charges_nothing(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, 3.0)
    first, second = await ledger.reserve(1.0), await ledger.reserve(1.5)
    ledger.settle(first, 0.25)
    ledger.release(second)
    ledger.settle(first, 9.0)  # a second settle is ignored
    ledger.release(first)
    assert await ledger.spent_today() == pytest.approx(0.25)
    snapshot = ledger.snapshot()
    assert snapshot.settled_usd == pytest.approx(0.25) and snapshot.reserved_usd == 0.0
    with pytest.raises(BudgetRefused) as caught:
        await ledger.reserve(2.8)  # 0.25 + 2.8 > 3
    assert caught.value.reason == "daily budget too low for this request"
    await ledger.reserve(2.75)  # fits exactly


async def test_spend_survives_reopening_the_store(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, 3.0)
    ledger.settle(await ledger.reserve(1.0), 2.0)
    assert await ledger.spent_today() == pytest.approx(2.0)
    ledger.close()
    reopened = _ledger(tmp_path, 3.0)
    assert await reopened.spent_today() == pytest.approx(2.0)
    with pytest.raises(BudgetRefused):
        await reopened.reserve(1.5)


async def test_the_day_is_utc_and_rolls_over(tmp_path: Path) -> None:
    day = [date(2026, 1, 1)]
    ledger = _ledger(tmp_path, 1.0, today=lambda: day[0])
    held = await ledger.reserve(1.0)
    with pytest.raises(BudgetRefused):
        await ledger.reserve(0.5)
    day[0] = date(2026, 1, 2)
    assert ledger.snapshot().spent_usd == 0.0
    ledger.settle(held, 0.75)  # charged to the day it was reserved on
    assert await ledger.spent_today() == 0.0
    await ledger.reserve(1.0)
    day[0] = date(2026, 1, 1)
    assert await ledger.spent_today() == pytest.approx(0.75)


async def test_no_budget_caps_nothing_but_still_counts(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, None)
    reservations = [await ledger.reserve(1e6, purpose="shadow") for _ in range(3)]
    for reservation in reservations:
        ledger.settle(reservation, 1.0)
    assert await ledger.spent_today() == pytest.approx(3.0)


async def test_shadow_and_judge_share_a_capped_part_of_the_budget(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, 10.0, shadow_share=0.1)  # $1 for learning
    shadow = await ledger.reserve(0.6, purpose="shadow")
    with pytest.raises(BudgetRefused) as caught:
        await ledger.reserve(0.6, purpose="judge")  # shadow and judge together: 1.2 > 1
    assert caught.value.reason == "shadow budget share spent" and caught.value.purpose == "judge"
    ledger.settle(shadow, 0.5)
    await ledger.reserve(0.5, purpose="judge")  # 0.5 + 0.5 fits exactly
    with pytest.raises(BudgetRefused):
        await ledger.reserve(0.01, purpose="shadow")
    # Escalations may still use the rest of the budget, and learning never the escalations' part.
    await ledger.reserve(9.0)
    with pytest.raises(BudgetRefused) as caught:
        await ledger.reserve(0.01)
    assert caught.value.reason == "daily budget spent"
    assert ledger.snapshot().by_purpose == pytest.approx({"shadow": 0.5, "judge": 0.5, "escalation": 9.0})


async def test_a_cancelled_reservation_is_released(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, 1.0)
    task = asyncio.create_task(ledger.reserve(1.0))
    await asyncio.sleep(0)  # the write is queued on the ledger's thread
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await ledger.spent_today() == 0.0  # whether or not the write had run, nothing stays held
    await ledger.reserve(1.0)


async def test_a_failing_store_refuses_rather_than_allows(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, 100.0)
    ledger.db.close()  # every statement now fails
    with pytest.raises(LedgerUnavailable):
        await ledger.reserve(0.01)


def _reserve_and_die(directory: str) -> None:
    async def run() -> None:
        ledger = _ledger(Path(directory), 3.0)
        await ledger.reserve(2.5, purpose="escalation")
        os._exit(9)  # killed mid-call: the reservation is never settled

    asyncio.run(run())


async def test_a_killed_process_leaves_its_reservation_counted_at_the_reserved_amount(tmp_path: Path) -> None:
    _ledger(tmp_path, 3.0).close()  # the schema exists before the child writes
    child = multiprocessing.get_context("spawn").Process(target=_reserve_and_die, args=(str(tmp_path),))
    child.start()
    child.join(60)
    assert child.exitcode == 9
    restarted = _ledger(tmp_path, 3.0)
    assert await restarted.spent_today() == pytest.approx(2.5)  # settled at start-up at what it reserved
    assert restarted.db.query("SELECT count(*) FROM azure_spend_open")[0][0] == 0  # nothing left open
    with pytest.raises(BudgetRefused):
        await restarted.reserve(1.0)


async def test_a_live_owner_corrects_a_reservation_another_start_up_settled(tmp_path: Path) -> None:
    # Two processes on one folder: the second one's start-up settles the first's in-flight reservation at its
    # reserved amount; the first then settles it to the real cost, which corrects the day's figure.
    first = _ledger(tmp_path, 3.0)
    held = await first.reserve(2.0)
    second = _ledger(tmp_path, 3.0)
    assert await second.spent_today() == pytest.approx(2.0)
    first.settle(held, 0.5)
    assert await first.spent_today() == pytest.approx(0.5)
    assert await second.spent_today() == pytest.approx(0.5)


def test_settings_open_the_ledger_in_the_state_dir(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, azure_daily_budget_usd=4.0, router_shadow_budget_share=0.25)
    ledger = open_spend_ledger(settings)
    assert isinstance(ledger, SQLiteSpendLedger)
    assert ledger.db.path.parent == tmp_path
    assert (ledger.daily_usd, ledger.shadow_share) == (4.0, 0.25)


def test_an_unwritable_state_dir_stops_start_up_with_a_clear_message(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(RuntimeError, match="MSSERVE_STATE_DIR"):
        open_spend_ledger(Settings(state_dir=blocker / "state", azure_daily_budget_usd=1.0))
