"""Busy (429) and briefly unavailable (503) answers are retried later, not written as the line's answer at once.

A real dispatcher, router and chat service over the scripted engine (tests/fakes), on a real state database.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from server.api.deps import Services
from server.batch.files import FileStorage
from server.batch.protocol import CreateBatchRequest
from server.batch.store import BatchStore, new_file_id
from server.batch.worker import MAX_ATTEMPTS, RETRY_DELAY_S, BatchWorker
from server.config import Settings, load_profile
from server.errors import RateLimitError
from server.media import ImageIntake
from server.routing.dispatch import Dispatcher
from server.routing.policy import RoutingPolicy
from server.routing.router import Router
from server.state import StateDB
from tests.fakes.scripted_engine import ScriptedEngine


def setup(tmp_path: Path) -> tuple[BatchStore, str, Services, ScriptedEngine]:
    settings = Settings(state_dir=tmp_path, batch_concurrency=1)
    engine = ScriptedEngine(fail_with=RateLimitError("busy", code="queue_full"))
    services = Services(settings=settings, profile=load_profile("tiny-mistral3"), engine=engine,
                        dispatcher=Dispatcher(engine, None, router=Router.from_settings(settings),
                                              policy=RoutingPolicy.from_settings(settings)),
                        intake=ImageIntake(settings))
    store = BatchStore(StateDB(tmp_path), retention_s=86400)
    file_id = new_file_id()
    store.add_file(file_id, "", "in.jsonl", "batch", 1, 1000)
    batch = store.create_batch("", CreateBatchRequest(input_file_id=file_id, endpoint="/v1/chat/completions",
                                                      completion_window="24h"), 1000)
    store.start(batch.id, [("only", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})], 1000)
    return store, batch.id, services, engine


async def one_pass(worker: BatchWorker) -> None:
    await worker.step()
    while worker.running:
        await asyncio.sleep(0.01)


def test_a_busy_answer_is_retried_later(tmp_path: Path) -> None:
    store, batch_id, services, engine = setup(tmp_path)
    now = [1000.0]
    worker = BatchWorker(store, FileStorage(tmp_path / "files"), services, clock=lambda: now[0])

    async def scenario() -> None:
        await one_pass(worker)
        assert len(engine.requests) == 1
        engine.fail_with = None
        await one_pass(worker)
        assert len(engine.requests) == 1  # not before its retry time
        now[0] += RETRY_DELAY_S
        await one_pass(worker)
        assert len(engine.requests) == 2
        await one_pass(worker)  # nothing queued: the batch finalizes

    asyncio.run(scenario())
    batch = store.get_batch(batch_id)
    assert batch is not None and batch.status == "completed"
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 0)


def test_a_line_busy_every_time_fails_with_the_live_code(tmp_path: Path) -> None:
    store, batch_id, services, engine = setup(tmp_path)
    now = [1000.0]
    worker = BatchWorker(store, FileStorage(tmp_path / "files"), services, clock=lambda: now[0])

    async def scenario() -> None:
        for _ in range(MAX_ATTEMPTS + 1):
            await one_pass(worker)
            now[0] += RETRY_DELAY_S * MAX_ATTEMPTS

    asyncio.run(scenario())
    assert len(engine.requests) == MAX_ATTEMPTS
    batch = store.get_batch(batch_id)
    assert batch is not None and batch.status == "completed" and batch.request_counts.failed == 1
    (line,) = [json.loads(text) for text in store.results(batch_id, ok=False)]
    assert line["response"]["status_code"] == 429
    assert line["response"]["body"]["error"]["code"] == "queue_full"
