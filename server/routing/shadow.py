"""Learning in the serving path: store every routed request's outcome row, shadow some local answers, judge them.

After a response has gone to the client (its stream ended or was closed), ``LearningService`` stores the outcome
row (features, score, tier, key name; in a thread, off the event loop) and, for a ``MSSERVE_ROUTER_SHADOW_RATE``
share of the requests the router kept local, asks Azure the same request in the background and has the judge
compare the two answers (server.routing.judge). Nothing here runs before or during the client's response, and
nothing here can fail it: the client's answer is never delayed or changed. Shadow and judge calls are admitted by
the routing policy like escalations (``RoutingPolicy.admit``): the one spend ledger reserves and settles them, and
together they may use at most ``MSSERVE_ROUTER_SHADOW_BUDGET_SHARE`` of the day's budget. They are skipped when
it says no or when the circuit breaker is not closed; Azure failing is counted (and fed to the breaker) and the
outcome simply stays unlabelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from server.engines.base import Engine
from server.routing import embed, judge
from server.routing.azure_call import AzureBlocked
from server.routing.dispatch import Routed
from server.routing.learned import LearnedRouter, ServingRouter, feature_set_version
from server.routing.outcome_writer import OutcomeWriter
from server.routing.outcomes import Outcome, OutcomeStorage, Verdict
from server.routing.policy import RoutingPolicy
from server.routing.router import Router
from server.types import GenerationChunk, GenerationRequest, Usage

log = logging.getLogger(__name__)

# Decisions the router made itself and kept local: the ones a shadow answer can teach it about.
SHADOWED_CLASSES = frozenset({"score-low"})
_PRUNE_EVERY = 1000
# Shadowed requests judged at once; beyond this a shadow is skipped (counted "busy"), never queued without bound.
MAX_SHADOWS_IN_FLIGHT = 8


@dataclass
class LearningCounters:
    shadow_calls: int = 0  # shadow answers obtained from Azure
    shadow_skipped: dict[str, int] = field(default_factory=lambda: {"budget": 0, "breaker": 0, "busy": 0})
    shadow_failed: int = 0
    judge_failed: int = 0
    verdicts: dict[str, int] = field(default_factory=lambda: {"helped": 0, "same": 0, "hurt": 0})
    stored: int = 0
    estimated_quality: float | None = None  # at the current threshold, over judged outcomes


@dataclass
class _Served:
    response_id: str
    key_name: str | None
    request: GenerationRequest
    routed: Routed
    texts: list[str] = field(default_factory=list)
    usage: Usage | None = None
    failed: bool = False
    complete: bool = False  # read to its end (a client that left mid-answer leaves a partial one: not judged)


class _Recorder:
    """Pass the stream through, keeping its text; when it ends (or is closed) hand the whole answer on, once."""

    def __init__(self, inner: AsyncIterator[GenerationChunk], served: _Served, done: Callable[[_Served], None]):
        self._inner = inner
        self._served = served
        self._done = done
        self._finished = False

    def __aiter__(self) -> _Recorder:
        return self

    async def __anext__(self) -> GenerationChunk:
        try:
            chunk = await anext(self._inner)
        except StopAsyncIteration:
            self._served.complete = True
            self._finish()
            raise
        except BaseException:
            self._served.failed = True
            self._finish()
            raise
        self._served.texts.append(chunk.text)
        self._served.usage = chunk.usage or self._served.usage
        return chunk

    async def aclose(self) -> None:
        try:
            close = getattr(self._inner, "aclose", None)
            if close is not None:
                await close()
        finally:
            self._finish()

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            self._done(self._served)


def _text(chunks: list[GenerationChunk]) -> str:
    return "".join(chunk.text for chunk in chunks)


class LearningService:
    def __init__(
        self,
        *,
        store: OutcomeStorage,
        router: Callable[[], Router | None],
        policy: RoutingPolicy,
        azure: Engine | None = None,
        judge_engine: Engine | None = None,
        shadow_rate: float = 0.0,
        log_contents: bool = False,
        embedder: embed.WordEmbedder | None = None,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.router = router
        self.policy = policy
        self.azure = azure
        self.judge_engine = judge_engine or azure
        self.shadow_rate = shadow_rate
        self.log_contents = log_contents
        self.embedder = embedder
        self.rng = rng
        self.clock = clock
        self.counters = LearningCounters()
        self._tasks: set[asyncio.Task[None]] = set()
        self._since_estimate = 0
        self._shadows = 0
        self._storing: dict[str, asyncio.Future[None]] = {}
        self._writer: OutcomeWriter[_Served] = OutcomeWriter(store, self._row, prune_every=_PRUNE_EVERY)

    # -- the serving path: wrap, never wait ---------------------------------------------------------------------
    def observe(self, routed: Routed, request: GenerationRequest, response_id: str, key_name: str | None) -> Routed:
        served = _Served(response_id, key_name, request, routed, texts=[routed.first.text], usage=routed.first.usage)
        return routed.model_copy(update={"rest": _Recorder(routed.rest, served, self._schedule)})

    def _schedule(self, served: _Served) -> None:
        try:
            task = asyncio.get_running_loop().create_task(self._after(served), name=f"learn-{served.response_id}")
        except RuntimeError:  # no loop (closed during shutdown): nothing to learn from this one
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # Scheduled before the response's last bytes go out: feedback that follows at once can wait for the row.
        self._storing[served.response_id] = asyncio.get_running_loop().create_future()

    async def _after(self, served: _Served) -> None:
        try:
            try:
                stored = await self._writer.write(served)
            finally:
                waiter = self._storing.pop(served.response_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            if stored:
                self.counters.stored += 1
            if stored and self._wants_shadow(served):
                if self._shadows >= MAX_SHADOWS_IN_FLIGHT:
                    self.counters.shadow_skipped["busy"] += 1
                    return
                self._shadows += 1
                try:
                    await self._shadow(served)
                finally:
                    self._shadows -= 1
        except Exception:  # learning must never take the server down
            log.exception("router learning failed for %s", served.response_id)

    # -- storing ----------------------------------------------------------------------------------------------
    def _row(self, served: _Served) -> Outcome | None:
        """The outcome row of an answered request (built on the writer's thread)."""
        router = self.router()
        decision = served.routed.decision
        if router is None or decision.tier not in ("local", "azure"):
            return None
        # The prior's own view, whatever router serves (outcomes stay valid when the learned weights change): the
        # one the decision computed when the serving router kept it, else scored again.
        view = router.recall(served.request) if isinstance(router, ServingRouter) else None
        features, scored, vector = view if view is not None else (*Router.score(router, served.request), None)
        if vector is None and self.embedder is not None:
            vector = self.embedder.embed(features.words)
        outcome = Outcome(
            id=served.response_id,
            created=self.clock(),
            key_name=served.key_name,
            tier=decision.tier,
            route=decision.reason_class,
            score=decision.score,
            threshold=router.threshold,
            router=getattr(router, "name", router.model.name),
            prior_logit=scored.logit,
            feature_set=feature_set_version(),
            features=features.vector(),
            embedder=self.embedder.name if vector is not None and self.embedder is not None else None,
            embedding=vector,
            prompt=judge.transcript(served.request) if self.log_contents else None,
        )
        return outcome

    # -- shadow and judge -------------------------------------------------------------------------------------
    def _wants_shadow(self, served: _Served) -> bool:
        decision = served.routed.decision
        return (
            self.azure is not None
            and served.complete
            and not served.failed
            and decision.tier == "local"
            and decision.reason_class in SHADOWED_CLASSES
            and self.shadow_rate > 0
            and self.rng() < self.shadow_rate
        )

    async def _call(self, engine: Engine, request: GenerationRequest, purpose: str) -> str | None:
        """One admitted Azure call: its text, or None when skipped or failed (counted)."""
        if self.policy.breaker.state != "closed":
            self.counters.shadow_skipped["breaker"] += 1
            return None
        try:
            call = await self.policy.admit(request, purpose=purpose, use_breaker=False)  # type: ignore[arg-type]
        except AzureBlocked:
            self.counters.shadow_skipped["budget"] += 1
            return None
        chunks: list[GenerationChunk] = []
        try:
            async for chunk in engine.generate(request):
                call.observe(chunk)
                chunks.append(chunk)
        except BaseException as exc:
            self._count_spend(call.finish(exc))
            if isinstance(exc, Exception):
                self._failed(purpose, exc)
                return None
            raise
        usage = next((c.usage for c in reversed(chunks) if c.usage is not None), None)
        self._count_spend(call.finish(None, usage))
        return _text(chunks)

    def _count_spend(self, billed: Usage | None) -> None:
        # Learning spend is Azure spend (the ledger has it already); it is not a request's, so no tier counts.
        if billed is not None:
            self.policy.counters.spend_azure_usd += self.policy.prices.cost("azure", billed)

    def _failed(self, purpose: str, exc: Exception) -> None:
        if purpose == "shadow":
            self.counters.shadow_failed += 1
        log.info("router %s call failed: %s", purpose, exc)

    async def _shadow(self, served: _Served) -> None:
        assert self.azure is not None
        local = "".join(served.texts)
        # A comparable answer needs about the local answer's length; the cap keeps the reservation (and the bill)
        # near that instead of the 4096 tokens reserved for a request that set no max_tokens.
        completion = served.usage.completion_tokens if served.usage else 256
        asked = served.request.sampling.max_tokens
        limit = max(256, 2 * completion) if asked is None else min(asked, max(256, 2 * completion))
        request = served.request.model_copy(
            update={
                "request_id": f"{served.request.request_id}-shadow",
                "stream": False,
                "deadline": None,
                "sampling": served.request.sampling.model_copy(update={"max_tokens": limit}),
            }
        )
        answer = await self._call(self.azure, request, "shadow")
        if answer is None:
            return
        self.counters.shadow_calls += 1
        assert self.judge_engine is not None
        engine = self.judge_engine

        async def ask(judge_request: GenerationRequest) -> str | None:
            return await self._call(
                engine, judge_request, "judge"
            )

        verdict = await judge.judge(served.request, local, answer, ask)
        if verdict is None:  # a judge call was skipped or failed: the outcome stays unlabelled
            self.counters.judge_failed += 1
            return
        await self.record_verdict(served.response_id, verdict)

    async def stored(self, response_id: str, timeout_s: float = 5.0) -> None:
        """Wait until the outcome row of a response just sent is written (no-op when none is pending)."""
        waiter = self._storing.get(response_id)
        if waiter is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(waiter), timeout_s)

    async def record_verdict(self, response_id: str, verdict: Verdict) -> None:
        if await asyncio.to_thread(self.store.judge, response_id, verdict, now=self.clock()):
            self.counters.verdicts[verdict] += 1
            self._since_estimate += 1
            if self._since_estimate >= 20 or self.counters.estimated_quality is None:
                self._since_estimate = 0
                await asyncio.to_thread(self.refresh_estimate)

    def refresh_estimate(self) -> None:
        """Estimated quality at the current threshold over the latest judged outcomes: the better answer's share.

        Each judged outcome's label is the escalated answer's quality (strong = label, local = 1 - label); the
        current router picks one of the two by its threshold.
        """
        router = self.router()
        judged = [o for o in self.store.all(labelled_only=True) if o.feature_set == feature_set_version()][-2000:]
        if router is None or not judged:
            return
        from server.routing.refit import _current_scores  # one scoring rule for refit and this estimate

        scores = _current_scores(router, judged)
        labels = [float(o.label or 0.0) for o in judged]
        chosen = [y if s > router.threshold else 1 - y for y, s in zip(labels, scores, strict=True)]
        self.counters.estimated_quality = sum(chosen) / len(chosen)

    async def drain(self, timeout_s: float = 5.0) -> None:
        """At shutdown: let stores finish (shadow calls are cancelled after ``timeout_s``), stop the writer."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(BaseException):
                    await task
        await asyncio.to_thread(self._writer.close)

    @property
    def learned_version(self) -> int | None:
        router = self.router()
        return router.learned.version if isinstance(router, LearnedRouter) else None
