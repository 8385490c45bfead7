"""`msserve caption --batch`: submit the images through the Batch API and follow the batch with a progress bar.

The images not yet captioned in the output file go up as one JSONL input file per batch (data: URLs for local
files, the URL itself otherwise), within the server's caps. The batch ids and what each line is are kept in
``<out>.batches.json`` until the results are written, so an interrupted run follows the same batches on the
next start instead of submitting the images again. Result lines have the format of the client-side loop.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import time
from pathlib import Path
from typing import Any

import httpx
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from server.cli.caption import _typed, already_done

MAX_LINES = 50_000
MAX_BYTES = 150 * 1024 * 1024  # under OpenAI's (and our default) 200 MB per file, with room for JSON framing
FINAL = ("completed", "failed", "cancelled", "expired")


def caption_with_batches(sources: list[str], *, server: str, out: Path, options: dict[str, Any],
                         api_key: str | None = None, poll_s: float = 1.0, show_progress: bool = True,
                         timeout: float = 600.0) -> tuple[int, int]:
    """Caption every source not yet in ``out`` through the Batch API; returns (captioned, failed)."""
    state_path = out.with_name(out.name + ".batches.json")
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    body_options = _typed({key: str(value) for key, value in options.items() if value is not None})
    out.parent.mkdir(parents=True, exist_ok=True)
    with httpx.Client(base_url=server.rstrip("/"), headers=headers, timeout=timeout) as client:
        if state_path.exists():
            pending = json.loads(state_path.read_text())  # an earlier run's batches: follow them, submit nothing
        else:
            todo = [source for source in sources if source not in already_done(out)]
            pending = [_submit(client, chunk, body_options) for chunk in _chunks(todo, body_options)]
            state_path.write_text(json.dumps(pending))
        batches = _follow(client, [entry["batch_id"] for entry in pending], poll_s, show_progress)
        ok = failed = 0
        with out.open("a") as sink:
            for entry, batch in zip(pending, batches, strict=True):
                for record in _records(client, batch, entry["sources"]):
                    sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                    ok, failed = (ok + 1, failed) if "caption" in record else (ok, failed + 1)
    state_path.unlink()
    return ok, failed


def _line(index: int, source: str, options: dict[str, Any]) -> str:
    if source.startswith(("http://", "https://", "data:")):
        url = source
    else:
        path = Path(source)
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        url = f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"
    return json.dumps({"custom_id": str(index), "method": "POST", "url": "/v1/captions",
                       "body": {"image_urls": [url], **options}})


def _chunks(sources: list[str], options: dict[str, Any]) -> list[tuple[list[str], bytes]]:
    chunks: list[tuple[list[str], bytes]] = []
    names: list[str] = []
    lines: list[bytes] = []
    size = 0
    for source in sources:
        line = (_line(len(names), source, options) + "\n").encode()
        if names and (len(names) >= MAX_LINES or size + len(line) > MAX_BYTES):
            chunks.append((names, b"".join(lines)))
            names, lines, size = [], [], 0
            line = (_line(0, source, options) + "\n").encode()
        names.append(source)
        lines.append(line)
        size += len(line)
    if names:
        chunks.append((names, b"".join(lines)))
    return chunks


def _submit(client: httpx.Client, chunk: tuple[list[str], bytes], options: dict[str, Any]) -> dict[str, Any]:
    names, data = chunk
    uploaded = _ok(client.post("/v1/files", data={"purpose": "batch"},
                               files={"file": ("captions.jsonl", data, "application/jsonl")}))
    batch = _ok(client.post("/v1/batches", json={"input_file_id": uploaded["id"], "endpoint": "/v1/captions",
                                                 "completion_window": "24h"}))
    return {"batch_id": batch["id"], "sources": names}


def _follow(client: httpx.Client, batch_ids: list[str], poll_s: float, show_progress: bool) -> list[dict[str, Any]]:
    progress = Progress(TextColumn("captioning (batch)"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        disable=not show_progress)
    with progress:
        task = progress.add_task("captions", total=None)
        while True:
            batches = [_ok(client.get(f"/v1/batches/{batch_id}")) for batch_id in batch_ids]
            counts = [batch["request_counts"] for batch in batches]
            progress.update(task, total=sum(c["total"] for c in counts) or None,
                            completed=sum(c["completed"] + c["failed"] for c in counts))
            if all(batch["status"] in FINAL for batch in batches):
                return batches
            time.sleep(poll_s)


def _records(client: httpx.Client, batch: dict[str, Any], sources: list[str]) -> list[dict[str, Any]]:
    if batch["status"] == "failed":
        error = (batch.get("errors") or {}).get("data") or [{"message": "the batch failed", "code": "batch_failed"}]
        return [{"source": source, "error": error[0]} for source in sources]
    records: dict[int, dict[str, Any]] = {}
    for key in ("output_file_id", "error_file_id"):
        if batch.get(key):
            response = client.get(f"/v1/files/{batch[key]}/content")
            response.raise_for_status()
            for text in response.text.splitlines():
                line = json.loads(text)
                index = int(line["custom_id"])
                records[index] = _record(sources[index], line)
    for index, source in enumerate(sources):  # cancelled or expired before their turn
        records.setdefault(index, {"source": source, "error": {"message": f"batch {batch['status']}",
                                                               "code": f"batch_{batch['status']}"}})
    return [records[index] for index in sorted(records)]


def _record(source: str, line: dict[str, Any]) -> dict[str, Any]:
    response = line.get("response")
    if response is None or response["status_code"] != 200:
        error = (response or {}).get("body", {}).get("error") if response else line.get("error")
        return {"source": source, "status": response["status_code"] if response else None, "error": error}
    item = response["body"]["data"][0]
    return {"source": source, "caption": item["caption"], "model": item["model"], "tier": item["tier"],
            "reason": item["reason"], "usage": item["usage"]}


def _ok(response: httpx.Response) -> dict[str, Any]:
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.method} {response.request.url.path}: {response.status_code} "
                           f"{response.text[:300]}")
    body: dict[str, Any] = response.json()
    return body
