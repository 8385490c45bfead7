"""The shared store: per-key limits counted in Redis, so they hold across replicas.

Per API key (keys share a hash tag, so one Lua script touches them all, on Redis Cluster too):

- ``...:requests`` and ``...:tokens``: hashes of one-second buckets (second -> count), the same sliding minute as
  server.limits.window; buckets older than the window are dropped as they are read.
- ``...:leases``: a sorted set, one member per request in flight, scored by the time its lease ends. A replica
  renews the leases it holds every third of the lease time; a replica that died stops renewing, and its slots
  are dropped once their time is past. Times are the replicas' clocks (injected here): they need to agree to
  within a fraction of the lease time (NTP does it), since a clock ahead drops others' leases that much early.

Check and count are one script, so replicas admitting at the same moment cannot both take the last slot.
When Redis does not answer, this replica counts in process instead (``LocalKeyStore``; its own per-process cap
keeps holding), tries Redis again after ``RETRY_SHARED_S``, and never fails a request for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from server.limits.local import LocalKeyStore
from server.limits.metrics import KeyLimitStats
from server.limits.policy import WINDOW_S, Admission, KeyLimits, LimitName, Refusal
from server.state.redis_store import key as redis_key

log = logging.getLogger(__name__)

RETRY_SHARED_S = 2.0  # after Redis failed, count in process this long before asking it again
_BUCKET_TTL_S = 2 * WINDOW_S  # a key's buckets vanish this long after its last request

# KEYS: requests, tokens, leases. ARGV: now, window (s), buckets' TTL (s), rpm, tpm, cap (0: off), lease id,
# lease end, leases key TTL (ms). Returns {status, retry_after_ms, requests used, tokens used, leases held};
# status 0 admitted, 1 concurrency, 2 requests, 3 tokens. Nothing is counted for a refused request.
_ADMIT = """
local now, window_s, bucket_ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local second = math.floor(now)
local oldest_kept = second - window_s + 1
local function window(key)
  local flat = redis.call('HGETALL', key)
  local buckets, stale, total = {}, {}, 0
  for i = 1, #flat, 2 do
    local s, amount = tonumber(flat[i]), tonumber(flat[i + 1])
    if s < oldest_kept then
      stale[#stale + 1] = flat[i]
    else
      total = total + amount
      buckets[#buckets + 1] = {s, amount}
    end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  return total, buckets
end
local function wait_ms(total, buckets, limit)
  table.sort(buckets, function(a, b) return a[1] < b[1] end)
  for _, bucket in ipairs(buckets) do
    total = total - bucket[2]
    if total < limit then return math.max(0, math.ceil((bucket[1] + window_s - now) * 1000)) end
  end
  return window_s * 1000
end
local rpm, tpm, cap = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local held = 0
if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  held = redis.call('ZCARD', KEYS[3])
  if held >= cap then return {1, 0, 0, 0, held} end
end
local requests, request_buckets = 0, {}
if rpm > 0 then
  requests, request_buckets = window(KEYS[1])
  if requests >= rpm then return {2, wait_ms(requests, request_buckets, rpm), requests, 0, held} end
end
local tokens, token_buckets = 0, {}
if tpm > 0 then
  tokens, token_buckets = window(KEYS[2])
  if tokens >= tpm then return {3, wait_ms(tokens, token_buckets, tpm), requests, tokens, held} end
end
if rpm > 0 then
  redis.call('HINCRBY', KEYS[1], second, 1)
  redis.call('EXPIRE', KEYS[1], bucket_ttl)
  requests = requests + 1
end
if cap > 0 then
  redis.call('ZADD', KEYS[3], ARGV[8], ARGV[7])
  redis.call('PEXPIRE', KEYS[3], ARGV[9])
  held = held + 1
end
return {0, 0, requests, tokens, held}
"""

# KEYS: tokens, leases. ARGV: now, tokens, lease id ('' for none), buckets' TTL (s).
_FINISH = """
if ARGV[3] ~= '' then redis.call('ZREM', KEYS[2], ARGV[3]) end
local tokens = tonumber(ARGV[2])
if tokens > 0 then
  redis.call('HINCRBY', KEYS[1], math.floor(tonumber(ARGV[1])), tokens)
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
end
return 1
"""

_REFUSED: dict[int, LimitName] = {1: "concurrency", 2: "requests", 3: "tokens"}


def redis_keys(key: str) -> tuple[str, str, str]:
    """The requests, tokens and leases keys of one API key name (names are [A-Za-z0-9_.@-]: no braces)."""
    tag = f"{{{key}}}"
    return redis_key("keylimits", tag, "requests"), redis_key("keylimits", tag, "tokens"), \
        redis_key("keylimits", tag, "leases")


class RedisKeyStore:
    def __init__(self, client: Any, *, lease_ttl_s: float = 30.0, retry_after_s: int = 1,
                 stats: KeyLimitStats | None = None, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 errors: tuple[type[BaseException], ...] = (OSError, TimeoutError), owns_client: bool = False) -> None:
        """``client``: a redis.asyncio.Redis (closed by ``close`` when ``owns_client``); ``errors``: what it raises
        when Redis fails (server.state.redis_store.redis_errors), each answered by counting in this process."""
        self.client = client
        self.owns_client = owns_client
        self.lease_ttl_s = lease_ttl_s
        self.retry_after_s = retry_after_s
        self.stats = stats or KeyLimitStats()
        self.stats.shared = True
        self.clock = clock
        self.monotonic = monotonic
        self.errors = errors
        self.local = LocalKeyStore(clock=monotonic)
        self._admit = client.register_script(_ADMIT)
        self._finish = client.register_script(_FINISH)
        self._held: dict[str, str] = {}  # lease id -> key name: what the renewal renews
        self._renewal: asyncio.Task[None] | None = None
        self._skip_until = float("-inf")

    async def admit(self, key: str, limits: KeyLimits) -> Admission | Refusal:
        if self.monotonic() < self._skip_until:
            return self._local(key, limits)
        lease = uuid.uuid4().hex if limits.concurrency is not None else None
        now = self.clock()
        try:
            status, retry_ms, requests, tokens, _held = await self._admit(
                keys=list(redis_keys(key)),
                args=[repr(now), WINDOW_S, _BUCKET_TTL_S, limits.rpm or 0, limits.tpm or 0, limits.concurrency or 0,
                      lease or "", repr(now + self.lease_ttl_s), int(self.lease_ttl_s * 1000) + 1000])
        except self.errors as exc:
            self._went_down(exc)
            return self._local(key, limits)
        self._came_back()
        if status:
            limit = _REFUSED[int(status)]
            allowed = {"concurrency": limits.concurrency, "requests": limits.rpm, "tokens": limits.tpm}[limit] or 0
            retry = self.retry_after_s if limit == "concurrency" else int(retry_ms) / 1000
            return Refusal(key=key, limit=limit, allowed=allowed, retry_after_s=retry)
        if lease is not None:
            self._held[lease] = key
            self._start_renewal()
        return Admission(key=key, limits=limits, lease=lease, shared=True, requests_used=int(requests),
                         tokens_used=int(tokens))

    async def finish(self, admission: Admission, tokens: int) -> None:
        if admission.lease is not None:
            self._held.pop(admission.lease, None)  # first: the renewal stops even if Redis does not answer below
        if not admission.shared:
            await self.local.finish(admission, tokens)
            return
        _, tokens_key, leases_key = redis_keys(admission.key)
        try:
            await self._finish(keys=[tokens_key, leases_key],
                               args=[repr(self.clock()), max(0, tokens), admission.lease or "", _BUCKET_TTL_S])
        except self.errors as exc:
            # The lease lapses by itself; the tokens go to this process's count so they still hold here.
            self._went_down(exc)
            self.local.add_tokens(admission.key, tokens)

    async def renew(self) -> None:
        """Push the end of every lease this replica holds one lease time ahead."""
        if not self._held:
            return
        end = repr(self.clock() + self.lease_ttl_s)
        ttl_ms = int(self.lease_ttl_s * 1000) + 1000
        pipe = self.client.pipeline(transaction=False)
        for lease, key in list(self._held.items()):
            leases_key = redis_keys(key)[2]
            # XX: only leases still there. One that ended while this was on its way (its ZREM ran first) must not
            # come back as a slot nobody holds; one that lapsed is not taken again (its request runs on, uncounted).
            pipe.zadd(leases_key, {lease: end}, xx=True)
            pipe.pexpire(leases_key, ttl_ms)
        try:
            await pipe.execute()
        except self.errors as exc:
            self._went_down(exc)

    async def close(self) -> None:
        if self._renewal is not None:
            self._renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewal
            self._renewal = None
        if self.owns_client:
            with contextlib.suppress(*self.errors):
                await self.client.aclose()

    def _local(self, key: str, limits: KeyLimits) -> Admission | Refusal:
        self.stats.fallbacks += 1
        return self.local.admit_now(key, limits)

    def _start_renewal(self) -> None:
        if self._renewal is None or self._renewal.done():
            self._renewal = asyncio.get_running_loop().create_task(self._renew_forever(), name="key-lease-renewal")

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl_s / 3)
            await self.renew()

    def _went_down(self, exc: BaseException) -> None:
        self._skip_until = self.monotonic() + RETRY_SHARED_S
        if self.stats.shared_up:
            log.warning("Redis did not answer (%s): per-key limits are counted by this replica alone until it "
                        "does", exc.__class__.__name__)
        self.stats.shared_up = False

    def _came_back(self) -> None:
        if not self.stats.shared_up:
            log.info("Redis answers again: per-key limits are shared across replicas again")
        self.stats.shared_up = True
