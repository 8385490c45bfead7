"""Options only the local engine has (vLLM's extension fields) keep a routed request local instead of failing.

The router may send any request to Azure, which has no top_k, min_p, ...: such a request is served locally and the
reason says why; a request forced to Azure (x-msserve-route: azure) gets the 400, as it asked for both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest

from server.engines.azure import AzureEngine
from server.errors import InvalidRequestError
from server.routing.decision import Decision
from server.routing.dispatch import Dispatcher
from server.routing.policy import CircuitBreaker, RoutingPolicy
from server.types import EngineExtras, GenerationRequest, Message, TextPart
from tests.fakes.fake_azure import FakeAzure
from tests.fakes.scripted_engine import ScriptedEngine, answer

KEY = "test-key"


class Escalate:
    def decide(self, request: GenerationRequest) -> Decision:
        return Decision(tier="azure", score=0.9, reason="score 0.90 >= 0.50")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAzure]:
    with FakeAzure(api_key=KEY) as server:
        yield server


@asynccontextmanager
async def dispatcher(fake: FakeAzure) -> AsyncIterator[Dispatcher]:
    azure = AzureEngine(endpoint=fake.endpoint, deployment="gpt-4o", api_key=KEY)
    try:
        local = ScriptedEngine(answer("local answer", prob=0.1))
        policy = RoutingPolicy(breaker=CircuitBreaker(failure_threshold=1))
        yield Dispatcher(local, azure, router=Escalate(), policy=policy)
    finally:
        await azure.stop()


def request(**extras: object) -> GenerationRequest:
    out = GenerationRequest(request_id="r", messages=[Message(role="user", content=[TextPart(text="hard")])])
    out.sampling.extra = EngineExtras(**extras)  # type: ignore[arg-type]
    return out


async def test_routed_request_with_local_only_options_is_served_locally(fake: FakeAzure) -> None:
    fake.reset()
    async with dispatcher(fake) as d:
        routed = await d.dispatch(request(top_k=5), "auto", stream=True)
        assert routed.decision.tier == "local" and routed.first.text == "local"
        assert routed.decision.reason == "azure unavailable (top_k is not supported there); served locally"
        await routed.rest.aclose()  # type: ignore[attr-defined]
        assert d.policy.breaker.state == "closed"  # Azure did nothing wrong (one failure would open it here)
        cascaded = await d.dispatch(request(min_p=0.1), "cascade", stream=False)  # low confidence: would escalate
        assert cascaded.decision.tier == "local" and "min_p is not supported there" in cascaded.decision.reason
    assert fake.requests == []


async def test_forced_azure_with_local_only_options_is_a_400(fake: FakeAzure) -> None:
    fake.reset()
    async with dispatcher(fake) as d:
        with pytest.raises(InvalidRequestError) as caught:
            await d.dispatch(request(top_k=5), "azure", stream=True)
    assert (caught.value.code, caught.value.param) == ("unsupported_parameter", "top_k")
    assert fake.requests == []


async def test_overload_escalation_skips_requests_azure_cannot_take(fake: FakeAzure) -> None:
    fake.reset()
    async with dispatcher(fake) as d:
        d.local.waiting = 100  # type: ignore[attr-defined]  # a long local queue would send it to Azure
        d.policy.escalate_when_queue_over = 1
        routed = await d.dispatch(request(top_k=5), "auto", stream=True)
        assert routed.decision.tier == "local" and d.policy.counters.escalations_overload == 0
        await routed.rest.aclose()  # type: ignore[attr-defined]
    assert fake.requests == []


async def test_a_cache_salt_does_not_keep_a_request_local(fake: FakeAzure) -> None:
    fake.reset()
    async with dispatcher(fake) as d:
        routed = await d.dispatch(request(cache_salt="tenant-a"), "auto", stream=False)
        assert routed.decision.tier == "azure"
        await routed.rest.aclose()  # type: ignore[attr-defined]
