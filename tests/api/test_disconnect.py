"""A client that leaves mid-stream frees the engine: the next request is served and nothing stays running."""

from __future__ import annotations

import time

import httpx

from tests.conftest import LiveServer


def engine_counts(server: LiveServer) -> tuple[int, int]:
    engine = httpx.get(f"{server.base_url}/ready").json()["engine"]
    return engine["running"], engine["waiting"]


def test_disconnect_aborts_generation(live_server: LiveServer, openai_client) -> None:
    body = {"model": "tiny-mistral3", "messages": [{"role": "user", "content": "go on forever"}],
            "max_tokens": 4000, "stream": True, "temperature": 1.0, "seed": 1}
    with httpx.stream("POST", f"{live_server.v1}/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        received = [next(lines) for _ in range(6)]
        assert any('"content"' in line for line in received)
        assert engine_counts(live_server)[0] == 1
    # Closed after a few tokens of 4000: the engine must stop long before it could have finished.
    deadline = time.monotonic() + 30
    while engine_counts(live_server) != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert engine_counts(live_server) == (0, 0)
    completion = openai_client.chat.completions.create(
        model="tiny-mistral3", messages=[{"role": "user", "content": "still there?"}], max_tokens=2
    )
    assert completion.usage.completion_tokens >= 1
