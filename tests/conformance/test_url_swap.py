"""A client that called Azure changes only its URL (and key): model aliases and Azure's own path forms.

The openai SDK's ``OpenAI`` and ``AzureOpenAI`` clients, unchanged but for where they point, keep their deployment
name as the model and get answers carrying the tier headers.
"""

from __future__ import annotations

import re
import time

import httpx
import openai
import pytest

from server.config import Settings
from server.middleware.concurrency import is_limited
from tests.conformance.conftest import API_KEY, DEPLOYMENT, MODEL
from tests.conformance.schema import assert_valid
from tests.conftest import LiveServer
from tests.fakes.fake_azure import FakeAzure, Reply

AZURE_ANSWERED = Reply().model  # the model the fake Azure reports having used
HELLO = [{"role": "user", "content": "hi"}]


def tier_of(raw: openai._legacy_response.LegacyAPIResponse) -> str:  # type: ignore[name-defined]
    assert raw.headers["x-msserve-reason"] and raw.headers["x-request-id"]
    return str(raw.headers["x-msserve-tier"])


def test_openai_client_keeps_its_azure_deployment_name(client: openai.OpenAI, azure: FakeAzure) -> None:
    raw = client.chat.completions.with_raw_response.create(model=DEPLOYMENT, messages=HELLO, max_tokens=3)
    completion = raw.parse()
    # The deployment is an "auto" alias: the router decided (this server's threshold keeps everything local),
    # and the answer names the model that really answered.
    assert tier_of(raw) == "local" and completion.model == MODEL and "threshold" in raw.headers["x-msserve-reason"]
    assert azure.requests == []


def test_alias_routes(client: openai.OpenAI, azure: FakeAzure) -> None:
    raw = client.chat.completions.with_raw_response.create(model="my-azure-deployment", messages=HELLO, max_tokens=3)
    assert tier_of(raw) == "azure" and raw.parse().model == AZURE_ANSWERED
    assert azure.requests[-1].body["model"] == DEPLOYMENT  # Azure is asked with its configured deployment
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO, max_tokens=3)
    assert tier_of(raw) == "local" and raw.parse().model == MODEL
    assert raw.headers["x-msserve-reason"].startswith("x-msserve-route: local")  # as the header would say
    azure.script.append(Reply())
    raw = client.chat.completions.with_raw_response.create(model="careful", messages=HELLO, max_tokens=3)
    assert raw.headers["x-msserve-reason"].startswith("cascade")


def test_the_route_header_wins_over_the_alias(client: openai.OpenAI, azure: FakeAzure) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="my-azure-deployment", messages=HELLO, max_tokens=3, extra_headers={"x-msserve-route": "local"}
    )
    assert tier_of(raw) == "local" and raw.parse().model == MODEL and azure.requests == []


def test_an_unknown_name_is_a_404_listing_every_accepted_name(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-9", messages=HELLO, max_tokens=3)
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "model_not_found"
    for name in (MODEL, DEPLOYMENT, "gpt-4o-mini", "my-azure-deployment", "careful"):
        assert name in body["message"]


def test_azure_client_with_the_deployments_path(server: LiveServer, azure: FakeAzure) -> None:
    with openai.AzureOpenAI(
        azure_endpoint=server.base_url, api_key=API_KEY, api_version="2024-10-21", max_retries=0, timeout=120
    ) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(model=DEPLOYMENT, messages=HELLO, max_tokens=3)
        assert raw.http_request.url.path == f"/openai/deployments/{DEPLOYMENT}/chat/completions"
        assert "api-key" in raw.http_request.headers and "authorization" not in raw.http_request.headers
        assert tier_of(raw) == "local" and raw.parse().choices[0].message.content
        raw = sdk.chat.completions.with_raw_response.create(model="my-azure-deployment", messages=HELLO, max_tokens=3)
        assert tier_of(raw) == "azure" and raw.parse().model == AZURE_ANSWERED
        with sdk.chat.completions.with_streaming_response.create(
            model=DEPLOYMENT, messages=HELLO, max_tokens=3, stream=True
        ) as response:
            assert response.headers["x-msserve-tier"] == "local"
            chunks = list(response.parse())
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert [model.id for model in sdk.models.list()][:2] == [MODEL, DEPLOYMENT]


def test_azure_v1_path_with_the_openai_client(server: LiveServer) -> None:
    with openai.OpenAI(base_url=f"{server.base_url}/openai/v1/", api_key=API_KEY, max_retries=0, timeout=120) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(model=DEPLOYMENT, messages=HELLO, max_tokens=3)
        assert raw.http_request.url.path == "/openai/v1/chat/completions"
        assert tier_of(raw) == "local"
        assert_valid("CreateChatCompletionResponse", raw.http_response.json())


def test_azure_paths_go_through_auth_metrics_and_logs(server: LiveServer) -> None:
    path = f"/openai/deployments/{DEPLOYMENT}/chat/completions?api-version=2024-10-21"
    body = {"messages": HELLO, "max_tokens": 2}
    refused = httpx.post(f"{server.base_url}{path}", json=body, timeout=60)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    wrong = httpx.post(f"{server.base_url}{path}", json=body, headers={"api-key": "nope"}, timeout=60)
    assert wrong.status_code == 401
    ok = httpx.post(f"{server.base_url}{path}", json=body, headers={"api-key": API_KEY}, timeout=60)
    assert ok.status_code == 200, ok.text
    request_id = ok.headers["x-request-id"]
    metrics = httpx.get(f"{server.base_url}/metrics", headers={"api-key": API_KEY}, timeout=30).text
    template = "/openai/deployments/{deployment}/chat/completions"
    assert re.search(r'msserve_requests_total\{endpoint="' + re.escape(template) + r'",[^}]*status="200"', metrics)
    assert re.search(r'msserve_requests_total\{endpoint="' + re.escape(template) + r'",[^}]*status="401"', metrics)
    deadline = time.monotonic() + 10
    while request_id not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    line = next(line for line in server.log().splitlines() if request_id in line and '"key"' in line)
    assert '"tester"' in line and "/openai/deployments/" in line


def test_azure_paths_are_under_the_request_limits() -> None:
    for path in ("/openai/deployments/x/chat/completions", "/openai/v1/chat/completions", "/v1/chat/completions"):
        assert is_limited({"type": "http", "method": "POST", "path": path})
    assert not is_limited({"type": "http", "method": "GET", "path": "/openai/models"})


def test_alias_setting_forms() -> None:
    assert Settings(model_aliases="gpt-4o=auto, mini = LOCAL,,x=y=azure").model_aliases == {
        "gpt-4o": "auto",
        "mini": "local",
        "x=y": "azure",
    }
    assert Settings(model_aliases='{"a": "cascade"}').model_aliases == {"a": "cascade"}
    with pytest.raises(ValueError, match="'cascade'"):
        Settings(model_aliases="a=sideways")
    with pytest.raises(ValueError, match="name=route"):
        Settings(model_aliases="justaname")
