"""The router end to end: a live server with the tiny local model and a fake Azure on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import LiveServer, start_server, stop_server
from tests.fakes.fake_azure import ContentFiltered, FakeAzure, RateLimited, Reply, ServerError
from tests.images import png_url

KEY = "azure-test-key"


@pytest.fixture(scope="module")
def fake_azure() -> Iterator[FakeAzure]:
    with FakeAzure(api_key=KEY, deployment="gpt-4o") as fake:
        yield fake


@pytest.fixture(scope="module")
def routed_server(
    tiny_model: Path, fake_azure: FakeAzure, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    env = {
        "MSSERVE_AZURE_ENDPOINT": f"{fake_azure.endpoint}/openai/v1/",
        "MSSERVE_AZURE_API_KEY": KEY,
        "MSSERVE_AZURE_DEPLOYMENT": "gpt-4o",
        "MSSERVE_ROUTER_THRESHOLD": "0.0",  # every scored request escalates: the override and failover decide
        "MSSERVE_AZURE_MAX_RETRY_WAIT_S": "5",
    }
    server = start_server(tmp_path_factory.mktemp("routed"), env)
    yield server
    stop_server(server)


@pytest.fixture
def client(routed_server: LiveServer, fake_azure: FakeAzure) -> Iterator[openai.OpenAI]:
    fake_azure.reset()
    with openai.OpenAI(base_url=routed_server.v1, api_key="unused", max_retries=0, timeout=120) as sdk:
        yield sdk


IMAGE_MESSAGE = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Prove that this diagram shows a theorem."},
            {"type": "image_url", "image_url": {"url": png_url((60, 40))}},
        ],
    }
]


def test_escalated_stream_reaches_azure_with_path_headers_and_body(
    client: openai.OpenAI, fake_azure: FakeAzure
) -> None:
    fake_azure.script.append(Reply(text="one two three four"))
    with client.chat.completions.with_streaming_response.create(
        model="tiny-mistral3", messages=IMAGE_MESSAGE, max_tokens=50, stream=True
    ) as response:
        assert response.headers["x-msserve-tier"] == "azure"
        assert float(response.headers["x-msserve-score"]) >= 0.0
        assert "threshold" in response.headers["x-msserve-reason"]
        chunks = list(response.parse())
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) >= 4  # passed through chunk by chunk, not buffered into one
    assert "".join(deltas).split() == ["one", "two", "three", "four"]
    assert chunks[-1].model == "gpt-4o-2024-11-20"  # the model that actually answered
    sent = fake_azure.requests[0]
    assert sent.path == "/openai/v1/chat/completions"
    assert sent.headers["api-key"] == KEY
    assert sent.body["model"] == "gpt-4o" and sent.body["stream"] is True
    image_part = sent.body["messages"][-1]["content"][1]
    assert image_part["type"] == "image_url" and image_part["image_url"]["url"].startswith("data:image/")


def test_override_local_stays_local(client: openai.OpenAI, fake_azure: FakeAzure) -> None:
    response = client.chat.completions.with_raw_response.create(
        model="tiny-mistral3",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=3,
        extra_headers={"x-msserve-route": "local"},
    )
    assert response.headers["x-msserve-tier"] == "local"
    assert response.headers["x-msserve-reason"].startswith("x-msserve-route: local")
    assert response.headers["x-msserve-score"]
    assert response.parse().model == "tiny-mistral3"
    assert fake_azure.requests == []


def test_azure_down_fails_over_to_local_and_says_so(client: openai.OpenAI, fake_azure: FakeAzure) -> None:
    fake_azure.script.append(ServerError(500))
    response = client.chat.completions.with_raw_response.create(
        model="tiny-mistral3", messages=[{"role": "user", "content": "a hard question"}], max_tokens=3
    )
    assert response.headers["x-msserve-tier"] == "local"
    assert "azure unavailable" in response.headers["x-msserve-reason"]
    assert response.parse().model == "tiny-mistral3"
    assert len(fake_azure.requests) == 1


def test_429_waits_as_told_then_succeeds(client: openai.OpenAI, fake_azure: FakeAzure) -> None:
    fake_azure.script += [RateLimited(retry_after_ms=300, retry_after=1), Reply(text="after the wait")]
    response = client.chat.completions.with_raw_response.create(
        model="tiny-mistral3", messages=[{"role": "user", "content": "again"}], max_tokens=10
    )
    assert response.headers["x-msserve-tier"] == "azure"
    assert response.parse().choices[0].message.content == "after the wait"
    assert len(fake_azure.requests) == 2


def test_content_filter_is_passed_on_not_retried(client: openai.OpenAI, fake_azure: FakeAzure) -> None:
    fake_azure.script.append(ContentFiltered("violence"))
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny-mistral3", messages=[{"role": "user", "content": "x"}], max_tokens=3)
    assert caught.value.code == "content_filter"
    assert len(fake_azure.requests) == 1


def test_routing_headers_on_captions(routed_server: LiveServer, fake_azure: FakeAzure) -> None:
    fake_azure.reset()
    response = httpx.post(
        f"{routed_server.v1}/captions",
        json={"image_urls": [png_url()]},
        headers={"x-msserve-route": "local"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-msserve-tier"] == "local"
    assert response.headers["x-msserve-score"] and response.headers["x-msserve-reason"]


def test_bad_route_value_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="tiny-mistral3",
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-msserve-route": "moon"},
        )
    assert caught.value.code == "invalid_route"
