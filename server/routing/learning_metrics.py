"""Prometheus metrics of router learning, read at scrape time from the learning service's counters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from server.routing.shadow import LearningService


class LearningCollector(Collector):
    def __init__(self, service: LearningService) -> None:
        self.service = service

    def describe(self) -> list[Any]:
        return []  # dynamic values: keep the registry from calling collect() at registration

    def collect(self) -> Iterator[Any]:
        c = self.service.counters
        shadow = CounterMetricFamily(
            "msserve_router_shadow_calls",
            "Shadow calls to Azure for locally answered requests, by result",
            labels=["result"],
        )
        shadow.add_metric(["answered"], c.shadow_calls)
        shadow.add_metric(["failed"], c.shadow_failed)
        for why, count in c.shadow_skipped.items():
            shadow.add_metric([f"skipped_{why}"], count)
        yield shadow
        verdicts = CounterMetricFamily(
            "msserve_router_judge_verdicts", "Judge verdicts: did escalating help?", labels=["verdict"]
        )
        for verdict, count in c.verdicts.items():
            verdicts.add_metric([verdict], count)
        yield verdicts
        yield CounterMetricFamily("msserve_router_judge_failures", "Judgements skipped or failed", value=c.judge_failed)
        yield CounterMetricFamily("msserve_router_outcomes_stored", "Outcome rows stored", value=c.stored)
        quality = GaugeMetricFamily(
            "msserve_router_estimated_quality",
            "Estimated share of judged requests where the current router picks the better answer, at its threshold",
        )
        if c.estimated_quality is not None:
            quality.add_metric([], c.estimated_quality)
        yield quality
        version = self.service.learned_version
        yield GaugeMetricFamily(
            "msserve_router_learned_version",
            "Learned weights version in use (0: the shipped prior)",
            value=version or 0,
        )
