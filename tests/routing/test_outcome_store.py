"""The outcome store on real SQLite: labels, feedback ownership, retention, and rows surviving a killed process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from server.routing.outcomes import Outcome, OutcomeStore
from server.state.db import StateDB

REPO = Path(__file__).resolve().parents[2]


def _outcome(i: int, *, tier: str = "local", key: str | None = "alice", created: float | None = None) -> Outcome:
    return Outcome(
        id=f"chatcmpl-{i}",
        created=created if created is not None else 1000.0 + i,
        key_name=key,
        tier=tier,
        route="score-low",
        score=0.2,
        threshold=0.5,
        router="prior",
        prior_logit=-1.0 + i / 100,
        feature_set="fs",
        features=[float(i), 1.0],
        embedder=None,
        embedding=None,
    )


def test_rows_round_trip_with_embedding_and_verdicts(tmp_path: Path) -> None:
    store = OutcomeStore(StateDB(tmp_path))
    store.add(_outcome(1).model_copy(update={"embedding": [0.5, -0.25], "embedder": "e"}))
    store.add(_outcome(2))
    assert store.judge("chatcmpl-1", "helped", now=5.0)
    assert not store.judge("chatcmpl-404", "hurt")
    row = store.get("chatcmpl-1")
    assert row is not None and row.embedding == [0.5, -0.25] and row.label == 1.0 and row.label_source == "judge"
    assert store.counts() == {"total": 2, "labelled": 1, "helped": 1, "same": 0, "hurt": 0, "feedback": 0}
    assert [o.id for o in store.all(labelled_only=True)] == ["chatcmpl-1"]
    assert store.judged_series() == [(5.0, "helped")]


def test_feedback_only_from_the_key_that_asked(tmp_path: Path) -> None:
    store = OutcomeStore(StateDB(tmp_path))
    store.add(_outcome(1, key="alice"))
    store.add(_outcome(2, key="alice", tier="azure"))
    assert not store.feedback("chatcmpl-1", "mallory", 0.0)
    assert not store.feedback("chatcmpl-9", "alice", 0.0)
    assert store.get("chatcmpl-1").label is None  # type: ignore[union-attr]
    assert store.feedback("chatcmpl-1", "alice", 0.2)
    assert store.get("chatcmpl-1").label == 0.8  # type: ignore[union-attr]  # a bad local answer: escalate
    assert store.feedback("chatcmpl-2", "alice", 0.9)
    azure = store.get("chatcmpl-2")
    assert azure is not None and azure.label is None and azure.label_source == "feedback"


def test_retention_keeps_the_newest_rows(tmp_path: Path) -> None:
    store = OutcomeStore(StateDB(tmp_path), max_rows=3, max_age_days=1)
    for i in range(5):
        store.add(_outcome(i, created=100_000.0 + i))
    store.add(_outcome(9, created=1.0))  # older than a day at now=100_010
    assert store.prune(now=100_010.0) == 3
    assert [o.id for o in store.all()] == ["chatcmpl-2", "chatcmpl-3", "chatcmpl-4"]


def test_schema_is_versioned(tmp_path: Path) -> None:
    db = StateDB(tmp_path)
    OutcomeStore(db)
    assert db.version("router_outcomes") == 1
    OutcomeStore(db)  # migrating again is a no-op
    assert db.version("router_outcomes") == 1


_WRITER = """
import os, sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from server.routing.outcomes import Outcome, OutcomeStore
from server.state.db import StateDB
store = OutcomeStore(StateDB(Path({folder!r})))
for i in range(50):
    store.add(Outcome(id=f"r{{i}}", created=float(i), key_name=None, tier="local", route="score-low", score=0.1,
                      threshold=0.5, router="prior", prior_logit=0.0, feature_set="fs", features=[1.0]))
    if i == 24:
        print("half", flush=True)
print("done", flush=True)
sys.stdin.read()  # wait to be killed
"""


def test_a_killed_process_loses_no_committed_outcome(tmp_path: Path) -> None:
    script = _WRITER.format(repo=str(REPO), folder=str(tmp_path))
    process = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "half"
    assert process.stdout.readline().strip() == "done"
    os.kill(process.pid, signal.SIGKILL)  # no clean shutdown, no close(): only what was committed
    process.wait()
    assert process.stdin is not None
    process.stdin.close()
    process.stdout.close()
    store = OutcomeStore(StateDB(tmp_path))
    assert len(store.all()) == 50
