"""Shadow mode and the judge against the fake Azure (escalation target and judge), on a real outcome store.

The client's answer is read to its end while the shadow call is still held inside the fake Azure: the order of
events, not a clock, shows the shadow call never delays the client.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from PIL import Image

from server.routing.dispatch import Dispatcher
from server.routing.learned import ServingRouter
from server.routing.ledger_sqlite import SQLiteSpendLedger
from server.routing.outcomes import OutcomeStore
from server.routing.policy import RoutingPolicy
from server.routing.router import Router
from server.routing.shadow import LearningService
from server.state.db import StateDB
from server.types import GenerationRequest, ImagePart, Message, TextPart
from tests.conftest import free_port
from tests.fakes.fake_azure import FakeAzure, Reply, ServerError
from tests.fakes.scripted_engine import ScriptedEngine, answer
from tests.routing.conftest import azure_engine


@pytest.fixture(autouse=True)
def _ties(fake: FakeAzure) -> None:
    fake.judge_rule = lambda a, b: "TIE"


def _request(text: str = "Name three primes.") -> GenerationRequest:
    return GenerationRequest(request_id="req-1", messages=[Message(role="user", content=[TextPart(text=text)])])


@asynccontextmanager
async def learning(
    tmp_path: Path,
    endpoint: str,
    *,
    daily_usd: float | None = None,
    share: float = 0.1,
    log_contents: bool = False,
    router: Router | None = None,
) -> AsyncIterator[tuple[Dispatcher, LearningService, OutcomeStore]]:
    azure = azure_engine(endpoint, max_attempts=1)
    ledger = SQLiteSpendLedger(StateDB(tmp_path / "spend"), daily_usd=daily_usd, shadow_share=share)
    policy = RoutingPolicy(ledger=ledger)
    router = router or Router.from_weights(threshold=1.0)  # the router keeps everything local (score-low)
    dispatcher = Dispatcher(ScriptedEngine(answer("local says 2 3 5")), azure, router=router, policy=policy)
    store = OutcomeStore(StateDB(tmp_path))
    service = LearningService(
        store=store,
        router=lambda: router,
        policy=policy,
        azure=azure,
        shadow_rate=1.0,
        rng=lambda: 0.0,
        log_contents=log_contents,
    )
    await azure.start()
    try:
        yield dispatcher, service, store
    finally:
        await service.drain()
        await azure.stop()
        ledger.close()


async def _answer(dispatcher: Dispatcher, service: LearningService, response_id: str = "chatcmpl-1") -> str:
    request = _request()
    routed = await dispatcher.dispatch(request, None, stream=True)
    assert routed.decision.tier == "local" and routed.decision.reason_class == "score-low"
    routed = service.observe(routed, request, response_id, "alice")
    texts = [routed.first.text]
    async for chunk in routed.rest:
        texts.append(chunk.text)
    await routed.rest.aclose()  # type: ignore[attr-defined]
    return "".join(texts)


async def _until(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def test_client_answer_completes_while_the_shadow_call_is_held(tmp_path: Path, fake: FakeAzure) -> None:
    held = threading.Event()
    fake.script.append(Reply(text="Azure says 2 3 5", hold=held))
    fake.judge_rule = lambda a, b: "B" if "Azure" in b else "A"  # the Azure answer wins in either position
    async with learning(tmp_path, fake.endpoint) as (dispatcher, service, store):
        text = await _answer(dispatcher, service)
        assert text == "local says 2 3 5"  # the client's answer, unchanged and complete
        await _until(lambda: len(fake.requests) == 1, "shadow call reaches Azure")
        row = store.get("chatcmpl-1")
        assert row is not None and row.label is None and row.key_name == "alice"  # stored, not yet judged
        held.set()
        await _until(lambda: service.counters.verdicts["helped"] == 1, "verdict")
    judged = store.get("chatcmpl-1")
    assert judged is not None and judged.verdict == "helped" and judged.label == 1.0
    assert service.counters.shadow_calls == 1
    bodies = [r.body for r in fake.requests]
    assert bodies[0]["messages"][-1]["content"] in (
        "Name three primes.",
        [{"type": "text", "text": "Name three primes."}],
    )
    first, second = (str(b["messages"][-1]["content"]) for b in bodies[1:])
    # Asked in both orders: local first, then Azure first.
    assert first.index("local says") < first.index("Azure says") and second.index("Azure says") < second.index(
        "local says"
    )


async def test_position_bias_cancels_to_same(tmp_path: Path, fake: FakeAzure) -> None:
    fake.judge_rule = lambda a, b: "A"  # a judge that always prefers whatever comes first
    async with learning(tmp_path, fake.endpoint) as (dispatcher, service, _store):
        await _answer(dispatcher, service)
        await _until(lambda: sum(service.counters.verdicts.values()) == 1, "verdict")
    assert service.counters.verdicts == {"helped": 0, "same": 1, "hurt": 0}


async def test_no_shadow_call_beyond_the_budget(tmp_path: Path, fake: FakeAzure) -> None:
    async with learning(tmp_path, fake.endpoint, daily_usd=1e-9) as (dispatcher, service, store):
        await _answer(dispatcher, service)
        await _until(lambda: service.counters.shadow_skipped["budget"] == 1, "skip")
    assert fake.requests == []
    assert store.get("chatcmpl-1") is not None  # the outcome is stored all the same, unlabelled


async def test_azure_down_leaves_the_client_and_the_server_fine(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with learning(tmp_path, dead) as (dispatcher, service, store):
        assert await _answer(dispatcher, service) == "local says 2 3 5"
        await _until(lambda: service.counters.shadow_failed == 1, "failure counted")
        assert dispatcher.policy.counters.azure_errors == 1  # fed to the breaker like any Azure failure
        assert await _answer(dispatcher, service, "chatcmpl-2") == "local says 2 3 5"
    row = store.get("chatcmpl-1")
    assert row is not None and row.label is None


async def test_judge_failure_leaves_the_outcome_unlabelled(tmp_path: Path, fake: FakeAzure) -> None:
    fake.script += [Reply(text="Azure answer"), ServerError(500)]
    async with learning(tmp_path, fake.endpoint) as (dispatcher, service, store):
        await _answer(dispatcher, service)
        await _until(lambda: service.counters.judge_failed == 1, "judge failure")
    assert store.get("chatcmpl-1").verdict is None  # type: ignore[union-attr]


async def test_open_breaker_skips_shadow_calls(tmp_path: Path, fake: FakeAzure) -> None:
    async with learning(tmp_path, fake.endpoint) as (dispatcher, service, _store):
        for _ in range(dispatcher.policy.breaker.failure_threshold):
            dispatcher.policy.breaker.record_failure()
        await _answer(dispatcher, service)
        await _until(lambda: service.counters.shadow_skipped["breaker"] == 1, "skip")
    assert fake.requests == []


async def test_learning_calls_are_charged_to_the_ledger_within_their_share(tmp_path: Path, fake: FakeAzure) -> None:
    # $1 a day, learning may use 10 %: the shadow call's reservation (prompt + 256 tokens at $10/Mtok output) fits,
    # and what it cost is in the same ledger as escalations.
    fake.script += [Reply(text="Azure answer"), Reply(text="A"), Reply(text="B")]
    async with learning(tmp_path, fake.endpoint, daily_usd=1.0, share=0.1) as (dispatcher, service, _store):
        await _answer(dispatcher, service)
        await _until(lambda: service.counters.shadow_calls == 1, "shadow call")
        await _until(lambda: sum(service.counters.verdicts.values()) == 1, "verdict")
        ledger = dispatcher.policy.ledger
        assert ledger is not None
        spent = await ledger.spent_today()  # refreshes the snapshot from the database
        snapshot = ledger.snapshot()
    assert spent > 0.0 and snapshot.reserved_usd == 0.0  # every learning call was settled
    assert snapshot.by_purpose.get("shadow", 0.0) > 0.0 and snapshot.by_purpose.get("judge", 0.0) > 0.0


@pytest.mark.parametrize("log_contents", [False, True])
async def test_prompt_text_is_stored_only_when_contents_are_logged(
    tmp_path: Path, fake: FakeAzure, log_contents: bool
) -> None:
    async with learning(tmp_path, fake.endpoint, log_contents=log_contents) as (dispatcher, service, store):
        await _answer(dispatcher, service)
        await _until(lambda: store.get("chatcmpl-1") is not None, "stored")
    row = store.get("chatcmpl-1")
    assert row is not None and len(row.features) > 0 and row.prior_logit is not None
    assert (row.prompt == "user: Name three primes.") if log_contents else row.prompt is None


async def test_shadows_beyond_the_in_flight_limit_are_skipped(
    tmp_path: Path, fake: FakeAzure, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("server.routing.shadow.MAX_SHADOWS_IN_FLIGHT", 0)
    async with learning(tmp_path, fake.endpoint) as (dispatcher, service, store):
        await _answer(dispatcher, service)
        await _until(lambda: service.counters.shadow_skipped["busy"] == 1, "skip")
    assert fake.requests == [] and store.get("chatcmpl-1") is not None


async def test_the_outcome_row_reuses_the_decisions_prior_view(
    tmp_path: Path, fake: FakeAzure, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = ServingRouter.from_weights(threshold=1.0)
    scored: list[float] = []
    original = Router.score

    def counting(self: Router, request: GenerationRequest):  # type: ignore[no-untyped-def]
        result = original(self, request)
        scored.append(result[1].logit)
        return result

    monkeypatch.setattr(Router, "score", counting)
    async with learning(tmp_path, fake.endpoint, router=router) as (dispatcher, service, store):
        await _answer(dispatcher, service)
        await _until(lambda: store.get("chatcmpl-1") is not None, "stored")
    row = store.get("chatcmpl-1")
    assert len(scored) == 1  # scored once, for the decision; the row took that view
    assert row is not None and row.prior_logit == pytest.approx(scored[0])
    assert router._memo == {}  # handed over once, then forgotten
    other = _request()
    router.score(other)
    assert router.recall(_request()) is None  # same id, another request: not this decision's view


def test_the_memo_of_decisions_does_not_keep_a_request_or_its_images_alive() -> None:
    router = ServingRouter.from_weights(threshold=1.0)
    photo = Image.new("RGB", (64, 48))
    request = GenerationRequest(request_id="req-photo", messages=[Message(role="user", content=[
        TextPart(text="Caption this photo."), ImagePart(image=photo, source="data-url")])])
    router.score(request)
    kept = router.recall(request)
    assert kept is not None and kept[1].logit == router.score(request)[1].logit  # recalled while it lives
    request_alive, photo_alive = weakref.ref(request), weakref.ref(photo)
    del request, photo
    gc.collect()
    # The entry the second score left is never read (as with learning off): it must not hold the pixels.
    assert request_alive() is None and photo_alive() is None
    assert router.recall(_request()) is None


async def test_an_answer_the_client_left_is_stored_but_not_shadowed(tmp_path: Path, fake: FakeAzure) -> None:
    async with learning(tmp_path, fake.endpoint) as (dispatcher, service, store):
        request = _request()
        routed = service.observe(await dispatcher.dispatch(request, None, stream=True), request, "chatcmpl-1", None)
        await routed.rest.aclose()  # type: ignore[attr-defined]  # gone after the first chunk
        await _until(lambda: store.get("chatcmpl-1") is not None, "stored")
    assert fake.requests == [] and service.counters.shadow_calls == 0
