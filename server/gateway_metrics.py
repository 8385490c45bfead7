"""vLLM's own metric names on ``/metrics``, for the gateways and autoscalers that read them.

llm-d's inference gateway (the Gateway API Inference Extension's endpoint picker), vLLM's production-stack
router and KEDA's Prometheus scalers pick or scale replicas by ``vllm:num_requests_waiting``,
``vllm:num_requests_running`` and ``vllm:kv_cache_usage_perc`` (older releases: ``vllm:gpu_cache_usage_perc``),
each labelled with ``model_name``. This collector republishes what the local engine reports in its health, read
at scrape time: it observes, it never drives. The KV-cache gauges appear only when the engine measures its cache
(vLLM with scheduler stats on); a figure the engine does not have is left out, never invented.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from server.telemetry_views import EngineView

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE = "vllm:kv_cache_usage_perc"
KV_CACHE_OLD = "vllm:gpu_cache_usage_perc"  # the name before vLLM 0.10.2; some routers still read it
LABELS = ["model_name"]


class VLLMCompatCollector(Collector):
    """The local engine's running / waiting counts and KV-cache use under vLLM's metric names."""

    def __init__(self, engine: EngineView) -> None:
        self.engine = engine

    def describe(self) -> list[Any]:
        return []  # values are dynamic: do not let the registry call collect() at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        engine = self.engine
        health = engine.health()
        model = [engine.name]
        yield _gauge(RUNNING, "Requests the engine is generating now", model, health.running)
        yield _gauge(WAITING, "Requests waiting for the engine", model, health.waiting)
        if health.kv_cache_usage is not None:
            usage = health.kv_cache_usage
            yield _gauge(KV_CACHE, "KV-cache usage, 1 = 100% (from the engine's scheduler stats)", model, usage)
            yield _gauge(
                KV_CACHE_OLD, "KV-cache usage, 1 = 100% (vLLM's older name for kv_cache_usage_perc)", model, usage
            )


def _gauge(name: str, documentation: str, labels: list[str], value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=LABELS)
    family.add_metric(labels, value)
    return family
