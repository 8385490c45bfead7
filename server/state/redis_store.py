"""The shared store for N replicas: one Redis (``MSSERVE_REDIS_URL``), reached through redis-py's asyncio client.

What lives there (the Azure spend ledger, the circuit breaker, router outcomes, per-key limits) is state every
replica must agree on. Two rules hold for all of it:

- A dead or unreachable Redis fails *fast*: connect and read timeouts are ``MSSERVE_REDIS_TIMEOUT_S`` (default
  0.5 s) and the client does not retry, so a request waits at most about that long before its caller decides.
  redis-py's own default (five-second timeouts, three retries with backoff) would stall requests for many seconds.
- Every Redis failure reaches callers as one exception, ``RedisUnavailable``, raised by ``unavailable()``; each
  caller maps it onto what "unknown" means for it (the ledger: refuse Azure; the breaker: open).

Responses are decoded to ``str`` (``decode_responses=True``): keys and values are text or numbers.
The redis package is the ``redis`` extra (also in ``dev``); without it, ``open_redis`` says how to install it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis.asyncio

log = logging.getLogger(__name__)

# Every key this server writes starts with this, so one Redis can hold other data (or another deployment, with
# a different database number in the URL) without clashes.
KEY_PREFIX = "msserve:"


class RedisUnavailable(Exception):
    """Redis could not be reached, timed out or failed the command: callers decide what "unknown" means."""


def open_redis(url: str, timeout_s: float) -> redis.asyncio.Redis:
    """An asyncio client (a pool; connections are made on first use, so this never blocks or fails on a dead
    Redis). ``url``: redis://, rediss:// or unix:// as redis-py reads it."""
    try:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
    except ImportError as exc:  # pragma: no cover - the extra is missing
        raise RuntimeError(
            "MSSERVE_REDIS_URL is set but the redis package is missing: pip install 'mistral-small-server[redis]'"
        ) from exc
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),  # no retries: the caller's fallback is the retry
        retry_on_timeout=False,
        decode_responses=True,
        client_name="msserve",
        health_check_interval=0,
    )


def redis_errors() -> tuple[type[BaseException], ...]:
    """What a Redis call raises when the store fails: redis-py's own errors and socket-level ones."""
    import redis.exceptions

    return (redis.exceptions.RedisError, OSError, TimeoutError)


@contextlib.contextmanager
def unavailable(what: str) -> Iterator[None]:
    """Turn any Redis failure inside the block into ``RedisUnavailable`` (``what``: the operation, for the log).

    Usable around awaits (``with unavailable("reserve"): await client.eval(...)``). The message names the error's
    type only: a redis error text may quote the URL.
    """
    try:
        yield
    except redis_errors() as exc:
        log.warning("Redis unavailable during %s: %s", what, type(exc).__name__)
        raise RedisUnavailable(f"the shared store (Redis) is unavailable ({type(exc).__name__} during {what})") from exc


def key(*parts: str) -> str:
    """``msserve:<part>:<part>...``"""
    return KEY_PREFIX + ":".join(parts)
