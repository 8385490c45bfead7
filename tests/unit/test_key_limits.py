"""The per-key limits in process: the sliding minute, the local store, the policy and the settings (clock injected)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.config import Settings
from server.limits.local import LocalKeyStore
from server.limits.policy import Admission, KeyLimitPolicy, KeyLimits, Refusal
from server.limits.usage import UsageMeter
from server.limits.window import MinuteWindow
from server.types import GenerationChunk, GenerationRequest, Message, TextPart, Usage


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_window_counts_the_last_60_seconds_to_the_second() -> None:
    window = MinuteWindow()
    window.add(1000.2, 2)
    window.add(1000.9, 1)  # same second: one bucket
    window.add(1030.5, 4)
    assert window.used(1059.99) == 7
    assert window.used(1060.0) == 4  # second 1000 left the window at 1060
    assert window.used(1089.99) == 4
    assert window.used(1090.0) == 0
    assert window.empty


def test_window_says_when_it_is_under_a_limit_again() -> None:
    window = MinuteWindow()
    window.add(1000.0, 3)
    window.add(1010.0, 2)
    window.add(1020.0, 1)
    assert window.wait_until_below(1030.0, 7) == 0.0  # 6 < 7 already
    assert window.wait_until_below(1030.0, 6) == pytest.approx(30.0)  # the 3 of second 1000 leave at 1060
    assert window.wait_until_below(1030.0, 2) == pytest.approx(40.0)  # then 2 of 1010 at 1070: 1 left
    assert window.wait_until_below(1030.0, 1) == pytest.approx(50.0)


async def test_requests_per_minute_refuse_the_next_request_until_the_oldest_leaves() -> None:
    clock = Clock()
    store = LocalKeyStore(clock=clock)
    limits = KeyLimits(rpm=3)
    for step in range(3):
        clock.now = 1000.0 + step * 10
        assert isinstance(await store.admit("alice", limits), Admission)
    clock.now = 1025.0
    refused = await store.admit("alice", limits)
    assert isinstance(refused, Refusal)
    assert (refused.limit, refused.allowed, refused.retry_after_s) == ("requests", 3, pytest.approx(35.0))
    error = refused.error()
    assert (error.status_code, error.code, error.headers) == (429, "requests_per_minute_exceeded",
                                                              {"retry-after": "35"})
    assert isinstance(await store.admit("bob", limits), Admission)  # another key has its own count
    clock.now = 1060.0  # the first request left the window
    admitted = await store.admit("alice", limits)
    assert isinstance(admitted, Admission) and admitted.requests_used == 3
    assert isinstance(await store.admit("alice", limits), Refusal)  # refused requests were never counted


async def test_tokens_count_when_the_answer_is_over_and_refuse_once_the_minute_is_spent() -> None:
    clock = Clock()
    store = LocalKeyStore(clock=clock)
    limits = KeyLimits(tpm=100)
    first = await store.admit("alice", limits)
    second = await store.admit("alice", limits)  # tokens are unknown before the answer: both get in
    assert isinstance(first, Admission) and isinstance(second, Admission)
    await store.finish(first, 60)
    clock.now = 1005.0
    assert isinstance(await store.admit("alice", limits), Admission)  # 60 of 100 used
    await store.finish(second, 50)  # 110: over
    refused = await store.admit("alice", limits)
    assert isinstance(refused, Refusal) and refused.limit == "tokens"
    assert refused.error().code == "tokens_per_minute_exceeded"
    assert refused.retry_after_s == pytest.approx(55.0)  # the 60 of second 1000 leave at 1060: 50 < 100
    clock.now = 1060.0
    admitted = await store.admit("alice", limits)
    assert isinstance(admitted, Admission) and admitted.tokens_used == 50


def test_policy_defaults_and_overrides() -> None:
    policy = KeyLimitPolicy(rpm=10, tpm=0, rpm_overrides={"batch": 0, "vip": 100}, tpm_overrides={"vip": 5000})
    assert policy.for_key("alice") == KeyLimits(rpm=10)
    assert policy.for_key("batch") == KeyLimits() and not policy.for_key("batch").active
    assert policy.for_key("vip") == KeyLimits(rpm=100, tpm=5000)
    shared = KeyLimitPolicy.from_settings(Settings(key_rpm_limit=5, max_concurrent_per_key=4), shared=True)
    assert shared.for_key("alice") == KeyLimits(concurrency=4, rpm=5)
    local = KeyLimitPolicy.from_settings(Settings(key_rpm_limit=5, max_concurrent_per_key=4), shared=False)
    assert local.for_key("alice") == KeyLimits(rpm=5)  # in one process the Limiter caps requests in flight


def test_override_settings_parse_and_refuse_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSSERVE_KEY_RPM_OVERRIDES", "alice=600, bob=0")
    monkeypatch.setenv("MSSERVE_KEY_TPM_OVERRIDES", '{"alice": 90000}')
    settings = Settings()
    assert settings.key_rpm_overrides == {"alice": 600, "bob": 0}
    assert settings.key_tpm_overrides == {"alice": 90000}
    for bad in ("alice", "alice=", "alice=-1", "alice=many"):
        with pytest.raises(ValidationError):
            Settings(key_rpm_overrides=bad)
    with pytest.raises(ValidationError):
        Settings(key_tpm_limit=-5)


def test_a_stream_cut_off_before_its_usage_still_counts_what_it_streamed() -> None:
    generation = GenerationRequest(request_id="r1", messages=[Message(role="user", content=[TextPart(text="x" * 30)])])
    answered = UsageMeter(request=generation)
    for chunk in (GenerationChunk(text="a"), GenerationChunk(text="b"),
                  GenerationChunk(text="", usage=Usage(prompt_tokens=12, completion_tokens=2))):
        answered.observe(chunk)
    assert answered.tokens == 14  # the engine's own figures when they came
    cut = UsageMeter(request=generation)
    for text in ("one ", "two ", "three "):
        cut.observe(GenerationChunk(text=text))
    # No usage figure: the prompt as the spend ledger estimates it (30 bytes / 3 + 4 per message), and the answer's
    # larger count of its 3 deltas and its 14 bytes at 3 a token.
    assert cut.tokens == 14 + 5
    assert UsageMeter(request=generation).tokens == 0  # nothing streamed: nothing generated
