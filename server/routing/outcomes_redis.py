"""The router's outcomes in Redis (``MSSERVE_REDIS_URL``): every replica writes its rows to one store, so feedback
sent to any replica labels a row another replica made, and ``msserve router learn`` (run anywhere with the same
URL) refits from the whole fleet's traffic.

The same methods as ``server.routing.outcomes.OutcomeStore`` (``OutcomeStorage``), synchronous, with the blocking
client: callers already run them off the event loop (the outcome writer's thread, ``asyncio.to_thread``).

Keys::

    msserve:router:outcomes         zset  outcome id -> created (unix time): the order, and retention by age/count
    msserve:router:outcome:<id>     hash  row   the row as JSON, without its label (written once)
                                          tier, key_name   what feedback checks
                                          verdict, label, label_source, labelled   the label (absent: none)

Labels change only through Lua scripts (the row must exist, the feedback's key must match), so a judge's verdict
and a client's feedback arriving on two replicas at once cannot lose each other's fields. Embeddings are stored
rounded to float32, as the SQLite store keeps them. Redis failing raises ``RedisUnavailable``: the writer logs the
batch as lost (outcomes are learning data, never on the request's path), feedback answers as for an unknown id.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from server.routing.outcomes import VERDICT_LABEL, Outcome, Verdict
from server.state.redis_store import Backoff, key, open_redis_sync

INDEX = key("router", "outcomes")
_LABEL_FIELDS = ("verdict", "label", "label_source", "labelled")
_BATCH = 500  # rows fetched per round trip when reading them all


def row_key(outcome_id: str) -> str:
    return key("router", "outcome", outcome_id)


# KEYS: row. ARGV: verdict, label, labelled. 1 when the row exists.
_JUDGE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'verdict', ARGV[1], 'label', ARGV[2], 'label_source', 'judge', 'labelled', ARGV[3])
return 1
"""

# KEYS: row. ARGV: key name ('' none), score, labelled. A bad score on a local answer says escalating would have
# helped (label = 1 - score, the judge's verdict cleared); an Azure answer's score is kept as no label.
_FEEDBACK = """
local found = redis.call('HMGET', KEYS[1], 'tier', 'key_name')
if not found[1] then return 0 end
if (found[2] or '') ~= ARGV[1] then return 0 end
if found[1] == 'local' then
  redis.call('HSET', KEYS[1], 'label', string.format('%.17g', 1 - tonumber(ARGV[2])))
  redis.call('HDEL', KEYS[1], 'verdict')
else
  redis.call('HDEL', KEYS[1], 'label')
end
redis.call('HSET', KEYS[1], 'label_source', 'feedback', 'labelled', ARGV[3])
return 1
"""

# KEYS: index. ARGV: cutoff ('' none), max rows, row key prefix. Deletes by age, then the oldest beyond the count.
_PRUNE = """
local deleted = 0
local function drop(ids)
  for _, id in ipairs(ids) do
    redis.call('DEL', ARGV[3] .. id)
    redis.call('ZREM', KEYS[1], id)
    deleted = deleted + 1
  end
end
if ARGV[1] ~= '' then drop(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])) end
local extra = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[2])
if extra > 0 then drop(redis.call('ZRANGE', KEYS[1], 0, extra - 1)) end
return deleted
"""


class RedisOutcomeStore:
    def __init__(
        self, url: str, *, timeout_s: float = 0.5, max_rows: int = 100_000, max_age_days: float | None = 90.0
    ) -> None:
        self.max_rows = max_rows
        self.max_age_days = max_age_days
        self._backoff = Backoff()
        self._client = open_redis_sync(url, timeout_s)
        self._judge = self._client.register_script(_JUDGE)
        self._feedback = self._client.register_script(_FEEDBACK)
        self._prune = self._client.register_script(_PRUNE)

    def add(self, outcome: Outcome) -> None:
        self.add_many([outcome])

    def add_many(self, outcomes: Sequence[Outcome]) -> None:
        """All in one MULTI/EXEC (a row is replaced whole when its id comes again, as in SQLite)."""
        if not outcomes:
            return
        with self._backoff.call("outcome write"):
            pipe = self._client.pipeline(transaction=True)
            for outcome in outcomes:
                pipe.delete(row_key(outcome.id))
                pipe.hset(row_key(outcome.id), mapping=_fields(outcome))
                pipe.zadd(INDEX, {outcome.id: outcome.created})
            pipe.execute()

    def judge(self, outcome_id: str, verdict: Verdict, *, now: float | None = None) -> bool:
        with self._backoff.call("outcome verdict"):
            found = self._judge(keys=[row_key(outcome_id)],
                                args=[verdict, repr(VERDICT_LABEL[verdict]), repr(now or time.time())])
        return bool(found)

    def feedback(self, outcome_id: str, key_name: str | None, score: float, *, now: float | None = None) -> bool:
        with self._backoff.call("outcome feedback"):
            found = self._feedback(keys=[row_key(outcome_id)], args=[key_name or "", repr(score),
                                                                    repr(now or time.time())])
        return bool(found)

    def prune(self, *, now: float | None = None) -> int:
        cutoff = "" if self.max_age_days is None else repr((now or time.time()) - self.max_age_days * 86400)
        with self._backoff.call("outcome retention"):
            return int(self._prune(keys=[INDEX], args=[cutoff, self.max_rows, row_key("")]))

    def get(self, outcome_id: str) -> Outcome | None:
        with self._backoff.call("outcome read"):
            fields = self._client.hgetall(row_key(outcome_id))
        return _outcome(fields) if fields else None

    def all(self, *, labelled_only: bool = False) -> list[Outcome]:
        """Oldest first (created, then id), as the SQLite store gives them."""
        rows = list(self._rows())
        return [row for row in rows if row.label is not None] if labelled_only else rows

    def counts(self) -> dict[str, int]:
        rows = list(self._rows())
        verdicts = [row.verdict for row in rows]
        return {
            "total": len(rows),
            "labelled": sum(row.label is not None for row in rows),
            "helped": verdicts.count("helped"),
            "same": verdicts.count("same"),
            "hurt": verdicts.count("hurt"),
            "feedback": sum(row.label_source == "feedback" for row in rows),
        }

    def judged_series(self, limit: int = 2000) -> list[tuple[float, str]]:
        judged = sorted((row.labelled or 0.0, str(row.verdict)) for row in self._rows() if row.verdict is not None)
        return judged[-limit:]

    def close(self) -> None:
        self._client.close()

    def _rows(self) -> Iterator[Outcome]:
        with self._backoff.call("outcome read"):
            ids = self._client.zrange(INDEX, 0, -1)
            for start in range(0, len(ids), _BATCH):
                pipe = self._client.pipeline(transaction=False)
                for outcome_id in ids[start:start + _BATCH]:
                    pipe.hgetall(row_key(str(outcome_id)))
                for fields in pipe.execute():
                    if fields:  # pruned between the two reads
                        yield _outcome(fields)


def _fields(outcome: Outcome) -> dict[Any, Any]:
    row = outcome.model_dump(exclude=set(_LABEL_FIELDS))
    if outcome.embedding is not None:
        row["embedding"] = np.asarray(outcome.embedding, dtype="<f4").astype(float).tolist()
    fields: dict[Any, Any] = {"row": json.dumps(row), "tier": outcome.tier}
    if outcome.key_name is not None:
        fields["key_name"] = outcome.key_name
    for name in _LABEL_FIELDS:
        value = getattr(outcome, name)
        if value is not None:
            fields[name] = repr(value) if isinstance(value, float) else str(value)
    return fields


def _outcome(fields: Any) -> Outcome:
    data = json.loads(fields["row"])
    for name in _LABEL_FIELDS:
        data[name] = fields.get(name)
    return Outcome.model_validate(data)
