"""The shared store for N replicas: one Redis (``MSSERVE_REDIS_URL``), reached through redis-py's asyncio client.

What lives there (the Azure spend ledger, the circuit breaker, router outcomes, per-key limits) is state every
replica must agree on. Two rules hold for all of it:

- A dead or unreachable Redis fails *fast*: connect and read timeouts are ``MSSERVE_REDIS_TIMEOUT_S`` (default
  0.5 s) and the client does not retry, so a request waits at most about that long before its caller decides.
  redis-py's own default (five-second timeouts, three retries with backoff) would stall requests for many seconds.
- Every Redis failure reaches callers as one exception, ``RedisUnavailable``, raised by ``unavailable()``; each
  caller maps it onto what "unknown" means for it (the ledger: refuse Azure; the breaker: open). ``Backoff``
  skips Redis for a second after a failure, so a hung Redis costs one timeout per second, not one per call.

Responses are decoded to ``str`` (``decode_responses=True``): keys and values are text or numbers.
The redis package is the ``redis`` extra (also in ``dev``); without it, ``open_redis`` says how to install it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis
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
    options = _options(timeout_s, _module("redis.asyncio.retry").Retry)
    return _module("redis.asyncio").Redis.from_url(url, **options)  # type: ignore[no-any-return]


def open_redis_sync(url: str, timeout_s: float) -> redis.Redis:
    """The blocking client, for work done on a thread of its own (the spend ledger's and the breaker's writers:
    their settles must run even when the task that asked for them is cancelled, as the SQLite ledger's do)."""
    options = _options(timeout_s, _module("redis.retry").Retry)
    return _module("redis").Redis.from_url(url, **options)  # type: ignore[no-any-return]


def _module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:  # the extra is missing
        raise RuntimeError(
            "MSSERVE_REDIS_URL is set but the redis package is missing: pip install 'mistral-small-server[redis]'"
        ) from exc


def _options(timeout_s: float, retry: Any) -> dict[str, Any]:
    from redis.backoff import NoBackoff

    return {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": retry(NoBackoff(), 0),  # no retries: the caller's fallback is the retry
        "retry_on_timeout": False,
        "decode_responses": True,
        "client_name": "msserve",
        "health_check_interval": 0,
    }


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


class Backoff:
    """Fail fast *between* calls too: after a Redis failure, calls within ``seconds`` raise ``RedisUnavailable``
    at once instead of each waiting out the timeout. Without it a hung Redis would make every request that asks
    (the breaker, a reservation) queue for the few writer threads, half a second each, and an outage that only
    turns Azure off would also slow the local tier down. One probe call per window finds Redis back.
    """

    def __init__(self, seconds: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._until = float("-inf")

    @contextlib.contextmanager
    def call(self, what: str) -> Iterator[None]:
        if self._clock() < self._until:
            raise RedisUnavailable(f"the shared store (Redis) is unavailable (failed less than {self.seconds:g} s "
                                   f"ago; {what} not tried)")
        try:
            with unavailable(what):
                yield
        except RedisUnavailable:
            self._until = self._clock() + self.seconds
            raise


def key(*parts: str) -> str:
    """``msserve:<part>:<part>...``"""
    return KEY_PREFIX + ":".join(parts)


def shared_secret(url: str, timeout_s: float, name: str) -> str:
    """A random secret every replica reads the same: the first to ask makes it (SET NX), the others read it.

    Raises ``RedisUnavailable`` when Redis cannot be asked. Kept without expiry: replacing it would log every
    session out; delete the key (``msserve:secret:<name>``) to rotate it.
    """
    client = open_redis_sync(url, timeout_s)
    try:
        with unavailable(f"shared secret {name}"):
            client.set(key("secret", name), secrets.token_hex(32), nx=True)
            value = client.get(key("secret", name))
    finally:
        client.close()
    if not isinstance(value, str) or not value:
        raise RedisUnavailable(f"the shared secret {name} vanished between SET NX and GET")
    return value
