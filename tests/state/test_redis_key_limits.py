"""The Redis store of the per-key limits against a real redis-server: two stores (two replicas' views, each its own
client) share one key's requests, tokens and leases; the clock is injected, so windows and leases move by steps."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from server.limits.metrics import KeyLimitStats
from server.limits.policy import Admission, KeyLimits, Refusal
from server.limits.shared import RedisKeyStore, redis_keys
from server.state.redis_store import open_redis, redis_errors
from tests.redis_server import RedisServer


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def two_replicas(redis_server: RedisServer, *, lease_ttl_s: float = 30.0, real_time: bool = False
                       ) -> AsyncIterator[tuple[RedisKeyStore, RedisKeyStore, Clock]]:
    """Opened in the test's own event loop (the clients' connections belong to it); the clock is the returned one
    unless ``real_time``."""
    clock = Clock()
    now, monotonic = (time.time, time.monotonic) if real_time else (clock, clock)
    stores = [RedisKeyStore(open_redis(redis_server.url, 0.3), lease_ttl_s=lease_ttl_s, retry_after_s=2,
                            stats=KeyLimitStats(), clock=now, monotonic=monotonic, errors=redis_errors(),
                            owns_client=True) for _ in range(2)]
    try:
        yield stores[0], stores[1], clock
    finally:
        for store in stores:
            await store.close()


async def test_requests_per_minute_are_one_count_across_replicas(redis_server: RedisServer) -> None:
    async with two_replicas(redis_server) as (a, b, clock):
        limits = KeyLimits(rpm=3)
        for store in (a, b, a):
            assert isinstance(await store.admit("alice", limits), Admission)
            clock.now += 10
        refused = await b.admit("alice", limits)  # the 4th in the minute, on the other replica
        assert isinstance(refused, Refusal) and refused.limit == "requests" and refused.allowed == 3
        assert refused.retry_after_s == pytest.approx(30.0)  # the first leaves 60 s after it came, 30 s from now
        assert isinstance(await a.admit("bob", limits), Admission)
        clock.now += 30
        admitted = await b.admit("alice", limits)
        assert isinstance(admitted, Admission) and admitted.shared and admitted.requests_used == 3
        assert isinstance(await a.admit("alice", limits), Refusal)  # refusals were not counted; this one is the 4th


async def test_tokens_counted_on_one_replica_refuse_on_another(redis_server: RedisServer) -> None:
    async with two_replicas(redis_server) as (a, b, clock):
        limits = KeyLimits(tpm=100)
        first = await a.admit("alice", limits)
        assert isinstance(first, Admission)
        await a.finish(first, 120)
        clock.now += 5
        refused = await b.admit("alice", limits)
        assert isinstance(refused, Refusal) and refused.limit == "tokens"
        assert refused.retry_after_s == pytest.approx(55.0)
        clock.now += 55
        assert isinstance(await b.admit("alice", limits), Admission)


async def test_leases_cap_requests_in_flight_across_replicas_and_lapse_when_one_dies(redis_server: RedisServer) -> None:
    async with two_replicas(redis_server) as (a, b, clock):
        limits = KeyLimits(concurrency=2)
        held = await a.admit("alice", limits)
        other = await b.admit("alice", limits)
        assert isinstance(held, Admission) and isinstance(other, Admission) and held.lease and other.lease
        refused = await b.admit("alice", limits)
        assert isinstance(refused, Refusal) and refused.limit == "concurrency"
        error = refused.error()
        assert error.code == "too_many_concurrent_requests" and error.headers == {"retry-after": "2"}
        await b.finish(other, 0)  # a request that ends frees its slot at once
        again = await b.admit("alice", limits)
        assert isinstance(again, Admission)
        # b keeps renewing its lease; a "dies": it holds its lease and never renews it again.
        clock.now += 25
        await b.renew()
        assert isinstance(await b.admit("alice", limits), Refusal)  # 25 s < 30 s: a's lease still holds its slot
        clock.now += 5.001  # a's lease is past its end; b's renewed one is not
        taken = await b.admit("alice", limits)
        assert isinstance(taken, Admission)
        assert isinstance(await b.admit("alice", limits), Refusal)  # b's two: the cap again
        leases = await b.client.zrange(redis_keys("alice")[2], 0, -1)
        assert set(leases) == {again.lease, taken.lease}


async def test_redis_gone_means_counting_in_process_never_an_error(redis_server: RedisServer) -> None:
    async with two_replicas(redis_server) as (a, _, clock):
        limits = KeyLimits(rpm=2, concurrency=5)
        shared = await a.admit("alice", limits)
        assert isinstance(shared, Admission) and shared.shared
        redis_server.kill()
        await a.finish(shared, 10)  # the lease lapses by itself; nothing raised
        first, second = await a.admit("alice", limits), await a.admit("alice", limits)
        assert isinstance(first, Admission) and isinstance(second, Admission) and not first.shared
        refused = await a.admit("alice", limits)  # this replica's own count of the minute: 2
        assert isinstance(refused, Refusal) and refused.limit == "requests"
        assert a.stats.fallbacks == 3 and a.stats.shared_up is False
        await a.finish(first, 5)
        clock.now += 60  # the in-process window moves on too
        assert isinstance(await a.admit("alice", limits), Admission)


async def test_the_renewal_keeps_a_running_request_s_lease_and_stops_with_the_replica(
        redis_server: RedisServer) -> None:
    """Real time, short leases: the background renewal (every third of the lease) is what keeps the slot held."""
    async with two_replicas(redis_server, lease_ttl_s=0.6, real_time=True) as (a, b, _):
        limits = KeyLimits(concurrency=1)
        running = await a.admit("alice", limits)
        assert isinstance(running, Admission)
        await asyncio.sleep(0.9)  # past the lease's first end: only renewals kept it
        assert isinstance(await b.admit("alice", limits), Refusal)
        await a.close()  # the replica stops (as if it died): no more renewals, the lease is never removed
        await asyncio.sleep(0.7)
        taken = await b.admit("alice", limits)
        assert isinstance(taken, Admission)
        await b.finish(taken, 0)


async def test_a_renewal_never_brings_back_a_lease_that_ended(redis_server: RedisServer) -> None:
    async with two_replicas(redis_server) as (a, b, _):
        limits = KeyLimits(concurrency=1)
        ended = await a.admit("alice", limits)
        assert isinstance(ended, Admission) and ended.lease is not None
        # A renewal that left before the request ended and reaches Redis after its lease was removed:
        a._held[ended.lease] = "alice"
        await b.finish(ended, 0)  # the lease is gone from Redis
        await a.renew()
        assert await a.client.zcard(redis_keys("alice")[2]) == 0
        assert isinstance(await b.admit("alice", limits), Admission)  # the slot is free
