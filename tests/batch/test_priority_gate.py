"""The transformers engine's gate: one holder, lowest priority first, arrival order within a priority."""

from __future__ import annotations

import asyncio

from server.engines.priority_gate import PriorityGate


def test_live_requests_go_before_waiting_batch_lines() -> None:
    async def scenario() -> list[str]:
        gate = PriorityGate()
        order: list[str] = []
        await gate.acquire(10)  # a batch line is running

        async def one(name: str, priority: int) -> None:
            await gate.acquire(priority)
            order.append(name)
            await asyncio.sleep(0)
            gate.release()

        tasks = [asyncio.create_task(one("batch-1", 10)), asyncio.create_task(one("batch-2", 10))]
        await asyncio.sleep(0)
        tasks += [asyncio.create_task(one("live-1", 0)), asyncio.create_task(one("live-2", 0))]
        await asyncio.sleep(0)
        gate.release()
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(scenario()) == ["live-1", "live-2", "batch-1", "batch-2"]


def test_a_waiter_that_gives_up_does_not_keep_the_gate() -> None:
    async def scenario() -> bool:
        gate = PriorityGate()
        await gate.acquire()
        waiter = asyncio.create_task(gate.acquire(5))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        gate.release()
        assert not gate.locked()
        await asyncio.wait_for(gate.acquire(), 1)  # free again at once
        return gate.locked()

    assert asyncio.run(scenario())
