"""The serving process hands the GIL over to worker threads every millisecond (Python's default is 5 ms)."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from server import serving
from server.config import Settings, load_settings


@pytest.fixture(autouse=True)
def _restore_process_state() -> Iterator[None]:
    before = sys.getswitchinterval()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    sys.setswitchinterval(before)
    for sig, handler in handlers.items():  # serve_until_signal() installs the server's own
        signal.signal(sig, handler)


def test_serve_applies_the_configured_interval_before_uvicorn_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []
    monkeypatch.setattr(serving.DrainingServer, "run", lambda self, sockets=None: seen.append(sys.getswitchinterval()))
    sys.setswitchinterval(0.005)
    assert serving.serve_until_signal(FastAPI(), Settings(profile="tiny-mistral3")) is None
    assert seen == [pytest.approx(0.001)]  # the default, 1 ms
    serving.serve_until_signal(FastAPI(), Settings(profile="tiny-mistral3", gil_switch_interval_ms=2.5))
    assert seen[-1] == pytest.approx(0.0025)


def test_interval_comes_from_the_environment_and_must_be_positive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSSERVE_GIL_SWITCH_INTERVAL_MS", "0.5")
    assert load_settings().gil_switch_interval_ms == 0.5
    for bad in ("0", "-1", "1000"):
        monkeypatch.setenv("MSSERVE_GIL_SWITCH_INTERVAL_MS", bad)
        with pytest.raises(ValidationError):
            load_settings()
