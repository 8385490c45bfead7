"""The router's outcomes, stored durably: one row per routed request, labelled later by the judge or the client.

Component ``router_outcomes`` of the shared state database (``server/state/db.py``: WAL, synchronous FULL, so a
committed row survives the process being killed). A row holds what the learner needs to refit without the prompt:
the prior's logit, its dense feature vector with the feature-set version it was computed under, the embedding
(when the embedder is installed), the score and tier the serving router gave, the key name and the time. The prompt
text is stored only when ``MSSERVE_LOG_CONTENTS=true``. Labels: ``verdict`` (helped / same / hurt, from the judge)
and ``label`` in [0, 1] (helped 1, same 0.5, hurt 0; or from a client's feedback score). Rows beyond the retention
limits (count, age) are deleted oldest first.

Calls are synchronous and short; the serving path runs them in a thread, after the response is sent.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel

from server.config import Settings
from server.state.db import StateDB

COMPONENT = "router_outcomes"
Verdict = Literal["helped", "same", "hurt"]
VERDICT_LABEL: dict[str, float] = {"helped": 1.0, "same": 0.5, "hurt": 0.0}

_MIGRATIONS = [
    """
    CREATE TABLE router_outcomes (
        id TEXT PRIMARY KEY,            -- the response's id (chatcmpl-...), what POST /v1/feedback names
        created REAL NOT NULL,          -- unix time of the decision
        key_name TEXT,                  -- API key name (NULL: no keys configured)
        tier TEXT NOT NULL,             -- local | azure: where the request was answered
        route TEXT NOT NULL,            -- reason class of the decision (score-low, score-high, override, ...)
        score REAL,                     -- the serving router's score
        threshold REAL,
        router TEXT NOT NULL,           -- the serving router's name (prior, or prior+learned-vN)
        prior_logit REAL NOT NULL,
        feature_set TEXT NOT NULL,      -- fingerprint of the dense feature names (server.routing.learned)
        features TEXT NOT NULL,         -- JSON list, in that feature set's order
        embedder TEXT,
        embedding BLOB,                 -- float32 little-endian, when an embedder was installed
        prompt TEXT,                    -- only with MSSERVE_LOG_CONTENTS=true
        verdict TEXT,                   -- helped | same | hurt (the judge), NULL until judged
        label REAL,                     -- in [0, 1], NULL: unlabelled (no semicolons in here: migrations split on them)
        label_source TEXT,              -- judge | feedback
        labelled REAL                   -- unix time of the label
    );
    CREATE INDEX router_outcomes_created ON router_outcomes (created);
    CREATE INDEX router_outcomes_labelled ON router_outcomes (labelled)
    """,
]


class Outcome(BaseModel):
    id: str
    created: float
    key_name: str | None
    tier: str
    route: str
    score: float | None
    threshold: float | None
    router: str
    prior_logit: float
    feature_set: str
    features: list[float]
    embedder: str | None = None
    embedding: list[float] | None = None
    prompt: str | None = None
    verdict: Verdict | None = None
    label: float | None = None
    label_source: str | None = None
    labelled: float | None = None


class OutcomeStorage(Protocol):
    """What the writer, the learning service, feedback, the dashboard and ``msserve router learn`` use: this
    module's SQLite ``OutcomeStore`` on one box, ``server.routing.outcomes_redis.RedisOutcomeStore`` across
    replicas. Synchronous: callers run it off the event loop."""

    def add_many(self, outcomes: Sequence[Outcome]) -> None: ...

    def judge(self, outcome_id: str, verdict: Verdict, *, now: float | None = None) -> bool: ...

    def feedback(self, outcome_id: str, key_name: str | None, score: float, *, now: float | None = None) -> bool: ...

    def prune(self, *, now: float | None = None) -> int: ...

    def get(self, outcome_id: str) -> Outcome | None: ...

    def all(self, *, labelled_only: bool = False) -> list[Outcome]: ...

    def counts(self) -> dict[str, int]: ...

    def judged_series(self, limit: int = 2000) -> list[tuple[float, str]]: ...

    def close(self) -> None: ...


def open_outcome_store(settings: Settings, db: StateDB) -> OutcomeStorage:
    """Redis when ``MSSERVE_REDIS_URL`` is set (every replica's outcomes in one place), else the state database."""
    rows, days = settings.router_outcomes_max_rows, settings.router_outcomes_max_age_days
    if settings.redis_url is not None:
        from server.routing.outcomes_redis import RedisOutcomeStore  # the redis package is an extra

        url = settings.redis_url.get_secret_value()
        return RedisOutcomeStore(url, timeout_s=settings.redis_timeout_s, max_rows=rows, max_age_days=days)
    return OutcomeStore(db, max_rows=rows, max_age_days=days)


class OutcomeStore:
    def __init__(self, db: StateDB, *, max_rows: int = 100_000, max_age_days: float | None = 90.0) -> None:
        self.db = db
        self.max_rows = max_rows
        self.max_age_days = max_age_days
        db.migrate(COMPONENT, _MIGRATIONS)

    def add(self, outcome: Outcome) -> None:
        self.add_many([outcome])

    def add_many(self, outcomes: Sequence[Outcome]) -> None:
        """All in one transaction (one commit, one fsync)."""
        if not outcomes:
            return
        with self.db.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO router_outcomes (id, created, key_name, tier, route, score, threshold, router, "
                "prior_logit, feature_set, features, embedder, embedding, prompt, verdict, label, label_source, "
                "labelled) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_params(outcome) for outcome in outcomes],
            )

    def judge(self, outcome_id: str, verdict: Verdict, *, now: float | None = None) -> bool:
        """Label a row with the judge's verdict; False when the row is gone (retention) or unknown."""
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "UPDATE router_outcomes SET verdict = ?, label = ?, label_source = 'judge', labelled = ? WHERE id = ?",
                (verdict, VERDICT_LABEL[verdict], now or time.time(), outcome_id),
            )
            return cursor.rowcount > 0

    def feedback(self, outcome_id: str, key_name: str | None, score: float, *, now: float | None = None) -> bool:
        """A client's score (0 bad .. 1 good) for its own answer; False when unknown or made with another key.

        On a local answer a bad score says escalating would have helped: label = 1 - score. An Azure answer has no
        local answer to compare with, so its score is kept (``verdict`` stays NULL) but is no label.
        """
        with self.db.transaction() as conn:
            row = conn.execute("SELECT tier, key_name FROM router_outcomes WHERE id = ?", (outcome_id,)).fetchone()
            if row is None or row["key_name"] != key_name:
                return False
            label = 1.0 - score if row["tier"] == "local" else None
            conn.execute(
                "UPDATE router_outcomes SET label = ?, label_source = 'feedback', labelled = ?, "
                "verdict = CASE WHEN ? IS NULL THEN verdict ELSE NULL END WHERE id = ?",
                (label, now or time.time(), label, outcome_id),
            )
            return True

    def prune(self, *, now: float | None = None) -> int:
        """Apply the retention limits; returns how many rows were deleted."""
        deleted = 0
        with self.db.transaction() as conn:
            if self.max_age_days is not None:
                cutoff = (now or time.time()) - self.max_age_days * 86400
                deleted += conn.execute("DELETE FROM router_outcomes WHERE created < ?", (cutoff,)).rowcount
            deleted += conn.execute(
                "DELETE FROM router_outcomes WHERE id IN (SELECT id FROM router_outcomes ORDER BY created DESC "
                "LIMIT -1 OFFSET ?)",
                (self.max_rows,),
            ).rowcount
        return deleted

    def get(self, outcome_id: str) -> Outcome | None:
        rows = self.db.query("SELECT * FROM router_outcomes WHERE id = ?", (outcome_id,))
        return _outcome(rows[0]) if rows else None

    def all(self, *, labelled_only: bool = False) -> list[Outcome]:
        where = "WHERE label IS NOT NULL" if labelled_only else ""
        return [_outcome(r) for r in self.db.query(f"SELECT * FROM router_outcomes {where} ORDER BY created, id")]

    def counts(self) -> dict[str, int]:
        rows = self.db.query(
            "SELECT COUNT(*) AS total, SUM(label IS NOT NULL) AS labelled, SUM(verdict = 'helped') AS helped, "
            "SUM(verdict = 'same') AS same, SUM(verdict = 'hurt') AS hurt, "
            "SUM(label_source = 'feedback') AS feedback FROM router_outcomes"
        )
        return {key: int(rows[0][key] or 0) for key in ("total", "labelled", "helped", "same", "hurt", "feedback")}

    def judged_series(self, limit: int = 2000) -> list[tuple[float, str]]:
        """(time, verdict) of the latest judged outcomes, oldest first: the dashboard's chart."""
        rows = self.db.query(
            "SELECT labelled, verdict FROM router_outcomes WHERE verdict IS NOT NULL ORDER BY labelled DESC LIMIT ?",
            (limit,),
        )
        return [(float(r["labelled"]), str(r["verdict"])) for r in reversed(rows)]

    def close(self) -> None:
        """Nothing of its own: the state database is its owner's to close."""


def _outcome(row: sqlite3.Row) -> Outcome:
    blob = row["embedding"]
    data = {key: row[key] for key in row.keys()}  # noqa: SIM118 (sqlite3.Row is not a mapping)
    data["features"] = json.loads(row["features"])
    data["embedding"] = np.frombuffer(blob, dtype="<f4").astype(float).tolist() if blob is not None else None
    return Outcome.model_validate(data)


def labels(outcomes: Sequence[Outcome]) -> list[float]:
    return [o.label for o in outcomes if o.label is not None]


def _params(outcome: Outcome) -> tuple[object, ...]:
    embedding = np.asarray(outcome.embedding, dtype="<f4").tobytes() if outcome.embedding is not None else None
    o = outcome
    return (
        o.id,
        o.created,
        o.key_name,
        o.tier,
        o.route,
        o.score,
        o.threshold,
        o.router,
        o.prior_logit,
        o.feature_set,
        json.dumps(o.features),
        o.embedder,
        embedding,
        o.prompt,
        o.verdict,
        o.label,
        o.label_source,
        o.labelled,
    )
