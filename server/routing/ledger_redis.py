"""The Azure spend ledger in Redis, shared by every replica (``MSSERVE_REDIS_URL``): the ``SpendLedger`` protocol
of ``server.routing.ledger`` with each operation one Lua script, so N replicas reserving at once cannot overspend.

Keys, per UTC day ``D`` (the ``{D}`` hash tag keeps one day's keys in one slot of a Redis Cluster)::

    msserve:spend:{D}:settled   hash  purpose -> settled USD
    msserve:spend:{D}:calls     hash  purpose -> settled calls
    msserve:spend:{D}:open      hash  reservation id -> "purpose usd"
    msserve:spend:{D}:leases    zset  reservation id -> lease end (unix time)
    msserve:spend:{D}:swept     hash  reservation id -> reserved USD, for those settled when their lease ended

They expire a few days after their day. ``reserve`` sweeps expired leases, sums settled and open amounts, applies
the budget and the shadow/judge share, and adds the reservation, all in one script: Redis runs a script alone, so
the check and the add are one step for every replica together.

A reservation's lease is the longest an Azure call can hold it (``lease_s``). A reservation still open when its
lease ends, because its replica crashed or lost Redis before settling, is settled *at its reserved amount* by the
next script that touches the day: the real cost is unknown and the reserved amount is the most the call could
have cost, as the SQLite ledger settles a dead process's reservations. The budget never understates what was
spent; the open entry is closed and stops being "open" on the dashboard. A late settle of a swept reservation
corrects the day's figure to the real cost. A settle of a reservation Redis no longer knows at all (a Redis that
lost its data) adds its full cost, never a correction against an amount that was not counted.

Redis failing (down, timed out, a refused command) raises ``LedgerUnavailable`` from ``reserve``: callers refuse
Azure, exactly as for a spent budget. A settle that cannot be written leaves the reservation open in Redis, where
its lease settles it at the reserved amount. Writes go through a small thread pool with the blocking client, so
``settle``/``release`` stay plain calls that run even when the task that made them is cancelled.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import date
from typing import Any

from server.routing.ledger import (
    BudgetRefused,
    LedgerUnavailable,
    Purpose,
    QueuedLedger,
    Reservation,
    SpendSnapshot,
    refusal,
    utc_today,
)
from server.state.redis_store import Backoff, RedisUnavailable, key, open_redis_sync

log = logging.getLogger(__name__)

_DAY_TTL_S = 3 * 86400  # a day's keys outlive it a little: late settles of the previous day still land

# Shared by every script: KEYS = settled, calls, open, leases, swept; ARGV[1] = now. ``sweep`` settles the reservations
# whose lease has ended at their reserved amount; ``totals`` flattens the day to {purpose, settled, reserved, ...}.
# Amounts travel as strings: a Lua number returned to Redis is truncated to an integer.
_PRELUDE = """
local settled_k, calls_k, open_k, leases_k, swept_k = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now = tonumber(ARGV[1])
-- Amounts go back to Redis as the strings they came as: a Lua number would be written with 14 digits.
local function parse(entry)
  return string.match(entry, '^(%S+) (%S+)$')
end
local function sweep()
  local ended = redis.call('ZRANGEBYSCORE', leases_k, '-inf', now)
  for _, id in ipairs(ended) do
    local entry = redis.call('HGET', open_k, id)
    if entry then
      local purpose, usd = parse(entry)
      redis.call('HINCRBYFLOAT', settled_k, purpose, usd)
      redis.call('HINCRBY', calls_k, purpose, 1)
      redis.call('HDEL', open_k, id)
      redis.call('HSET', swept_k, id, usd)
    end
    redis.call('ZREM', leases_k, id)
  end
end
local function totals()
  local settled, reserved, out = {}, {}, {}
  local rows = redis.call('HGETALL', settled_k)
  for i = 1, #rows, 2 do settled[rows[i]] = tonumber(rows[i + 1]) end
  for _, entry in ipairs(redis.call('HVALS', open_k)) do
    local purpose, usd = parse(entry)
    reserved[purpose] = (reserved[purpose] or 0) + tonumber(usd)
    if settled[purpose] == nil then settled[purpose] = 0 end
  end
  for purpose, usd in pairs(settled) do
    table.insert(out, purpose)
    table.insert(out, string.format('%.17g', usd))
    table.insert(out, string.format('%.17g', reserved[purpose] or 0))
  end
  return out
end
local function keep(ttl)
  for _, k in ipairs(KEYS) do redis.call('EXPIRE', k, ttl) end
end
"""

# ARGV: now, id, purpose, usd, budget ('' = none), share_usd, lease_end, ttl. Returns {'ok'|'refused', totals...}.
_RESERVE = _PRELUDE + """
sweep()
local id, purpose, usd = ARGV[2], ARGV[3], tonumber(ARGV[4])
if ARGV[5] ~= '' then
  local budget, share = tonumber(ARGV[5]), tonumber(ARGV[6])
  local spent, side = 0, 0
  local day = totals()
  for i = 1, #day, 3 do
    local held = tonumber(day[i + 1]) + tonumber(day[i + 2])
    spent = spent + held
    if day[i] ~= 'escalation' then side = side + held end
  end
  if spent + usd > budget + 1e-9 or (purpose ~= 'escalation' and side + usd > share + 1e-9) then
    local out = {'refused'}
    for _, v in ipairs(day) do table.insert(out, v) end
    return out
  end
end
redis.call('HSET', open_k, id, purpose .. ' ' .. ARGV[4])
redis.call('ZADD', leases_k, ARGV[7], id)
keep(ARGV[8])
local out = {'ok'}
for _, v in ipairs(totals()) do table.insert(out, v) end
return out
"""

# ARGV: now, id, purpose, reserved usd, charged usd ('' = release), ttl. Returns the day's totals.
_CLOSE = _PRELUDE + """
sweep()
local id, purpose, reserved = ARGV[2], ARGV[3], tonumber(ARGV[4])
local charged = tonumber(ARGV[5]) or 0
local swept = false
if redis.call('HDEL', open_k, id) == 0 then swept = redis.call('HDEL', swept_k, id) == 1 end
redis.call('ZREM', leases_k, id)
-- Swept already (lease over): it was counted at the reserved amount, with its call; correct it to what it cost.
-- Neither open nor swept (Redis lost it): nothing of it was counted, so its whole cost is.
local delta = charged
if swept then delta = charged - reserved end
if delta ~= 0 then redis.call('HINCRBYFLOAT', settled_k, purpose, string.format('%.17g', delta)) end
if ARGV[5] ~= '' and not swept then redis.call('HINCRBY', calls_k, purpose, 1) end
keep(ARGV[6])
return totals()
"""

# ARGV: now. Returns the day's totals (after the sweep).
_TOTALS = _PRELUDE + """
sweep()
return totals()
"""


class RedisSpendLedger(QueuedLedger):
    """``SpendLedger`` in Redis. ``lease_s``: how long a reservation may stay open before it counts as spent."""

    def __init__(
        self,
        url: str,
        *,
        daily_usd: float | None,
        shadow_share: float = 0.1,
        timeout_s: float = 0.5,
        lease_s: float = 900.0,
        today: Callable[[], date] = utc_today,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # A few threads: a slow Redis call holds one, not every reservation behind it (each waits at most the
        # timeout). Settles of one reservation are only ever queued after its reserve has returned.
        super().__init__(daily_usd=daily_usd, shadow_share=shadow_share, today=today, workers=4,
                         name="spend-ledger-redis")
        self.lease_s = lease_s
        self._clock = clock  # wall time: lease ends are compared across replicas
        self._backoff = Backoff()
        self._client = open_redis_sync(url, timeout_s)
        self._reserve_script = self._client.register_script(_RESERVE)
        self._close_script = self._client.register_script(_CLOSE)
        self._totals_script = self._client.register_script(_TOTALS)

    def close(self) -> None:
        """Finish the queued settles (shutdown: it blocks, each write at most the Redis timeout)."""
        super().close()
        self._client.close()

    # -- on the writer threads -----------------------------------------------------------------------------------
    def _reserve(self, usd: float, purpose: Purpose) -> Reservation:
        day = self._today().isoformat()
        reservation = Reservation(id=uuid.uuid4().hex, day=day, purpose=purpose, usd=usd)
        share = self.shadow_share * self.daily_usd if self.daily_usd is not None else 0.0
        now = self._clock()
        budget = "" if self.daily_usd is None else repr(self.daily_usd)
        args: list[str | int] = [repr(now), reservation.id, purpose, repr(usd), budget, repr(share),
                                 repr(now + self.lease_s), _DAY_TTL_S]
        try:
            with self._backoff.call("spend reservation"):
                reply = self._reserve_script(keys=_keys(day), args=args)
        except RedisUnavailable as exc:
            raise LedgerUnavailable(str(exc)) from exc
        status, totals = reply[0], reply[1:]
        if status != "ok":
            snapshot = self._remember(day, totals)
            refused = refusal(snapshot, usd, purpose, self.daily_usd, self.shadow_share)
            # Lua and Python compare the same figures; the fallback covers a rounding disagreement at the edge.
            raise refused or BudgetRefused("daily budget spent", "daily budget spent", purpose=purpose,
                                           estimate_usd=usd, spent_usd=snapshot.spent_usd)
        self._remember(day, totals)
        self._opened(reservation)
        return reservation

    def _close(self, reservation: Reservation, usd: float | None) -> None:
        args: list[str | int] = [repr(self._clock()), reservation.id, reservation.purpose, repr(reservation.usd),
                "" if usd is None else repr(usd), _DAY_TTL_S]
        try:
            with self._backoff.call("spend settle"):
                totals = self._close_script(keys=_keys(reservation.day), args=args)
        except RedisUnavailable:
            # Still open in Redis (if Redis kept it): its lease settles it at the reserved amount.
            log.error("could not settle Azure spend reservation %s; its lease will settle it at $%.4f",
                      reservation.id, reservation.usd)
            return
        if reservation.day == self._today().isoformat():
            self._remember(reservation.day, totals)

    def _refresh(self) -> SpendSnapshot:
        """Settled plus open, today, across every replica. Raises ``LedgerUnavailable`` when Redis fails."""
        day = self._today().isoformat()
        try:
            with self._backoff.call("spend totals"):
                totals = self._totals_script(keys=_keys(day), args=[repr(self._clock())])
        except RedisUnavailable as exc:
            raise LedgerUnavailable(str(exc)) from exc
        return self._remember(day, totals)

    def _remember(self, day: str, totals: list[Any]) -> SpendSnapshot:
        snapshot = SpendSnapshot(day=day, daily_usd=self.daily_usd)
        for i in range(0, len(totals), 3):
            purpose, settled, reserved = str(totals[i]), float(totals[i + 1]), float(totals[i + 2])
            snapshot.settled_usd += settled
            snapshot.reserved_usd += reserved
            snapshot.by_purpose[purpose] = settled + reserved
        self._snapshot = snapshot
        return snapshot


def _keys(day: str) -> list[str]:
    return [key("spend", "{" + day + "}", part) for part in ("settled", "calls", "open", "leases", "swept")]
