"""Shared fixtures: the tiny model, and a live server (a real `msserve serve` process on 127.0.0.1)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.redis_server import RedisServer, end_process

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = REPO / "models" / "tiny-mistral3"
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_tiny_model.py"), "--out", str(TINY_MODEL)], check=True)
    return TINY_MODEL


@dataclass
class LiveServer:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def serve_command(profile: str, port: int) -> list[str]:
    return [sys.executable, "-m", "server", "serve", "--profile", profile, "--host", LOOPBACK, "--port", str(port)]


def spawn(
    command: list[str], tmp_dir: Path, env: dict[str, str], *, port: int, log_name: str | None = None
) -> LiveServer:
    """Start a server process on 127.0.0.1:port, its output in tmp_dir (scripts/hostile.py uses this too)."""
    log_path = tmp_dir / (log_name or f"server-{port}.log")
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    return LiveServer(f"http://{LOOPBACK}:{port}", process, log_path)


def _poll_until_200(process: subprocess.Popen[bytes], url: str, *, timeout: float, interval: float) -> bool:
    """True once GET url says 200; False when the process exits first or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(interval)
    return False


def wait_until_up(process: subprocess.Popen[bytes], url: str, log_path: Path, *, timeout: float,
                  interval: float = 0.1) -> None:
    """Poll GET url until it says 200. A process that exits, or a timeout, raises with the process's log."""
    if _poll_until_200(process, url, timeout=timeout, interval=interval):
        return
    log = log_path.read_text(errors="replace")
    if process.poll() is not None:
        raise RuntimeError(f"{process.args!r} exited with {process.returncode}:\n{log}")
    raise RuntimeError(f"{url} not up after {timeout} s:\n{log}")


def wait_ready(server: LiveServer, *, timeout: float, ready_path: str = "/ready") -> bool:
    """True once GET ready_path says 200; False when the process exits first or the time runs out."""
    return _poll_until_200(server.process, f"{server.base_url}{ready_path}", timeout=timeout, interval=0.1)


def launch(command: list[str], tmp_dir: Path, env: dict[str, str], *, port: int, ready_timeout: float,
           ready_path: str = "/ready") -> LiveServer:
    """Start a server process and wait until GET ready_path says 200 (or fail with its log)."""
    server = spawn(command, tmp_dir, env, port=port)
    try:
        wait_until_up(server.process, f"{server.base_url}{ready_path}", server.log_path, timeout=ready_timeout)
    except RuntimeError:
        stop_server(server)
        raise
    return server


def start_server(tmp_dir: Path, env_overrides: dict[str, str] | None = None, *, profile: str = "tiny-mistral3",
                 ready_timeout: float = 240.0) -> LiveServer:
    """A real `msserve serve` process with the given profile and MSSERVE_* overrides."""
    port = free_port()
    # Each server keeps its state (spend, router outcomes, learned weights) in its own folder, never the user's.
    state = str(tmp_dir / "state")
    env = {**os.environ, "MSSERVE_LOG_LEVEL": "info", "MSSERVE_STATE_DIR": state, **(env_overrides or {})}
    return launch(serve_command(profile, port), tmp_dir, env, port=port, ready_timeout=ready_timeout)


def stop_server(server: LiveServer) -> None:
    end_process(server.process, timeout_s=30)


def served(tmp_dir: Path, **options: Any) -> Iterator[LiveServer]:
    """A fixture's body: a live server (start_server's options) for the fixture's scope, stopped after."""
    server = start_server(tmp_dir, **options)
    yield server
    stop_server(server)


def sdk_client(server: LiveServer, timeout: float):  # type: ignore[no-untyped-def]
    """A fixture's body: the openai SDK on a live server, no retries (a test sees every error)."""
    from openai import OpenAI

    with OpenAI(base_url=server.v1, api_key="not-needed", max_retries=0, timeout=timeout) as client:
        yield client


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server of the test's own on a free loopback port (fails, never skips, when not installed)."""
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def live_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    yield from served(tmp_path_factory.mktemp("live"))


@pytest.fixture(scope="session")
def openai_client(live_server: LiveServer):  # type: ignore[no-untyped-def]
    yield from sdk_client(live_server, timeout=120)
