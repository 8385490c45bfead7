"""The Azure circuit breaker shared by every replica through Redis (``MSSERVE_REDIS_URL``).

Same rules as ``server.routing.policy.CircuitBreaker`` (N consecutive failures open it; after the cool-down one
probe at a time is let through; its success closes it, its failure re-opens it), but the state (failures,
opened_at, the probe in flight and its number) is one Redis hash, changed only by Lua scripts, so five
failures spread over three replicas open the circuit for all three, and only one replica's request probes.

- ``acquire_async`` (what ``RoutingPolicy.admit`` awaits) asks Redis. Redis failing means *no*: Azure is not
  called while the breaker cannot be read (the ledger would refuse it anyway), and the local view says "open".
- ``record_success``, ``record_failure`` and ``release`` stay plain calls (they run in ``finally`` blocks): the
  local view changes at once, and the script runs on a writer thread; one that fails is logged and dropped
  (the next failure or success sets the shared state again).
- ``state`` (metrics, dashboard, the shadow sampler) reads the local view: the shared state as this replica
  last saw it, no I/O; every 5 s at most it has the view re-read in the background.

Times are wall-clock (``time.time``, injectable): opened_at is compared on every replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from server.routing.policy import BreakerState, CircuitBreaker, Permit
from server.state.redis_store import Backoff, RedisUnavailable, key, open_redis_sync

log = logging.getLogger(__name__)

BREAKER_KEY = key("azure", "breaker")
REFRESH_S = 5.0  # ``state`` re-reads the shared state at most this often

# Every script returns the hash after its change: {failures, opened_at or '', probe or '', probe_since or ''}.
_VIEW = """
local function view()
  local v = redis.call('HMGET', KEYS[1], 'failures', 'opened_at', 'probe', 'probe_since')
  return {v[1] or '0', v[2] or '', v[3] or '', v[4] or ''}
end
"""

# ARGV: now, cooldown_s, probe_lease_s. Returns {permit, view...}: permit '-' none, '0' closed, 'n' probe n.
_ACQUIRE = _VIEW + """
local now = tonumber(ARGV[1])
local opened = tonumber(redis.call('HGET', KEYS[1], 'opened_at'))
local permit = '-'
if not opened then
  permit = '0'
elseif now - opened >= tonumber(ARGV[2]) then
  local since = tonumber(redis.call('HGET', KEYS[1], 'probe_since'))
  if redis.call('HEXISTS', KEYS[1], 'probe') == 0 or now - since >= tonumber(ARGV[3]) then
    permit = tostring(redis.call('HINCRBY', KEYS[1], 'probes', 1))
    redis.call('HSET', KEYS[1], 'probe', permit, 'probe_since', ARGV[1])
  end
end
local out = {permit}
for _, v in ipairs(view()) do table.insert(out, v) end
return out
"""

_SUCCESS = _VIEW + """
redis.call('HSET', KEYS[1], 'failures', 0)
redis.call('HDEL', KEYS[1], 'opened_at', 'probe', 'probe_since')
return view()
"""

# ARGV: now, threshold, permit ('' none given: a failure while a probe is out is the probe's; '0' a closed-state
# permit; 'n' probe n).
_FAILURE = _VIEW + """
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local probe = redis.call('HGET', KEYS[1], 'probe')
local probed = probe ~= false and (ARGV[3] == '' or ARGV[3] == probe)
if probed or failures >= tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], 'opened_at', ARGV[1]) end
if probed then redis.call('HDEL', KEYS[1], 'probe', 'probe_since') end
return view()
"""

_READ = _VIEW + """
return view()
"""

# ARGV: now, probe n. Frees the probe when it is still the one out.
_RELEASE = _VIEW + """
if redis.call('HGET', KEYS[1], 'probe') == ARGV[2] then redis.call('HDEL', KEYS[1], 'probe', 'probe_since') end
return view()
"""


class SharedCircuitBreaker(CircuitBreaker):
    def __init__(
        self,
        url: str,
        failure_threshold: int = 5,
        cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        probe_lease_s: float = 300.0,
        *,
        timeout_s: float = 0.5,
    ) -> None:
        super().__init__(failure_threshold, cooldown_s, clock, probe_lease_s)
        self._client = open_redis_sync(url, timeout_s)
        self._scripts = {name: self._client.register_script(source) for name, source in
                         (("acquire", _ACQUIRE), ("success", _SUCCESS), ("failure", _FAILURE), ("release", _RELEASE),
                          ("read", _READ))}
        self._writer = ThreadPoolExecutor(max_workers=4, thread_name_prefix="breaker-redis")
        self._backoff = Backoff()
        self._unavailable = False  # the last call to Redis failed
        self._read_at = clock()  # when the local view was last asked to be refreshed

    @property
    def state(self) -> BreakerState:
        """The local view, no I/O; a view older than ``REFRESH_S`` is re-read in the background, so an idle
        replica's metrics and dashboard follow what the others did."""
        now = self._clock()
        if now - self._read_at >= REFRESH_S:
            self._read_at = now
            self._submit("read")
        return "open" if self._unavailable else super().state

    async def acquire_async(self) -> Permit | None:
        reply = await asyncio.wrap_future(self._writer.submit(self._run, "acquire", self.cooldown_s,
                                                              self.probe_lease_s))
        if reply is None:
            return None  # Redis failing: no Azure
        permit = reply[0]
        if permit == "-":
            return None
        return Permit(probe=int(permit)) if permit != "0" else Permit()

    def acquire(self) -> Permit | None:
        """Only the async path asks Redis; a synchronous caller gets no permit rather than an unshared one."""
        return None

    def record_success(self, permit: Permit | None = None) -> None:
        super().record_success(permit)
        self._submit("success")

    def record_failure(self, permit: Permit | None = None) -> None:
        super().record_failure(permit)
        given = "" if permit is None else str(permit.probe or 0)
        self._submit("failure", self.failure_threshold, given)

    def release(self, permit: Permit | None) -> None:
        super().release(permit)
        if permit is not None and permit.probe is not None:
            self._submit("release", permit.probe)

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self._client.close()

    # -- on the writer threads -----------------------------------------------------------------------------------
    def _submit(self, name: str, *args: str | int | float) -> None:
        # Shut down (RuntimeError): the process is exiting, the shared state is the other replicas' now.
        with contextlib.suppress(RuntimeError):
            self._writer.submit(self._run, name, *args)

    def _run(self, name: str, *args: str | int | float) -> list[Any] | None:
        try:
            with self._backoff.call(f"circuit breaker {name}"):
                reply: list[Any] = self._scripts[name](keys=[BREAKER_KEY], args=[repr(self._clock()), *args])
        except RedisUnavailable:
            self._unavailable = True
            return None
        self._unavailable = False
        self._see(reply[-4:])
        return reply

    def _see(self, view: list[Any]) -> None:
        """Take the shared state as the local view."""
        failures, opened_at, probe, probe_since = view
        self._failures = int(failures)
        self._opened_at = float(opened_at) if opened_at != "" else None
        self._probe = int(probe) if probe != "" else None
        self._probe_since = float(probe_since) if probe_since != "" else 0.0
