"""The outcome writer: rows queued while a commit runs go out together; one bad row does not sink the batch."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

from server.routing.outcome_writer import OutcomeWriter
from server.routing.outcomes import Outcome, OutcomeStore
from server.state.db import StateDB


def _row(i: int) -> Outcome | None:
    if i == 7:
        raise ValueError("cannot build this one")
    return Outcome(
        id=f"r{i}",
        created=float(i),
        key_name=None,
        tier="local",
        route="score-low",
        score=0.1,
        threshold=0.5,
        router="prior",
        prior_logit=0.0,
        feature_set="fs",
        features=[1.0],
    )


async def test_rows_queued_during_a_commit_share_the_next_one(tmp_path: Path) -> None:
    store = OutcomeStore(StateDB(tmp_path))
    batches: list[int] = []
    first_commit_running, release = threading.Event(), threading.Event()
    original = store.add_many

    def add_many(outcomes: Sequence[Outcome]) -> None:
        batches.append(len(outcomes))
        first_commit_running.set()
        release.wait(10)
        original(outcomes)

    store.add_many = add_many  # type: ignore[method-assign]
    writer: OutcomeWriter[int] = OutcomeWriter(store, _row)
    first = asyncio.ensure_future(writer.write(0))
    await asyncio.to_thread(first_commit_running.wait, 10)
    rest = [asyncio.ensure_future(writer.write(i)) for i in range(1, 11)]
    await asyncio.sleep(0)  # let them queue
    release.set()
    results = await asyncio.gather(first, *rest)
    writer.close()
    assert batches == [1, 9]  # 10 queued, one could not be built: one commit for the other nine
    assert results == [True] * 7 + [False] + [True] * 3
    assert len(store.all()) == 10
