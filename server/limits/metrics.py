"""Counts the key limits keep (refusals, fallbacks to this process), read by a collector at scrape time."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


@dataclass
class KeyLimitStats:
    refusals: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)  # (key, limit)
    shared: bool = False  # a shared store is configured
    shared_up: bool = True  # it answered last time it was asked
    fallbacks: int = 0  # requests counted in this process because the shared store did not answer


class KeyLimitsCollector(Collector):
    def __init__(self, stats: KeyLimitStats) -> None:
        self.stats = stats

    def describe(self) -> list[Any]:
        return []  # values are read at scrape time

    def collect(self) -> Iterator[Any]:
        refusals = CounterMetricFamily("msserve_key_limit_refusals", "Requests refused by a per-key limit (429)",
                                       labels=["key", "limit"])
        for (key, limit), count in sorted(self.stats.refusals.items()):
            refusals.add_metric([key, limit], count)
        yield refusals
        if self.stats.shared:
            yield GaugeMetricFamily("msserve_key_limits_shared_up",
                                    "1 while the per-key limits are counted in Redis, 0 while this replica "
                                    "counts them alone", value=int(self.stats.shared_up))
            yield CounterMetricFamily("msserve_key_limits_fallbacks",
                                      "Requests whose per-key limits were counted in this process (Redis down)",
                                      value=self.stats.fallbacks)
