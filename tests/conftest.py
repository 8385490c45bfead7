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


def wait_ready(server: LiveServer, *, timeout: float, ready_path: str = "/ready") -> bool:
    """True once GET ready_path says 200; False when the process exits first or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.process.poll() is None:
        try:
            if httpx.get(f"{server.base_url}{ready_path}", timeout=2).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    return False


def launch(command: list[str], tmp_dir: Path, env: dict[str, str], *, port: int, ready_timeout: float,
           ready_path: str = "/ready") -> LiveServer:
    """Start a server process and wait until GET ready_path says 200 (or fail with its log)."""
    server = spawn(command, tmp_dir, env, port=port)
    if wait_ready(server, timeout=ready_timeout, ready_path=ready_path):
        return server
    if server.process.poll() is not None:
        raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()}")
    stop_server(server)
    raise RuntimeError(f"server not ready after {ready_timeout}s:\n{server.log()}")


def start_server(tmp_dir: Path, env_overrides: dict[str, str] | None = None, *, profile: str = "tiny-mistral3",
                 ready_timeout: float = 240.0) -> LiveServer:
    """A real `msserve serve` process with the given profile and MSSERVE_* overrides."""
    port = free_port()
    # Each server keeps its state (spend, router outcomes, learned weights) in its own folder, never the user's.
    state = str(tmp_dir / "state")
    env = {**os.environ, "MSSERVE_LOG_LEVEL": "info", "MSSERVE_STATE_DIR": state, **(env_overrides or {})}
    return launch(serve_command(profile, port), tmp_dir, env, port=port, ready_timeout=ready_timeout)


def stop_server(server: LiveServer) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


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


@pytest.fixture(scope="session")
def live_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    yield from served(tmp_path_factory.mktemp("live"))


@pytest.fixture(scope="session")
def openai_client(live_server: LiveServer):  # type: ignore[no-untyped-def]
    yield from sdk_client(live_server, timeout=120)
