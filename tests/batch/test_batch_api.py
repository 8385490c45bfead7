"""The Batch API through the unchanged openai SDK, over real HTTP, against the tiny model (both endpoints)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import REPO, LiveServer, start_server, stop_server
from tests.images import image_bytes, jpeg_url

KEYS = {"alice": "sk-alice-test-0123456789", "bob": "sk-bob-test-0123456789"}
MAX_FILE = 64 * 1024
MAX_DISK = 512 * 1024
MAX_LINES = 40


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("batch"), {
        "MSSERVE_API_KEYS": ",".join(f"{name}:{key}" for name, key in KEYS.items()),
        "MSSERVE_BATCH_MAX_FILE_BYTES": str(MAX_FILE),
        "MSSERVE_BATCH_MAX_DISK_BYTES": str(MAX_DISK),
        "MSSERVE_BATCH_MAX_LINES": str(MAX_LINES),
        "MSSERVE_BATCH_CONCURRENCY": "2",
        "MSSERVE_MAX_REQUEST_BYTES": str(16 * 1024),  # uploads are not held to it: their own cap applies
    })
    yield live
    for api in _CLIENTS.values():
        api.close()
    _CLIENTS.clear()
    stop_server(live)


_CLIENTS: dict[tuple[str, str], OpenAI] = {}


def client(server: LiveServer, name: str = "alice") -> OpenAI:
    """One SDK client per key for the module's server, closed with it."""
    key = (server.base_url, name)
    if key not in _CLIENTS:
        _CLIENTS[key] = OpenAI(base_url=server.v1, api_key=KEYS[name], max_retries=0, timeout=60)
    return _CLIENTS[key]


def chat_line(custom_id: str, text: str = "hello", **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": text}], "max_tokens": 4, **body}}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def submit(api: OpenAI, lines: list[dict[str, Any]], endpoint: str = "/v1/chat/completions") -> Any:
    uploaded = api.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
    return api.batches.create(input_file_id=uploaded.id, endpoint=endpoint,  # type: ignore[arg-type]
                              completion_window="24h", metadata={"job": "test"})


def follow(api: OpenAI, batch_id: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = api.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} not finished: {batch}")


def lines_of(api: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in api.files.content(file_id).text.splitlines()]


def test_chat_batch_round_trip_with_a_failing_line(server: LiveServer) -> None:
    api = client(server)
    bad_body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 4, "frobnicate": 1}
    lines = [chat_line("a"), chat_line("b", "what is 2+2?"),
             {"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions", "body": bad_body}]
    batch = follow(api, submit(api, lines).id)
    assert batch.status == "completed"
    assert batch.metadata == {"job": "test"}
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (3, 2, 1)
    assert batch.in_progress_at is not None and batch.finalizing_at is not None and batch.completed_at is not None

    output = lines_of(api, batch.output_file_id)
    assert [line["custom_id"] for line in output] == ["a", "b"]
    for line in output:
        response = line["response"]
        assert response["status_code"] == 200 and line["error"] is None
        assert response["body"]["object"] == "chat.completion"
        assert response["body"]["usage"]["completion_tokens"] <= 4
        assert response["msserve"]["tier"] == "local" and response["msserve"]["reason"]

    errors = lines_of(api, batch.error_file_id)
    assert [line["custom_id"] for line in errors] == ["bad"]
    live = httpx.post(f"{server.v1}/chat/completions", json=bad_body,
                      headers={"authorization": f"Bearer {KEYS['alice']}"})
    assert errors[0]["response"]["status_code"] == live.status_code == 400
    assert errors[0]["response"]["body"] == live.json()  # exactly what the live endpoint says


def test_metrics_count_batch_lines(server: LiveServer) -> None:
    api = client(server)
    follow(api, submit(api, [chat_line("m1"), chat_line("m2", max_tokens=0)]).id)  # max_tokens 0: a 400
    text = httpx.get(f"{server.base_url}/metrics", headers={"authorization": f"Bearer {KEYS['alice']}"}).text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line.startswith("msserve_batch_lines")}
    assert values["msserve_batch_lines_done_total"] >= 1 and values["msserve_batch_lines_failed_total"] >= 1
    assert values["msserve_batch_lines_queued"] >= 0 and "msserve_batch_lines_running" in values


def test_caption_batch_and_the_same_ssrf_guard(server: LiveServer) -> None:
    api = client(server)
    blocked = {"image_urls": ["https://127.0.0.1:9/cat.jpg"], "max_tokens": 4}
    lines = [
        {"custom_id": "img", "method": "POST", "url": "/v1/captions",
         "body": {"image_urls": [jpeg_url((64, 48))], "style": "short", "max_tokens": 4}},
        {"custom_id": "ssrf", "method": "POST", "url": "/v1/captions", "body": blocked},
    ]
    batch = follow(api, submit(api, lines, "/v1/captions").id)
    assert batch.status == "completed" and batch.request_counts.completed == 1
    (caption,) = lines_of(api, batch.output_file_id)
    assert caption["custom_id"] == "img"
    body = caption["response"]["body"]
    assert body["object"] == "list" and body["data"][0]["usage"]["completion_tokens"] <= 4
    assert caption["response"]["msserve"]["tier"] == body["data"][0]["tier"]
    (refused,) = lines_of(api, batch.error_file_id)
    live = httpx.post(f"{server.v1}/captions", json=blocked, headers={"authorization": f"Bearer {KEYS['alice']}"})
    assert refused["response"]["status_code"] == live.status_code
    assert refused["response"]["body"] == live.json()


def test_cancel(server: LiveServer) -> None:
    api = client(server)
    lines = [chat_line(f"c{i}", max_tokens=32) for i in range(MAX_LINES)]
    batch = submit(api, lines)
    deadline = time.monotonic() + 60
    while api.batches.retrieve(batch.id).request_counts.completed < 1:  # cancel mid-run
        assert time.monotonic() < deadline, "no line answered"
        time.sleep(0.05)
    cancelling = api.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at is not None
    done = follow(api, batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    counts = done.request_counts
    assert counts.total == len(lines)
    assert counts.completed >= 1, "cancelled before any line was answered"
    assert counts.completed < counts.total, "every line ran: the cancel stopped nothing"
    output = lines_of(api, done.output_file_id)
    answered = [line["custom_id"] for line in output]
    assert len(answered) == counts.completed and len(set(answered)) == len(answered)
    assert set(answered) <= {line["custom_id"] for line in lines}  # only submitted lines, each once
    assert api.batches.cancel(batch.id).status == "cancelled"  # cancelling again changes nothing

    finished = follow(api, submit(api, [chat_line("z")]).id)
    with pytest.raises(openai.ConflictError):
        api.batches.cancel(finished.id)


def test_list_and_delete(server: LiveServer) -> None:
    api = client(server)
    first = submit(api, [chat_line("x")])
    second = submit(api, [chat_line("y")])
    page = api.batches.list(limit=1)
    assert [b.id for b in page.data] == [second.id] and page.has_more
    assert api.batches.list(limit=1, after=second.id).data[0].id == first.id
    file_ids = [f.id for f in api.files.list(purpose="batch")]
    assert second.input_file_id in file_ids
    deleted = api.files.delete(second.input_file_id)
    assert deleted.deleted and deleted.id == second.input_file_id
    with pytest.raises(openai.NotFoundError):
        api.files.retrieve(second.input_file_id)
    follow(api, first.id)
    follow(api, second.id)


def test_another_key_gets_404(server: LiveServer) -> None:
    alice, bob = client(server, "alice"), client(server, "bob")
    batch = follow(alice, submit(alice, [chat_line("mine")]).id)
    for call in (lambda: bob.files.retrieve(batch.input_file_id), lambda: bob.files.content(batch.output_file_id),
                 lambda: bob.files.delete(batch.input_file_id), lambda: bob.batches.retrieve(batch.id),
                 lambda: bob.batches.cancel(batch.id),
                 lambda: bob.batches.create(input_file_id=batch.input_file_id, endpoint="/v1/chat/completions",
                                            completion_window="24h")):
        with pytest.raises(openai.NotFoundError):
            call()
    assert batch.id not in [b.id for b in bob.batches.list()]
    assert batch.input_file_id not in [f.id for f in bob.files.list()]
    assert alice.files.retrieve(batch.input_file_id).id == batch.input_file_id  # still there for its owner


@pytest.mark.parametrize(("lines", "code"), [
    ([chat_line("a"), {**chat_line("b"), "url": "/v1/captions"}], "mismatched_endpoint"),
    ([chat_line("a"), chat_line("a")], "duplicate_custom_id"),
    ([chat_line(f"n{i}") for i in range(MAX_LINES + 1)], "too_many_requests"),
])
def test_bad_input_files_fail_the_batch(server: LiveServer, lines: list[dict[str, Any]], code: str) -> None:
    api = client(server)
    batch = follow(api, submit(api, lines).id)
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.errors is not None and batch.errors.data and batch.errors.data[0].code == code
    assert batch.output_file_id is None


def test_malformed_jsonl_fails_the_batch(server: LiveServer) -> None:
    api = client(server)
    uploaded = api.files.create(file=("bad.jsonl", jsonl([chat_line("a")]) + b"{not json\n"), purpose="batch")
    batch = follow(api, api.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                           completion_window="24h").id)
    assert batch.status == "failed" and batch.errors is not None
    assert (batch.errors.data[0].code, batch.errors.data[0].line) == ("invalid_json_line", 2)


def test_create_refusals(server: LiveServer) -> None:
    api = client(server)
    uploaded = api.files.create(file=("in.jsonl", jsonl([chat_line("a")])), purpose="batch")
    with pytest.raises(openai.BadRequestError):
        api.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                           completion_window="1h")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError):
        api.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        api.batches.create(input_file_id="file-" + "0" * 32, endpoint="/v1/chat/completions",
                           completion_window="24h")
    with pytest.raises(openai.BadRequestError) as too_long:
        api.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
                           metadata={"k": "v" * 513})
    assert too_long.value.param == "metadata"
    with pytest.raises(openai.BadRequestError) as refused:
        api.files.create(file=("in.jsonl", b"{}\n"), purpose="fine-tune")
    assert refused.value.code == "invalid_value"


def test_file_cap_and_disk_cap(server: LiveServer) -> None:
    api = client(server, "bob")
    over_body_limit = jsonl([chat_line(f"long-{i}", "word " * 200) for i in range(30)])
    assert 16 * 1024 < len(over_body_limit) < MAX_FILE
    stored = api.files.create(file=("long.jsonl", over_body_limit), purpose="batch")
    assert stored.bytes == len(over_body_limit)
    assert api.files.content(stored.id).content == over_body_limit
    api.files.delete(stored.id)
    with pytest.raises(openai.APIStatusError) as too_big:
        api.files.create(file=("big.jsonl", b"x" * (MAX_FILE + 1)), purpose="batch")
    assert too_big.value.status_code == 413 and too_big.value.code == "file_too_large"
    kept: list[str] = []
    refused: openai.APIStatusError | None = None
    for _ in range(MAX_DISK // (MAX_FILE // 2) + 2):
        try:
            kept.append(api.files.create(file=("f.jsonl", b"y" * (MAX_FILE // 2)), purpose="batch").id)
        except openai.APIStatusError as exc:
            refused = exc
            break
    assert refused is not None and refused.status_code == 413 and refused.code == "storage_full"
    for file_id in kept:
        api.files.delete(file_id)
    assert api.files.create(file=("f.jsonl", b"y" * (MAX_FILE // 2)), purpose="batch").bytes == MAX_FILE // 2


def test_caption_cli_batch_mode_with_resume(server: LiveServer, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(image_bytes("PNG", (100, 80)))
    (folder / "b.jpg").write_bytes(image_bytes("JPEG", (90, 120)))
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "captions.jsonl"
    command = [sys.executable, "-m", "server", "caption", str(folder), "--batch", "--server", server.base_url,
               "--out", str(out), "--max-tokens", "3", "--api-key", KEYS["alice"]]
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert first.returncode == 1, first.stderr  # one image failed
    records = {Path(r["source"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(records) == {"a.png", "b.jpg", "broken.jpg"}
    assert records["a.png"]["tier"] == "local" and isinstance(records["b.jpg"]["caption"], str)
    assert records["broken.jpg"]["status"] == 415  # as the live endpoint answers a file that is no image
    assert records["broken.jpg"]["error"]["code"] == "image_unsupported_format"
    assert not (tmp_path / "captions.jsonl.batches.json").exists()
    batches_before = len(client(server).batches.list(limit=100).data)
    (folder / "broken.jpg").unlink()
    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "captioned 0, failed 0" in second.stdout + second.stderr  # nothing left to caption: no batch submitted
    assert len(client(server).batches.list(limit=100).data) == batches_before


def test_content_removed_from_disk_is_a_404_not_a_500(server: LiveServer) -> None:
    api = client(server)
    uploaded = api.files.create(file=("in.jsonl", jsonl([chat_line("a")])), purpose="batch")
    stored = server.log_path.parent / "state" / "batch_files" / uploaded.id  # start_server's MSSERVE_STATE_DIR
    assert stored.read_bytes() == jsonl([chat_line("a")])
    stored.unlink()
    with pytest.raises(openai.NotFoundError):
        api.files.content(uploaded.id)


def test_upload_refusals_are_clear_400s(server: LiveServer) -> None:
    auth = {"authorization": f"Bearer {KEYS['alice']}"}
    no_purpose = httpx.post(f"{server.v1}/files", files={"file": ("a.jsonl", b"{}\n")}, headers=auth)
    assert (no_purpose.status_code, no_purpose.json()["error"]["param"]) == (400, "purpose")
    no_file = httpx.post(f"{server.v1}/files", data={"purpose": "batch"}, files={"other": ("a", b"x")}, headers=auth)
    assert (no_file.status_code, no_file.json()["error"]["code"]) == (400, "missing_required_parameter")
    not_multipart = httpx.post(f"{server.v1}/files", json={"purpose": "batch"}, headers=auth)
    assert not_multipart.status_code == 415
    partial = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\npartial'
    cut = httpx.post(f"{server.v1}/files", content=partial,
                     headers={**auth, "content-type": "multipart/form-data; boundary=xyz"})
    assert (cut.status_code, cut.json()["error"]["code"]) == (400, "invalid_multipart")
    no_key = httpx.post(f"{server.v1}/files", data={"purpose": "batch"}, files={"file": ("a.jsonl", b"{}\n")})
    assert no_key.status_code == 401
    stored = server.log_path.parent / "state" / "batch_files"
    assert not [p.name for p in stored.iterdir() if p.name.startswith(".upload-")]  # refused uploads leave nothing
