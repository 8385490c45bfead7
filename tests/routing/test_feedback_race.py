"""POST /v1/feedback sent the moment an answer arrives waits for that answer's outcome row (in-process app)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import Settings
from server.routing.outcomes import OutcomeStore
from server.routing.shadow import LearningService
from server.state.db import StateDB
from tests.fakes.scripted_engine import ScriptedEngine


def test_feedback_waits_for_the_row_of_the_answer_just_sent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    original_add, original_stored = OutcomeStore.add_many, LearningService.stored

    def slow_add(self: OutcomeStore, outcomes: object) -> None:
        release.wait(10)  # the row is written only once feedback is already waiting for it
        original_add(self, outcomes)  # type: ignore[arg-type]

    async def stored(self: LearningService, response_id: str, timeout_s: float = 5.0) -> None:
        release.set()
        await original_stored(self, response_id, timeout_s)

    monkeypatch.setattr(OutcomeStore, "add_many", slow_add)
    monkeypatch.setattr(LearningService, "stored", stored)
    settings = Settings(state_dir=tmp_path, api_keys="alice:sk-alice-0123456789,bob:sk-bob-0123456789ab")
    with TestClient(create_app(settings, engine=ScriptedEngine()), base_url="http://127.0.0.1") as client:
        alice, bob = {"authorization": "Bearer sk-alice-0123456789"}, {"authorization": "Bearer sk-bob-0123456789ab"}
        answer = client.post(
            "/v1/chat/completions", headers=alice, json={"messages": [{"role": "user", "content": "hi"}]}
        ).json()
        response = client.post("/v1/feedback", headers=alice, json={"id": answer["id"], "score": 0.25})
        assert response.status_code == 204, response.text
        assert client.post("/v1/feedback", headers=bob, json={"id": answer["id"], "score": 1}).status_code == 404
        bad = client.post("/v1/feedback", headers=alice, json={"id": answer["id"], "score": -0.1})
        assert bad.status_code == 400
        assert client.post("/v1/feedback", headers=alice, json={"id": "chatcmpl-x", "score": 1}).status_code == 404
    row = OutcomeStore(StateDB(tmp_path)).get(answer["id"])
    assert row is not None and row.label == 0.75 and row.key_name == "alice"
