"""The Files and Batch APIs' responses against OpenAI's schemas (OpenAIFile, Batch, their lists, the deletion).

OpenAI defines no feedback endpoint, so POST /v1/feedback (204, no body) has nothing to be checked against.
"""

from __future__ import annotations

import json
import time

import httpx

from tests.conformance.schema import assert_valid
from tests.conformance.test_openai_schema import COMPLETION

LINE = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}


def _lines(prefix: str, count: int) -> list[dict[str, object]]:
    return [
        {"custom_id": f"{prefix}-{i}", "method": "POST", "url": "/v1/chat/completions", "body": LINE}
        for i in range(count)
    ]


def _upload(http: httpx.Client, lines: list[dict[str, object]]) -> dict[str, object]:
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    response = http.post("/v1/files", files={"file": ("input.jsonl", content)}, data={"purpose": "batch"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert_valid("OpenAIFile", body)
    return body


def _batch(http: httpx.Client, file_id: object) -> dict[str, object]:
    response = http.post(
        "/v1/batches",
        json={"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert_valid("Batch", body)
    return body


def test_files_and_batches_answer_in_openais_shapes(http: httpx.Client) -> None:
    uploaded = _upload(http, _lines("line", 2))
    assert_valid("OpenAIFile", http.get(f"/v1/files/{uploaded['id']}").json())
    assert_valid("ListFilesResponse", http.get("/v1/files").json())
    batch = _batch(http, uploaded["id"])
    for _ in range(600):  # bounded: 2 short lines on the tiny model take seconds
        batch = http.get(f"/v1/batches/{batch['id']}").json()
        assert_valid("Batch", batch)  # every status on the way
        if batch["status"] in ("completed", "failed", "expired", "cancelled"):
            break
        time.sleep(0.2)
    assert batch["status"] == "completed", batch
    assert_valid("ListBatchesResponse", http.get("/v1/batches").json())
    output = http.get(f"/v1/files/{batch['output_file_id']}/content").text.splitlines()
    assert len(output) == 2
    for line in output:
        result = json.loads(line)
        assert result["response"]["status_code"] == 200
        assert_valid(COMPLETION, result["response"]["body"])  # a line's body is what the live endpoint returns
    deleted = http.delete(f"/v1/files/{uploaded['id']}")
    assert deleted.status_code == 200
    assert_valid("DeleteFileResponse", deleted.json())


def test_a_cancelled_batch_in_openais_shape(http: httpx.Client) -> None:
    batch = _batch(http, _upload(http, _lines("c", 20))["id"])
    cancelled = http.post(f"/v1/batches/{batch['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert_valid("Batch", cancelled.json())
    assert cancelled.json()["status"] in ("cancelling", "cancelled")
