"""Behind a real vllm-router (PyPI ``vllm-router``, the Rust load balancer; dev extra): two local replicas of
``msserve serve --profile tiny-mistral3`` on loopback, balanced round robin.

The router adds vLLM's (and SGLang's) request fields to every body it forwards; they must be accepted.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.conformance.schema import assert_valid
from tests.conftest import LOOPBACK, LiveServer, free_port, start_server, stop_server

MODEL = "tiny-mistral3"
REQUESTS = 6


@pytest.fixture(scope="module")
def replicas(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LiveServer]]:
    folder = tmp_path_factory.mktemp("replicas")
    with ThreadPoolExecutor(2) as pool:  # both load at once: half the wait
        futures = [pool.submit(start_server, folder) for _ in range(2)]
        started = [future.result() for future in futures]
    yield started
    for server in started:
        stop_server(server)


@pytest.fixture(scope="module")
def router(replicas: list[LiveServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if importlib.util.find_spec("vllm_router") is None:
        pytest.fail(f"vllm-router is not installed in {sys.executable}: pip install -e '.[dev]'")
    port = free_port()
    log_path = tmp_path_factory.mktemp("router") / "router.log"
    command = [
        sys.executable,
        "-m",
        "vllm_router.launch_router",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--policy",
        "round_robin",
        "--worker-urls",
        *(server.base_url for server in replicas),
        "--prometheus-host",
        LOOPBACK,
        "--prometheus-port",
        str(free_port()),
        "--health-check-endpoint",
        "/ready",
        "--disable-retries",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://{LOOPBACK}:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"vllm-router exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"vllm-router not up after 60 s:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def chat_requests_served(server: LiveServer) -> int:
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith('msserve_requests_total{endpoint="/v1/chat/completions"') and 'status="200"' in line
        )
    )


def test_requests_through_vllm_router_succeed_on_both_replicas(router: str, replicas: list[LiveServer]) -> None:
    before = [chat_requests_served(server) for server in replicas]
    with openai.OpenAI(base_url=f"{router}/v1", api_key="unused", max_retries=0, timeout=120) as client:
        for index in range(REQUESTS):
            raw = client.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": f"question {index}"}], max_tokens=3
            )
            assert raw.http_response.status_code == 200
            assert_valid("CreateChatCompletionResponse", raw.http_response.json())
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "stream it"}], max_tokens=3, stream=True
        )
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    served = [chat_requests_served(server) - start for server, start in zip(replicas, before, strict=True)]
    assert sum(served) == REQUESTS + 1 and min(served) >= REQUESTS // 2  # round robin: both took their share
