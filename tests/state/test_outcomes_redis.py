"""Router outcomes in a real Redis: the SQLite store's behaviour, rows from two replicas, one ``router learn``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from server.cli.router import app
from server.config import Settings
from server.routing.outcomes import Outcome, OutcomeStorage, OutcomeStore, open_outcome_store
from server.routing.outcomes_redis import RedisOutcomeStore
from server.state.db import StateDB
from server.state.redis_store import RedisUnavailable
from tests.redis_server import RedisServer
from tests.routing.test_learn_cli import _fill


def _outcome(i: int, *, tier: str = "local", key: str | None = "alice", created: float | None = None) -> Outcome:
    return Outcome(id=f"chatcmpl-{i}", created=created if created is not None else 1000.0 + i, key_name=key,
                   tier=tier, route="score-low", score=0.2, threshold=0.5, router="prior", prior_logit=-1.0 + i / 100,
                   feature_set="fs", features=[float(i) / 3, 1.0])


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OutcomeStorage]:
    """The same checks on both stores: Redis must behave as the one-box store does."""
    if request.param == "sqlite":
        yield OutcomeStore(StateDB(tmp_path), max_rows=3, max_age_days=1)
        return
    server = RedisServer(tmp_path / "redis")
    redis_store = RedisOutcomeStore(server.url, max_rows=3, max_age_days=1)
    yield redis_store
    redis_store.close()
    server.stop()


def test_rows_round_trip_with_labels(store: OutcomeStorage) -> None:
    store.add_many([_outcome(1).model_copy(update={"embedding": [0.1, -0.25], "embedder": "e"}), _outcome(2)])
    assert store.judge("chatcmpl-1", "helped", now=5.0)
    assert not store.judge("chatcmpl-404", "hurt")
    row = store.get("chatcmpl-1")
    assert row is not None and row.label == 1.0 and row.label_source == "judge" and row.verdict == "helped"
    assert row.embedding == [pytest.approx(0.1, rel=1e-6), -0.25] and row.features == [1 / 3, 1.0]
    assert store.counts() == {"total": 2, "labelled": 1, "helped": 1, "same": 0, "hurt": 0, "feedback": 0}
    assert [o.id for o in store.all(labelled_only=True)] == ["chatcmpl-1"]
    assert [o.id for o in store.all()] == ["chatcmpl-1", "chatcmpl-2"]
    assert store.judged_series() == [(5.0, "helped")]


def test_feedback_only_from_the_key_that_asked(store: OutcomeStorage) -> None:
    store.add_many([_outcome(1, key="alice"), _outcome(2, key="alice", tier="azure"), _outcome(3, key=None)])
    store.judge("chatcmpl-1", "same")
    assert not store.feedback("chatcmpl-1", "mallory", 0.0)
    assert not store.feedback("chatcmpl-9", "alice", 0.0)
    assert store.feedback("chatcmpl-1", "alice", 0.2)
    local = store.get("chatcmpl-1")
    assert local is not None and local.label == pytest.approx(0.8) and local.verdict is None  # the client's word
    assert store.feedback("chatcmpl-2", "alice", 0.9)
    azure = store.get("chatcmpl-2")
    assert azure is not None and azure.label is None and azure.label_source == "feedback"
    assert not store.feedback("chatcmpl-3", "alice", 0.5) and store.feedback("chatcmpl-3", None, 0.5)


def test_retention_keeps_the_newest_rows(store: OutcomeStorage) -> None:
    store.add_many([_outcome(i, created=100_000.0 + i) for i in range(5)])
    store.add_many([_outcome(9, created=1.0)])  # older than a day at now=100_010
    assert store.prune(now=100_010.0) == 3
    assert [o.id for o in store.all()] == ["chatcmpl-2", "chatcmpl-3", "chatcmpl-4"]
    assert store.get("chatcmpl-9") is None


def test_redis_gone_raises_redis_unavailable(redis_server: RedisServer) -> None:
    store = RedisOutcomeStore(redis_server.url)
    redis_server.kill()
    try:
        with pytest.raises(RedisUnavailable):
            store.add_many([_outcome(1)])
        with pytest.raises(RedisUnavailable):
            store.feedback("chatcmpl-1", "alice", 0.5)
    finally:
        store.close()


def test_one_learn_sees_the_outcomes_of_two_replicas(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = tmp_path / "one-box"
    _fill(whole)  # 300 outcomes, some judged, in one SQLite store: the reference
    rows = OutcomeStore(StateDB(whole)).all()
    replica_a, replica_b = (RedisOutcomeStore(redis_server.url) for _ in range(2))
    replica_a.add_many(rows[0::2])  # each replica served half of the traffic
    replica_b.add_many(rows[1::2])
    assert len(replica_a.all()) == len(rows) == 300
    replica_a.close()
    replica_b.close()

    runner = CliRunner()
    monkeypatch.delenv("MSSERVE_ROUTER_TARGET_RATE", raising=False)
    monkeypatch.setenv("MSSERVE_STATE_DIR", str(whole))
    reference = runner.invoke(app, ["learn"])
    assert reference.exit_code == 0, reference.output
    shared_state = tmp_path / "replica-c"  # a third replica's own folder: no outcomes in its SQLite
    monkeypatch.setenv("MSSERVE_STATE_DIR", str(shared_state))
    monkeypatch.setenv("MSSERVE_REDIS_URL", redis_server.url)
    chosen = open_outcome_store(Settings(), StateDB(shared_state))
    assert isinstance(chosen, RedisOutcomeStore)
    chosen.close()
    result = runner.invoke(app, ["learn"])
    assert result.exit_code == 0, result.output
    expected = json.loads((whole / "router" / "learned-v1.json").read_text())["card"]
    learned = json.loads((shared_state / "router" / "learned-v1.json").read_text())["card"]
    assert learned["outcomes_used"] == expected["outcomes_used"] > 100
    assert learned["apgr_after"] == pytest.approx(expected["apgr_after"])
