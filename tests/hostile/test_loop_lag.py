"""Event-loop lag: a step that blocks the loop shows in msserve_event_loop_lag_seconds and as a log warning."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from server.app import create_app
from server.config import Settings
from server.loop_lag import LOOP_LAG_BUCKETS, LoopLagMonitor
from tests.conftest import LOOPBACK
from tests.ops.conftest import metric
from tests.ops.paced_engine import PacedEngine


class ScriptedLoop:
    """A clock and a sleep: each sleep 'wakes' late by the next scripted blocked time."""

    def __init__(self, blocked: list[float]) -> None:
        self.now = 1000.0
        self.blocked = blocked

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds + self.blocked.pop(0)


def histogram() -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry()
    return registry, Histogram("msserve_event_loop_lag_seconds", "lag", buckets=LOOP_LAG_BUCKETS, registry=registry)


async def test_a_blocking_step_is_measured_and_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    registry, lag = histogram()
    loop = ScriptedLoop([0.0, 0.004, 0.15, 0.02])
    monitor = LoopLagMonitor(lag, warn_s=0.1, clock=loop.clock, sleep=loop.sleep)
    with caplog.at_level(logging.WARNING, logger="server.loop_lag"):
        samples = [await monitor.sample() for _ in range(4)]
    assert samples == pytest.approx([0.0, 0.004, 0.15, 0.02])
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "150 ms" in warnings[0].getMessage()  # only the step over 100 ms
    text = generate_latest(registry).decode()
    assert metric(text, "msserve_event_loop_lag_seconds_count") == 4
    assert metric(text, "msserve_event_loop_lag_seconds_bucket", le="0.1") == 3
    assert metric(text, "msserve_event_loop_lag_seconds_bucket", le="0.25") == 4
    assert monitor.worst_s == pytest.approx(0.15)


async def test_a_real_blocking_call_on_the_loop_is_detected(caplog: pytest.LogCaptureFixture) -> None:
    _, lag = histogram()
    monitor = LoopLagMonitor(lag, warn_s=0.1)
    with caplog.at_level(logging.WARNING, logger="server.loop_lag"):
        monitor.start()
        await asyncio.sleep(0.05)  # the monitor is asleep, waiting for its next sample
        time.sleep(0.3)  # the point: one step that holds the loop
        await asyncio.sleep(0.1)
        await monitor.stop()
    assert monitor.worst_s > 0.1
    assert any("event loop blocked" in record.getMessage() for record in caplog.records)


async def test_the_app_exports_the_lag_histogram_while_it_runs() -> None:
    engine = PacedEngine()
    app = create_app(Settings(host=LOOPBACK, port=0), engine=engine)
    telemetry = app.state.telemetry
    async with app.router.lifespan_context(app):
        await asyncio.sleep(0.2)
        text = generate_latest(telemetry.registry).decode()
    count = metric(text, "msserve_event_loop_lag_seconds_count")
    assert count is not None and count >= 1
    assert telemetry.lag_monitor._task is None  # stopped with the app
