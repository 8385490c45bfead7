"""vLLM's metric names on `/metrics` with the vLLM engine and scheduler stats off (the default).

Running/waiting come from the frontend's unfinished count; vLLM measures no KV-cache use without scheduler
stats, so its gauges are absent (the stats-on case is in test_vllm_native.py, on the server that turns them on).
"""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import LiveServer
from tests.ops.conftest import metric
from tests.vllm.test_vllm_engine import MODEL, long_stream, wait_idle

pytestmark = pytest.mark.vllm

KV_NAMES = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")


def scrape(server: LiveServer) -> str:
    response = httpx.get(f"{server.base_url}/metrics", timeout=10)
    assert response.status_code == 200
    return response.text


def test_running_and_waiting_without_scheduler_stats(vllm_server: LiveServer) -> None:
    wait_idle(vllm_server)
    with long_stream(vllm_server, MODEL, seed=4):
        text = scrape(vllm_server)
        assert metric(text, "vllm:num_requests_running", model_name=MODEL) == 1
        assert metric(text, "vllm:num_requests_waiting", model_name=MODEL) == 0
        assert not any(name in text for name in KV_NAMES)  # vLLM measured none: nothing is made up
    wait_idle(vllm_server)
    assert metric(scrape(vllm_server), "vllm:num_requests_running", model_name=MODEL) == 0
