"""Router outcomes as a running server stores them, for tests that plant a deployment's history."""

from __future__ import annotations

from server.routing.embed import WordEmbedder
from server.routing.inputs import request_from_prompt
from server.routing.learned import feature_set_version
from server.routing.outcomes import Outcome
from server.routing.router import Router


def local_outcome(
    prior: Router, prompt: str, outcome_id: str, *, created: float, threshold: float,
    embedder: WordEmbedder | None = None,
) -> Outcome:
    """The outcome of ``prompt`` answered locally under ``prior`` (score-low), unjudged."""
    features, scored = prior.score(request_from_prompt(prompt))
    return Outcome(
        id=outcome_id,
        created=created,
        key_name=None,
        tier="local",
        route="score-low",
        score=scored.score,
        threshold=threshold,
        router="prior",
        prior_logit=scored.logit,
        feature_set=feature_set_version(),
        features=features.vector(),
        embedder=embedder.name if embedder else None,
        embedding=embedder.embed(features.words) if embedder else None,
    )
