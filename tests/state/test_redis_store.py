"""The shared-store foundation against a real redis-server: the client, the error mapping, the settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.config import Settings
from server.state.redis_store import RedisUnavailable, key, open_redis, unavailable
from tests.redis_server import RedisServer


async def test_client_talks_to_a_real_redis_and_decodes_text(redis_server: RedisServer) -> None:
    client = open_redis(redis_server.url, 0.5)
    try:
        with unavailable("test"):
            assert await client.ping() is True
            await client.set(key("test", "a"), "1")
            assert await client.incrbyfloat(key("test", "a"), 0.5) == 1.5
            assert await client.get(key("test", "a")) == "1.5"  # str, not bytes
    finally:
        await client.aclose()


async def test_a_killed_redis_raises_redis_unavailable_without_the_url(redis_server: RedisServer) -> None:
    client = open_redis(redis_server.url.replace("redis://", "redis://:hunter2-password@"), 0.3)
    try:
        redis_server.kill()
        with pytest.raises(RedisUnavailable) as caught, unavailable("ping"):
            await client.ping()
        assert "hunter2" not in str(caught.value)
        assert "ping" in str(caught.value)
    finally:
        await client.aclose()


async def test_nothing_listening_raises_redis_unavailable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = RedisServer(tmp_path)
    url = server.url
    server.stop()
    client = open_redis(url, 0.3)
    try:
        with pytest.raises(RedisUnavailable), unavailable("get"):
            await client.get(key("x"))
    finally:
        await client.aclose()


def test_other_errors_pass_through() -> None:
    with pytest.raises(ZeroDivisionError), unavailable("maths"):
        _ = 1 / 0


def test_settings_accept_redis_schemes_and_refuse_others() -> None:
    for url in ("redis://127.0.0.1:6379/0", "rediss://cache.internal:6380/1", "unix:///run/redis.sock"):
        settings = Settings(redis_url=url)
        assert settings.redis_url is not None and settings.redis_url.get_secret_value() == url
    with pytest.raises(ValidationError) as caught:
        Settings(redis_url="http://127.0.0.1:6379")
    assert "must start with redis://, rediss:// or unix://, not http scheme" in str(caught.value)
    assert Settings().redis_url is None


def test_session_secret_must_be_long() -> None:
    with pytest.raises(ValidationError):
        Settings(dashboard_session_secret="short")
    assert Settings(dashboard_session_secret="x" * 32).dashboard_session_secret is not None
