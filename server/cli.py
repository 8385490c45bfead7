"""The `msserve` command line."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from server.bench_cli import app as bench_app
from server.config import ModelProfile, Settings, list_profiles, load_profile, load_settings
from server.errors import MSServeError
from server.routing.cli import app as router_app
from server.sdk_logging import quiet_sdk_loggers

app = typer.Typer(
    help="mistral-small-server: serve Mistral Small 3.1 with an OpenAI-compatible API.", no_args_is_help=True
)
app.add_typer(router_app, name="router", help="Score, evaluate and calibrate the escalation router.")
app.add_typer(bench_app, name="bench", help="Run the benchmarks (scripts/bench_*.py) of a source checkout.")
console = Console(stderr=True)

AUTO = "auto"
GPU_PROFILE = "mistral-small-3.1"
CPU_PROFILE = "tiny-mistral3"


def cuda_available() -> bool:
    """True when an NVIDIA GPU is usable. Checked without importing torch when nvidia-smi settles it."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        result = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and "GPU" in result.stdout


def pick_profile(name: str) -> str:
    if name != AUTO:
        return name
    return GPU_PROFILE if cuda_available() else CPU_PROFILE


def demo_banner(profile: ModelProfile, settings: Settings) -> Panel:
    text = (
        f"[bold]Serving the tiny demo model [cyan]{profile.model_name}[/cyan] on CPU.[/bold]\n"
        "Its weights are random: [bold red]answers are meaningless[/bold red]. It exists to exercise the real "
        "tokenizer, image pipeline and engine without a GPU.\n\n"
        "To serve Mistral Small 3.1 for real, on a machine with an NVIDIA GPU:\n"
        "  [green]pip install 'mistral-small-server\\[vllm]'[/green] (or -e '.\\[vllm]' in a checkout), then\n"
        "  [green]HF_TOKEN=... msserve serve --profile mistral-small-3.1[/green]\n"
        "  (or -fp8 / -w4a16 for 40 GB / 24 GB GPUs; `msserve profiles` lists them)\n\n"
        f"API: http://{settings.host}:{settings.port}/v1   model: {profile.model_name}"
    )
    return Panel(text, title="mistral-small-server: DEMO MODE", border_style="yellow")


def prepare_built_model(profile: ModelProfile) -> None:
    """Build a profile's own model (the demo's) before serving, once, saying so: a wheel install has none yet."""
    from server import demo_model
    from server.hub import ModelUnavailableError, build_local_model

    target = profile.local_path()
    if profile.build_script is None or target is None:
        return
    if demo_model.is_current(target, native=profile.format == "mistral"):
        return
    if not demo_model.can_build():
        console.print("[red]error:[/red] building the demo model needs torch and transformers: "
                      "pip install 'mistral-small-server\\[hf]'", soft_wrap=True)
        raise typer.Exit(2)
    # soft_wrap: one line whatever the terminal's width, so the path can be copied (and found in logs)
    console.print(f"building the demo model {profile.name} into {target} (first use only; about a minute)...",
                  soft_wrap=True)
    try:
        build_local_model(profile, target)
    except ModelUnavailableError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"demo model ready: {target}", soft_wrap=True)


@app.command()
def serve(
    profile: Annotated[str | None, typer.Option(help="model profile (see `msserve profiles`), or 'auto'")] = None,
    host: Annotated[str | None, typer.Option(help="address to bind")] = None,
    port: Annotated[int | None, typer.Option(help="port to bind")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML settings file")] = None,
) -> None:
    """Serve a model profile over the OpenAI API."""
    from server.app import create_app
    from server.shutdown import serve as serve_until_signal

    try:
        settings = load_settings(config, host=host, port=port, profile=profile)
    except ValueError as exc:  # pydantic's ValidationError too: a setting that must not be served with
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    settings = settings.model_copy(update={"profile": pick_profile(settings.profile)})
    try:
        chosen = load_profile(settings.profile, settings.profiles_dir)
    except MSServeError as exc:
        console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from exc
    if chosen.requires_gpu and not cuda_available():
        console.print(
            f"[red]error:[/red] profile {chosen.name} needs an NVIDIA GPU and none was found. "
            f"Use --profile {CPU_PROFILE} for the CPU demo."
        )
        raise typer.Exit(2)
    prepare_built_model(chosen)
    try:
        application = create_app(settings, profile=chosen)
    except MSServeError as exc:
        console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from exc
    except ValueError as exc:  # e.g. MSSERVE_API_KEYS that parse to nothing: never serve without the keys asked for
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    if chosen.demo:
        console.print(demo_banner(chosen, settings))
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_sdk_loggers(settings.log_contents)  # debug-level SDK logs would carry request bodies
    failure = serve_until_signal(application, settings)
    if failure:
        console.print(f"[red]error:[/red] the {chosen.name} engine failed to start: {failure}")
        raise typer.Exit(1)


@app.command()
def profiles(
    profiles_dir: Annotated[Path | None, typer.Option(help="your own profiles folder (listed first)")] = None,
) -> None:
    """List the model profiles."""
    folder = profiles_dir or Settings().profiles_dir
    table = Table(title="model profiles")
    for column in ("profile", "engine", "model", "quantization", "context", "GPU", "description"):
        table.add_column(column, no_wrap=column in ("profile", "engine"), overflow="fold")
    for item in list_profiles(folder):
        gpu = f"{item.gpu_memory_gib:g} GB" if item.gpu_memory_gib else ("required" if item.requires_gpu else "no")
        table.add_row(
            item.name, item.engine, item.model, item.quantization or "-", str(item.max_model_len), gpu, item.description
        )
    Console().print(table)


@app.command()
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
    import asyncio

    from server.caption_cli import caption_all, find_images

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
        import httpx

        from server.caption_batch import caption_with_batches

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


@app.command()
def download(
    profile: Annotated[str, typer.Option(help="profile whose weights to fetch")] = GPU_PROFILE,
    token: Annotated[str | None, typer.Option(envvar="HF_TOKEN", help="Hugging Face token (gated models)")] = None,
) -> None:
    """Download a profile's weights from the Hugging Face hub (resumable, with progress)."""
    from server.hub import ModelUnavailableError, resolve_model_dir

    chosen = load_profile(profile, Settings().profiles_dir)
    try:
        path = resolve_model_dir(chosen, token=token)
    except ModelUnavailableError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    revision = path.name if path.parent.name == "snapshots" else "local"
    console.print(f"{chosen.name}: weights in {path} (revision {revision}; pin it with `revision:` in the profile)")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
