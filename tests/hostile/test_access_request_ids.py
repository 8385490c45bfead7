"""A client's x-request-id stays in logs and headers; engines only ever see ids the server made."""

from __future__ import annotations

from tests.fakes.scripted_engine import ScriptedEngine
from tests.hostile.access_app import app_client, chat
from tests.images import png_url


async def test_same_client_id_gives_distinct_engine_ids() -> None:
    engine = ScriptedEngine()
    async with app_client(engine) as client:
        for _ in range(2):
            response = await client.post("/v1/chat/completions", json=chat(), headers={"x-request-id": "victim-id"})
            assert response.status_code == 200
            assert response.headers["x-request-id"] == "victim-id"  # the client's id, for its own logs
        streamed = await client.post(
            "/v1/chat/completions", json={**chat(), "stream": True}, headers={"x-request-id": "victim-id"}
        )
        assert streamed.status_code == 200 and streamed.headers["x-request-id"] == "victim-id"
        recent = client.app.state.telemetry.recent  # type: ignore[attr-defined]
    ids = [request.request_id for request in engine.requests]
    assert len(ids) == 3 and len(set(ids)) == 3  # vLLM aborts by id: no two requests may share one
    assert all("victim-id" not in engine_id for engine_id in ids)
    assert [row["request_id"] for row in recent] == ["victim-id"] * 3  # the log keeps the client's id


async def test_caption_engine_ids_are_server_made() -> None:
    engine = ScriptedEngine()
    async with app_client(engine) as client:
        for _ in range(2):
            response = await client.post(
                "/v1/captions", json={"image_urls": [png_url()]}, headers={"x-request-id": "victim-id"}
            )
            assert response.status_code == 200 and response.headers["x-request-id"] == "victim-id"
    ids = [request.request_id for request in engine.requests]
    assert len(set(ids)) == 2 and not any(engine_id.startswith("victim-id") for engine_id in ids)


async def test_without_a_client_id_the_engine_id_is_the_logged_one() -> None:
    engine = ScriptedEngine()
    async with app_client(engine) as client:
        response = await client.post("/v1/chat/completions", json=chat())
    assert response.status_code == 200
    assert engine.requests[0].request_id == response.headers["x-request-id"]  # log lines and engine logs match
