"""Request ids, the JSON request log, the ring buffer and the Prometheus metrics, with real values after traffic."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from PIL import Image

from server.telemetry import ACCESS_LOGGER
from tests.fakes.fake_azure import FakeAzure, Reply, ServerError
from tests.ops.conftest import CHAT, metric


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(record.getMessage()))


@pytest.fixture
def access_log() -> Iterator[_Capture]:
    logger = logging.getLogger(ACCESS_LOGGER)
    capture = _Capture()
    logger.addHandler(capture)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    yield capture
    logger.removeHandler(capture)
    logger.setLevel(old_level)


async def test_request_id_is_echoed_or_made(make_client, access_log) -> None:
    client = make_client()
    given = await client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "req-123.A:b"})
    assert given.headers.get_list("x-request-id") == ["req-123.A:b"]  # chat's own header, not a second one
    made = await client.get("/health")
    assert len(made.headers["x-request-id"]) == 32
    hostile = await client.get("/v1/models", headers={"x-request-id": "a b\tc" + "x" * 200})
    assert hostile.headers["x-request-id"] != "a b\tc" + "x" * 200 and len(hostile.headers["x-request-id"]) == 32
    not_found = await client.get("/nope")
    assert not_found.status_code == 404 and "x-request-id" in not_found.headers
    ids = [line["request_id"] for line in access_log.lines]
    assert ids[0] == "req-123.A:b" and ids[1] == made.headers["x-request-id"]


async def test_one_log_line_per_request_without_contents(make_client, access_log) -> None:
    client = make_client()
    secret = "my secret prompt"
    await client.post("/v1/chat/completions", json={**CHAT, "messages": [{"role": "user", "content": secret}]},
                      headers={"x-request-id": "one"})
    await client.post("/v1/chat/completions", json={**CHAT, "stream": True, "stream_options": {"include_usage": True}},
                      headers={"x-request-id": "two"})
    lines = {line["request_id"]: line for line in access_log.lines}
    assert set(lines) == {"one", "two"}
    line = lines["one"]
    assert line["endpoint"] == "/v1/chat/completions" and line["status"] == 200 and line["outcome"] == "ok"
    assert line["tier"] == "local" and line["reason_class"] == "no-azure" and line["reason"]
    assert line["prompt_tokens"] == 7 and line["completion_tokens"] == 4
    assert line["ttft_s"] > 0 and line["e2e_s"] >= line["ttft_s"] and line["itl_mean_s"] is not None
    assert lines["two"]["stream"] is True and lines["two"]["completion_tokens"] == 4
    assert secret not in json.dumps(access_log.lines) and "contents" not in line


async def test_contents_are_logged_only_when_turned_on(make_client, access_log) -> None:
    client = make_client(log_contents=True)
    await client.post("/v1/chat/completions", json={**CHAT, "messages": [{"role": "user", "content": "visible"}]})
    assert access_log.lines[-1]["contents"]["messages"][0]["content"] == [{"text": "visible"}]


def _png_url(color: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 16), color).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


async def test_logged_images_are_fingerprints_of_their_pixels(make_client, access_log) -> None:
    client = make_client(log_contents=True)
    images = []
    for color in ((200, 10, 10), (200, 10, 10), (10, 10, 200)):
        image = {"type": "image_url", "image_url": {"url": _png_url(color)}}
        message = {"role": "user", "content": [{"type": "text", "text": "what is this"}, image]}
        response = await client.post("/v1/chat/completions", json={**CHAT, "messages": [message]})
        assert response.status_code == 200
        [_, part] = access_log.lines[-1]["contents"]["messages"][0]["content"]
        images.append(part["image"])
    assert images[0]["source"] == "data-url" and re.fullmatch(r"[0-9a-f]{64}", images[0]["sha256"])
    assert images[0]["sha256"] == images[1]["sha256"] != images[2]["sha256"]  # same pixels, same fingerprint
    assert "base64" not in json.dumps(access_log.lines)


async def test_refused_requests_are_logged_with_their_error_code(make_client, access_log) -> None:
    client = make_client(api_keys="alice:sk-alice-0123456789")
    await client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "denied"})
    line = access_log.lines[-1]
    assert (line["request_id"], line["status"], line["error"], line["endpoint"]) == (
        "denied", 401, "invalid_api_key", "/v1/chat/completions")


async def test_ring_buffer_keeps_the_newest_model_requests(make_client) -> None:
    client = make_client(recent_requests=3)
    for index in range(5):
        await client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": f"r{index}"})
    await client.get("/health")
    state = (await client.get("/dashboard/api/state")).json()
    assert [row["request_id"] for row in state["recent"]] == ["r4", "r3", "r2"]
    assert state["decisions"] == {"local": 5, "azure": 0} and state["escalation_rate"] == 0.0


async def test_metrics_after_local_traffic(make_client) -> None:
    client = make_client()
    for _ in range(3):
        await client.post("/v1/chat/completions", json=CHAT)
    await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    await client.post("/v1/chat/completions", json={"messages": "not a list"})
    text = (await client.get("/metrics")).text
    endpoint = "/v1/chat/completions"
    assert metric(text, "msserve_requests_total", endpoint=endpoint, tier="local", status="200") == 4
    assert metric(text, "msserve_requests_total", endpoint=endpoint, tier="none", status="400") == 1
    assert metric(text, "msserve_time_to_first_token_seconds_count", tier="local") == 4
    assert metric(text, "msserve_e2e_request_latency_seconds_count", endpoint=endpoint, tier="local") == 4
    assert metric(text, "msserve_inter_token_latency_seconds_count", tier="local") == 4 * 3  # 4 chunks, 3 gaps
    assert metric(text, "msserve_tokens_total", tier="local", kind="prompt") == 4 * 7
    assert metric(text, "msserve_tokens_total", tier="local", kind="completion") == 4 * 4
    assert metric(text, "msserve_router_decisions_total", tier="local", reason_class="no-azure") == 4
    assert metric(text, "msserve_escalation_ratio") == 0.0
    assert metric(text, "msserve_engine_ready") == 1
    assert metric(text, "msserve_engine_running_requests") == 0
    assert metric(text, "msserve_server_queue_depth") == 0
    assert metric(text, "msserve_savings_usd") == pytest.approx(4 * (7 * 2.5 + 4 * 10.0) / 1e6)
    assert metric(text, "msserve_azure_circuit_state", state="closed") == 1


async def test_metrics_for_azure_spend_failover_and_open_circuit(make_client) -> None:
    """The real AzureEngine against the fake Azure server (Azure's wire format over loopback HTTP): spend from the
    usage Azure reports, failovers when it errs, the circuit opening after two failures."""
    with FakeAzure() as backend:
        backend.script = [Reply(text="remote answer here", prompt_tokens=100), ServerError(500), ServerError(500)]
        client = make_client(
            azure_endpoint=backend.endpoint + "/openai/v1/", azure_api_key="test-key", azure_deployment="gpt-4o",
            router_threshold=0.0,  # every score is above it: the router sends every request to Azure
            azure_breaker_failures=2, azure_breaker_cooldown_s=3600.0,
            azure_price_input_per_mtok=1.0, azure_price_output_per_mtok=2.0,
        )
        azure = client.app.state.services.dispatcher.azure
        try:
            ok = await client.post("/v1/chat/completions", json=CHAT)
            assert ok.headers["x-msserve-tier"] == "azure" and ok.json()["choices"][0]["message"]["content"] == (
                "remote answer here")
            for _ in range(3):  # two failures open the circuit; the third is not even tried
                served = await client.post("/v1/chat/completions", json=CHAT)
                assert served.status_code == 200 and served.headers["x-msserve-tier"] == "local"
        finally:
            await azure.stop()
        assert len(backend.requests) == 3  # the call that answered, the two that failed; none while open
    text = (await client.get("/metrics")).text
    # 100 prompt tokens and 3 completion tokens ("remote answer here"), as the fake Azure reported them
    assert metric(text, "msserve_azure_spend_usd_total") == pytest.approx((100 * 1.0 + 3 * 2.0) / 1e6)
    assert metric(text, "msserve_tokens_total", tier="azure", kind="prompt") == 100
    assert metric(text, "msserve_azure_failovers_total") == 3
    assert metric(text, "msserve_azure_circuit_state", state="open") == 1
    assert metric(text, "msserve_router_decisions_total", tier="azure", reason_class="score-high") == 1
    assert metric(text, "msserve_router_decisions_total", tier="local", reason_class="failover") == 3
    assert metric(text, "msserve_escalation_ratio") == pytest.approx(0.25)
    state = (await client.get("/dashboard/api/state")).json()
    assert state["breaker"] == "open" and state["azure_configured"] is True
    assert state["recent"][-1]["cost_usd"] == pytest.approx((100 * 1.0 + 3 * 2.0) / 1e6)
