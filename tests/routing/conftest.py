"""What the dispatch, budget and shadow tests share: one fake Azure per module, reset for each test that asks for
it, and the real AzureEngine on it (retries never wait: the sleep is injected)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from server.engines.azure import AzureEngine
from server.routing.dispatch import Dispatcher
from server.routing.policy import RoutingPolicy
from tests.fakes.fake_azure import FakeAzure
from tests.fakes.scripted_engine import ScriptedEngine

KEY = "test-key"


async def no_sleep(_seconds: float) -> None:
    return None


@pytest.fixture(scope="module")
def fake_azure() -> Iterator[FakeAzure]:
    with FakeAzure(api_key=KEY) as server:
        yield server


@pytest.fixture
def fake(fake_azure: FakeAzure) -> FakeAzure:
    fake_azure.reset()
    return fake_azure


def azure_engine(endpoint: str, **options: Any) -> AzureEngine:
    return AzureEngine(endpoint=endpoint, deployment="gpt-4o", api_key=KEY, sleep=no_sleep, **options)


@asynccontextmanager
async def dispatcher_on(
    fake: FakeAzure | None, router: Any, local: ScriptedEngine | None = None, **policy: Any
) -> AsyncIterator[Dispatcher]:
    """A Dispatcher over a scripted local engine and (with ``fake``) the real Azure engine; Azure closed after."""
    azure = azure_engine(fake.endpoint, max_retry_wait_s=1.0) if fake is not None else None
    try:
        yield Dispatcher(local or ScriptedEngine(), azure, router=router, policy=RoutingPolicy(**policy))
    finally:
        if azure is not None:
            await azure.stop()
