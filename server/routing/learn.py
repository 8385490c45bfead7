"""Learn one deployment's own traffic: the shipped prior's logit plus a correction fitted to judged outcomes.

The learned logit is ``prior_logit + b + w . z`` where ``z`` holds the prior's own logit, its dense features and,
when an embedder is available, a static text embedding, each standardised on the outcomes. ``w`` has a Gaussian
prior centred on zero, i.e. on the shipped router: the fit is a MAP estimate with a fixed L2 strength on the
*summed* log-loss, so the pull toward the prior stays the same while the evidence grows with every outcome, and
the correction moves only as far as the evidence supports (with a few outcomes it barely moves; with thousands
the data dominates). The embedding's columns are pulled harder than the features' (``EMBEDDING_PENALTY``): 256
noisy directions against 20 that describe the request.

The prior's logit is itself a column, so the fit can also turn a prior that ranks this traffic badly down (or
around). Labels are soft: helped = 1, same = 0.5, hurt = 0 (a client's feedback score as given), so the fitted
score estimates 0.5 + (P(helped) - P(hurt)) / 2, the quality escalating buys, which is what APGR ranks by.

The strengths were chosen on the replay study in docs/learning.md (four sources, each its own
deployment, 300 revealed labels, many orders). numpy only: Newton's method on a few hundred parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel

# L2 strength on the summed soft-label log-loss, in units of standardised inputs.
PENALTY = 1000.0
EMBEDDING_PENALTY = 4.0  # times PENALTY for each embedding column
PRIOR_PENALTY = 1.0  # times PENALTY for the prior's own logit (how readily the fit turns the prior down)
# Fewer outcomes than this, or labels that never vary: no correction (the learned router is the prior).
MIN_OUTCOMES = 20


@dataclass(frozen=True)
class Sample:
    """One judged outcome as the learner sees it."""

    prior_logit: float
    dense: Sequence[float]  # the prior's dense features, in its FEATURE_NAMES order
    label: float  # in [0, 1]
    embedding: Sequence[float] | None = None


class Correction(BaseModel):
    """The fitted correction: ``logit = prior + bias + sum(coef * (row - mean) / scale)``. Serialised as is."""

    columns: int  # 1 (prior logit) + dense features (+ embedding dimensions)
    dense: int
    embedding: int  # 0: no embedding
    mean: list[float]
    scale: list[float]
    coef: list[float]
    bias: float
    penalty: float
    samples: int

    @property
    def active(self) -> bool:
        return self.samples > 0

    def compiled(self) -> CompiledCorrection:
        return CompiledCorrection(self)


class CompiledCorrection:
    """The correction folded into one weight vector and a constant: one dot product per request."""

    def __init__(self, correction: Correction) -> None:
        coef = np.asarray(correction.coef, dtype=np.float64)
        scale = np.asarray(correction.scale, dtype=np.float64)
        self.weights = coef / scale
        self.constant = correction.bias - float(self.weights @ np.asarray(correction.mean, dtype=np.float64))
        self.embedding = correction.embedding
        self.active = correction.active

    def logit(self, prior_logit: float, dense: Sequence[float], embedding: Sequence[float] | None) -> float:
        if not self.active:
            return prior_logit
        row = np.fromiter(_row(prior_logit, dense, embedding if self.embedding else None), dtype=np.float64)
        return prior_logit + self.constant + float(row @ self.weights)


def _row(prior_logit: float, dense: Sequence[float], embedding: Sequence[float] | None) -> list[float]:
    return [prior_logit, *dense, *(embedding if embedding is not None else ())]


def design(samples: Sequence[Sample], *, use_embedding: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, labels, prior logits) of the samples."""
    rows = [_row(s.prior_logit, s.dense, s.embedding if use_embedding else None) for s in samples]
    return (
        np.asarray(rows, dtype=np.float64),
        np.asarray([s.label for s in samples], dtype=np.float64),
        np.asarray([s.prior_logit for s in samples], dtype=np.float64),
    )


def fit_penalised(
    z: np.ndarray, y: np.ndarray, offset: np.ndarray, penalty: np.ndarray, iters: int = 30
) -> tuple[np.ndarray, float]:
    """MAP logistic regression with soft labels: min sum logloss(offset + b + z.w) + 1/2 sum penalty * w^2."""
    n, d = z.shape
    a = np.hstack([np.ones((n, 1)), z])
    pull = np.concatenate([[1e-3], penalty])  # a faint pull on the intercept keeps one-sided labels finite
    theta = np.zeros(d + 1)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(offset + a @ theta, -30, 30)))
        grad = a.T @ (p - y) + pull * theta
        hess = (a * (p * (1 - p))[:, None]).T @ a + np.diag(pull)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if float(np.max(np.abs(step))) < 1e-9:
            break
    return theta[1:], float(theta[0])


def fit(
    samples: Sequence[Sample],
    *,
    use_embedding: bool | None = None,
    penalty: float = PENALTY,
    embedding_penalty: float = EMBEDDING_PENALTY,
    prior_penalty: float = PRIOR_PENALTY,
) -> Correction:
    """Fit the correction to judged samples. ``use_embedding``: None uses it when every sample has one."""
    if use_embedding is None:
        use_embedding = bool(samples) and all(s.embedding is not None for s in samples)
    dense = len(samples[0].dense) if samples else 0
    first = samples[0].embedding if samples else None
    embedding = len(first) if use_embedding and first is not None else 0
    columns = 1 + dense + embedding
    identity = Correction(
        columns=columns,
        dense=dense,
        embedding=embedding,
        mean=[0.0] * columns,
        scale=[1.0] * columns,
        coef=[0.0] * columns,
        bias=0.0,
        penalty=penalty,
        samples=0,
    )
    x, y, offset = design(samples, use_embedding=use_embedding)
    if len(samples) < MIN_OUTCOMES or float(y.max() - y.min()) <= 0.0:
        return identity
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0  # a constant column meets only the penalty: its coefficient stays 0
    pulls = np.full(columns, float(penalty))
    pulls[0] *= prior_penalty
    pulls[1 + dense :] *= embedding_penalty
    w, b = fit_penalised((x - mean) / scale, y, offset, pulls)
    return identity.model_copy(
        update={"mean": mean.tolist(), "scale": scale.tolist(), "coef": w.tolist(), "bias": b, "samples": len(samples)}
    )


def verdict_label(weak: float, strong: float) -> float:
    """A pair of answer qualities as the judge's verdict, a soft label: helped 1, same 0.5, hurt 0."""
    return 1.0 if strong > weak else 0.0 if strong < weak else 0.5
