"""Per-key requests and tokens per minute over HTTP (the embedded store, its clock injected): 429 with a stable
code and Retry-After, the other keys untouched, tokens counted from answered requests (streams included)."""

from __future__ import annotations

import httpx
import pytest

from server.app import create_app
from server.middleware.auth import ApiKeysError
from tests.images import png_url
from tests.ops.conftest import CHAT, metric, ops_settings

ALICE, BOB = "sk-alice-0123456789abcdef", "sk-bob-0123456789abcdef"
KEYS = f"alice:{ALICE},bob:{BOB}"
PER_ANSWER = 7 + 4  # the paced engine's usage: 7 prompt tokens, one completion token per chunk (4)


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def as_(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def frozen(client: httpx.AsyncClient) -> Clock:
    clock = Clock()
    client.app.state.key_limits.clock = clock  # type: ignore[attr-defined]
    return clock


async def test_requests_per_minute_per_key(make_client) -> None:
    client = make_client(api_keys=KEYS, key_rpm_limit=2, key_rpm_overrides="bob=0", metrics_open=True)
    clock = frozen(client)
    first = await client.post("/v1/chat/completions", json=CHAT, headers=as_(ALICE))
    assert first.status_code == 200
    assert (first.headers["x-ratelimit-limit-requests"], first.headers["x-ratelimit-remaining-requests"]) == ("2", "1")
    clock.now += 20
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=as_(ALICE))).status_code == 200
    clock.now += 10
    refused = await client.post("/v1/chat/completions", json=CHAT, headers=as_(ALICE))
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "requests_per_minute_exceeded"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert refused.headers["retry-after"] == "30"  # the first request leaves the minute 30 s from now
    for _ in range(3):  # bob's override: no limit
        assert (await client.post("/v1/chat/completions", json=CHAT, headers=as_(BOB))).status_code == 200
    assert (await client.get("/v1/models", headers=as_(ALICE))).status_code == 200  # only model requests count
    feedback = await client.post("/v1/feedback", json={"id": "chatcmpl-unknown", "score": 1}, headers=as_(ALICE))
    assert feedback.status_code == 404  # scoring an answer is not a model request: not refused, not counted
    clock.now += 30
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=as_(ALICE))).status_code == 200
    scrape = (await client.get("/metrics")).text
    assert metric(scrape, "msserve_key_limit_refusals_total", key="alice", limit="requests") == 1


async def test_tokens_per_minute_count_answered_tokens_streams_included(make_client) -> None:
    client = make_client(api_keys=KEYS, key_tpm_limit=2 * PER_ANSWER + 1)
    clock = frozen(client)
    streamed = await client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=as_(ALICE))
    assert streamed.status_code == 200 and "[DONE]" in streamed.text
    assert streamed.headers["x-ratelimit-remaining-tokens"] == str(2 * PER_ANSWER + 1)  # before this answer
    clock.now += 1
    second = await client.post("/v1/chat/completions", json=CHAT, headers=as_(ALICE))
    assert second.headers["x-ratelimit-remaining-tokens"] == str(PER_ANSWER + 1)  # the stream's tokens counted
    clock.now += 1
    third = await client.post("/v1/chat/completions", json=CHAT, headers=as_(ALICE))
    assert third.status_code == 200  # 22 of 23 used: under the limit, so it gets in; after it, 33
    refused = await client.post("/v1/chat/completions", json=CHAT, headers=as_(ALICE))
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "tokens_per_minute_exceeded"
    assert refused.headers["retry-after"] == "58"  # at 5060 the stream's 11 tokens (second 5000) leave: 22 < 23
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=as_(BOB))).status_code == 200
    clock.now += 58
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=as_(ALICE))).status_code == 200


async def test_without_keys_there_is_nothing_to_count(make_client) -> None:
    client = make_client(key_rpm_limit=1)
    for _ in range(3):
        response = await client.post("/v1/chat/completions", json=CHAT)
        assert response.status_code == 200 and "x-ratelimit-limit-requests" not in response.headers


def test_an_override_for_an_unknown_key_stops_start_up() -> None:
    with pytest.raises(ApiKeysError, match="MSSERVE_KEY_TPM_OVERRIDES names 'carol'"):
        create_app(ops_settings(api_keys=KEYS, key_tpm_overrides="carol=10"))
    with pytest.raises(ApiKeysError, match="MSSERVE_API_KEYS is not set"):
        create_app(ops_settings(key_rpm_overrides="alice=10"))


async def test_captions_count_every_image_s_tokens(make_client) -> None:
    client = make_client(api_keys=KEYS, key_tpm_limit=3 * PER_ANSWER)
    frozen(client)
    two = await client.post("/v1/captions", json={"image_urls": [png_url(), png_url()]}, headers=as_(ALICE))
    assert two.status_code == 200, two.text
    assert two.json()["usage"]["total_tokens"] == 2 * PER_ANSWER
    one = await client.post("/v1/captions", json={"image_urls": [png_url()]}, headers=as_(ALICE))
    assert one.status_code == 200 and one.headers["x-ratelimit-remaining-tokens"] == str(PER_ANSWER)
    refused = await client.post("/v1/captions", json={"image_urls": [png_url()]}, headers=as_(ALICE))
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "tokens_per_minute_exceeded"
