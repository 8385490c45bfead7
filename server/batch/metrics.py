"""Batch metrics, read at scrape time: lines answered and failed since start, lines queued, lines running."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from server.api.deps import Services


class BatchCollector(Collector):
    def __init__(self, services: Services) -> None:
        self.services = services

    def describe(self) -> list[Any]:
        return []  # dynamic values: the registry must not collect at registration

    def collect(self) -> Iterator[Any]:
        service = self.services.batches
        if service is None:
            return
        worker = service.worker
        yield CounterMetricFamily("msserve_batch_lines_done", "Batch lines answered with a 2xx since start",
                                  value=worker.lines_done)
        yield CounterMetricFamily("msserve_batch_lines_failed", "Batch lines answered with an error since start",
                                  value=worker.lines_failed)
        yield GaugeMetricFamily("msserve_batch_lines_queued", "Lines of in-progress batches not answered yet",
                                value=service.store.queued_count())
        yield GaugeMetricFamily("msserve_batch_lines_running", "Batch lines being answered now", value=worker.running)
