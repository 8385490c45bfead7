"""The benchmarks' statistics: the interval of a ratio from pairs of rounds, and the pooling of several runs."""

from __future__ import annotations

import gzip
import json
import math
import random
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import REPO
from tests.scripts import SCRIPTS, load_script

PUBLISHED = REPO / "docs" / "bench-data" / "serving"


def bench_stats() -> ModuleType:
    return load_script("bench_stats")


def bench_pool() -> ModuleType:
    return load_script("bench_pool")


@pytest.mark.parametrize(("df", "published"), [(1, 12.7062), (2, 4.3027), (5, 2.5706), (11, 2.2010), (30, 2.0423),
                                               (1000, 1.9623)])
def test_t_quantile_matches_the_published_table(df: int, published: float) -> None:
    assert bench_stats().student_t_quantile(0.975, df) == pytest.approx(published, abs=2e-4)


def test_t_quantile_refuses_what_it_cannot_answer() -> None:
    with pytest.raises(ValueError):
        bench_stats().student_t_quantile(0.4, 5)
    with pytest.raises(ValueError):
        bench_stats().student_t_quantile(0.975, 0)


def test_interval_is_the_geometric_mean_and_symmetric_in_logs() -> None:
    interval = bench_stats().ratio_interval
    mean, low, high = interval([2.0, 0.5, 1.0])
    assert mean == pytest.approx(1.0)
    assert low * high == pytest.approx(1.0)  # ours/theirs and theirs/ours give reciprocal intervals
    flipped = interval([0.5, 2.0, 1.0])
    assert flipped == pytest.approx((1.0, low, high))
    assert interval([1.04] * 5) == pytest.approx((1.04, 1.04, 1.04))  # no spread, no doubt
    assert interval([1.0]) is None and interval([]) is None  # one pair says nothing about its spread
    assert interval([1.0, float("nan"), 0.0]) is None  # what cannot be a ratio is left out


def test_more_spread_or_fewer_pairs_widen_the_interval() -> None:
    interval = bench_stats().ratio_interval
    narrow = interval([0.98, 1.02] * 3)
    wide = interval([0.9, 1.1] * 3)
    few = interval([0.98, 1.02])
    assert narrow is not None and wide is not None and few is not None
    assert wide[2] - wide[1] > narrow[2] - narrow[1]
    assert few[2] - few[1] > narrow[2] - narrow[1]


def test_the_interval_covers_the_true_ratio_95_times_in_100_with_six_pairs() -> None:
    # Six pairs is what one 12-round run gives. With the normal quantile instead of t it covers ~91 %.
    interval = bench_stats().ratio_interval
    rng = random.Random(7)
    trials, true_ratio = 3000, 1.03
    covered = 0
    for _ in range(trials):
        pairs = [true_ratio * math.exp(rng.gauss(0, 0.08)) for _ in range(6)]
        found = interval(pairs)
        assert found is not None
        covered += found[1] <= true_ratio <= found[2]
    assert 0.935 <= covered / trials <= 0.965


def rounds_for(pairs: list[tuple[float, float]], *, ours_rps: float = 1.0, side: str = "ours") -> list[dict[str, Any]]:
    """bench_serving.py rounds whose ours/vLLM requests/s ratios are the given (first, second) round of each pair."""
    rounds: list[dict[str, Any]] = []
    for index, (first, second) in enumerate(pairs):
        for offset, value in ((0, first), (1, second)):
            number = 2 * index + offset
            rounds += [{"round": number, "server": side, "requests_per_s": ours_rps * value, "ttft_p50_ms": 100.0,
                        "e2e_p50_ms": 200.0},
                       {"round": number, "server": "vllm", "requests_per_s": ours_rps, "ttft_p50_ms": 100.0 * value,
                        "e2e_p50_ms": 200.0}]
    return rounds


def run_file(path: Path, pairs: list[tuple[float, float]], baseline: list[str] | None = None,
             baseline_env: dict[str, str] | None = None, **load: str) -> Path:
    args = {"requests": "32", "concurrency": "8", "max_tokens": "64", "rate": "None", "image_share": "0.5",
            "image_size": "256x192", **load}
    run = {"benchmark": "serving", "args": args, "rounds": rounds_for(pairs),
           "machine": {"commit": "abc", "loadavg_start": [1.0], "loadavg_end": [2.0]}}
    if baseline is not None:  # the "vllm" side's command
        run["commands"] = {"vllm": baseline}
    if baseline_env is not None:  # what bench_serving.py --baseline-env records
        run["baseline_env"] = baseline_env
    path.write_text(json.dumps(run))
    return path


def test_pooling_takes_every_pair_of_every_run() -> None:
    pool = bench_pool().pool
    runs = {"a": {"rounds": rounds_for([(1.1, 1.0), (1.2, 1.2)])}, "b": {"rounds": rounds_for([(1.0, 1.0)])}}
    found = pool(runs)["ours"]["requests_per_s"]
    assert found["pairs_by_run"]["a"] == pytest.approx([math.sqrt(1.1), 1.2])  # each pair cancels the order
    assert found["pairs_by_run"]["b"] == pytest.approx([1.0])
    assert found["pairs"] == 3
    assert found["interval_95"][0] == pytest.approx((math.sqrt(1.1) * 1.2) ** (1 / 3))


def test_only_contenders_every_run_has_are_pooled() -> None:
    runs = {"a": {"rounds": rounds_for([(1.0, 1.0)]) + rounds_for([(1.0, 1.0)], side="thin")},
            "b": {"rounds": rounds_for([(1.0, 1.0)])}}
    assert list(bench_pool().pool(runs)) == ["ours"]


@pytest.mark.parametrize(("pairs", "throughput", "ttft"), [
    ([1.10, 1.12, 1.09, 1.11], "met", "met"),  # requests/s above 1.05 and vLLM's TTFT 1.1 x ours
    ([0.95, 0.97, 0.96, 0.94], "missed", "missed"),
    ([0.98, 1.10, 1.02, 1.08], "not shown", "not shown"),
])
def test_a_target_is_met_only_when_the_whole_interval_is_on_its_side(pairs: list[float], throughput: str,
                                                                     ttft: str) -> None:
    pool = bench_pool().pool
    found = pool({"run": {"rounds": rounds_for([(p, p) for p in pairs])}})["ours"]
    assert found["requests_per_s"]["target"] == throughput
    # rounds_for puts the ratio on vLLM's TTFT, so ours/vLLM there is 1/p: below 1.0 is the good side
    assert found["ttft_p50_ms"]["target"] == ttft
    assert found["e2e_p50_ms"]["target"] == "-"


def test_runs_that_differ_more_than_their_pairs_widen_the_runs_as_samples_interval(tmp_path: Path) -> None:
    """Each run tight around its own level (another VM, another day): the pairs' interval, which takes every pair
    as independent, is too narrow; each run's estimate as one sample says so."""
    script = bench_pool()
    levels = (0.98, 1.05, 1.12)
    runs = {f"run{n}": script.load_run(run_file(tmp_path / f"run{n}.json",
                                                [(level, level * 1.002), (level * 1.001, level), (level, level)]))
            for n, level in enumerate(levels)}
    found = script.pool(runs)["ours"]["requests_per_s"]
    mean, low, high = found["runs_as_samples_interval_95"]
    assert mean == pytest.approx(math.prod(levels) ** (1 / 3), rel=1e-3)
    _, pairs_low, pairs_high = found["interval_95"]
    assert high - low > 3 * (pairs_high - pairs_low)
    assert found["pairs"] == 9


def test_open_loop_runs_get_no_target_verdict(tmp_path: Path) -> None:
    """In the open loop requests/s is the offered rate: equal on both sides, it would read as a missed target."""
    script = bench_pool()
    level = [(1.0, 1.001), (0.999, 1.0), (1.0, 1.0)]
    closed = {"closed": script.load_run(run_file(tmp_path / "closed.json", level))}
    assert script.pool(closed)["ours"]["requests_per_s"]["target"] == "missed"
    open_loop = {"open": script.load_run(run_file(tmp_path / "open.json", level, rate="4.0"))}
    found = script.pool(open_loop)["ours"]
    assert found["requests_per_s"]["target"] == found["ttft_p50_ms"]["target"] == "-"
    done = subprocess.run([sys.executable, str(SCRIPTS / "bench_pool.py"), str(tmp_path / "open.json")],
                          capture_output=True, text=True, check=True)
    assert "open loop at 4.0 requests/s" in done.stdout


def test_the_script_prints_the_pooled_table_and_writes_json(tmp_path: Path) -> None:
    first = run_file(tmp_path / "one.json", [(1.10, 1.08), (1.12, 1.10), (1.09, 1.07)])
    second = run_file(tmp_path / "two.json", [(1.11, 1.09), (1.08, 1.10)])
    out = tmp_path / "pooled.json"
    done = subprocess.run([sys.executable, str(SCRIPTS / "bench_pool.py"), str(first), str(second), "--out", str(out)],
                          capture_output=True, text=True, check=True)
    row = next(line for line in done.stdout.splitlines() if "requests/s" in line)
    assert row.split()[-2:] == ["5", "met"]
    pooled = json.loads(out.read_text())
    assert pooled["commits"] == {str(first): "abc", str(second): "abc"}
    assert pooled["pooled"]["ours"]["requests_per_s"]["pairs"] == 5


def test_gzipped_runs_pool_like_plain_ones(tmp_path: Path) -> None:
    plain = run_file(tmp_path / "one.json", [(1.10, 1.08), (1.12, 1.10), (1.09, 1.07)])
    packed = tmp_path / "two.json.gz"
    packed.write_bytes(gzip.compress(run_file(tmp_path / "two.json", [(1.11, 1.09), (1.08, 1.10)]).read_bytes()))
    script = bench_pool()  # loaded once: each call executes the script afresh
    runs = {str(path): script.load_run(path) for path in (plain, packed)}
    assert script.pool(runs)["ours"]["requests_per_s"]["pairs"] == 5
    broken = tmp_path / "broken.json.gz"
    broken.write_bytes(packed.read_bytes()[:20])  # a cut-off download
    done = subprocess.run([sys.executable, str(SCRIPTS / "bench_pool.py"), str(broken)], capture_output=True,
                          text=True)
    assert done.returncode != 0
    assert str(broken) in done.stderr and "Traceback" not in done.stderr


def test_pooling_over_another_contender_divides_by_it_and_gives_no_verdict(tmp_path: Path) -> None:
    rounds = [{"round": r, "server": server, "requests_per_s": rps, "ttft_p50_ms": 100.0, "e2e_p50_ms": 200.0}
              for r in range(4) for server, rps in (("ours", 9.0), ("direct", 10.0), ("vllm", 8.0))]
    path = tmp_path / "three.json"
    path.write_text(json.dumps({"benchmark": "serving", "args": {"rate": "None"}, "rounds": rounds,
                                "machine": {}}))
    script = bench_pool()
    pooled = script.pool({"three": script.load_run(path)}, over="direct")
    assert set(pooled) == {"ours", "vllm"}
    assert pooled["ours"]["requests_per_s"]["interval_95"][0] == pytest.approx(0.9)
    assert pooled["vllm"]["requests_per_s"]["interval_95"][0] == pytest.approx(0.8)
    assert pooled["ours"]["requests_per_s"]["target"] == "-"  # the targets are over `vllm serve`
    assert script.pool({"three": script.load_run(path)})["ours"]["requests_per_s"]["target"] == "met"  # 1.125
    done = subprocess.run([sys.executable, str(SCRIPTS / "bench_pool.py"), "--over", "thin", str(path)],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "'thin'" in done.stderr and "direct, ours, vllm" in done.stderr


def test_msserve_bench_pool_runs_the_script(tmp_path: Path) -> None:
    first = run_file(tmp_path / "one.json", [(0.95, 0.96), (0.97, 0.95)])
    second = run_file(tmp_path / "two.json", [(0.96, 0.94)])
    done = subprocess.run([sys.executable, "-m", "server", "bench", "pool", str(first), str(second)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if "requests/s" in line)
    assert row.split()[-2:] == ["3", "missed"]


def test_runs_of_different_loads_are_not_pooled(tmp_path: Path) -> None:
    first = run_file(tmp_path / "one.json", [(1.0, 1.0)])
    second = run_file(tmp_path / "two.json", [(1.0, 1.0)], concurrency="16")
    done = subprocess.run([sys.executable, str(SCRIPTS / "bench_pool.py"), str(first), str(second)],
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert "concurrency=16" in done.stderr


def test_runs_against_another_baseline_are_not_pooled(tmp_path: Path) -> None:
    """An A/B run, whose "vllm" side was our own server, is never averaged into runs against `vllm serve`."""
    shipped = run_file(tmp_path / "run.json", [(1.0, 1.0)], ["vllm", "serve", "/models/tiny"])
    ab = run_file(tmp_path / "ab.json", [(1.0, 1.0)], ["/venv/bin/python", "-m", "server", "serve"])
    done = subprocess.run([sys.executable, str(SCRIPTS / "bench_pool.py"), str(shipped), str(ab)],
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert str(ab) in done.stderr and "`python -m`" in done.stderr and "`vllm serve`" in done.stderr
    same = run_file(tmp_path / "ab2.json", [(1.0, 1.0)], ["/elsewhere/bin/python", "-m", "server", "serve"])
    script = bench_pool()
    assert script.check_same_load({str(path): script.load_run(path) for path in (ab, same)})["concurrency"] == "8"


def test_ab_runs_pool_only_with_the_same_setting_and_meet_no_target(tmp_path: Path) -> None:
    ours = ["/venv/bin/python", "-m", "server", "serve"]
    faster = [(1.2, 1.21), (1.19, 1.2), (1.22, 1.2)]  # pooled, these would meet >= 1.05 against `vllm serve`
    off = run_file(tmp_path / "off.json", faster, ours, {"MSSERVE_VLLM_API_OFF_WORKER_CORES": "false"})
    other = run_file(tmp_path / "other.json", [(1.0, 1.0)], ours, {"MSSERVE_OTHER": "1"})
    done = subprocess.run([sys.executable, str(SCRIPTS / "bench_pool.py"), str(off), str(other)],
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert "`python -m MSSERVE_OTHER=1`" in done.stderr and "MSSERVE_VLLM_API_OFF_WORKER_CORES=false" in done.stderr
    again = run_file(tmp_path / "off2.json", faster, ours, {"MSSERVE_VLLM_API_OFF_WORKER_CORES": "false"})
    out = tmp_path / "pooled.json"
    done = subprocess.run([sys.executable, str(SCRIPTS / "bench_pool.py"), str(off), str(again), "--out", str(out)],
                          capture_output=True, text=True, check=True)
    assert "`python -m MSSERVE_VLLM_API_OFF_WORKER_CORES=false`: an A/B" in done.stdout
    assert "over baseline" in done.stdout
    pooled = json.loads(out.read_text())["pooled"]["ours"]
    assert pooled["requests_per_s"]["interval_95"][1] > 1.05
    assert pooled["requests_per_s"]["target"] == pooled["ttft_p50_ms"]["target"] == "-"


def test_the_baseline_env_is_parsed_and_handed_to_a_second_copy_of_our_server(tmp_path: Path) -> None:
    serving = load_script("bench_serving")
    assert serving.parse_env(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    for bad in ("A", "=1"):
        with pytest.raises(ValueError, match=repr(bad)):
            serving.parse_env([bad])
    ours, baseline = serving.make_services(Path("/venv/bin/python"), "tiny-mistral3-vllm", tmp_path,
                                           {"MSSERVE_VLLM_API_OFF_WORKER_CORES": "false"})
    assert (ours.name, baseline.name) == ("ours", "vllm")
    assert baseline.command[:-1] == ours.command[:-1] and baseline.port != ours.port  # only the port differs
    assert baseline.env["MSSERVE_VLLM_API_OFF_WORKER_CORES"] == "false"
    assert "MSSERVE_VLLM_API_OFF_WORKER_CORES" not in ours.env
    assert baseline.env["VLLM_CPU_KVCACHE_SPACE"] == ours.env["VLLM_CPU_KVCACHE_SPACE"]
    assert baseline.log_path != ours.log_path


def test_a_missing_or_foreign_file_is_refused_by_name(tmp_path: Path) -> None:
    gateway = tmp_path / "gateway.json"
    gateway.write_text(json.dumps({"benchmark": "gateway"}))
    for path in (tmp_path / "absent.json", gateway):
        done = subprocess.run([sys.executable, str(SCRIPTS / "bench_pool.py"), str(path)], capture_output=True,
                              text=True)
        assert done.returncode != 0
        assert str(path) in done.stderr and "Traceback" not in done.stderr


def test_one_runs_targets_follow_the_rule_bench_pool_uses(tmp_path: Path) -> None:
    """bench_serving.py's own verdict: ours over `vllm serve` in the closed loop only, each target on its side."""
    run_targets = load_script("bench_serving").run_targets
    shipped = {"args": {"rate": "None"}, "commands": {"vllm": ["vllm", "serve", "models/tiny-mistral3"]},
               "baseline_env": {}, "ratios_ours_over_vllm": {"requests_per_s": 1.05, "ttft_p50_ms": 1.01}}
    assert run_targets(shipped) == {"throughput_ratio_min": 1.05, "ttft_p50_ratio_max": 1.0,
                                    "throughput_met": True, "ttft_met": False}
    shipped["ratios_ours_over_vllm"] = {"requests_per_s": 1.049, "ttft_p50_ms": 1.0}
    assert run_targets(shipped) == {"throughput_ratio_min": 1.05, "ttft_p50_ratio_max": 1.0,
                                    "throughput_met": False, "ttft_met": True}
    open_loop = {**shipped, "args": {"rate": "4.0"}}
    ab = {**shipped, "commands": {"vllm": ["/venv/bin/python", "-m", "server", "serve"]},
          "baseline_env": {"MSSERVE_VLLM_API_OFF_WORKER_CORES": "false"}}
    assert run_targets(open_loop) is None and run_targets(ab) is None
    # every published closed-loop run against `vllm serve` recorded the verdict this rule gives it
    for path in sorted(PUBLISHED.glob("run*.json.gz")):
        run = json.loads(gzip.decompress(path.read_bytes()))
        assert run_targets(run) == run["targets"], path.name


def test_percentile_interpolates_and_geomean_leaves_out_unusable_ratios() -> None:
    stats = bench_stats()
    assert stats.percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert stats.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 99) == pytest.approx(4.96)
    assert math.isnan(stats.percentile([], 50))
    assert stats.geomean([2.0, 8.0, 0.0, float("nan")]) == pytest.approx(4.0)  # a side that served nothing: left out
    assert stats.geomean([0.0]) is None


def test_timings_measures_each_call_after_the_warm_up() -> None:
    calls: list[int] = []
    times = bench_stats().timings(lambda: calls.append(1), 5, warmup=2)
    assert len(calls) == 7 and len(times) == 5 and all(t >= 0 for t in times)


def test_bench_common_still_offers_the_statistics_it_used_to_define() -> None:
    stats = bench_stats()
    common = load_script("bench_common")  # after bench_stats: it imports that very module
    for name in ("TARGETS", "format_interval", "interval_text", "meets", "order_balanced", "per_round_ratios",
                 "percentile", "ratio", "ratio_interval", "student_t_quantile", "summarize", "usable_logs"):
        assert getattr(common, name) is getattr(stats, name), name
