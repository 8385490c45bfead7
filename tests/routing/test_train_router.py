"""Training pieces: the soft label, the soft-label fit, and the shipped weights' priors (scripts/train_router.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import sklearn  # noqa: F401  (the `train` extra, in .venv-test: missing, these tests fail rather than skip)

from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def train():  # type: ignore[no-untyped-def]
    return load_script("train_router")


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
    # Two kinds of prompt with soft labels 0.2 and 0.8 (no row is 0 or 1): the fit must learn each kind's label
    # as its probability, which no rounding to hard labels could give (that would be 0 and 1, or one class).
    kind = np.repeat([-1.0, 1.0], 60)
    soft = np.where(kind > 0, 0.8, 0.2)
    c = train.logistic(sp.csr_matrix(kind.reshape(-1, 1)), soft, 100.0)
    fitted = c.predict_proba(np.array([[-1.0], [1.0]]))[:, 1]
    assert fitted.tolist() == pytest.approx([0.2, 0.8], abs=5e-3)


def test_shipped_priors_are_in_logit_sd_units(train) -> None:  # type: ignore[no-untyped-def]
    weights = json.loads((ROOT / "models" / "router" / "mmlu-lr-v1.json").read_text())
    spread = weights["training"]["logit_sd"]
    for name, prior in train.PRIORS.items():
        feature = weights["features"][name]
        assert not feature["learned"]
        assert feature["weight"] == pytest.approx(prior * spread, abs=1e-3)
