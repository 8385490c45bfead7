"""Training pieces: the soft label, the soft-label fit, and the shipped weights' priors (scripts/train_router.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
np = pytest.importorskip("numpy")
sp = pytest.importorskip("scipy.sparse")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def train():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("train_router", ROOT / "scripts" / "train_router.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_router"] = module
    spec.loader.exec_module(module)
    return module


def test_strong_minus_weak_label(train) -> None:  # type: ignore[no-untyped-def]
    from server.routing.labelled import Example

    examples = [Example("a", 0.0, 1.0, "g"), Example("b", 1.0, 0.0, "g"), Example("c", 1.0, 1.0, "g")]
    assert train.targets(examples, "strong_minus_weak").tolist() == [1.0, 0.0, 0.5]
    assert train.targets(examples, "gain").tolist() == [1, 0, 0]


def test_soft_labels_fit_their_mean(train) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    x = sp.csr_matrix(rng.normal(size=(400, 1)))
    hard = (rng.random(400) < 0.5).astype(float)
    a = train.logistic(x, hard, 1.0)
    b = train.logistic(x, np.where(hard == 1, 1.0, 0.0) * 0.999999 + 1e-7, 1.0)  # soft path, same labels
    assert a.coef_[0][0] == pytest.approx(b.coef_[0][0], abs=1e-4)
    # A constant soft label t: the fitted probability is t (cross-entropy against t, no feature signal).
    c = train.logistic(sp.csr_matrix(np.zeros((50, 1))), np.full(50, 0.3), 100.0)
    assert 1 / (1 + np.exp(-c.intercept_[0])) == pytest.approx(0.3, abs=1e-3)


def test_shipped_priors_are_in_logit_sd_units(train) -> None:  # type: ignore[no-untyped-def]
    weights = json.loads((ROOT / "models" / "router" / "mmlu-lr-v1.json").read_text())
    spread = weights["training"]["logit_sd"]
    for name, prior in train.PRIORS.items():
        feature = weights["features"][name]
        assert not feature["learned"]
        assert feature["weight"] == pytest.approx(prior * spread, abs=1e-3)
