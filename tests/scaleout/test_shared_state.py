"""Three replicas sharing one real redis-server: the Azure budget, the circuit breaker, router outcomes and
dashboard sessions are the fleet's, not each process's; and when Redis dies, Azure stops, local does not.

Each replica is a real server process (tests/ops/scripted_server.py: the whole app, a paced local engine), on its
own loopback port with its own state folder; Azure is tests/fakes/fake_azure.py; clients are the openai SDK over
HTTP. The tests run in file order on one fleet: the Redis-killing one is last.

Prices make every Azure answer cost exactly $1: output at $100,000 per million tokens, max_tokens=10, and the
fake Azure answering 10 words (10 completion tokens); input is free.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
import redis

from server.routing.ledger_redis import RedisSpendLedger
from server.routing.outcomes_redis import RedisOutcomeStore
from tests.conftest import LiveServer, stop_server
from tests.fakes.fake_azure import FakeAzure, Reply, ServerError
from tests.ops.conftest import start_scripted_server
from tests.redis_server import RedisServer

AZURE_KEY = "fake-azure-key-0123456789"
KEY = "sk-fleet-test-0123456789abcdef"
TEN_WORDS = "one two three four five six seven eight nine ten"
FORCE = {"x-msserve-route": "azure"}
Clients = list[openai.AsyncOpenAI]  # one per replica, in the fleet's order
pytestmark = pytest.mark.asyncio(loop_scope="module")  # the tests and their SDK clients share one event loop


@dataclass
class Fleet:
    redis: RedisServer
    azure: FakeAzure
    replicas: list[LiveServer]



@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    folder = tmp_path_factory.mktemp("fleet")
    store = RedisServer(folder / "redis")
    azure = FakeAzure(api_key=AZURE_KEY).start()
    env = {
        "MSSERVE_REDIS_URL": store.url,
        "MSSERVE_API_KEYS": f"ops:{KEY}",
        "MSSERVE_AZURE_ENDPOINT": azure.endpoint,
        "MSSERVE_AZURE_API_KEY": AZURE_KEY,
        "MSSERVE_AZURE_DEPLOYMENT": "gpt-4o",
        "MSSERVE_AZURE_DAILY_BUDGET_USD": "3",
        "MSSERVE_AZURE_PRICE_INPUT_PER_MTOK": "0",
        "MSSERVE_AZURE_PRICE_OUTPUT_PER_MTOK": "100000",
        "MSSERVE_AZURE_MAX_ATTEMPTS": "1",  # one failure per failed call: the breaker counts calls
        "MSSERVE_AZURE_BREAKER_FAILURES": "2",
        "MSSERVE_AZURE_BREAKER_COOLDOWN_S": "3600",  # stays open for the module once opened
        "MSSERVE_ROUTER_THRESHOLD": "0",  # every auto request wants Azure: where it ends up is the test
    }
    replicas: list[LiveServer] = []
    try:
        # Started side by side: each is its own process and imports the server on its own.
        with ThreadPoolExecutor(3) as pool:
            started = [pool.submit(_replica, folder / f"replica-{i}", env) for i in range(3)]
        failed = [future.exception() for future in started if future.exception() is not None]
        replicas = [future.result() for future in started if future.exception() is None]
        if failed:
            raise failed[0]  # type: ignore[misc]
        yield Fleet(store, azure, replicas)
    finally:
        for replica in replicas:
            stop_server(replica)
        azure.stop()
        store.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def clients(fleet: Fleet) -> AsyncIterator[Clients]:
    """One openai SDK client per replica."""
    made = [openai.AsyncOpenAI(base_url=r.v1, api_key=KEY, max_retries=0, timeout=60) for r in fleet.replicas]
    yield made
    for client in made:
        await client.close()


def _replica(folder: Path, env: dict[str, str]) -> LiveServer:
    folder.mkdir(parents=True)
    return start_scripted_server(folder, env, ready_timeout=180.0)  # three start at once on a busy machine


def _forget(fleet: Fleet, pattern: str) -> None:
    """Delete shared state between tests, straight in Redis."""
    with redis.Redis.from_url(fleet.redis.url) as client:
        names = client.keys(pattern)
        if names:
            client.delete(*names)


def _ask(**extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": "Say something."}]
    return {"model": "paced-test", "messages": messages, "max_tokens": 10, **extra}


async def _tier(client: openai.AsyncOpenAI, **extra: Any) -> str:
    raw = await client.chat.completions.with_raw_response.create(**_ask(**extra))
    return raw.headers["x-msserve-tier"]


async def test_breaker_failures_on_two_replicas_open_it_on_the_third(fleet: Fleet, clients: Clients) -> None:
    fleet.azure.reset()
    fleet.azure.script.extend([ServerError(500), ServerError(500)])
    # One Azure failure on replica 0, one on replica 1: each request still gets a local answer (failover).
    assert await _tier(clients[0]) == "local"
    assert await _tier(clients[1]) == "local"
    assert len(fleet.azure.requests) == 2
    # Replica 2 never saw a failure, but the circuit is the fleet's: it does not even try Azure.
    raw = await clients[2].chat.completions.with_raw_response.create(**_ask())
    assert raw.headers["x-msserve-tier"] == "local"
    assert "circuit" in raw.headers["x-msserve-reason"]
    assert len(fleet.azure.requests) == 2
    # Close it for the next tests (the cool-down is an hour): the shared state is one Redis hash.
    _forget(fleet, "msserve:azure:breaker")


async def test_three_replicas_pay_for_at_most_three_answers_of_3_dollars(fleet: Fleet, clients: Clients) -> None:
    fleet.azure.reset()
    fleet.azure.script.extend(Reply(text=TEN_WORDS) for _ in range(24))
    ledger = RedisSpendLedger(fleet.redis.url, daily_usd=3.0)
    try:
        assert await ledger.spent_today() == 0.0  # the failed calls above were released, not charged
        attempts = [c.chat.completions.create(**_ask(), extra_headers=FORCE) for c in clients for _ in range(8)]
        results = await asyncio.gather(*attempts, return_exceptions=True)
        answered = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, openai.RateLimitError)]
        assert len(answered) == 3, [type(r).__name__ for r in results]
        assert len(refused) == 21
        assert {r.code for r in refused} == {"azure_budget_exhausted"}
        assert len(fleet.azure.requests) == 3  # the fake Azure's own count of calls it answered
        assert all(r.usage is not None and r.usage.completion_tokens == 10 for r in answered)  # type: ignore[union-attr]
        assert await ledger.spent_today() == pytest.approx(3.0)
        # Each replica writes its settle through a thread pool after the answer has gone out: wait for the last.
        for _ in range(500):
            await ledger.spent_today()  # reads the day's totals from Redis into snapshot()
            if ledger.snapshot().reserved_usd == 0.0:
                break
            await asyncio.sleep(0.02)
        settled = ledger.snapshot()
        assert settled.reserved_usd == 0.0 and settled.settled_usd == pytest.approx(3.0)  # every reservation settled
    finally:
        ledger.close()


async def test_outcomes_of_every_replica_land_in_one_store(fleet: Fleet, clients: Clients) -> None:
    store = RedisOutcomeStore(fleet.redis.url)
    try:
        before = len(store.all())
        for i in range(3):
            await _tier(clients[i], extra_headers={"x-msserve-route": "local"})
        # Outcome rows are written after the response: wait until all three are in (order, not time).
        for _ in range(200):
            if len(store.all()) >= before + 3:
                break
            await asyncio.sleep(0.05)
        rows = store.all()
        assert len(rows) == before + 3
        assert {row.tier for row in rows[-3:]} == {"local"}
    finally:
        store.close()


async def test_a_dashboard_session_from_one_replica_works_on_the_others(fleet: Fleet) -> None:
    async with httpx.AsyncClient() as http:
        login = await http.post(f"{fleet.replicas[0].base_url}/dashboard/login",
                                headers={"authorization": f"Bearer {KEY}"})
        assert login.status_code == 204
        cookie = login.cookies["msserve_session"]
        http.cookies.clear()
        for replica in fleet.replicas[1:]:
            state = await http.get(f"{replica.base_url}/dashboard/api/state",
                                   headers={"cookie": f"msserve_session={cookie}"})
            assert state.status_code == 200, state.text
        forged = await http.get(f"{fleet.replicas[1].base_url}/dashboard/api/state",
                                headers={"cookie": f"msserve_session={cookie}0"})
        assert forged.status_code == 401


async def test_redis_killed_azure_stops_and_local_keeps_serving(fleet: Fleet, clients: Clients) -> None:
    fleet.azure.reset()
    fleet.azure.script.extend(Reply(text=TEN_WORDS) for _ in range(10))
    _forget(fleet, "msserve:spend:*")  # a fresh budget for this test
    assert await _tier(clients[0]) == "azure"  # with Redis up and budget left, auto goes to Azure
    assert len(fleet.azure.requests) == 1
    fleet.redis.kill()
    for i in range(3):
        client = clients[i]
        assert await _tier(client) == "local"  # auto: stays local, as with a spent budget
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(**_ask(), extra_headers=FORCE)
        assert caught.value.status_code == 503
        assert caught.value.code == "azure_budget_unavailable"
        streamed = await client.chat.completions.create(**_ask(stream=True), extra_headers={"x-msserve-route": "local"})
        assert [chunk async for chunk in streamed]  # the local tier keeps serving, streams included
        health = httpx.get(f"{fleet.replicas[i].base_url}/ready")
        assert health.status_code == 200
    assert len(fleet.azure.requests) == 1  # nothing reached Azure while spend could not be counted
    async with httpx.AsyncClient() as http:
        feedback = await http.post(f"{fleet.replicas[0].base_url}/v1/feedback", json={"id": "chatcmpl-x", "score": 1},
                                   headers={"authorization": f"Bearer {KEY}"})
    assert feedback.status_code == 503 and feedback.json()["error"]["code"] == "feedback_store_unavailable"
