"""The router: features -> score -> Decision(local | azure) with a reason a person can read.

The score estimates how likely the local model is to get the request wrong (see the weights' card). A request
goes to Azure when its score is above the threshold: set directly, or derived from a target escalation rate via
the score quantiles stored with the weights (``msserve router calibrate`` derives it from your own traffic).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from server.errors import InvalidRequestError, RouterConfigError
from server.resources import ROUTER_WEIGHTS
from server.routing.decision import Decision
from server.routing.features import Features, extract
from server.routing.model import RouterModel, Scored
from server.types import GenerationRequest

if TYPE_CHECKING:
    from server.config import Settings

ImagePolicy = Literal["score", "local", "azure"]
Override = Literal["auto", "local", "azure"]

DEFAULT_WEIGHTS = ROUTER_WEIGHTS  # shipped in the package (server/resources/router)

# Only contributions at least this share of the weights' logit spread (``training.logit_sd``) are named in a reason.
_MIN_CONTRIBUTION_SD = 0.2
_DEFAULT_LOGIT_SD = 0.15
_MAX_NAMED = 3


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


Counts = dict[str, int]
Values = dict[str, float]

# Words for each feature, from its raw counts, its values and whether it is above the training mean (long, many).
# Functions, so a decision formats only the two or three labels its reason uses.
_LABELS: dict[str, Callable[[Counts, Values, bool], str]] = {
    "ask_length": lambda c, v, up: f"{'long' if up else 'short'} question ({c.get('question_chars', 0):,} chars)",
    "quantities": lambda c, v, up: (
        _plural(c["quantities"], "quantity").replace("quantitys", "quantities") if c.get("quantities") else "no numbers"
    ),
    "parts": lambda c, v, up: _plural(c.get("parts", 0), "part"),
    "context_log": lambda c, v, up: f"{c.get('chars', 0):,} chars of context",
    "turns": lambda c, v, up: f"follow-up turn {c.get('turns', 0) + 1}",
    "math": lambda c, v, up: f"math ({_plural(c.get('math', 0), 'signal')})",
    "code": lambda c, v, up: f"code ({_plural(c.get('code', 0), 'signal')})",
    "proof": lambda c, v, up: "asks for proof",
    "reasoning": lambda c, v, up: f"multi-step reasoning ({_plural(c.get('reasoning', 0), 'cue')})",
    "constraints": lambda c, v, up: f"constraints ({_plural(c.get('constraints', 0), 'cue')})",
    "writing": lambda c, v, up: "writing request",
    "extraction": lambda c, v, up: "works on given text",
    "chat": lambda c, v, up: "small talk",
    "has_system": lambda c, v, up: "system prompt",
    "images_log": lambda c, v, up: _plural(c.get("images", 0), "image"),
    "tools_log": lambda c, v, up: _plural(c.get("tools", 0), "tool"),
    "structured_output": lambda c, v, up: "JSON output",
    "long_output": lambda c, v, up: f"long answer (max_tokens {c.get('max_tokens', 0)})",
}


def describe(name: str, features: Features, up: bool) -> str:
    """Words for one feature; ``up``: its value is above the training mean (long, many)."""
    label = _LABELS.get(name)
    return label(features.counts, features.values, up) if label else name


def explain(features: Features, scored: Scored, escalate: bool, minimum: float) -> str:
    """The task, then the signals that pushed hardest in the direction of the decision, in words."""
    sign = 1.0 if escalate else -1.0
    ranked = sorted(scored.contributions.items(), key=lambda item: -sign * item[1])
    named = []
    for name, value in ranked[:_MAX_NAMED]:
        if value * sign < minimum:
            break
        if name == "wording":
            words = ", ".join(repr(w) for w in scored.top_words)
            named.append(f"wording ({words})" if words else "wording")
        else:
            named.append(describe(name, features, up=name in scored.above_mean))
    return f"{features.task}: {' + '.join(named)}" if named else f"{features.task}: no strong signal"


class Router:
    """Decides local | azure for one request. Pure and fast: safe to call on the event loop."""

    def __init__(
        self,
        model: RouterModel,
        *,
        threshold: float | None = None,
        target_rate: float | None = None,
        image_policy: ImagePolicy = "score",
    ) -> None:
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise RouterConfigError("router threshold must be between 0 and 1", code="invalid_router_threshold")
        if image_policy not in ("score", "local", "azure"):
            raise RouterConfigError(f"unknown image policy {image_policy!r}", code="invalid_image_policy")
        self.model = model
        self.image_policy = image_policy
        spread = model.weights.training.get("logit_sd", _DEFAULT_LOGIT_SD)
        self._min_contribution = _MIN_CONTRIBUTION_SD * (float(spread) if isinstance(spread, int | float) else 0.15)
        self.target_rate = target_rate
        # An explicit threshold wins over a target rate; neither: the threshold the weights were shipped with.
        if threshold is not None:
            self.threshold = threshold
        elif target_rate is not None:
            self.threshold = model.threshold_for_rate(target_rate)
        else:
            self.threshold = model.weights.default_threshold

    @classmethod
    def from_weights(cls, path: Path = DEFAULT_WEIGHTS, **options: object) -> Router:
        return cls(RouterModel.load(path), **options)  # type: ignore[arg-type]

    @classmethod
    def from_settings(cls, settings: Settings) -> Router:
        return cls(
            RouterModel.load(settings.router_weights),
            threshold=settings.router_threshold,
            target_rate=settings.router_target_rate,
            image_policy=settings.router_image_policy,
        )

    def score(self, request: GenerationRequest) -> tuple[Features, Scored]:
        features = extract(request)
        return features, self.model.score(features)

    def decide(self, request: GenerationRequest, override: Override | None = None) -> Decision:
        """``override``: the parsed ``x-msserve-route`` header ("auto" or None: let the score decide)."""
        features, scored = self.score(request)
        score = round(scored.score, 4)
        if override in ("local", "azure"):
            return Decision(
                tier=override,
                score=score,
                reason=f"x-msserve-route: {override} (score {score:.2f} not used)",
                reason_class="override",
            )
        if override not in (None, "auto"):
            raise InvalidRequestError(f"unknown route override {override!r}", code="invalid_route")
        images = features.counts.get("images", 0)
        if images and self.image_policy != "score":
            tier: Literal["local", "azure"] = self.image_policy  # type: ignore[assignment]
            reason = f"{_plural(images, 'image')}: image policy sends images to {tier} (score {score:.2f})"
            return Decision(tier=tier, score=score, reason=reason, reason_class="images-policy")
        escalate = scored.score > self.threshold
        why = explain(features, scored, escalate, self._min_contribution)
        comparison = ">" if escalate else "<="
        return Decision(
            tier="azure" if escalate else "local",
            score=score,
            reason=f"{why}; score {score:.2f} {comparison} threshold {self.threshold:.2f}",
            reason_class="score-high" if escalate else "score-low",
        )
