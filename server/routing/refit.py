"""``msserve router learn``: refit the correction from stored outcomes and write versioned weights with a card.

The published correction is fitted on every usable labelled outcome. The card's before/after APGR comes from the
same procedure run once more with the latest 20% of labelled outcomes held back (fitted on the older 80%, scored
on the newer 20%): what the refit does on outcomes it has not seen. The threshold is re-derived on all stored
outcomes (labelled or not): from ``MSSERVE_ROUTER_TARGET_RATE`` when set, else so that the new weights escalate
the share the weights in use before escalated.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from server.routing import embed, learn, metrics
from server.routing.learn import Correction, Sample
from server.routing.learned import LearnedRouter, LearnedWeights, feature_set_version, file_sha256, sigmoid
from server.routing.model import quantiles_of, rate_above, threshold_for_rate
from server.routing.outcomes import Outcome
from server.routing.router import Router

HOLD_BACK = 0.2
MIN_HELD = 10


class NotEnoughOutcomes(ValueError):
    pass


def _use_embedding(outcomes: Sequence[Outcome], embedder: embed.WordEmbedder | None) -> bool:
    return (
        embedder is not None
        and bool(outcomes)
        and all(o.embedding is not None and o.embedder == embedder.name for o in outcomes)
    )


def samples_of(outcomes: Sequence[Outcome], *, use_embedding: bool) -> list[Sample]:
    return [
        Sample(o.prior_logit, o.features, float(o.label), o.embedding if use_embedding else None)
        for o in outcomes
        if o.label is not None
    ]


def apgr_on_labels(logits: Sequence[float], labels: Sequence[float]) -> float | None:
    """APGR where each outcome's label is its gain: strong = label, weak = 1 - label. None: nothing to recover."""
    try:
        return metrics.apgr(metrics.quality_curve(list(logits), [1 - y for y in labels], list(labels)))
    except ValueError:
        return None


def _scores(correction: Correction | None, outcomes: Sequence[Outcome], use_embedding: bool) -> list[float]:
    if correction is None:
        return [sigmoid(o.prior_logit) for o in outcomes]
    compiled = correction.compiled()
    return [
        sigmoid(compiled.logit(o.prior_logit, o.features, o.embedding if use_embedding else None)) for o in outcomes
    ]


def refit(
    outcomes: Sequence[Outcome],
    *,
    current: Router,
    prior_path: Path,
    version: int,
    target_rate: float | None,
    embedder: embed.WordEmbedder | None,
    now: float | None = None,
) -> tuple[LearnedWeights, str]:
    """New learned weights and their card (markdown) from the stored outcomes; ``current`` is the router in use."""
    fs = feature_set_version()
    usable = [o for o in outcomes if o.feature_set == fs]
    labelled = sorted((o for o in usable if o.label is not None), key=lambda o: (o.labelled or 0.0, o.id))
    if len(labelled) < learn.MIN_OUTCOMES:
        raise NotEnoughOutcomes(
            f"{len(labelled)} labelled outcomes under this feature set; at least {learn.MIN_OUTCOMES} are needed "
            "(turn on MSSERVE_ROUTER_SHADOW_RATE, or send POST /v1/feedback)"
        )
    use_embedding = _use_embedding(labelled, embedder)
    correction = learn.fit(samples_of(labelled, use_embedding=use_embedding), use_embedding=use_embedding)

    # The check: the same fit on the older 80%, scored on the newer 20% against the weights in use.
    held_count = int(len(labelled) * HOLD_BACK)
    check: dict[str, object] = {"held_back": held_count}
    if held_count >= MIN_HELD:
        older, newer = labelled[:-held_count], labelled[-held_count:]
        trial = learn.fit(samples_of(older, use_embedding=use_embedding), use_embedding=use_embedding)
        labels = [float(o.label or 0.0) for o in newer]
        check["apgr_prior"] = apgr_on_labels([o.prior_logit for o in newer], labels)
        check["apgr_before"] = apgr_on_labels(_current_scores(current, newer), labels)
        check["apgr_after"] = apgr_on_labels(_scores(trial, newer, use_embedding), labels)

    # The threshold, on every stored outcome (the traffic's whole score distribution, not just the judged part).
    new_scores = _scores(correction, usable, use_embedding)
    old_scores = _current_scores(current, usable)
    rate = target_rate if target_rate is not None else rate_above(old_scores, current.threshold)
    quantiles = quantiles_of(new_scores, k=min(100, max(1, len(new_scores) - 1)))
    threshold = threshold_for_rate(quantiles, rate)
    verdicts = {v: sum(o.verdict == v for o in labelled) for v in ("helped", "same", "hurt")}
    card = {
        "outcomes_stored": len(outcomes),
        "outcomes_used": len(labelled),
        "other_feature_sets": len(outcomes) - len(usable),
        "verdicts": verdicts,
        "feedback_labels": sum(o.label_source == "feedback" for o in labelled),
        "embedding": use_embedding,
        "penalty": correction.penalty,
        "rate_source": "MSSERVE_ROUTER_TARGET_RATE" if target_rate is not None else "previous weights",
        "escalation_rate": rate,
        "previous": getattr(current, "name", current.model.name),
        **check,
    }
    weights = LearnedWeights(
        version=version,
        created=now or time.time(),
        prior_name=current.model.name,
        prior_sha256=file_sha256(prior_path),
        feature_set=fs,
        embedder=embedder.name if use_embedding and embedder is not None else None,
        correction=correction,
        threshold=threshold,
        target_rate=target_rate,
        escalation_rate=rate_above(new_scores, threshold),
        reference_quantiles=quantiles,
        card=card,
    )
    return weights, render_card(weights)


def _current_scores(current: Router, outcomes: Sequence[Outcome]) -> list[float]:
    if isinstance(current, LearnedRouter):
        use = current.learned.correction.embedding > 0
        return _scores(current.learned.correction, outcomes, use)
    return _scores(None, outcomes, False)


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "n/a" if value is None else str(value)


def render_card(weights: LearnedWeights) -> str:
    c = weights.card
    coef = np.asarray(weights.correction.coef)
    lines = [
        f"# Learned router v{weights.version}",
        "",
        f"Written by `msserve router learn` at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(weights.created))}.",
        f"Corrects the shipped prior `{weights.prior_name}` (sha256 {weights.prior_sha256[:12]}), feature set "
        f"`{weights.feature_set}`; embedding: {weights.embedder or 'none'}.",
        "",
        f"- outcomes used: {c.get('outcomes_used')} labelled of {c.get('outcomes_stored')} stored "
        f"(judge verdicts {c.get('verdicts')}, client feedback {c.get('feedback_labels')}; "
        f"{c.get('other_feature_sets')} from another feature set left out)",
        f"- L2 pull toward the prior: {weights.correction.penalty:g} on the summed log-loss; "
        f"largest correction coefficient {float(np.max(np.abs(coef))) if coef.size else 0.0:.3f}",
        f"- threshold {weights.threshold:.4f}: escalates {weights.escalation_rate:.1%} of the stored outcomes "
        f"(rate from {c.get('rate_source')}: {_fmt(c.get('escalation_rate'))})",
        "",
        "APGR on the latest labelled outcomes, held back from a check fit on the older ones "
        f"({c.get('held_back')} held back; n/a below {MIN_HELD}):",
        "",
        "| router | APGR |",
        "|---|---:|",
        f"| shipped prior | {_fmt(c.get('apgr_prior'))} |",
        f"| in use before (`{c.get('previous')}`) | {_fmt(c.get('apgr_before'))} |",
        f"| after this refit | {_fmt(c.get('apgr_after'))} |",
        "",
        "The published weights are fitted on all labelled outcomes. `msserve router rollback` returns to the "
        "previous weights.",
        "",
    ]
    return "\n".join(lines)
