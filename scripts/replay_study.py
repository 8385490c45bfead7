"""The learned router's replay table: each labelled source as its own deployment, first N lines revealed.

    python scripts/replay_study.py [--shuffles 10] [--data ../shared/data] [--prior WEIGHTS --only SOURCE]

For each source: N = min(300, n / 2); APGR of the prior and of the learned router on the other n - N lines, in
file order (what `msserve router eval --replay` does) and over shuffled orders (mean, min), with and without the
embedding. Prints a markdown table (docs/learning.md holds the last run).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.routing import embed, replay  # noqa: E402
from server.routing.router import Router  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--data",
        type=Path,
        default=ROOT.parent / "shared" / "data",
        help="the shared data folder (e.g. ../shared/data beside the checkout)",
    )
    parser.add_argument("--shuffles", type=int, default=10)
    parser.add_argument("--prior", type=Path, default=None, help="prior weights (default: the shipped ones)")
    parser.add_argument("--only", default=None, help="one source's name, e.g. TheoremQA")
    args = parser.parse_args()
    sources = {
        "MMLU (RouteLLM)": args.data / "routellm-mmlu",
        "MMLU-Pro": args.data / "routing" / "mmlu-pro.jsonl",
        "TheoremQA": args.data / "routing" / "theoremqa.jsonl",
        "arena-bench": args.data / "routing" / "arena-bench-v1.jsonl",
    }
    prior = Router.from_weights(args.prior) if args.prior else Router.from_weights()
    embedder = embed.default_embedder()
    print("| source | n | N | order | embedding | APGR prior | APGR learned | gain |")
    print("|---|---:|---:|---|---|---:|---:|---:|")
    for name, path in sources.items():
        if args.only and name != args.only:
            continue
        examples = replay.load_file(path)
        n = len(examples)
        revealed = min(300, n // 2)
        for use in [None, embedder] if embedder is not None else [None]:
            label = "words" if use is not None else "none"
            r = replay.replay(examples, revealed, prior, use)
            print(
                f"| {name} | {n} | {revealed} | file | {label} | {r.apgr_prior:.3f} | {r.apgr_learned:.3f} | "
                f"{r.apgr_learned - r.apgr_prior:+.3f} |",
                flush=True,
            )
            gains, priors, learned = [], [], []
            for seed in range(args.shuffles):
                shuffled = list(examples)
                random.Random(seed).shuffle(shuffled)
                r = replay.replay(shuffled, revealed, prior, use)
                gains.append(r.apgr_learned - r.apgr_prior)
                priors.append(r.apgr_prior)
                learned.append(r.apgr_learned)
            k = args.shuffles
            print(
                f"| {name} | {n} | {revealed} | {k} shuffles, mean (min gain) | {label} | {sum(priors) / k:.3f} | "
                f"{sum(learned) / k:.3f} | {sum(gains) / k:+.3f} ({min(gains):+.3f}) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
