"""The router's scoring model: a logistic regression over hand-made features and a small word vocabulary.

Weights come from ``server/resources/router/*.json`` (written by scripts/train_router.py) and are scored in pure Python:
no numpy or sklearn at run time. Each dense feature is standardized with the training mean and scale, so its
contribution ``weight * (x - mean) / scale`` says how far this request moved the logit from a typical one; that
is what reasons are built from.
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from server.errors import RouterConfigError
from server.routing.features import FEATURE_NAMES, Features


class FeatureWeight(BaseModel):
    weight: float
    mean: float = 0.0
    scale: float = 1.0
    learned: bool = True  # False: a prior set by hand for a feature the training data never varied


class Weights(BaseModel):
    """The JSON file's schema. ``training`` is free-form provenance (data, metrics, versions)."""

    name: str
    version: int = 1
    # What the score estimates, e.g. "strong_minus_weak": 0.5 + (P(only the strong model is right) - P(only the
    # local one is)) / 2; "gain": P(local wrong and strong right); "weak_wrong": P(the local model answers wrongly).
    target: str
    bias: float
    features: dict[str, FeatureWeight]
    vocabulary: dict[str, float] = Field(default_factory=dict)
    vocabulary_norm: Literal["none", "sqrt"] = "sqrt"
    default_threshold: float = 0.5
    # Scores at quantiles 0, 1/k, ..., 1 of the reference data: turns a target escalation rate into a threshold.
    reference_quantiles: list[float] = Field(default_factory=list)
    training: dict[str, object] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Scored:
    """One request's score and what made it (a plain dataclass: built on every request, no validation needed)."""

    score: float
    logit: float
    contributions: dict[str, float]  # per dense feature, plus "wording" for the vocabulary part
    top_words: list[str] = field(default_factory=list)  # vocabulary words with the largest push, in its direction
    above_mean: set[str] = field(default_factory=set)  # dense features above their training mean (for wording)


class RouterModel:
    def __init__(self, weights: Weights) -> None:
        missing = [name for name in FEATURE_NAMES if name not in weights.features]
        if missing:
            message = f"router weights {weights.name!r} lack features: {', '.join(missing)}"
            raise RouterConfigError(message, code="router_weights_incompatible")
        self.weights = weights
        # Flattened for speed: (name, weight / scale, mean) per feature.
        self._dense = [
            (name, f.weight / f.scale if f.scale else 0.0, f.mean)
            for name, f in ((n, weights.features[n]) for n in FEATURE_NAMES)
        ]
        self._vocab = weights.vocabulary
        self._vocab_words = frozenset(weights.vocabulary)

    @classmethod
    def load(cls, path: Path) -> RouterModel:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise RouterConfigError(f"router weights not found: {path}", code="router_weights_missing") from exc
        return cls(Weights.model_validate(data))

    @property
    def name(self) -> str:
        return self.weights.name

    def score(self, features: Features) -> Scored:
        values = features.values
        contributions = {name: w * (values[name] - mean) for name, w, mean in self._dense}
        # One set intersection in C instead of a dict lookup per distinct word; sorted so the sum is reproducible.
        hits = [(word, self._vocab[word]) for word in sorted(self._vocab_words.intersection(features.words))]
        wording = sum(weight for _, weight in hits)
        if hits and self.weights.vocabulary_norm == "sqrt":
            wording /= math.sqrt(len(hits))
        contributions["wording"] = wording
        logit = self.weights.bias + sum(contributions.values())
        score = 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, logit))))
        direction = 1.0 if wording >= 0 else -1.0
        hits.sort(key=lambda hit: -direction * hit[1])
        top = [word for word, weight in hits[:3] if weight * direction > 0]
        above = {name for name, _, mean in self._dense if values[name] > mean}
        return Scored(score=score, logit=logit, contributions=contributions, top_words=top, above_mean=above)

    def threshold_for_rate(self, rate: float) -> float:
        """The score above which about ``rate`` of the reference data would be escalated."""
        if not 0.0 <= rate <= 1.0:
            raise RouterConfigError("target escalation rate must be between 0 and 1", code="invalid_router_rate")
        return threshold_for_rate(self.weights.reference_quantiles or [0.0, 1.0], rate)


def threshold_for_rate(quantiles: list[float], rate: float) -> float:
    """Interpolate the (1 - rate) quantile from evenly spaced quantiles ``quantiles[0..k]``."""
    position = (1.0 - rate) * (len(quantiles) - 1)
    low = min(int(position), len(quantiles) - 2)
    frac = position - low
    return quantiles[low] + frac * (quantiles[low + 1] - quantiles[low])


def quantiles_of(scores: list[float], k: int = 100) -> list[float]:
    """Evenly spaced quantiles (0, 1/k, ..., 1) of ``scores``, linear between order statistics."""
    ordered = sorted(scores)
    if not ordered:
        raise ValueError("no scores")
    out = []
    for i in range(k + 1):
        position = i / k * (len(ordered) - 1)
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        out.append(ordered[low] + (position - low) * (ordered[high] - ordered[low]))
    return out


def rate_above(scores: list[float], threshold: float) -> float:
    """Share of ``scores`` strictly above ``threshold`` (what a router escalates)."""
    ordered = sorted(scores)
    return (len(ordered) - bisect.bisect_right(ordered, threshold)) / len(ordered) if ordered else 0.0
