"""Telemetry: Prometheus metrics, one structured JSON log line per request, and a ring buffer of recent requests.

Every request gets a ``RequestRecord`` from the access-log middleware; the API layer fills in what only it
knows (the routing decision, token timings, usage) through ``observe_routed``; when the response is over the
middleware hands the record to ``Telemetry.finish``, which updates the metrics, writes the log line and keeps
model requests in the ring buffer the dashboard shows.

The metrics live in a per-app ``CollectorRegistry`` (two apps in one process never share counters). Values
owned by other parts (engine queue, routing policy counters, circuit breaker, the server's own limiter) are
read at scrape time by a custom collector, so there is one source of truth for each number.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request

from server.config import Settings
from server.errors import MSServeError
from server.gateway_metrics import VLLMCompatCollector
from server.loop_lag import LOOP_LAG_BUCKETS, LoopLagMonitor
from server.telemetry_views import LimiterStats, ServerView
from server.types import GenerationChunk, GenerationRequest, ImagePart, TextPart, Usage

if TYPE_CHECKING:
    from server.routing.dispatch import Routed

ACCESS_LOGGER = "msserve.access"
STATE_KEY = "telemetry_record"  # scope["state"] key of the RequestRecord
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5)
QUIET_PATHS = ("/health", "/ready", "/metrics", "/favicon.ico")  # probes and scrapes: logged at debug only
BREAKER_STATES = ("closed", "open", "half_open")


@dataclass
class RequestRecord:
    """What is known about one HTTP request; filled in as it goes, finished once."""

    request_id: str
    method: str
    path: str
    started: float = field(default_factory=time.monotonic)
    wall_time: float = field(default_factory=time.time)
    endpoint: str = "other"  # the route template: bounded label values
    key_name: str | None = None
    status: int = 0
    error_code: str | None = None
    outcome: str = "ok"  # ok | error | client_closed | aborted
    stream: bool = False
    model: str | None = None
    tier: str | None = None
    score: float | None = None
    reason: str | None = None
    reason_class: str | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    token_gaps: list[float] = field(default_factory=list)
    usage: Usage | None = None
    cost_usd: float | None = None
    ended: float | None = None
    contents: dict[str, Any] | None = None  # only with settings.log_contents

    @property
    def is_model_request(self) -> bool:
        return self.method == "POST" and self.path.startswith(("/v1/", "/openai/"))  # /openai/: Azure's path forms

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started

    @property
    def e2e_s(self) -> float | None:
        return None if self.ended is None else self.ended - self.started

    def on_chunk(self, chunk: GenerationChunk) -> None:
        if chunk.model:
            self.model = chunk.model
        if chunk.usage is not None:
            self.usage = chunk.usage
        if not (chunk.text or chunk.tool_calls):
            return
        now = time.monotonic()
        if self.first_token_at is None:
            self.first_token_at = now
        elif self.last_token_at is not None:
            self.token_gaps.append(now - self.last_token_at)
        self.last_token_at = now

    def summary(self) -> dict[str, Any]:
        """The log line / ring-buffer entry: no prompt or image content unless ``contents`` was filled in."""
        usage = self.usage
        out: dict[str, Any] = {
            "ts": round(self.wall_time, 3),
            "request_id": self.request_id,
            "method": self.method,
            "endpoint": self.endpoint,
            "key": self.key_name,
            "status": self.status,
            "outcome": self.outcome,
            "error": self.error_code,
            "stream": self.stream,
            "model": self.model,
            "tier": self.tier,
            "score": None if self.score is None else round(self.score, 4),
            "reason": self.reason,
            "reason_class": self.reason_class,
            "ttft_s": _rounded(self.ttft_s),
            "itl_mean_s": _rounded(sum(self.token_gaps) / len(self.token_gaps)) if self.token_gaps else None,
            "e2e_s": _rounded(self.e2e_s),
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.completion_tokens if usage else None,
            "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 8),
        }
        if self.contents is not None:
            out["contents"] = self.contents
        return out


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


class _ObservedStream:
    """Pass the engine stream through, timing tokens into the record; closing it closes the inner stream."""

    def __init__(self, inner: AsyncIterator[GenerationChunk], record: RequestRecord) -> None:
        self._inner = inner
        self._record = record

    def __aiter__(self) -> _ObservedStream:
        return self

    async def __anext__(self) -> GenerationChunk:
        try:
            chunk = await anext(self._inner)
        except StopAsyncIteration:
            raise
        except MSServeError as exc:
            self._record.error_code = exc.code
            self._record.outcome = "error"
            raise
        self._record.on_chunk(chunk)
        return chunk

    async def aclose(self) -> None:
        close = getattr(self._inner, "aclose", None)
        if close is not None:
            await close()


def record_of(request: Request) -> RequestRecord | None:
    state = request.scope.get("state") or {}
    record = state.get(STATE_KEY)
    return record if isinstance(record, RequestRecord) else None


def observe_routed(request: Request, routed: Routed, generation: GenerationRequest | None = None,
                   *, stream: bool = False) -> Routed:
    """Note the decision and first chunk of a routed request; return it with its stream timed. No-op if untracked."""
    record = record_of(request)
    if record is None:
        return routed
    decision = routed.decision
    record.tier, record.score, record.reason = decision.tier, decision.score, decision.reason
    record.reason_class = decision.reason_class
    record.model = routed.model
    record.stream = stream
    record.on_chunk(routed.first)
    telemetry: Telemetry | None = getattr(request.app.state, "telemetry", None)
    if telemetry is not None and telemetry.settings.log_contents and generation is not None:
        record.contents = describe_contents(generation)
    return routed.model_copy(update={"rest": _ObservedStream(routed.rest, record)})


def describe_contents(generation: GenerationRequest) -> dict[str, Any]:
    """Prompt text and image fingerprints (size and sha256, never pixels), for operators who turn it on."""
    messages: list[dict[str, Any]] = []
    for message in generation.messages:
        parts: list[dict[str, Any]] = []
        for part in message.content:
            if isinstance(part, TextPart):
                parts.append({"text": part.text})
            elif isinstance(part, ImagePart):
                digest = hashlib.sha256(part.image.tobytes()).hexdigest()  # of the pixels the model sees
                parts.append({"image": {"size": list(part.image.size), "source": part.source, "sha256": digest}})
        messages.append({"role": message.role, "content": parts})
    return {"messages": messages}


class Telemetry:
    """Metrics registry, request log and recent-request ring buffer of one app."""

    def __init__(self, settings: Settings, services: ServerView) -> None:
        self.settings = settings
        self.services = services
        self.limiter: LimiterStats | None = None  # set by server.middleware.install
        self.registry = CollectorRegistry(auto_describe=True)
        self.recent: deque[dict[str, Any]] = deque(maxlen=max(1, settings.recent_requests))
        self.log = logging.getLogger(ACCESS_LOGGER)
        self.decisions = {"local": 0, "azure": 0}
        self.started_at = time.time()
        r = self.registry
        self.requests = Counter("msserve_requests", "HTTP requests by endpoint, tier and status",
                                ["endpoint", "tier", "status"], registry=r)
        self.ttft = Histogram("msserve_time_to_first_token_seconds", "Time from request to first token",
                              ["tier"], buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("msserve_e2e_request_latency_seconds", "Time from request to the last byte",
                             ["endpoint", "tier"], buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("msserve_inter_token_latency_seconds", "Time between two streamed tokens",
                             ["tier"], buckets=ITL_BUCKETS, registry=r)
        self.router_decisions = Counter("msserve_router_decisions", "Routing decisions by tier and reason class",
                                        ["tier", "reason_class"], registry=r)
        self.loop_lag = Histogram("msserve_event_loop_lag_seconds",
                                  "How late a short sleep on the event loop woke up (time the loop was blocked)",
                                  buckets=LOOP_LAG_BUCKETS, registry=r)
        self.lag_monitor = LoopLagMonitor(self.loop_lag, warn_s=settings.event_loop_lag_warn_s)
        r.register(_StateCollector(self))
        r.register(VLLMCompatCollector(services.engine))  # vLLM's names, for the gateways that read them

    def start(self) -> None:
        """Start the loop-lag monitor; send access-log lines to stderr as bare JSON, unless the operator
        configured that logger already. Called from the app's lifespan, on the event loop."""
        self.lag_monitor.start()
        if not self.log.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            self.log.addHandler(handler)
            self.log.propagate = False
        if self.log.level == logging.NOTSET:
            self.log.setLevel(logging.INFO)

    async def stop(self) -> None:
        await self.lag_monitor.stop()

    # -- per request ---------------------------------------------------------------------------------------------
    def finish(self, record: RequestRecord) -> None:
        record.ended = record.ended or time.monotonic()
        tier = record.tier or "none"
        self.requests.labels(record.endpoint, tier, str(record.status)).inc()
        if record.tier is not None:
            self.e2e.labels(record.endpoint, tier).observe(record.e2e_s or 0.0)
            if record.ttft_s is not None:
                self.ttft.labels(tier).observe(record.ttft_s)
            itl = self.itl.labels(tier)
            for gap in record.token_gaps:
                itl.observe(gap)
            self.router_decisions.labels(tier, record.reason_class or "unknown").inc()
            if tier in self.decisions:
                self.decisions[tier] += 1
            if record.usage is not None and record.tier in ("local", "azure"):
                record.cost_usd = self._policy_cost(record.tier, record.usage)
        line = record.summary()
        if record.is_model_request:
            self.recent.append(line)
        quiet = record.path in QUIET_PATHS or record.path == "/" or record.path.startswith("/dashboard")
        self.log.log(logging.DEBUG if quiet else logging.INFO, json.dumps(line, separators=(",", ":")))

    def _policy_cost(self, tier: str, usage: Usage) -> float:
        return self.services.dispatcher.policy.prices.cost(tier, usage)  # type: ignore[arg-type]  # local or azure

    # -- views -----------------------------------------------------------------------------------------------------
    def escalation_rate(self) -> float | None:
        total = self.decisions["local"] + self.decisions["azure"]
        return self.decisions["azure"] / total if total else None

    def snapshot(self) -> dict[str, Any]:
        """What the dashboard shows: recent requests (newest first) and the running totals."""
        services = self.services
        health = services.engine.health()
        policy = services.dispatcher.policy
        counters = policy.counters
        recent = list(reversed(self.recent))
        recent_routed = [row for row in recent if row["tier"] in ("local", "azure")]
        recent_rate = (sum(row["tier"] == "azure" for row in recent_routed) / len(recent_routed)
                       if recent_routed else None)
        return {
            "model": services.engine.name,
            "uptime_s": round(time.time() - self.started_at, 1),
            "draining": services.draining,
            "engine": health.model_dump(),
            "azure_configured": services.dispatcher.azure is not None,
            "breaker": policy.breaker.state,
            "escalation_rate": self.escalation_rate(),
            "recent_escalation_rate": recent_rate,
            "decisions": dict(self.decisions),
            "spend_azure_usd": counters.spend_azure_usd,
            "cost_local_usd": counters.cost_local_usd,
            "savings_usd": counters.savings_usd,
            "server": {"running": self.limiter.running if self.limiter else 0,
                       "waiting": self.limiter.waiting if self.limiter else 0},
            "recent": recent,
        }


class _StateCollector(Collector):
    """Gauges and counters read at scrape time from the engine, the routing policy and the limiter."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    def describe(self) -> list[Any]:
        return []  # values are dynamic: do not let the registry call collect() at registration

    def collect(self) -> Iterator[Any]:
        t = self.telemetry
        services = t.services
        health = services.engine.health()
        yield _gauge("msserve_engine_running_requests", "Requests the local engine is generating", health.running)
        yield _gauge("msserve_engine_queue_depth", "Requests waiting for the local engine", health.waiting)
        yield _gauge("msserve_engine_ready", "1 when the local engine is ready", int(health.ready))
        yield _gauge("msserve_draining", "1 while the server drains for shutdown", int(services.draining))
        if t.limiter is not None:
            yield _gauge("msserve_server_running_requests", "Model requests holding a server slot", t.limiter.running)
            yield _gauge("msserve_server_queue_depth", "Model requests waiting for a server slot", t.limiter.waiting)
            yield _gauge("msserve_server_reading_requests", "Model requests whose body is still arriving (no slot yet)",
                         t.limiter.reading)
        rate = t.escalation_rate()
        yield _gauge("msserve_escalation_ratio", "Share of routed requests sent to Azure since start",
                     rate if rate is not None else 0.0)
        policy = services.dispatcher.policy
        c = policy.counters
        tokens = CounterMetricFamily("msserve_tokens", "Tokens by tier and kind (engine calls)",
                                     labels=["tier", "kind"])
        tokens.add_metric(["local", "prompt"], c.prompt_tokens_local)
        tokens.add_metric(["local", "completion"], c.completion_tokens_local)
        tokens.add_metric(["azure", "prompt"], c.prompt_tokens_azure)
        tokens.add_metric(["azure", "completion"], c.completion_tokens_azure)
        yield tokens
        calls = CounterMetricFamily("msserve_engine_calls", "Engine calls by tier", labels=["tier"])
        calls.add_metric(["local"], c.requests_local)
        calls.add_metric(["azure"], c.requests_azure)
        yield calls
        yield _counter("msserve_azure_spend_usd", "Estimated Azure spend (USD) since start", c.spend_azure_usd)
        yield _counter("msserve_local_cost_usd", "Estimated local cost (USD) at the configured local prices",
                       c.cost_local_usd)
        yield _gauge("msserve_savings_usd", "Estimated savings (USD) against sending everything to Azure",
                     c.savings_usd)
        yield _counter("msserve_azure_failovers", "Azure wanted but unavailable or failing: served locally",
                       c.failovers)
        yield _counter("msserve_overload_escalations", "Local engine overloaded or down: sent to Azure",
                       c.escalations_overload)
        yield _counter("msserve_azure_errors", "Azure calls that failed (errors, timeouts, 429s)", c.azure_errors)
        yield _gauge("msserve_azure_spend_today_usd", "Estimated Azure spend this UTC day",
                     policy.spend_cap.spent_today)
        state = GaugeMetricFamily("msserve_azure_circuit_state", "Azure circuit breaker: 1 for the current state",
                                  labels=["state"])
        current = policy.breaker.state
        for name in BREAKER_STATES:
            state.add_metric([name], 1 if name == current else 0)
        yield state


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)
