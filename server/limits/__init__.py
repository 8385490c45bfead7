"""Per-API-key limits: requests and tokens per minute, and requests in flight across replicas.

policy.py   what a key may use (MSSERVE_KEY_* defaults and overrides); Admission / Refusal; the store protocol
window.py   the sliding minute in one-second buckets
local.py    the embedded store (this process)
shared.py   the Redis store (Lua scripts, leases renewed while a request runs, local counting when Redis is down)
usage.py    the meter an endpoint notes its answer's usage in, for the tokens per minute
metrics.py  refusals and fallbacks, read at scrape time
The middleware that applies them is server/middleware/key_limits.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.config import Settings
from server.limits.local import LocalKeyStore
from server.limits.metrics import KeyLimitsCollector, KeyLimitStats
from server.limits.policy import KeyLimitPolicy, KeyLimitStore

__all__ = ["KeyLimitStats", "KeyLimitsCollector", "KeyLimitsSetup", "open_key_limits"]


@dataclass
class KeyLimitsSetup:
    policy: KeyLimitPolicy
    store: KeyLimitStore
    stats: KeyLimitStats


def open_key_limits(settings: Settings) -> KeyLimitsSetup:
    """The policy and the store: in this process, or in Redis when MSSERVE_REDIS_URL is set (no connection is
    made here: the first request makes it, and a Redis that is down then is counted around)."""
    stats = KeyLimitStats()
    if settings.redis_url is None:
        return KeyLimitsSetup(KeyLimitPolicy.from_settings(settings, shared=False), LocalKeyStore(), stats)
    from server.limits.shared import RedisKeyStore
    from server.state.redis_store import open_redis, redis_errors

    client = open_redis(settings.redis_url.get_secret_value(), settings.redis_timeout_s)
    store = RedisKeyStore(client, lease_ttl_s=settings.key_lease_ttl_s, retry_after_s=settings.retry_after_s,
                          stats=stats, errors=redis_errors(), owns_client=True)
    return KeyLimitsSetup(KeyLimitPolicy.from_settings(settings, shared=True), store, stats)
