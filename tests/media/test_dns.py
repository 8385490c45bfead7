"""Image-fetch DNS: its own small thread pool, its own timeout; never the loop's default executor."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

import server.media._dns as dns_module
from server.config import Settings
from server.errors import ImageError
from server.media import ImageIntake
from server.media._dns import THREAD_NAME_PREFIX, PooledResolver
from tests.images import expect_error

PUBLIC = "93.184.216.34"  # never connected to: the lookup is faked


def fake_answer(host: str, port: int, **_: object) -> list[tuple]:  # type: ignore[type-arg]
    return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (PUBLIC, port))]


def test_lookups_run_on_the_resolvers_own_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def recording(host: str, port: int, **kwargs: object) -> list[tuple]:  # type: ignore[type-arg]
        seen.append(threading.current_thread().name)
        return fake_answer(host, port)

    monkeypatch.setattr(dns_module.socket, "getaddrinfo", recording)
    resolver = PooledResolver(workers=2, timeout_s=5)
    assert asyncio.run(resolver("img.example", 443)) == [PUBLIC]
    assert seen and seen[0].startswith(THREAD_NAME_PREFIX)
    resolver.shutdown()


def test_a_slow_lookup_is_refused_at_the_dns_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def hanging(host: str, port: int, **kwargs: object) -> list[tuple]:  # type: ignore[type-arg]
        release.wait(30)
        return fake_answer(host, port)

    monkeypatch.setattr(dns_module.socket, "getaddrinfo", hanging)
    resolver = PooledResolver(workers=1, timeout_s=0.05)
    try:
        with pytest.raises(ImageError) as caught:
            asyncio.run(resolver("slow.example", 443))
        assert "slow.example" in expect_error(caught, 400, "image_fetch_failed").message
    finally:
        release.set()
        resolver.shutdown()


def test_the_intakes_fetcher_uses_a_pooled_resolver_from_settings() -> None:
    intake = ImageIntake(Settings(image_fetch_dns_timeout_s=2.5, image_fetch_dns_workers=3))
    resolver = intake.fetcher.resolver
    assert isinstance(resolver, PooledResolver)
    assert resolver.timeout_s == 2.5 and resolver._executor._max_workers == 3
