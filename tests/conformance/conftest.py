"""One live tiny server for the conformance tier: API keys on, the fake Azure as escalation target, model aliases."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import LiveServer, start_server, stop_server
from tests.fakes.fake_azure import FakeAzure

AZURE_KEY = "azure-test-key"
API_KEY = "sk-conformance-0123456789"
DEPLOYMENT = "gpt-4o"  # the Azure deployment: an "auto" alias by default
ALIASES = "gpt-4o-mini=local,my-azure-deployment=azure,careful=cascade"
MODEL = "tiny-mistral3"


@pytest.fixture(scope="session")
def fake_azure() -> Iterator[FakeAzure]:
    with FakeAzure(api_key=AZURE_KEY, deployment=DEPLOYMENT) as fake:
        yield fake


@pytest.fixture(scope="session")
def server(tiny_model: Path, fake_azure: FakeAzure, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = {
        "MSSERVE_AZURE_ENDPOINT": f"{fake_azure.endpoint}/openai/v1/",
        "MSSERVE_AZURE_API_KEY": AZURE_KEY,
        "MSSERVE_AZURE_DEPLOYMENT": DEPLOYMENT,
        "MSSERVE_ROUTER_THRESHOLD": "1.0",  # auto keeps everything local: tests pick Azure by alias or header
        "MSSERVE_API_KEYS": f"tester:{API_KEY}",
        "MSSERVE_MODEL_ALIASES": ALIASES,
        "MSSERVE_STATE_DIR": str(tmp_path_factory.mktemp("state")),
    }
    live = start_server(tmp_path_factory.mktemp("conformance"), env)
    yield live
    stop_server(live)


@pytest.fixture
def azure(fake_azure: FakeAzure) -> FakeAzure:
    fake_azure.reset()
    return fake_azure


@pytest.fixture
def client(server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.v1, api_key=API_KEY, max_retries=0, timeout=120) as sdk:
        yield sdk


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers={"authorization": f"Bearer {API_KEY}"}, timeout=120) as c:
        yield c
