"""The benchmarks' statistics, in one place: percentiles, timings, ratios and their intervals, pooling, targets,
and the summary of one load's results. bench_*.py and bench_common.py import them from here.

Standard library only, so every one of the project's venvs can run it (no numpy or scipy in the vLLM venv).
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def timings(function: Callable[[], object], repeat: int, *, warmup: int = 1) -> list[float]:
    """Wall seconds of ``repeat`` calls of ``function``, after ``warmup`` unmeasured ones."""
    for _ in range(warmup):
        function()
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        out.append(time.perf_counter() - start)
    return out


def ratio(ours: float, theirs: float) -> float:
    return ours / theirs if theirs else float("nan")


def per_round_ratios(rounds: list[dict[str, Any]], key: str, side: str = "ours", over: str = "vllm") -> list[float]:
    """side/over (vLLM unless told) for ``key`` within each round: the contenders ran back to back, same load."""
    by_round: dict[int, dict[str, float]] = {}
    for entry in rounds:
        by_round.setdefault(entry["round"], {})[entry["server"]] = entry[key]
    return [ratio(got[side], got[over]) for _, got in sorted(by_round.items()) if side in got and over in got]


def order_balanced(per_round: list[float]) -> list[float]:
    """Rounds 0+1, 2+3, ...: each pair has each server once first; the geometric mean cancels the order."""
    return [math.sqrt(a * b) for a, b in zip(per_round[::2], per_round[1::2], strict=False)]


@functools.cache  # ~0.1 s per call, and a run asks for the same few again and again
def student_t_quantile(p: float, df: int) -> float:
    """The p-quantile (p > 0.5) of Student's t with ``df`` degrees of freedom, from its density.

    The standard library has no t distribution and the benchmark venvs need not hold scipy: Simpson's rule on
    the density (fine enough for 4 decimals at df >= 1) and bisection on the CDF.
    """
    if not 0.5 < p < 1 or df < 1:
        raise ValueError("need 0.5 < p < 1 and df >= 1")
    scale = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def density(t: float) -> float:
        return scale * (1 + t * t / df) ** (-(df + 1) / 2)

    def cdf(x: float, steps: int = 2000) -> float:  # 0.5 + the integral from 0 to x (x >= 0), Simpson
        h = x / steps
        inner = sum((4 if i % 2 else 2) * density(i * h) for i in range(1, steps))
        return 0.5 + h / 3 * (density(0.0) + inner + density(x))

    low, high = 0.0, 1.0
    while cdf(high) < p:
        low, high = high, high * 2
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < p else (low, mid)
    return (low + high) / 2


def usable_logs(ratios: Iterable[float]) -> list[float]:
    """The logs of ``ratios``, leaving out those with none (zero, negative, nan: a side that served nothing)."""
    return [math.log(r) for r in ratios if r > 0 and math.isfinite(r)]


def geomean(ratios: Iterable[float]) -> float | None:
    """Geometric mean of the usable ``ratios``; None when none is usable."""
    logs = usable_logs(ratios)
    return math.exp(statistics.fmean(logs)) if logs else None


def ratio_interval(ratios: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float] | None:
    """Geometric mean of ``ratios`` and its ``confidence`` interval; None for fewer than two usable values.

    Ratios multiply, so they are averaged as logs, and the interval is Student's t on the logs: the ratios of
    order-balanced pairs of rounds are the samples (each pair already cancels the order effect), and with the
    handful of pairs one run gives, t's wider tails matter (2.57 against the normal 1.96 for six pairs).
    """
    logs = usable_logs(ratios)
    if len(logs) < 2:
        return None
    mean = statistics.fmean(logs)
    half = student_t_quantile((1 + confidence) / 2, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


# The serving targets for ours over `vllm serve`, as (side, bound): requests/s at least 1.05, TTFT p50 at most 1.0
# (docs/BENCHMARKS.md).
TARGETS = {"requests_per_s": (">=", 1.05), "ttft_p50_ms": ("<=", 1.0)}


def meets(metric: str, value: float) -> bool:
    """Whether ``value`` of ours/`vllm serve` is on the target's side of its bound (``metric`` in TARGETS)."""
    side, bound = TARGETS[metric]
    return value >= bound if side == ">=" else value <= bound


def interval_text(ratios: Sequence[float]) -> str:
    """'geomean [low-high]' (95 %) of ratios, for the tables."""
    return format_interval(ratio_interval(ratios))


def format_interval(found: tuple[float, float, float] | None) -> str:
    return "-" if found is None else "{:.3f} [{:.3f}-{:.3f}]".format(*found)


def verdict(metric: str, interval: tuple[float, float, float] | None) -> str:
    """'met': the whole interval is on the target's side; 'missed': all on the other; else 'not shown'."""
    if metric not in TARGETS or interval is None:
        return "-"
    _, low, high = interval
    if meets(metric, low) and meets(metric, high):
        return "met"
    if not meets(metric, low) and not meets(metric, high):
        return "missed"
    return "not shown"


def summarize(results: Sequence[Any], wall_s: float) -> dict[str, Any]:
    """One load's figures from its results (bench_common.RequestResult: ok, ttft_s, e2e_s, output_tokens...)."""
    ok = [r for r in results if r.ok]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    e2e = [r.e2e_s for r in ok]
    tokens = sum(r.output_tokens for r in ok)
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "first_error": next((r.error for r in results if not r.ok), ""),
        "wall_s": wall_s,
        "requests_per_s": len(ok) / wall_s if wall_s else float("nan"),
        "output_tokens": tokens,
        "output_tokens_per_s": tokens / wall_s if wall_s else float("nan"),
        "ttft_p50_ms": percentile(ttft, 50) * 1e3,
        "ttft_p99_ms": percentile(ttft, 99) * 1e3,
        "e2e_p50_ms": percentile(e2e, 50) * 1e3,
        "e2e_p99_ms": percentile(e2e, 99) * 1e3,
        "content_events_per_request": sum(r.content_events for r in ok) / len(ok) if ok else float("nan"),
    }
