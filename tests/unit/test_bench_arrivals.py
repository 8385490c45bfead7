"""The open-loop schedule of scripts/bench_serving.py --rate: both servers of a round get the same Poisson times."""

from __future__ import annotations

import importlib.util
import itertools
import statistics
import sys
from pathlib import Path
from types import ModuleType

from tests.fakes.fake_azure import FakeAzure, Reply

ROOT = Path(__file__).resolve().parents[2]


def bench_common() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "scripts" / "bench_common.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_common"] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def test_same_seed_same_schedule_and_another_seed_another() -> None:
    arrivals = bench_common().poisson_arrivals
    first = arrivals(32, 4.0, seed=3)
    assert first == arrivals(32, 4.0, seed=3)
    assert first != arrivals(32, 4.0, seed=4)
    assert first[0] == 0.0 and all(b > a for a, b in itertools.pairwise(first))


def test_gaps_average_one_over_the_rate() -> None:
    times = bench_common().poisson_arrivals(4001, 2.0, seed=0)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert abs(statistics.fmean(gaps) - 0.5) < 0.05
    assert abs(statistics.pstdev(gaps) - 0.5) < 0.05  # exponential: the deviation equals the mean


async def test_open_loop_sends_each_request_at_its_time_without_waiting_for_the_others() -> None:
    common = bench_common()
    with FakeAzure() as backend:
        backend.script = [Reply(delay_s=0.6) for _ in range(3)]  # each answer takes 0.6 s to start
        spec = common.RequestSpec(url=backend.endpoint + "/openai/v1/chat/completions", headers={"api-key": "test-key"},
                                  body={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}],
                                        "stream": True})
        results, wall = await common.run_load([spec] * 3, 1, arrivals=[0.0, 0.2, 0.4])
    assert all(r.ok for r in results), [r.error for r in results]
    starts = sorted(r.start_s for r in results)
    for start, due in zip(starts, [0.0, 0.2, 0.4], strict=True):  # on schedule, although one "slot" was asked for
        assert due <= start < due + 0.15
    assert wall < 1.5  # a closed loop with one in flight would take at least 3 x 0.6 s
