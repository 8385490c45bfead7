"""Pool several runs of bench_serving.py: one estimate, with its interval, from all their pairs of rounds.

    python scripts/bench_pool.py bench-results/run1.json bench-results/run2.json ... [--out pooled.json]
    python scripts/bench_pool.py docs/bench-data/serving/run*.json.gz     # the published runs (gzip is read as is)
    python scripts/bench_pool.py --over direct docs/bench-data/serving/ceiling-*.json.gz   # ours over the ceiling

Runs of the same load and contenders are independent samples of the same ratio: the geometric mean over all their
order-balanced pairs and its interval (Student's t on the logs, bench_stats.ratio_interval) decide a target. Each
run's own estimate and "runs as samples" (each run's estimate one sample: wider when runs differ more than their
pairs do, e.g. another VM) are shown beside it. An A/B run (--baseline-env) pools only with A/B runs of the same
setting, and neither it nor an open-loop run (--rate, whose requests/s is the offered rate) gets a target verdict.
Refuses runs whose load or baseline differ; says which commits the runs measured.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path
from typing import Any

from bench_common import against_vllm_serve, baseline, no_target_reason, print_table, write_json
from bench_stats import (
    format_interval,
    geomean,
    interval_text,
    order_balanced,
    per_round_ratios,
    ratio_interval,
    verdict,
)

# What must match for two runs to measure the same thing (bench_serving.py's arguments).
SAME_LOAD = ("requests", "concurrency", "max_tokens", "rate", "image_share", "image_size")
METRICS = {"requests_per_s": "requests/s", "ttft_p50_ms": "TTFT p50", "e2e_p50_ms": "e2e p50"}


def load_run(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
        run = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)  # the gzip magic number
    except (OSError, ValueError, EOFError) as exc:
        raise SystemExit(f"{path}: cannot read a JSON result ({exc})") from exc
    if not isinstance(run, dict) or run.get("benchmark") != "serving" or "rounds" not in run:
        raise SystemExit(f"{path}: not a bench_serving.py result")
    return run


def check_same_load(runs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The common load of ``runs``; exits naming the first argument, or the baseline, that differs."""
    first_name, first = next(iter(runs.items()))
    load = {key: first["args"].get(key) for key in SAME_LOAD}
    for name, run in runs.items():
        for key in SAME_LOAD:
            if run["args"].get(key) != load[key]:
                raise SystemExit(f"cannot pool: {name} ran {key}={run['args'].get(key)}, {first_name} {load[key]}")
        if baseline(run) != baseline(first):
            raise SystemExit(f"cannot pool: the \"vllm\" side of {name} ran `{baseline(run)}`, "
                             f"of {first_name} `{baseline(first)}`")
    return load


def contenders(run: dict[str, Any]) -> set[str]:
    return {entry["server"] for entry in run["rounds"]}


def pool(runs: dict[str, dict[str, Any]], over: str = "vllm") -> dict[str, Any]:
    """Per contender and metric, over ``over``: each run's pairs, the pooled pairs' interval, each run as one
    sample's interval and, for ours in the closed loop against `vllm serve`, the target's verdict."""
    targets = not any(no_target_reason(run, over) for run in runs.values())
    shared = set.intersection(*(contenders(run) for run in runs.values()))
    if over not in shared:
        raise SystemExit(f"cannot pool over {over!r}: not every run has it (they share {', '.join(sorted(shared))})")
    out: dict[str, Any] = {}
    for side in sorted(shared - {over}, key=lambda name: (name != "ours", name)):
        for metric in METRICS:
            per_run = {name: order_balanced(per_round_ratios(run["rounds"], metric, side, over))
                       for name, run in runs.items()}
            pooled = [pair for pairs in per_run.values() for pair in pairs]
            interval = ratio_interval(pooled)
            # The check on the pairs' interval: were runs to differ by more than their pairs do (another VM,
            # another day), pairs would not be independent samples, and each run's estimate as one sample is wider.
            run_means = [mean for mean in map(geomean, per_run.values()) if mean is not None]
            out.setdefault(side, {})[metric] = {
                "pairs_by_run": per_run, "pairs": len(pooled), "interval_95": interval,
                "runs_as_samples_interval_95": ratio_interval(run_means),
                "target": verdict(metric, interval) if side == "ours" and targets else "-",
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="bench_serving.py JSON results")
    parser.add_argument("--out", type=Path, help="write the pooled figures here as JSON")
    parser.add_argument("--over", default="vllm",
                        help="the contender the others are divided by, e.g. direct (the ceiling); vllm by default")
    args = parser.parse_args()
    runs = {str(path): load_run(path) for path in args.runs}
    load = check_same_load(runs)
    pooled = pool(runs, args.over)
    commits = {name: run["machine"].get("commit", "not recorded") for name, run in runs.items()}
    if args.out:
        write_json(args.out, {"benchmark": "serving-pooled", "load": load, "commits": commits, "pooled": pooled})
    for name, commit in commits.items():
        print(f"{name}: commit {commit}, load average {run_load_text(runs[name])}")
    run_names = list(runs)
    first = next(iter(runs.values()))  # check_same_load made the baseline and the rate common to every run
    reason = no_target_reason(first, args.over)
    if reason:
        print(f"{reason}, so no target applies")
    over = args.over if args.over != "vllm" else "vLLM" if against_vllm_serve(first) else "baseline"
    headers = [f"over {over}", "metric",
               *[f"run {i + 1}" for i in range(len(run_names))], "pooled [95 %]", "runs as samples [95 %]", "pairs",
               "target"]
    rows = [[side, METRICS[metric], *[interval_text(found["pairs_by_run"][name]) for name in run_names],
             format_interval(found["interval_95"]), format_interval(found["runs_as_samples_interval_95"]),
             found["pairs"], found["target"]]
            for side, by_metric in pooled.items() for metric, found in by_metric.items()]
    print_table(headers, rows)


def run_load_text(run: dict[str, Any]) -> str:
    start, end = run["machine"].get("loadavg_start"), run["machine"].get("loadavg_end")
    return "-" if not start or not end else f"{start[0]:.1f} -> {end[0]:.1f}"


if __name__ == "__main__":
    sys.exit(main())
