"""A batch survives kill -9 and SIGTERM mid-run: after a restart it resumes, with no line lost or answered twice."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from tests.conftest import LiveServer, start_server, stop_server

LINES = 24
ENV = {"MSSERVE_BATCH_CONCURRENCY": "1"}


def submit(api: OpenAI) -> str:
    lines = [{"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"messages": [{"role": "user", "content": f"count to {i}"}], "max_tokens": 24}}
             for i in range(LINES)]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = api.files.create(file=("in.jsonl", data), purpose="batch")
    return api.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                              completion_window="24h").id


def wait_for(api: OpenAI, batch_id: str, done: int) -> Any:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        batch = api.batches.retrieve(batch_id)
        if batch.request_counts.completed >= done or batch.status == "completed":
            return batch
        time.sleep(0.05)
    raise AssertionError(f"batch {batch_id} did not reach {done} lines")


def api_for(server: LiveServer) -> OpenAI:
    return OpenAI(base_url=server.v1, api_key="x", max_retries=0, timeout=60)


@pytest.mark.parametrize("how", ["kill", "term"])
def test_resumes_after_a_stop_mid_batch(how: str, tiny_model: Path, tmp_path: Path) -> None:
    server = start_server(tmp_path, ENV)
    try:
        with api_for(server) as api:
            batch_id = submit(api)
            before = wait_for(api, batch_id, 3)
        assert before.status == "in_progress" and before.request_counts.completed < LINES, "too fast to interrupt"
        if how == "kill":
            server.process.send_signal(signal.SIGKILL)
            assert server.process.wait(timeout=30) == -signal.SIGKILL
        else:
            stop_server(server)  # SIGTERM: stop taking lines, drain, exit 0
            assert server.process.returncode == 0, server.log()
    finally:
        stop_server(server)

    restarted = start_server(tmp_path, ENV)  # the same MSSERVE_STATE_DIR
    api = api_for(restarted)
    try:
        resumed = api.batches.retrieve(batch_id)
        assert resumed.request_counts.completed >= before.request_counts.completed  # nothing done was forgotten
        done = wait_for(api, batch_id, LINES)
        deadline = time.monotonic() + 60
        while done.status != "completed" and time.monotonic() < deadline:
            time.sleep(0.1)
            done = api.batches.retrieve(batch_id)
        assert done.status == "completed"
        assert (done.request_counts.completed, done.request_counts.failed) == (LINES, 0)
        output = [json.loads(line) for line in api.files.content(done.output_file_id).text.splitlines()]
        ids = [line["custom_id"] for line in output]
        assert ids == [f"line-{i}" for i in range(LINES)]  # every line, once, in input order
        assert len({line["response"]["request_id"] for line in output}) == LINES
    finally:
        api.close()
        stop_server(restarted)
