"""Operations-test helpers: a PacedEngine app in-process (httpx ASGI) or as a real server process."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.app import create_app
from server.config import Settings
from tests.conftest import LOOPBACK, LiveServer, free_port, launch
from tests.ops.paced_engine import PacedEngine

SCRIPT = Path(__file__).with_name("scripted_server.py")


def ops_settings(**overrides: Any) -> Settings:
    return Settings(host=LOOPBACK, port=0, **overrides)


def start_scripted_server(tmp_dir: Path, env_overrides: dict[str, str] | None = None,
                          ready_timeout: float = 60.0, ready_path: str = "/ready") -> LiveServer:
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MSSERVE_", "OPS_"))}
    # Durable state (batches, spend) under the test's folder, never in the user's home.
    env = {**clean, "MSSERVE_LOG_LEVEL": "info", "MSSERVE_STATE_DIR": str(tmp_dir / "state"), **(env_overrides or {})}
    return launch([sys.executable, str(SCRIPT), str(port)], tmp_dir, env, port=port, ready_timeout=ready_timeout,
                  ready_path=ready_path)


def log_lines(server: LiveServer) -> list[dict[str, Any]]:
    """The JSON access-log lines the server wrote (other log lines are skipped)."""
    out = []
    for line in server.log().splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def metric(text: str, name: str, **labels: str) -> float | None:
    """One sample's value from Prometheus text, or None."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, label_text = head.partition("{")
        if sample != name:
            continue
        found = dict(item.split("=", 1) for item in label_text.rstrip("}").split(",") if "=" in item)
        if all(found.get(k, "").strip('"') == v for k, v in labels.items()):
            return float(value)
    return None


@pytest.fixture
def paced_engine() -> PacedEngine:
    return PacedEngine(chunks=4)


@pytest.fixture
def make_client(paced_engine: PacedEngine) -> Iterator[Any]:
    """make_client(**settings) -> an httpx.AsyncClient on an in-process app (no lifespan: engine marked ready)."""
    clients: list[httpx.AsyncClient] = []

    def make(**overrides: Any) -> httpx.AsyncClient:
        app = create_app(ops_settings(**overrides), engine=paced_engine)
        paced_engine.ready = True
        # A loopback Host: the default Host allow-list of a server bound to 127.0.0.1.
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8000")
        client.app = app  # type: ignore[attr-defined]
        clients.append(client)
        return client

    yield make


CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
