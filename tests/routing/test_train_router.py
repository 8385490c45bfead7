"""Training pieces (scripts/train_router.py): the label, the maximin mix, leave-one-source-out, the shipped file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from server.routing.features import FEATURE_NAMES, FEATURE_SET_VERSION
from server.routing.metrics import evaluate
from server.routing.router import DEFAULT_WEIGHTS
from tests.scripts import load_script


@pytest.fixture(scope="module")
def train():  # type: ignore[no-untyped-def]
    return load_script("train_router")


def synthetic(train, seed: int = 0):  # type: ignore[no-untyped-def]
    """Three sources where the weak model fails more often on long questions with many quantities."""
    rng = np.random.default_rng(seed)
    n = 600
    dense = np.zeros((n, len(FEATURE_NAMES)))
    length = rng.uniform(2.0, 5.7, n)
    quantities = rng.uniform(0.0, 2.5, n)
    dense[:, FEATURE_NAMES.index("ask_length")] = length
    dense[:, FEATURE_NAMES.index("quantities")] = quantities
    hardness = (length - 3.8) + 0.5 * (quantities - 1.2)
    weak = (rng.random(n) > 1 / (1 + np.exp(-2 * hardness))).astype(float)
    strong = np.ones(n)
    sources = np.repeat(["a", "b", "c"], n // 3)
    return train.Data(sources, weak, strong, dense, np.expm1(length))


def test_soft_label(train) -> None:  # type: ignore[no-untyped-def]
    data = train.Data(
        np.array(["a"] * 3), np.array([0.0, 1.0, 1.0]), np.array([1.0, 0.0, 1.0]), np.zeros((3, 1)), np.ones(3)
    )
    assert train.soft_label(data).tolist() == [1.0, 0.0, 0.5]


def test_fit_learns_the_planted_signals_and_scores_rank_by_them(train) -> None:  # type: ignore[no-untyped-def]
    data = synthetic(train)
    weights = train.fit(data, "t")
    features = weights.features
    assert features["ask_length"].learned and features["ask_length"].weight > 0
    assert features["quantities"].weight > 0
    assert weights.training["feature_set"] == FEATURE_SET_VERSION
    for name, prior in train.PRIORS.items():  # hand-set pushes are in units of the learned logit's s.d.
        assert not features[name].learned
        assert features[name].weight == pytest.approx(prior * weights.training["logit_sd"], abs=1e-4)
    scores = train.score_rows(train.RouterModel(weights), data)
    length = data.dense[:, FEATURE_NAMES.index("ask_length")]
    quantities = data.dense[:, FEATURE_NAMES.index("quantities")]
    planted = evaluate(list(length + 0.5 * quantities), list(data.weak), list(data.strong)).apgr
    length_only = evaluate(list(length), list(data.weak), list(data.strong)).apgr
    fitted = evaluate(list(scores), list(data.weak), list(data.strong)).apgr
    assert fitted > length_only and fitted == pytest.approx(planted, abs=0.01)


def test_fast_apgr_equals_the_metric(train) -> None:  # type: ignore[no-untyped-def]
    data = synthetic(train, seed=1)
    scores = np.round(np.random.default_rng(2).random(len(data.weak)), 1)  # many ties
    expected = evaluate(list(scores), list(data.weak), list(data.strong)).apgr
    assert train._apgr_fast(scores, data.weak, data.strong) == pytest.approx(expected, abs=1e-9)


def test_leave_one_source_out_reports_every_source(train) -> None:  # type: ignore[no-untyped-def]
    rows = train.leave_one_source_out(synthetic(train))
    assert [row["source"] for row in rows] == ["a", "b", "c"]
    for row in rows:
        low, high = row["difference_95"]
        assert low <= high
        assert row["prior"] > 0.6  # the planted signal carries to the left-out source


def test_shipped_weights_match_the_features_and_their_table(train) -> None:  # type: ignore[no-untyped-def]
    weights = json.loads(DEFAULT_WEIGHTS.read_text())
    assert set(weights["features"]) == set(FEATURE_NAMES)
    assert weights["training"]["feature_set"] == FEATURE_SET_VERSION
    rows = weights["training"]["leave_one_source_out"]
    assert {row["source"] for row in rows} == {"mmlu", "mmlu-pro", "theoremqa", "arena"}
    card = (DEFAULT_WEIGHTS.parent / "CARD.md").read_text()
    assert train.table(rows) in card  # the card's table is the one the training run wrote
