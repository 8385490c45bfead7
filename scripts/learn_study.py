"""Candidate learners against the current one, by the protocol in docs/learning.md ("Raising the learned gain").

    python scripts/learn_study.py [--data ../shared/data] [--orders 8] [--cache DIR]
    python scripts/learn_study.py --diagnose     # not part of the verdict: more labels, and in-sample ceilings

Each source is one deployment. Its prior is the one scripts/train_router.py trains on the vendored outcomes
without that source; the first N = min(300, n / 2) lines of an order are revealed; the gain is APGR(learned) -
APGR(prior) on the rest. Orders: file order and ``--orders`` shuffles (seeds 0, 1, ...). Prints one markdown row
per source and candidate (file-order gain, mean over the orders, s.d., worst) and the adoption rule's verdict.
Features, embeddings and the four priors are computed once and cached (``--cache``).

``--diagnose`` asks why, after the verdict: the mean gain over the shuffled orders with more revealed labels
(1,000 and 3,000 on the two large sources), and each candidate fitted on *all* of a source's lines and scored on
the same lines (an in-sample ceiling: what the method could find if it knew the whole traffic).
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import train_router  # noqa: E402

from server.routing import embed, learn, replay  # noqa: E402
from server.routing.features import FEATURE_NAMES, extract, task_of  # noqa: E402
from server.routing.inputs import request_from_json  # noqa: E402

SOURCES = {  # name in the vendored outcomes -> (label, path under --data)
    "mmlu": ("MMLU (RouteLLM)", "routellm-mmlu"),
    "mmlu-pro": ("MMLU-Pro", "routing/mmlu-pro.jsonl"),
    "theoremqa": ("TheoremQA", "routing/theoremqa.jsonl"),
    "arena": ("arena-bench", "routing/arena-bench-v1.jsonl"),
}
CLUSTERS = 16
NEIGHBOURS = 25


def prior_logits(weights: train_router.Weights, dense: np.ndarray) -> np.ndarray:
    """The prior's logit from dense rows, as RouterModel.score computes it."""
    logit = np.full(len(dense), weights.bias)
    for index, name in enumerate(FEATURE_NAMES):
        f = weights.features[name]
        logit += f.weight / f.scale * (dense[:, index] - f.mean)
    return logit


def prepare(data: Path, cache: Path) -> dict[str, dict[str, np.ndarray]]:
    cache.mkdir(parents=True, exist_ok=True)
    embedder = embed.default_embedder()
    if embedder is None:
        raise SystemExit("wordllama is not installed: the study needs the embedding")
    outcomes = None
    out = {}
    for source, (_, relative) in SOURCES.items():
        path = cache / f"{source}.npz"
        if not path.is_file():
            if outcomes is None:
                outcomes = train_router.load()
            weights = train_router.fit(outcomes.only(outcomes.sources != source), f"without-{source}")
            examples = replay.load_file(data / relative)
            dense, vectors = [], []
            for number, example in enumerate(examples, start=1):
                features = extract(request_from_json(example.request_json(), request_id=f"line-{number}"))
                dense.append(features.vector())
                vectors.append(embedder.embed(features.words))
            dense_rows = np.asarray(dense)
            np.savez(
                path,
                logit=prior_logits(weights, dense_rows),
                dense=dense_rows,
                emb=np.asarray(vectors, dtype=np.float32),
                weak=np.array([e.weak for e in examples]),
                strong=np.array([e.strong for e in examples]),
            )
        with np.load(path) as loaded:
            out[source] = {key: loaded[key] for key in loaded.files}
    return out


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))


def labels(weak: np.ndarray, strong: np.ndarray) -> np.ndarray:
    return np.where(strong > weak, 1.0, np.where(strong < weak, 0.0, 0.5))


# -- the candidates: (revealed rows, held-out rows) -> held-out scores (higher: escalate first) ----------------------

Rows = dict[str, np.ndarray]


def c0_current(seen: Rows, rest: Rows) -> np.ndarray:
    samples = [
        learn.Sample(float(lg), d.tolist(), float(y), e.tolist())
        for lg, d, y, e in zip(seen["logit"], seen["dense"], seen["label"], seen["emb"], strict=True)
    ]
    compiled = learn.fit(samples, use_embedding=True).compiled()
    held = zip(rest["logit"], rest["dense"], rest["emb"], strict=True)
    return np.array([compiled.logit(float(lg), d.tolist(), e.tolist()) for lg, d, e in held])


def kmeans(x: np.ndarray, k: int, seed: int = 0, iterations: int = 50) -> np.ndarray:
    """Unit-norm centroids by spherical k-means (k-means++ seeding on cosine distance)."""
    rng = np.random.default_rng(seed)
    k = min(k, len(x))
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        distance = np.clip(1.0 - np.max(x @ np.array(centres).T, axis=1), 0.0, None)
        total = distance.sum()
        centres.append(x[rng.choice(len(x), p=distance / total)] if total > 0 else x[rng.integers(len(x))])
    c = np.array(centres)
    for _ in range(iterations):
        assign = np.argmax(x @ c.T, axis=1)
        new = np.array([x[assign == j].sum(axis=0) if np.any(assign == j) else c[j] for j in range(k)])
        norms = np.linalg.norm(new, axis=1, keepdims=True)
        new = np.where(norms > 0, new / np.where(norms > 0, norms, 1.0), c)
        if np.allclose(new, c):
            break
        c = new
    return c


def shrunk_cluster_offsets(assign: np.ndarray, residual: np.ndarray, k: int) -> np.ndarray:
    """Empirical-Bayes cluster means of the centred residual (one-way ANOVA moments; 0 where the noise explains all)."""
    r = residual - residual.mean()
    counts = np.bincount(assign, minlength=k).astype(float)
    sums = np.bincount(assign, weights=r, minlength=k)
    means = np.divide(sums, counts, out=np.zeros(k), where=counts > 0)
    used = counts > 0
    n, groups = counts.sum(), int(used.sum())
    if groups < 2 or n <= groups:
        return np.zeros(k)
    within = float(np.sum((r - means[assign]) ** 2)) / (n - groups)
    between = float(np.sum(counts * means**2))  # r is centred, so the grand mean is 0
    tau2 = max(0.0, (between - (groups - 1) * within) / (n - float(np.sum(counts**2)) / n))
    factor = np.divide(counts * tau2, counts * tau2 + within, out=np.zeros(k), where=used)
    return means * factor


def c1_clusters(
    seen: Rows, rest: Rows, base_seen: np.ndarray | None = None, base_rest: np.ndarray | None = None
) -> np.ndarray:
    """Cluster offsets over the prior (or over ``base``: logits already corrected, for C3)."""
    p_seen = sigmoid(seen["logit"] if base_seen is None else base_seen)
    p_rest = sigmoid(rest["logit"] if base_rest is None else base_rest)
    centres = kmeans(seen["emb"], CLUSTERS)
    offsets = shrunk_cluster_offsets(np.argmax(seen["emb"] @ centres.T, axis=1), seen["label"] - p_seen, len(centres))
    return p_rest + offsets[np.argmax(rest["emb"] @ centres.T, axis=1)]


def c2_neighbours(seen: Rows, rest: Rows) -> np.ndarray:
    r = seen["label"] - sigmoid(seen["logit"])
    r = r - r.mean()
    k = min(NEIGHBOURS, len(r) - 1)
    similarity = seen["emb"] @ seen["emb"].T
    np.fill_diagonal(similarity, -np.inf)
    loo = r[np.argsort(-similarity, axis=1)[:, :k]].mean(axis=1)
    denominator = float(loo @ loo)
    strength = min(1.0, max(0.0, float(r @ loo) / denominator)) if denominator > 0 else 0.0
    near = np.argsort(-(rest["emb"] @ seen["emb"].T), axis=1)[:, :k]
    return sigmoid(rest["logit"]) + strength * r[near].mean(axis=1)


def c3_current_then_clusters(seen: Rows, rest: Rows) -> np.ndarray:
    corrected_rest = c0_current(seen, rest)
    corrected_seen = c0_current(seen, seen)
    return c1_clusters(seen, rest, corrected_seen, corrected_rest)


def task_classes(dense: np.ndarray) -> np.ndarray:
    """Each row's task class (``task_of``), as an index into TASKS; the counts are log1p of integers, so exact."""
    column = {name: index for index, name in enumerate(FEATURE_NAMES)}
    counted = {"tools": "tools_log", "proof": "proof", "code": "code", "math": "math", "quantities": "quantities",
               "reasoning": "reasoning"}
    found = []
    for row in dense:
        counts = {key: round(float(np.expm1(row[column[name]]))) for key, name in counted.items()}
        flags = {name: bool(row[column[name]] > 0.5) for name in ("writing", "extraction", "chat")}
        found.append(TASKS.index(task_of(counts, flags)))
    return np.array(found)


TASKS = ["tool use", "proof", "code", "multi-step math", "math", "writing", "text transformation", "small talk",
         "reasoning", "word problem", "general question"]


def c4_task_classes(
    seen: Rows, rest: Rows, base_seen: np.ndarray | None = None, base_rest: np.ndarray | None = None
) -> np.ndarray:
    """Shrunk offsets per task class over the prior (or over ``base``: logits already corrected, for C5)."""
    p_seen = sigmoid(seen["logit"] if base_seen is None else base_seen)
    p_rest = sigmoid(rest["logit"] if base_rest is None else base_rest)
    offsets = shrunk_cluster_offsets(seen["task"], seen["label"] - p_seen, len(TASKS))
    return p_rest + offsets[rest["task"]]


def c5_current_then_task_classes(seen: Rows, rest: Rows) -> np.ndarray:
    return c4_task_classes(seen, rest, c0_current(seen, seen), c0_current(seen, rest))


CANDIDATES: dict[str, Callable[[Rows, Rows], np.ndarray]] = {
    "C0 current": c0_current,
    "C1 clusters": c1_clusters,
    "C2 neighbours": c2_neighbours,
    "C3 current+clusters": c3_current_then_clusters,
    "C4 task classes": c4_task_classes,
    "C5 current+task classes": c5_current_then_task_classes,
}


def _orders(n: int, shuffles: int) -> list[np.ndarray]:
    orders = [np.arange(n)]
    for seed in range(shuffles):
        shuffled = list(range(n))
        random.Random(seed).shuffle(shuffled)  # the same orders as scripts/replay_study.py
        orders.append(np.array(shuffled))
    return orders


def _gain(candidate: Callable[[Rows, Rows], np.ndarray], seen: Rows, rest: Rows) -> float:
    prior = train_router._apgr_fast(rest["logit"], rest["weak"], rest["strong"])
    return train_router._apgr_fast(candidate(seen, rest), rest["weak"], rest["strong"]) - prior


def diagnose(table: dict[str, Rows], shuffles: int) -> None:
    print("| source | revealed | candidate | mean gain over shuffled orders | worst |")
    print("|---|---:|---|---:|---:|")
    for source in ("mmlu", "mmlu-pro"):
        rows = {**table[source], "label": labels(table[source]["weak"], table[source]["strong"])}
        for revealed in (1000, 3000):
            for name in ("C0 current", "C1 clusters", "C2 neighbours"):
                gains = [
                    _gain(
                        CANDIDATES[name],
                        {k: v[o[:revealed]] for k, v in rows.items()},
                        {k: v[o[revealed:]] for k, v in rows.items()},
                    )
                    for o in _orders(len(rows["logit"]), shuffles)[1:]
                ]
                print(f"| {SOURCES[source][0]} | {revealed} | {name} | {np.mean(gains):+.3f} | {min(gains):+.3f} |")
    print("\n| source | candidate | in-sample gain (fitted and scored on every line) |")
    print("|---|---|---:|")
    for source, rows in table.items():
        rows = {**rows, "label": labels(rows["weak"], rows["strong"])}
        for name in ("C0 current", "C1 clusters", "C2 neighbours"):
            print(f"| {SOURCES[source][0]} | {name} | {_gain(CANDIDATES[name], rows, rows):+.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--orders", type=int, default=8, help="shuffled orders besides file order")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/msserve-learn-study"))
    parser.add_argument("--only", default=None, help="comma-separated candidate names (C0 always runs: the reference)")
    parser.add_argument("--diagnose", action="store_true", help="more labels and in-sample ceilings instead")
    args = parser.parse_args()
    table = prepare(args.data, args.cache)
    if args.diagnose:
        diagnose(table, args.orders)
        return
    gains: dict[str, dict[str, list[float]]] = {name: {} for name in CANDIDATES}
    print("| source | n | N | candidate | prior APGR (file) | gain, file | gain, mean of orders | s.d. | worst |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|")
    for source, rows in table.items():
        n = len(rows["logit"])
        revealed = min(300, n // 2)
        rows = {**rows, "label": labels(rows["weak"], rows["strong"]), "task": task_classes(rows["dense"])}
        orders = _orders(n, args.orders)
        for name, candidate in CANDIDATES.items():
            if args.only and name != "C0 current" and name not in args.only.split(","):
                continue
            per_order = []
            for order in orders:
                seen = {key: value[order[:revealed]] for key, value in rows.items()}
                rest = {key: value[order[revealed:]] for key, value in rows.items()}
                per_order.append(_gain(candidate, seen, rest))
            held = orders[0][revealed:]  # file order
            prior_file = train_router._apgr_fast(rows["logit"][held], rows["weak"][held], rows["strong"][held])
            gains[name][source] = per_order
            g = np.array(per_order)
            print(
                f"| {SOURCES[source][0]} | {n} | {revealed} | {name} | {prior_file:.3f} | {g[0]:+.3f} | "
                f"{g.mean():+.3f} | {g.std():.3f} | {g.min():+.3f} |",
                flush=True,
            )
    base = gains["C0 current"]
    if not base:
        return
    base_mean = float(np.mean([np.mean(v) for v in base.values()]))
    print(f"\nC0 current: mean gain over sources {base_mean:+.4f}")
    for name, by_source in gains.items():
        if name == "C0 current" or not by_source:
            continue
        mean = float(np.mean([np.mean(v) for v in by_source.values()]))
        worse = [s for s in by_source if min(by_source[s]) < min(base[s])]
        verdict = "ADOPT" if mean > base_mean and not worse else "reject"
        print(f"{name}: mean gain over sources {mean:+.4f}; worst below C0's on {worse or 'none'} -> {verdict}")


if __name__ == "__main__":
    main()
