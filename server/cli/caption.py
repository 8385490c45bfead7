"""`msserve caption`: caption files, folders and URLs through a running server, resumably.

Results go to a JSONL file, one line per image. A rerun skips images that already have a caption
in that file, so an interrupted batch continues where it stopped; failed images are retried.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}
console = Console(stderr=True)


def caption(
    paths: Annotated[list[Path] | None, typer.Argument(help="image files or folders (searched recursively)")] = None,
    url: Annotated[list[str] | None, typer.Option("--url", help="image URL to caption (repeatable)")] = None,
    server: Annotated[str, typer.Option(help="base URL of a running server")] = "http://127.0.0.1:8000",
    out: Annotated[Path, typer.Option(help="JSONL results; images already captioned there are skipped")] = Path(
        "captions.jsonl"
    ),
    style: Annotated[str, typer.Option(help="short, detailed or alt_text")] = "short",
    prompt: Annotated[str | None, typer.Option(help="instruction replacing the built-in one")] = None,
    language: Annotated[str | None, typer.Option(help="language of the captions")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="cap per caption")] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="requests in flight")] = 4,
    api_key: Annotated[str | None, typer.Option(envvar="MSSERVE_API_KEY", help="API key for the server")] = None,
    batch: Annotated[bool, typer.Option("--batch", help="submit through the Batch API and follow it")] = False,
) -> None:
    """Caption images through a running server, with a progress bar and resume."""
    try:
        files = find_images(paths or [])
    except FileNotFoundError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    sources = [str(path) for path in files] + list(url or [])
    if not sources:
        console.print("[red]error:[/red] give image files, folders or --url")
        raise typer.Exit(2)
    options = {"style": style, "prompt": prompt, "language": language, "max_tokens": max_tokens}
    if batch:
        from server.cli.caption_batch import caption_with_batches

        try:
            ok, failed = caption_with_batches(sources, server=server, out=out, options=options, api_key=api_key)
        except (RuntimeError, httpx.HTTPError) as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from exc
    else:
        ok, failed = asyncio.run(
            caption_all(sources, server=server, out=out, options=options, concurrency=concurrency, api_key=api_key)
        )
    console.print(f"captioned {ok}, failed {failed}, results in {out}")
    if failed:
        raise typer.Exit(1)


def find_images(paths: Iterable[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return found


def already_done(out: Path) -> set[str]:
    """Sources with a caption in the output file (lines with an error are retried)."""
    done: set[str] = set()
    if not out.exists():
        return done
    for line in out.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by an interruption
        if "caption" in record and "source" in record:
            done.add(record["source"])
    return done


async def caption_all(
    sources: list[str],
    *,
    server: str,
    out: Path,
    options: dict[str, Any],
    concurrency: int = 4,
    api_key: str | None = None,
    timeout: float = 600.0,
    show_progress: bool = True,
) -> tuple[int, int]:
    """Caption every source not yet in ``out``; returns (captioned, failed)."""
    todo = [source for source in sources if source not in already_done(out)]
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    gate = asyncio.Semaphore(concurrency)
    counts = {"ok": 0, "failed": 0}
    form = {key: str(value) for key, value in options.items() if value is not None}
    out.parent.mkdir(parents=True, exist_ok=True)
    progress = Progress(
        TextColumn("captioning"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), disable=not show_progress
    )
    with out.open("a") as sink, progress:
        task = progress.add_task("captions", total=len(todo))
        async with httpx.AsyncClient(base_url=server, headers=headers, timeout=timeout) as client:

            async def one(source: str) -> None:
                async with gate:
                    record = await _caption_one(client, source, form)
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                sink.flush()  # each finished image is durable at once, for resume
                counts["ok" if "caption" in record else "failed"] += 1
                progress.advance(task)

            await asyncio.gather(*(one(source) for source in todo))
    return counts["ok"], counts["failed"]


async def _caption_one(client: httpx.AsyncClient, source: str, form: dict[str, str]) -> dict[str, Any]:
    try:
        if source.startswith(("http://", "https://", "data:")):
            response = await client.post("/v1/captions", json={"image_urls": [source], **_typed(form)})
        else:
            path = Path(source)
            mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            response = await client.post(
                "/v1/captions", data=form, files={"file": (path.name, path.read_bytes(), mime)}
            )
    except (httpx.HTTPError, OSError) as exc:
        return {"source": source, "error": {"message": str(exc) or type(exc).__name__, "code": "client_error"}}
    if response.status_code != 200:
        try:
            error = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            error = {"message": response.text[:500], "code": f"http_{response.status_code}"}
        return {"source": source, "status": response.status_code, "error": error}
    item = response.json()["data"][0]
    return {
        "source": source,
        "caption": item["caption"],
        "model": item["model"],
        "tier": item["tier"],
        "reason": item["reason"],
        "usage": item["usage"],
    }


def _typed(form: dict[str, str]) -> dict[str, Any]:
    typed: dict[str, Any] = dict(form)
    for key in ("max_tokens",):
        if key in typed:
            typed[key] = int(typed[key])
    if "temperature" in typed:
        typed["temperature"] = float(typed["temperature"])
    return typed
