"""vLLM's metric names from an engine's health: what is measured is exported, what is not is left out."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest

from server.engines.base import EngineHealth
from server.gateway_metrics import VLLMCompatCollector
from tests.ops.conftest import metric


@dataclass
class _Engine:
    name: str
    report: EngineHealth

    def health(self) -> EngineHealth:
        return self.report


def scrape(health: EngineHealth) -> str:
    registry = CollectorRegistry()
    registry.register(VLLMCompatCollector(_Engine("mistral-small-3.1", health)))
    return generate_latest(registry).decode()


def test_kv_cache_use_under_both_names_when_the_engine_measures_it() -> None:
    text = scrape(EngineHealth(ready=True, state="ready", running=3, waiting=5, kv_cache_usage=0.375))
    assert metric(text, "vllm:num_requests_running", model_name="mistral-small-3.1") == 3
    assert metric(text, "vllm:num_requests_waiting", model_name="mistral-small-3.1") == 5
    assert metric(text, "vllm:kv_cache_usage_perc", model_name="mistral-small-3.1") == 0.375
    assert metric(text, "vllm:gpu_cache_usage_perc", model_name="mistral-small-3.1") == 0.375


def test_no_kv_figure_when_the_engine_has_none() -> None:
    text = scrape(EngineHealth(ready=False, state="starting"))
    assert metric(text, "vllm:num_requests_waiting", model_name="mistral-small-3.1") == 0
    assert "cache_usage_perc" not in text
