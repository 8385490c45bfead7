"""`/metrics` under vLLM's names (what gateways and KEDA read), from the transformers engine on the tiny model.

The transformers engine generates one request at a time: with one long stream holding the engine, two more
requests wait for it. The scrape must show exactly that under ``vllm:num_requests_running`` /
``vllm:num_requests_waiting`` with the ``model_name`` label, and no KV-cache figure (this engine does not
measure one).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from tests.conftest import LiveServer
from tests.ops.conftest import metric

MODEL = "tiny-mistral3"
KV_NAMES = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")


def scrape(server: LiveServer) -> str:
    response = httpx.get(f"{server.base_url}/metrics", timeout=30)
    assert response.status_code == 200
    return response.text


def counts(text: str) -> tuple[float | None, float | None]:
    return (
        metric(text, "vllm:num_requests_running", model_name=MODEL),
        metric(text, "vllm:num_requests_waiting", model_name=MODEL),
    )


@contextmanager
def holding_stream(server: LiveServer) -> Iterator[None]:
    """A streamed request far longer than the test; the engine is busy with it while the body runs."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "go on forever"}],
        "max_tokens": 4000,
        "stream": True,
        "temperature": 1.0,
        "seed": 3,
    }
    with httpx.stream("POST", f"{server.v1}/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        received = [next(lines) for _ in range(4)]
        assert any('"content"' in line for line in received)
        yield  # leaving closes the connection: the server aborts the generation


def wait_for(server: LiveServer, wanted: tuple[float, float], within_s: float = 60.0) -> str:
    deadline = time.monotonic() + within_s
    text = scrape(server)
    while counts(text) != wanted:
        assert time.monotonic() < deadline, f"never saw running/waiting {wanted}; last: {counts(text)}"
        time.sleep(0.05)
        text = scrape(server)
    return text


def test_running_and_waiting_under_vllms_names(live_server: LiveServer) -> None:
    idle = wait_for(live_server, (0, 0))
    assert "# TYPE vllm:num_requests_waiting gauge" in idle
    assert not any(name in idle for name in KV_NAMES)  # no invented KV figure for the transformers engine

    statuses: list[int] = []

    def short_request() -> None:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        statuses.append(httpx.post(f"{live_server.v1}/chat/completions", json=body, timeout=120).status_code)

    queued = [threading.Thread(target=short_request) for _ in range(2)]
    with holding_stream(live_server):
        assert counts(scrape(live_server)) == (1, 0)
        for thread in queued:
            thread.start()
        busy = wait_for(live_server, (1, 2))  # both wait behind the stream
        # The same figures as the project's own gauges: one source of truth, two names.
        assert metric(busy, "msserve_engine_running_requests") == 1
        assert metric(busy, "msserve_engine_queue_depth") == 2
        assert not any(name in busy for name in KV_NAMES)
    for thread in queued:
        thread.join(120)
    assert statuses == [200, 200]
    wait_for(live_server, (0, 0))
