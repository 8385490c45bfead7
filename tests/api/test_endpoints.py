"""/v1/models, /health, /ready, and the OpenAPI document."""

from __future__ import annotations

import httpx

from tests.conftest import LiveServer


def test_models_lists_the_profile_with_context_length(openai_client) -> None:
    models = openai_client.models.list()
    assert [m.id for m in models.data] == ["tiny-mistral3"]
    card = models.data[0].model_dump()
    assert card["context_length"] == 8192
    assert card["demo"] is True
    assert card["engine"] == "hf"


def test_health_and_ready(live_server: LiveServer) -> None:
    health = httpx.get(f"{live_server.base_url}/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = httpx.get(f"{live_server.base_url}/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert ready.json()["engine"]["state"] == "ready"


def test_unknown_path_is_openai_shaped_404(live_server: LiveServer) -> None:
    response = httpx.get(f"{live_server.base_url}/v1/nope")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"


def test_openapi_documents_chat(live_server: LiveServer) -> None:
    schema = httpx.get(f"{live_server.base_url}/openapi.json").json()
    assert "/v1/chat/completions" in schema["paths"]
    # Both kinds of 200 are documented: a chat.completion, and with "stream": true, events (schemathesis checks them)
    ok = schema["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert set(ok) == {"application/json", "text/event-stream"}
    assert ok["text/event-stream"]["schema"]["required"] == ["data"]
