"""``msserve router learn`` / ``rollback`` on a real state database, and the learned router they publish."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from server.cli.router import app
from server.config import Settings
from server.routing.embed import default_embedder
from server.routing.inputs import request_from_prompt
from server.routing.learned import LEARNED, LearnedRouter, WeightsRegistry, router_for
from server.routing.model import rate_above
from server.routing.outcomes import OutcomeStore
from server.routing.router import Router
from server.state.db import StateDB
from tests.outcomes import local_outcome

runner = CliRunner()


def _fill(folder: Path, n: int = 300, seed: int = 1) -> list[float]:
    """Outcomes of a deployment where prompts about 'quaternions' are where escalating helps; returns prior logits."""
    rng = random.Random(seed)
    prior = Router.from_weights()
    embedder = default_embedder()
    store = OutcomeStore(StateDB(folder))
    logits = []
    for i in range(n):
        hard = rng.random() < 0.3
        # Every topic has the same length: the prior's features cannot tell them apart, only the words can.
        topic = "quaternion rotation" if hard else rng.choice(["vegetable gardening", "weekend hiking trip"])
        # A filler word unrelated to difficulty spreads the scores out (few ties for the target-rate check).
        filler = rng.choice(["today", "please", "quickly", "again", "now", "briefly", "simply", "kindly", "later"])
        prompt = f"Tell me about the {topic} {filler} {i}."
        outcome = local_outcome(prior, prompt, f"chatcmpl-{i}", created=float(i), threshold=0.5, embedder=embedder)
        store.add(outcome)
        if i % 3 == 0 or hard:  # not every outcome is judged
            store.judge(f"chatcmpl-{i}", "helped" if hard else rng.choice(["same", "hurt", "same"]), now=float(i))
        logits.append(outcome.prior_logit)
    return logits


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MSSERVE_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("MSSERVE_ROUTER_TARGET_RATE", raising=False)
    return tmp_path


def test_learn_writes_versioned_weights_and_a_card_and_keeps_the_escalation_rate(state: Path) -> None:
    _fill(state)
    result = runner.invoke(app, ["learn"])
    assert result.exit_code == 0, result.output
    weights = state / "router" / "learned-v1.json"
    card = (state / "router" / "learned-v1.md").read_text()
    assert weights.is_file() and "outcomes used: " in card and "after this refit" in card
    data = json.loads(weights.read_text())
    assert data["version"] == 1 and data["card"]["outcomes_used"] > 100
    assert data["card"]["apgr_after"] > data["card"]["apgr_before"]  # the held-back check found the planted topic
    settings = Settings()
    registry = WeightsRegistry(StateDB(state), state)
    router = router_for(settings, registry)
    assert isinstance(router, LearnedRouter) and router.learned.version == 1
    # No target rate: the new threshold escalates the share the prior's threshold escalated on these outcomes.
    outcomes = OutcomeStore(StateDB(state)).all()
    prior_scores = [1 / (1 + 2.718281828**-o.prior_logit) for o in outcomes]
    previous_rate = rate_above(prior_scores, Router.from_settings(settings).threshold)
    assert data["escalation_rate"] == pytest.approx(previous_rate, abs=0.02)
    hard = router.decide(request_from_prompt("Tell me about the quaternion rotation 7."))
    easy = router.decide(request_from_prompt("Tell me about the garden 7."))
    assert hard.score is not None and easy.score is not None and hard.score > easy.score
    router.threshold = (hard.score + easy.score) / 2
    escalated = router.decide(request_from_prompt("Tell me about the quaternion rotation 7."))
    assert escalated.tier == "azure" and LEARNED in escalated.reason  # the reason names what moved the score


def test_target_rate_sets_the_threshold_and_rollback_returns_to_the_prior(state: Path, monkeypatch) -> None:
    _fill(state)
    monkeypatch.setenv("MSSERVE_ROUTER_TARGET_RATE", "0.3")
    assert runner.invoke(app, ["learn"]).exit_code == 0
    assert runner.invoke(app, ["learn"]).exit_code == 0
    v2 = json.loads((state / "router" / "learned-v2.json").read_text())
    assert v2["escalation_rate"] == pytest.approx(0.3, abs=0.02)
    registry = WeightsRegistry(StateDB(state), state)
    assert registry.current()[0] == 2  # type: ignore[index]
    result = runner.invoke(app, ["rollback"])
    assert result.exit_code == 0 and "learned-v1 is current" in result.output
    result = runner.invoke(app, ["rollback"])
    assert result.exit_code == 0 and "shipped prior is current" in result.output
    assert not isinstance(router_for(Settings(), registry), LearnedRouter)
    result = runner.invoke(app, ["rollback"])
    assert result.exit_code == 2 and "no learned weights" in result.output


def test_learn_needs_outcomes(state: Path) -> None:
    result = runner.invoke(app, ["learn"])
    assert result.exit_code == 2 and "labelled outcomes" in result.output
    assert not (state / "router").exists()


def test_score_and_eval_default_to_the_prior_and_take_learned_weights(state: Path, tmp_path: Path) -> None:
    _fill(state)
    assert runner.invoke(app, ["learn"]).exit_code == 0
    prompts = tmp_path / "in.jsonl"
    prompts.write_text(json.dumps({"prompt": "Tell me about the quaternion rotation 3."}) + "\n")
    prior = json.loads(runner.invoke(app, ["score", str(prompts)]).stdout)
    learned_run = runner.invoke(app, ["score", str(prompts), "--weights", str(state / "router" / "learned-v1.json")])
    assert learned_run.exit_code == 0, learned_run.output
    learned = json.loads(learned_run.stdout)
    assert learned["score"] > prior["score"]


def test_learned_weights_from_another_feature_set_are_not_used(state: Path) -> None:
    _fill(state)
    assert runner.invoke(app, ["learn"]).exit_code == 0
    path = state / "router" / "learned-v1.json"
    data = json.loads(path.read_text())
    data["feature_set"] = "0000000000000000"
    path.write_text(json.dumps(data))
    assert not isinstance(router_for(Settings(), WeightsRegistry(StateDB(state), state)), LearnedRouter)
