"""The benchmark drivers: the open-loop schedule of bench_serving.py --rate, the closed loop, the round order."""

from __future__ import annotations

import asyncio
import itertools
import statistics
from types import ModuleType

import pytest

from tests.fakes.fake_azure import FakeAzure, Reply
from tests.scripts import load_script


def bench_common() -> ModuleType:
    return load_script("bench_common")


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
    assert [r.content_events for r in results] == [3, 3, 3]  # "Hello from Azure." streams as three words
    starts = sorted(r.start_s for r in results)
    for start, due in zip(starts, [0.0, 0.2, 0.4], strict=True):  # on schedule, although one "slot" was asked for
        assert due <= start < due + 0.15
    assert wall < 1.5  # a closed loop with one in flight would take at least 3 x 0.6 s


async def test_closed_loop_keeps_the_asked_number_in_flight_and_sends_each_once() -> None:
    common = bench_common()
    in_flight, peak, sent = 0, 0, []

    async def send(spec: int, t0: float) -> object:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        sent.append(spec)
        return common.RequestResult(kind="text", ok=True, start_s=0.0, e2e_s=0.01)

    results, wall = await common.drive_load(list(range(10)), 3, send)
    assert sorted(sent) == list(range(10)) and len(results) == 10
    assert peak == 3
    assert wall >= 0.04  # 10 requests of 10 ms, 3 at a time: four waves


def bench_serving() -> ModuleType:
    return load_script("bench_serving")


def test_each_server_goes_first_in_every_other_round() -> None:
    order = bench_serving().round_order
    assert [order(r, ["ours", "vllm"]) for r in range(4)] == [["ours", "vllm"], ["vllm", "ours"]] * 2


@pytest.mark.parametrize("names", [["ours", "vllm", "direct"], ["ours", "vllm", "direct", "thin"]])
def test_with_the_ceilings_each_pair_of_rounds_is_balanced_and_every_position_taken_alike(names: list[str]) -> None:
    order = bench_serving().round_order
    rounds = [order(r, names) for r in range(2 * len(names))]
    for first, second in zip(rounds[::2], rounds[1::2], strict=True):
        assert second == first[::-1]  # every contender once before and once after each other one
    for name in names:
        assert sorted(r.index(name) for r in rounds) == sorted(list(range(len(names))) * 2)


def test_ratios_within_rounds_pair_each_side_with_vllm_of_the_same_round() -> None:
    ratios = bench_common().per_round_ratios
    rounds = [{"round": 0, "server": "direct", "rps": 5.0}, {"round": 0, "server": "ours", "rps": 4.0},
              {"round": 0, "server": "vllm", "rps": 4.0}, {"round": 1, "server": "vllm", "rps": 2.0},
              {"round": 1, "server": "ours", "rps": 3.0}]  # round 1 lacks the ceiling
    assert ratios(rounds, "rps") == [1.0, 1.5]
    assert ratios(rounds, "rps", "direct") == [1.25]
