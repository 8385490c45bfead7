"""Dashboard sessions every replica accepts: the secret from the setting, else from Redis, else per process."""

from __future__ import annotations

from server.config import Settings
from server.middleware.auth import ApiKeys
from tests.redis_server import RedisServer

KEYS = "alice:sk-alice-0123456789abcdef"


def _replicas(settings: Settings) -> tuple[ApiKeys, ApiKeys]:
    return ApiKeys.from_settings(settings), ApiKeys.from_settings(settings)


def test_the_secret_setting_makes_every_replica_accept_a_cookie() -> None:
    a, b = _replicas(Settings(api_keys=KEYS, dashboard_session_secret="s" * 64))
    assert b.session_name(a.session_cookie("alice")) == "alice"
    other = ApiKeys.from_settings(Settings(api_keys=KEYS, dashboard_session_secret="t" * 64))
    assert other.session_name(a.session_cookie("alice")) is None


def test_without_a_setting_redis_holds_one_secret_for_all(redis_server: RedisServer) -> None:
    a, b = _replicas(Settings(api_keys=KEYS, redis_url=redis_server.url))
    assert a.secret == b.secret
    assert b.session_name(a.session_cookie("alice")) == "alice"


def test_the_setting_wins_over_redis(redis_server: RedisServer) -> None:
    keys = ApiKeys.from_settings(Settings(api_keys=KEYS, redis_url=redis_server.url,
                                          dashboard_session_secret="s" * 64))
    assert keys.secret == b"s" * 64


def test_one_box_and_redis_down_fall_back_to_a_secret_per_process(redis_server: RedisServer) -> None:
    a, b = _replicas(Settings(api_keys=KEYS))
    assert a.secret != b.secret and b.session_name(a.session_cookie("alice")) is None
    redis_server.kill()
    c, d = _replicas(Settings(api_keys=KEYS, redis_url=redis_server.url))  # starts, with a warning
    assert c.secret != d.secret
