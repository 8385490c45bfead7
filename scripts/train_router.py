"""Train the router's logistic regression on RouteLLM's MMLU results and write models/router/<name>.json.

    python scripts/train_router.py                      # cross-validate, then train on everything and write
    python scripts/train_router.py --grid               # compare settings by cross-validation only

The label is soft: (strong - weak + 1) / 2 per prompt, so the score ranks prompts by the expected quality gained by
escalating them (see Config.target). Deterministic (fixed folds, lbfgs). Needs numpy, scipy and scikit-learn
(training only; serving reads the JSON). Evaluation leaves out contaminated_prompts.jsonl and reports two splits:
random 5-fold, and 5-fold grouped by subject (the model never saw the test subjects: the honest number for traffic
unlike MMLU).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, KFold

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.resources import ROUTER_WEIGHTS  # noqa: E402
from server.routing import labelled, metrics  # noqa: E402
from server.routing.features import FEATURE_NAMES, Features, extract  # noqa: E402
from server.routing.inputs import request_from_prompt  # noqa: E402
from server.routing.model import FeatureWeight, RouterModel, Weights, quantiles_of  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "routellm-mmlu"

# Hand-set weights for features MMLU never varies (no tools, images, JSON output, turns, system prompts,
# max_tokens). They are guesses, marked learned=false in the JSON and in the card; edit them there. Units: standard
# deviations of the learned logit over the training prompts (the JSON holds them times that s.d., in logits), so a
# prior keeps the same push relative to what the data says whatever the target's logit scale. (The values are the
# logit priors of the first weights, which used the "gain" target, divided by that model's s.d., 0.41.)
PRIORS = {
    "turns": 0.12,  # per earlier user turn: follow-ups carry more context to track
    "has_system": 0.0,
    "images_log": 0.0,  # images follow the image policy; Mistral Small 3.1 reads images itself
    "tools_log": 0.73,  # agentic tool use: where small models fall behind most
    "structured_output": 0.49,  # schema-following output
    "long_output": 0.37,  # per doubling of max_tokens above 512: long answers compound errors
    "choices": 0.0,
}


# Cues of difficulty that must not lower the score. MMLU asks for a bare letter, no working, so both models fail
# its math and the data says "math: stay local"; on real traffic (GSM8K, code) the strong model gains most there.
# A feature whose fitted weight comes out negative is dropped (weight 0) and the model refitted.
NON_NEGATIVE = frozenset({"code", "math", "reasoning", "constraints"})


# Dense features left out: in grouped cross-validation they fit subject quirks (number-heavy subjects where
# GPT-4's answers were also wrong, e.g. high_school_mathematics at 3%) and lowered APGR on unseen subjects.
EXCLUDED = ("lines_log", "numbers_log", "questions", "non_ascii", "last_user_chars_log")
DEFAULT_RATE = 0.25  # the shipped default threshold escalates this share of the training prompts


@dataclass(frozen=True)
class Config:
    # "strong_minus_weak": soft label (strong - weak + 1) / 2, so the score estimates 0.5 + (P(gain) - P(loss)) / 2,
    # the expected quality gained by escalating, which is what APGR ranks by. "gain": weak wrong and strong right
    # (RouteLLM's label); "weak_wrong".
    target: str = "strong_minus_weak"
    c: float = 0.05  # inverse L2 strength, shared by dense and vocabulary weights
    vocab_alpha: float = 1.0  # column scale of the vocabulary block: <1 regularizes words harder
    min_groups: int = 8  # a word must occur in this many training subjects (no subject-specific words)
    min_docs: int = 30
    max_vocab: int = 2000  # words kept in the JSON, by |weight|
    vocab_norm: str = "sqrt"
    exclude: tuple[str, ...] = EXCLUDED  # dense features left out of the fit (weight 0)


def featurize(examples: list[labelled.Example]) -> list[Features]:
    return [extract(request_from_prompt(e.prompt)) for e in examples]


def targets(examples: list[labelled.Example], target: str) -> np.ndarray:
    weak = np.array([e.weak for e in examples])
    strong = np.array([e.strong for e in examples])
    if target == "strong_minus_weak":
        return (strong - weak + 1.0) / 2.0
    if target == "weak_wrong":
        return (weak < 0.5).astype(int)
    if target == "gain":
        return ((weak < 0.5) & (strong > 0.5)).astype(int)
    raise ValueError(target)


def select_vocabulary(feats: list[Features], groups: list[str], cfg: Config) -> list[str]:
    docs: Counter[str] = Counter()
    in_groups: dict[str, set[str]] = {}
    for f, g in zip(feats, groups, strict=True):
        for w in f.words:
            docs[w] += 1
            in_groups.setdefault(w, set()).add(g)
    return sorted(w for w, n in docs.items() if n >= cfg.min_docs and len(in_groups[w]) >= cfg.min_groups)


def logistic(x: sp.csr_matrix, y: np.ndarray, c: float) -> LogisticRegression:
    """L2 logistic regression on labels in [0, 1]. A soft label t is a y=1 row of weight t plus a y=0 row of
    weight 1 - t (the cross-entropy against t); every prompt still weighs 1, so C means what it means for 0/1."""
    if np.isin(y, (0, 1)).all():
        return LogisticRegression(C=c, max_iter=5000, tol=1e-6).fit(x, y.astype(int))
    n = x.shape[0]
    weight = np.concatenate([y, 1.0 - y])
    keep = weight > 0
    rows = sp.vstack([x, x]).tocsr()[keep]
    labels = np.concatenate([np.ones(n, dtype=int), np.zeros(n, dtype=int)])[keep]
    return LogisticRegression(C=c, max_iter=5000, tol=1e-6).fit(rows, labels, sample_weight=weight[keep])


def fit(feats: list[Features], y: np.ndarray, groups: list[str], cfg: Config, name: str = "cv") -> Weights:
    dense = np.array([f.vector() for f in feats])
    mean, scale = dense.mean(axis=0), dense.std(axis=0)
    learned = np.array(
        [scale[i] > 1e-9 and n not in PRIORS and n not in cfg.exclude for i, n in enumerate(FEATURE_NAMES)]
    )
    vocab = select_vocabulary(feats, groups, cfg)
    index = {w: i for i, w in enumerate(vocab)}
    rows, cols, vals = [], [], []
    for r, f in enumerate(feats):
        hit = [index[w] for w in f.words if w in index]
        norm = np.sqrt(len(hit)) if hit and cfg.vocab_norm == "sqrt" else 1.0
        rows += [r] * len(hit)
        cols += hit
        vals += [cfg.vocab_alpha / norm] * len(hit)
    words = sp.csr_matrix((vals, (rows, cols)), shape=(len(feats), len(vocab)))
    dropped: set[str] = set()
    while True:
        z = (dense[:, learned] - mean[learned]) / scale[learned]
        x = sp.hstack([sp.csr_matrix(z), words]).tocsr()
        model = logistic(x, y, cfg.c)
        coef = model.coef_[0]
        dense_w, vocab_w = coef[: z.shape[1]], coef[z.shape[1] :] * cfg.vocab_alpha
        names = [n for i, n in enumerate(FEATURE_NAMES) if learned[i]]
        wrong = {n for n, w in zip(names, dense_w, strict=True) if n in NON_NEGATIVE and w < 0}
        if not wrong:
            break
        dropped |= wrong
        learned = np.array([learned[i] and n not in wrong for i, n in enumerate(FEATURE_NAMES)])
    features: dict[str, FeatureWeight] = {}
    learned_names = [n for i, n in enumerate(FEATURE_NAMES) if learned[i]]
    spread = float(np.std(model.decision_function(x)))  # s.d. of the learned logit: the priors' unit
    for i, n in enumerate(FEATURE_NAMES):
        if learned[i]:
            features[n] = FeatureWeight(weight=float(dense_w[learned_names.index(n)]), mean=mean[i], scale=scale[i])
        elif n in dropped:  # fitted, then clipped at 0 by the sign constraint
            features[n] = FeatureWeight(weight=0.0, mean=float(mean[i]), scale=float(scale[i]))
        else:
            prior = round(PRIORS.get(n, 0.0) * spread, 4)
            features[n] = FeatureWeight(weight=prior, mean=float(mean[i]), scale=1.0, learned=False)
    keep = np.argsort(-np.abs(vocab_w))[: cfg.max_vocab]
    vocabulary = {vocab[i]: round(float(vocab_w[i]), 5) for i in sorted(keep) if abs(vocab_w[i]) > 1e-4}
    return Weights(
        name=name,
        target=cfg.target,
        bias=float(model.intercept_[0]),
        features=features,
        vocabulary=vocabulary,
        vocabulary_norm=cfg.vocab_norm,  # type: ignore[arg-type]
        training={"logit_sd": round(spread, 4)},
    )


def scores_of(weights: Weights, feats: list[Features]) -> list[float]:
    model = RouterModel(weights)
    return [model.score(f).score for f in feats]


def cross_validate(
    examples: list[labelled.Example], feats: list[Features], bad: set[str], cfg: Config, grouped: bool
) -> tuple[metrics.RouterMetrics, list[float], list[float]]:
    """Out-of-fold scores for every example; metrics over those not contaminated. Returns (pooled, folds, scores)."""
    groups = [e.group for e in examples]
    y = targets(examples, cfg.target)
    splitter = GroupKFold(n_splits=5) if grouped else KFold(n_splits=5, shuffle=True, random_state=0)
    oof = np.zeros(len(examples))
    fold_apgr = []
    for train, test in splitter.split(np.zeros(len(examples)), y, groups if grouped else None):
        weights = fit([feats[i] for i in train], y[train], [groups[i] for i in train], cfg)
        oof[test] = scores_of(weights, [feats[i] for i in test])
        keep = [i for i in test if examples[i].prompt not in bad]
        fold = metrics.evaluate(
            [oof[i] for i in keep], [examples[i].weak for i in keep], [examples[i].strong for i in keep]
        )
        fold_apgr.append(fold.apgr)
    keep = [i for i in range(len(examples)) if examples[i].prompt not in bad]
    pooled = metrics.evaluate(
        [oof[i] for i in keep], [examples[i].weak for i in keep], [examples[i].strong for i in keep]
    )
    return pooled, fold_apgr, [float(oof[i]) for i in keep]


def baselines(examples: list[labelled.Example], feats: list[Features], bad: set[str]) -> dict[str, float]:
    keep = [i for i in range(len(examples)) if examples[i].prompt not in bad]
    weak = [examples[i].weak for i in keep]
    strong = [examples[i].strong for i in keep]
    out = {"random": 0.5}
    out["length_only"] = metrics.evaluate([feats[i].values["chars_log"] for i in keep], weak, strong).apgr
    out["oracle"] = metrics.evaluate([strong[j] - weak[j] for j in range(len(keep))], weak, strong).apgr
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=ROUTER_WEIGHTS)
    parser.add_argument("--grid", action="store_true", help="compare settings by cross-validation; write nothing")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of the cross-validated curves")
    args = parser.parse_args()

    examples, bad = labelled.load([args.data])
    feats = featurize(examples)
    print(
        f"{len(examples)} examples, {len({e.group for e in examples})} subjects, "
        f"{len(bad)} contaminated left out of eval"
    )
    print("baselines:", {k: round(v, 4) for k, v in baselines(examples, feats, bad).items()})

    if args.grid:
        grid = [
            Config(target=t, vocab_alpha=a, exclude=x)
            for t in ("weak_wrong", "gain", "strong_minus_weak")
            for a in (0.0, 1.0)
            for x in ((), EXCLUDED)
        ]
        for cfg in grid:
            g, _, _ = cross_validate(examples, feats, bad, cfg, grouped=True)
            r, _, _ = cross_validate(examples, feats, bad, cfg, grouped=False)
            print(
                f"{cfg.target:10s} alpha={cfg.vocab_alpha:<4} excluded={len(cfg.exclude)} "
                f"subject-held-out {g.apgr:.4f}  random {r.apgr:.4f}"
            )
        return

    cfg = Config()
    report: dict[str, object] = {}
    curves = {}
    for label, grouped in (("held_out_subjects", True), ("random_split", False)):
        pooled, folds, oof = cross_validate(examples, feats, bad, cfg, grouped)
        print(f"{label}: {pooled.summary()}  per-fold APGR {[round(a, 3) for a in folds]}")
        report[label] = {
            "apgr": round(pooled.apgr, 4),
            "cpt50": round(pooled.cpt50, 4),
            "cpt80": round(pooled.cpt80, 4),
            "fold_apgr": [round(a, 4) for a in folds],
            "fold_apgr_mean": round(float(np.mean(folds)), 4),
            "n": pooled.n,
        }
        keep = [e for e in examples if e.prompt not in bad]
        curves[label] = metrics.quality_curve(oof, [e.weak for e in keep], [e.strong for e in keep])

    y = targets(examples, cfg.target)
    weights = fit(feats, y, [e.group for e in examples], cfg, name=args.out.stem)
    all_scores = scores_of(weights, feats)
    weights.reference_quantiles = [round(q, 6) for q in quantiles_of(all_scores)]
    weights.default_threshold = round(RouterModel(weights).threshold_for_rate(DEFAULT_RATE), 4)
    digest = hashlib.sha256()
    for path in sorted(args.data.glob("*.csv")):
        digest.update(path.read_bytes())
    weights.training = {
        **weights.training,
        "data": "lm-sys/RouteLLM MMLU responses (Mixtral-8x7B-Instruct weak, gpt-4-1106-preview strong)",
        "data_sha256": digest.hexdigest(),
        "examples": len(examples),
        "config": cfg.__dict__,
        "default_threshold_rate": DEFAULT_RATE,
        "priors": PRIORS,
        "priors_unit": "s.d. of the learned logit (logit_sd); the features' weights hold prior * logit_sd",
        "cross_validation": report,
        "baselines": baselines(examples, feats, bad),
        "versions": {"scikit-learn": sklearn.__version__, "numpy": np.__version__},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(weights.model_dump(), indent=1) + "\n")
    print(f"wrote {args.out} ({len(weights.vocabulary)} words)")
    if args.plot:
        metrics.plot_curves(curves, args.plot, title="MMLU, out-of-fold scores (Mixtral vs GPT-4)")
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
