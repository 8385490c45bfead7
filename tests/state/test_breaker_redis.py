"""The circuit breaker shared through a real Redis: three replicas' breakers see one state."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from server.config import Settings
from server.routing.breaker_redis import REFRESH_S, SharedCircuitBreaker
from server.routing.policy import CircuitBreaker, Permit, open_breaker
from tests.redis_server import RedisServer
from tests.state.conftest import Clock


@pytest.fixture
def replicas(redis_server: RedisServer, clock: Clock) -> Iterator[list[SharedCircuitBreaker]]:
    breakers = [SharedCircuitBreaker(redis_server.url, 3, 30.0, clock, probe_lease_s=100.0) for _ in range(3)]
    yield breakers
    for breaker in breakers:
        breaker.close()


def _flush(*breakers: SharedCircuitBreaker) -> None:
    """Wait for the queued writes (records are fire-and-forget): a fresh pool per breaker afterwards."""
    for breaker in breakers:
        breaker._writer.shutdown(wait=True)
        breaker._writer = type(breaker._writer)(max_workers=4)


async def _open_then_probe(failing: SharedCircuitBreaker, probing: SharedCircuitBreaker, clock: Clock) -> Permit | None:
    """Open the circuit from one replica (three failures), let the cool-down pass, ask for a probe on another."""
    for _ in range(3):
        failing.record_failure(Permit())
    _flush(failing)
    clock.now += 31  # cool-down over: half-open
    return await probing.acquire_async()


async def test_failures_on_different_replicas_open_the_circuit_for_all(replicas: list[SharedCircuitBreaker]) -> None:
    a, b, c = replicas
    for breaker in replicas:
        assert await breaker.acquire_async() == Permit()
    a.record_failure(Permit())
    b.record_failure(Permit())
    _flush(a, b)
    assert await c.acquire_async() == Permit()  # two of three: still closed
    c.record_failure(Permit())
    _flush(c)
    for breaker in replicas:
        assert await breaker.acquire_async() is None
        assert breaker.state == "open"


async def test_one_probe_for_all_replicas_and_its_success_closes_everywhere(
    replicas: list[SharedCircuitBreaker], clock: Clock
) -> None:
    a, b, c = replicas
    probe = await _open_then_probe(a, b, clock)
    assert probe is not None and probe.probe is not None
    assert await a.acquire_async() is None and await c.acquire_async() is None  # one probe at a time, fleet-wide
    b.record_success(probe)
    _flush(b)
    assert await c.acquire_async() == Permit()
    assert c.state == "closed"
    assert a.state == "half_open"  # a's view is what it last saw, until it asks again
    assert await a.acquire_async() == Permit() and a.state == "closed"


async def test_a_failed_probe_reopens_and_a_released_probe_frees_the_slot(
    replicas: list[SharedCircuitBreaker], clock: Clock
) -> None:
    a, b, _ = replicas
    probe = await _open_then_probe(a, a, clock)
    assert probe is not None
    a.release(probe)  # the client left: no verdict
    _flush(a)
    second = await b.acquire_async()
    assert second is not None and second.probe != probe.probe
    b.record_failure(second)
    _flush(b)
    assert await a.acquire_async() is None  # re-opened for a full cool-down
    clock.now += 29
    assert await a.acquire_async() is None
    clock.now += 2
    assert await a.acquire_async() is not None


async def test_an_idle_replica_s_view_follows_the_shared_state(
    replicas: list[SharedCircuitBreaker], clock: Clock
) -> None:
    a, idle, _ = replicas
    assert idle.state == "closed"
    for _ in range(3):
        a.record_failure(Permit())
    _flush(a)
    assert idle.state == "closed"  # seen less than REFRESH_S ago: no I/O
    clock.now += REFRESH_S
    idle.state  # noqa: B018 (asks for the background re-read)
    _flush(idle)
    assert idle.state == "open"


async def test_redis_gone_means_no_azure(redis_server: RedisServer, replicas: list[SharedCircuitBreaker]) -> None:
    a = replicas[0]
    assert await a.acquire_async() == Permit()
    redis_server.kill()
    assert await a.acquire_async() is None
    assert a.state == "open"
    assert a.acquire() is None  # the synchronous path never hands out an unshared permit
    a.record_failure(Permit())  # logged, never raised


def test_open_breaker_follows_the_settings(redis_server: RedisServer) -> None:
    shared = open_breaker(Settings(redis_url=redis_server.url, azure_breaker_failures=7))
    try:
        assert isinstance(shared, SharedCircuitBreaker) and shared.failure_threshold == 7
    finally:
        shared.close()
    local = open_breaker(Settings())
    assert type(local) is CircuitBreaker
