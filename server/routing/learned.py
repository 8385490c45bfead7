"""The learned router: the shipped prior's score corrected by what this deployment's outcomes taught it.

Weights written by ``msserve router learn`` live under ``MSSERVE_STATE_DIR/router/`` as ``learned-vN.json`` (with
a card, ``learned-vN.md``); which version is in use is kept in the state database (``WeightsRegistry``), so
``msserve router rollback`` and a reload (``POST /admin/router/reload``, SIGHUP) need no file juggling. The
shipped prior stays untouched as package data; a learned file names the prior it corrects (its sha256) and the
feature set it was fitted on, and is refused (the prior serves alone, with a warning) when either changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field, ValidationError

from server.errors import RouterConfigError
from server.routing import embed
from server.routing import features as features_module
from server.routing.features import FEATURE_NAMES, Features
from server.routing.learn import Correction
from server.routing.model import RouterModel, Scored, threshold_for_rate
from server.routing.router import Router
from server.state.db import StateDB
from server.types import GenerationRequest

if TYPE_CHECKING:
    from server.config import Settings

log = logging.getLogger(__name__)

# The name under which the correction appears among a decision's contributions (and so in its reason).
LEARNED = "learned from this deployment's outcomes"
FORMAT: Literal["msserve-learned-router"] = "msserve-learned-router"


def feature_set_version() -> str:
    """The prior's feature-set version (its own constant where features.py has one, else a hash of the names):
    outcomes and weights from another feature list are not comparable."""
    declared = getattr(features_module, "FEATURE_SET_VERSION", None)
    return str(declared) if declared else hashlib.sha256(",".join(FEATURE_NAMES).encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class LearnedWeights(BaseModel):
    format: Literal["msserve-learned-router"] = FORMAT
    version: int
    created: float  # unix time
    prior_name: str
    prior_sha256: str
    feature_set: str
    embedder: str | None  # embed.NAME when the correction reads the embedding
    correction: Correction
    threshold: float
    target_rate: float | None = None  # MSSERVE_ROUTER_TARGET_RATE at fit time, if any
    escalation_rate: float  # of the stored outcomes at ``threshold``
    reference_quantiles: list[float] = Field(default_factory=list)  # learned scores of the stored outcomes
    card: dict[str, object] = Field(default_factory=dict)


def sigmoid(logit: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, logit))))


PriorView = tuple[Features, Scored, "list[float] | None"]  # the prior's features and score, and the embedding
_REMEMBERED = 512  # about the most requests in flight (MSSERVE_MAX_CONCURRENT_REQUESTS is 256)


class ServingRouter(Router):
    """The router a learning server serves with: it remembers the prior's view of its latest decisions.

    The outcome row of a request is written after its answer, and needs the prior's features and logit that the
    decision already computed; ``recall`` hands them over instead of scoring the request a second time.

    The memo holds the request weakly: a request carries its decoded images (megabytes each), and an entry that is
    never read (learning off, a request that failed before its answer) must not keep them alive until it ages out.
    """

    def __init__(self, model: RouterModel, **options: object) -> None:
        super().__init__(model, **options)  # type: ignore[arg-type]
        self._memo: dict[str, tuple[weakref.ref[GenerationRequest], PriorView]] = {}
        self._memo_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.model.name

    def _remember(self, request: GenerationRequest, view: PriorView) -> None:
        with self._memo_lock:
            self._memo[request.request_id] = (weakref.ref(request), view)
            if len(self._memo) > _REMEMBERED:  # never read (e.g. learning off for that request): oldest first
                del self._memo[next(iter(self._memo))]

    def recall(self, request: GenerationRequest) -> PriorView | None:
        """The prior's view of this very request's decision, once (None: not decided by this router)."""
        with self._memo_lock:
            entry = self._memo.pop(request.request_id, None)
        return entry[1] if entry is not None and entry[0]() is request else None

    def score(self, request: GenerationRequest) -> tuple[Features, Scored]:
        features, scored = Router.score(self, request)
        self._remember(request, (features, scored, None))
        return features, scored


class LearnedRouter(ServingRouter):
    """A Router whose score is the prior's logit plus the learned correction; decisions and reasons as usual."""

    def __init__(
        self,
        model: RouterModel,
        learned: LearnedWeights,
        *,
        embedder: embed.WordEmbedder | None = None,
        threshold: float | None = None,
        target_rate: float | None = None,
        **options: object,
    ) -> None:
        super().__init__(model, threshold=threshold, **options)  # type: ignore[arg-type]
        self.learned = learned
        self.correction = learned.correction.compiled()
        if learned.correction.embedding and embedder is None:
            raise ValueError(f"learned weights v{learned.version} need the {learned.embedder} embedding")
        self.embedder = embedder if learned.correction.embedding else None
        self.target_rate = target_rate
        if threshold is None:
            # A target rate is read against the learned scores' quantiles, else the threshold the refit derived.
            if target_rate is not None and learned.reference_quantiles:
                self.threshold = threshold_for_rate(learned.reference_quantiles, target_rate)
            else:
                self.threshold = learned.threshold

    @property
    def name(self) -> str:
        return f"{self.model.name}+learned-v{self.learned.version}"

    def score(self, request: GenerationRequest) -> tuple[Features, Scored]:
        features, scored = Router.score(self, request)
        vector = self.embedder.embed(features.words) if self.embedder is not None else None
        self._remember(request, (features, scored, vector))
        logit = self.correction.logit(scored.logit, features.vector(), vector)
        contributions = {**scored.contributions, LEARNED: logit - scored.logit}
        return features, dataclasses.replace(scored, score=sigmoid(logit), logit=logit, contributions=contributions)


# -- which learned weights are in use ----------------------------------------------------------------------------

_MIGRATIONS = [
    """
    CREATE TABLE router_weights (
        version INTEGER PRIMARY KEY,
        path TEXT NOT NULL,
        created REAL NOT NULL,
        state TEXT NOT NULL DEFAULT 'active'  -- active | superseded | rolled_back
    )
    """,
]


class WeightsRegistry:
    """Learned weights versions and which one is current, in the state database (component ``router_weights``)."""

    def __init__(self, db: StateDB, state_dir: Path) -> None:
        self.db = db
        self.folder = state_dir / "router"
        db.migrate("router_weights", _MIGRATIONS)

    def next_version(self) -> int:
        rows = self.db.query("SELECT MAX(version) AS v FROM router_weights")
        return int(rows[0]["v"] or 0) + 1

    def current(self) -> tuple[int, Path] | None:
        rows = self.db.query("SELECT version, path FROM router_weights WHERE state = 'active' ORDER BY version DESC")
        return (int(rows[0]["version"]), Path(rows[0]["path"])) if rows else None

    def publish(self, weights: LearnedWeights, card: str) -> Path:
        """Write weights and card (atomically: temp file then rename), then make them current."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"learned-v{weights.version}.json"
        _write_atomic(path, weights.model_dump_json(indent=1))
        _write_atomic(path.with_suffix(".md"), card)
        with self.db.transaction() as conn:
            conn.execute("UPDATE router_weights SET state = 'superseded' WHERE state = 'active'")
            conn.execute(
                "INSERT INTO router_weights (version, path, created, state) VALUES (?, ?, ?, 'active')",
                (weights.version, str(path), time.time()),
            )
        return path

    def rollback(self) -> int | None:
        """Retire the current version; the latest one before it (or the prior: None) becomes current."""
        with self.db.transaction() as conn:
            row = conn.execute("SELECT version FROM router_weights WHERE state = 'active'").fetchone()
            if row is None:
                raise LookupError("no learned weights are in use: the shipped prior already serves alone")
            conn.execute("UPDATE router_weights SET state = 'rolled_back' WHERE version = ?", (row["version"],))
            previous = conn.execute(
                "SELECT version FROM router_weights WHERE state = 'superseded' AND version < ? "
                "ORDER BY version DESC LIMIT 1",
                (row["version"],),
            ).fetchone()
            if previous is None:
                return None
            conn.execute("UPDATE router_weights SET state = 'active' WHERE version = ?", (previous["version"],))
            return int(previous["version"])


def _write_atomic(path: Path, text: str) -> None:
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(text, encoding="utf-8")
    temp.replace(path)


def load_learned(path: Path) -> LearnedWeights:
    return LearnedWeights.model_validate_json(Path(path).read_text(encoding="utf-8"))


def compatible(learned: LearnedWeights, prior_path: Path) -> str | None:
    """Why these learned weights cannot correct this prior (None: they can)."""
    if learned.feature_set != feature_set_version():
        return f"fitted on feature set {learned.feature_set}, this release has {feature_set_version()}"
    if learned.prior_sha256 != file_sha256(prior_path):
        return f"fitted on another prior ({learned.prior_name}, sha256 {learned.prior_sha256[:12]})"
    if learned.correction.embedding and embed.default_embedder() is None:
        return f"needs the {learned.embedder} embedding (pip install wordllama)"
    return None


def router_for(settings: Settings, registry: WeightsRegistry | None) -> Router:
    """The current learned router when there is a usable one, else the prior from the settings."""
    prior = ServingRouter.from_settings(settings)
    current = registry.current() if registry is not None else None
    if current is None:
        return prior
    version, path = current
    try:
        learned = load_learned(path)
    except (OSError, ValidationError) as exc:
        log.warning("learned router v%d at %s unreadable (%s): serving the shipped prior", version, path, exc)
        return prior
    why = compatible(learned, settings.router_weights)
    if why is not None:
        log.warning("learned router v%d not used: %s; serving the shipped prior", version, why)
        return prior
    return LearnedRouter(
        prior.model,
        learned,
        embedder=embed.default_embedder(),
        threshold=settings.router_threshold,
        target_rate=settings.router_target_rate,
        image_policy=settings.router_image_policy,
    )


def router_from_file(path: Path, *, prior: Path | None = None, **options: object) -> Router:
    """``--weights`` for the offline commands: prior weights as they are, or learned weights over their prior."""
    from server.routing.router import DEFAULT_WEIGHTS

    text = Path(path).read_text(encoding="utf-8") if Path(path).is_file() else ""
    if f'"{FORMAT}"' not in text:
        return Router.from_weights(path, **options)
    try:
        learned = LearnedWeights.model_validate_json(text)
    except ValidationError as exc:
        raise RouterConfigError(f"{path}: not valid learned weights ({exc})", code="invalid_router_weights") from exc
    prior_path = prior or DEFAULT_WEIGHTS
    why = compatible(learned, prior_path)
    if why is not None:
        raise RouterConfigError(f"{path}: {why}", code="router_weights_incompatible")
    return LearnedRouter(RouterModel.load(prior_path), learned, embedder=embed.default_embedder(), **options)  # type: ignore[arg-type]
