"""``msserve router eval --replay FILE --labelled N``: what learning would do on one labelled file.

The file stands for one deployment's traffic. Its first N lines, in file order, are revealed as the judge would
reveal them (helped when strong > weak, same when equal, hurt otherwise); the correction is fitted on them exactly
as ``msserve router learn`` fits stored outcomes; then the prior and the learned router are both scored, by APGR,
on the other n - N lines with their real weak/strong qualities.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel

from server.errors import InvalidRequestError
from server.routing import embed, labelled, learn, metrics
from server.routing.inputs import request_from_json
from server.routing.router import Router


class ReplayResult(BaseModel):
    n: int
    labelled: int
    apgr_prior: float
    apgr_learned: float
    revealed: dict[str, int]  # helped / same / hurt among the revealed lines
    embedding: bool
    correction_samples: int  # 0: too few or uniform labels, the learned router is the prior


def replay(
    examples: Sequence[labelled.Example],
    revealed: int,
    prior: Router,
    embedder: embed.WordEmbedder | None,
) -> ReplayResult:
    n = len(examples)
    if revealed < 1:
        raise InvalidRequestError("--labelled must be at least 1", code="invalid_labelled")
    if revealed >= n:
        raise InvalidRequestError(
            f"--labelled {revealed} leaves nothing to evaluate: the file has {n} lines (N must be < n)",
            code="invalid_labelled",
        )
    rows = []
    for number, example in enumerate(examples, start=1):
        features, scored = prior.score(request_from_json(example.request_json(), request_id=f"line-{number}"))
        vector = embedder.embed(features.words) if embedder is not None else None
        rows.append((scored.logit, features.vector(), vector))
    samples = [
        learn.Sample(logit, dense, learn.verdict_label(e.weak, e.strong), vector)
        for (logit, dense, vector), e in zip(rows[:revealed], examples[:revealed], strict=True)
    ]
    correction = learn.fit(samples, use_embedding=embedder is not None)
    compiled = correction.compiled()
    rest = examples[revealed:]
    weak = [e.weak for e in rest]
    strong = [e.strong for e in rest]
    prior_scores = [logit for logit, _, _ in rows[revealed:]]
    learned_scores = [compiled.logit(logit, dense, vector) for logit, dense, vector in rows[revealed:]]
    try:
        apgr_prior = metrics.apgr(metrics.quality_curve(prior_scores, weak, strong))
        apgr_learned = metrics.apgr(metrics.quality_curve(learned_scores, weak, strong))
    except ValueError as exc:
        raise InvalidRequestError(
            f"the {n - revealed} held-out lines have no gap to recover: {exc}", code="invalid_label_file"
        ) from exc
    counts = {"helped": 0, "same": 0, "hurt": 0}
    for sample in samples:
        counts[{1.0: "helped", 0.5: "same", 0.0: "hurt"}[sample.label]] += 1
    return ReplayResult(
        n=n,
        labelled=revealed,
        apgr_prior=apgr_prior,
        apgr_learned=apgr_learned,
        revealed=counts,
        embedding=embedder is not None,
        correction_samples=correction.samples,
    )


def load_file(path: Path) -> list[labelled.Example]:
    """Every line of a labelled file (or a folder of them), in order; nothing left out."""
    examples, _ = labelled.load([path])
    if not examples:
        raise InvalidRequestError(f"{path}: no labelled lines", code="invalid_label_file")
    return examples
