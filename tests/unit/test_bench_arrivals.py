"""The benchmark drivers: the open-loop schedule of bench_serving.py --rate, the closed loop, the round order."""

from __future__ import annotations

import asyncio
import itertools
import statistics
from types import ModuleType

import pytest

from tests.fakes.fake_azure import FakeAzure
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
    """Every request is sent while the earlier ones are still unanswered, in the order of the schedule."""
    common = bench_common()
    events: list[tuple[str, int]] = []
    all_sent = asyncio.Event()

    async def send(spec: int, t0: float) -> object:
        events.append(("sent", spec))
        if len(events) == 3:
            all_sent.set()
        await all_sent.wait()  # a driver that waited for an answer before the next send would never get past this
        events.append(("answered", spec))
        return common.RequestResult(kind="text", ok=True, start_s=0.0, e2e_s=0.0)

    # one "slot" asked for, which an open loop ignores; spec 1 is due first, then 2, then 0
    results, _ = await asyncio.wait_for(common.drive_load([0, 1, 2], 1, send, arrivals=[0.04, 0.0, 0.02]), 60)
    assert events[:3] == [("sent", 1), ("sent", 2), ("sent", 0)]
    assert sorted(events[3:]) == [("answered", 0), ("answered", 1), ("answered", 2)] and len(results) == 3


async def test_open_loop_over_http_streams_every_request_and_none_before_its_time() -> None:
    common = bench_common()
    with FakeAzure() as backend:
        spec = common.RequestSpec(url=backend.endpoint + "/openai/v1/chat/completions", headers={"api-key": "test-key"},
                                  body={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}],
                                        "stream": True})
        results, _ = await common.run_load([spec] * 3, 1, arrivals=[0.0, 0.05, 0.1])
    assert all(r.ok for r in results), [r.error for r in results]
    assert [r.content_events for r in results] == [3, 3, 3]  # "Hello from Azure." streams as three words
    starts = sorted(r.start_s for r in results)
    # A loaded machine can only send late, never early: the lower bounds hold whatever the load (1e-6: the
    # event loop may wake a timer up to its clock resolution early).
    assert all(start >= due - 1e-6 for start, due in zip(starts, [0.0, 0.05, 0.1], strict=True)), starts


async def test_closed_loop_keeps_the_asked_number_in_flight_and_sends_each_once() -> None:
    common = bench_common()
    in_flight, peak, sent = 0, 0, []

    async def send(spec: int, t0: float) -> object:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0)
        in_flight -= 1
        sent.append(spec)
        return common.RequestResult(kind="text", ok=True, start_s=0.0, e2e_s=0.0)

    results, _ = await common.drive_load(list(range(10)), 3, send)
    assert sorted(sent) == list(range(10)) and len(results) == 10
    assert peak == 3  # never more than asked, and the asked number reached


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
