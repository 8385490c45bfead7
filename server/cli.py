"""The `msserve` command line."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from server.config import ModelProfile, Settings, list_profiles, load_profile, load_settings
from server.errors import MSServeError

app = typer.Typer(help="mistral-small-server: serve Mistral Small 3.1 with an OpenAI-compatible API.",
                  no_args_is_help=True)
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
        "Its weights are random: [bold red]answers are meaningless[/bold red]. It exists to exercise the real\n"
        "tokenizer, image pipeline and engine without a GPU.\n\n"
        "To serve Mistral Small 3.1 for real, on a machine with an NVIDIA GPU:\n"
        "  [green]pip install '.[vllm]'[/green] and [green]HF_TOKEN=... msserve serve --profile mistral-small-3.1[/green]\n"
        "  (or -fp8 / -w4a16 for 40 GB / 24 GB GPUs; `msserve profiles` lists them)\n\n"
        f"API: http://{settings.host}:{settings.port}/v1   model: {profile.model_name}"
    )
    return Panel(text, title="mistral-small-server: DEMO MODE", border_style="yellow")


@app.command()
def serve(
    profile: Annotated[str | None, typer.Option(help="model profile (see `msserve profiles`), or 'auto'")] = None,
    host: Annotated[str | None, typer.Option(help="address to bind")] = None,
    port: Annotated[int | None, typer.Option(help="port to bind")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML settings file")] = None,
) -> None:
    """Serve a model profile over the OpenAI API."""
    import uvicorn

    from server.app import create_app

    settings = load_settings(config, host=host, port=port, profile=profile)
    settings = settings.model_copy(update={"profile": pick_profile(settings.profile)})
    try:
        chosen = load_profile(settings.profile, settings.profiles_dir)
    except MSServeError as exc:
        console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from exc
    if chosen.requires_gpu and not cuda_available():
        console.print(f"[red]error:[/red] profile {chosen.name} needs an NVIDIA GPU and none was found. "
                      f"Use --profile {CPU_PROFILE} for the CPU demo.")
        raise typer.Exit(2)
    try:
        application = create_app(settings, profile=chosen)
    except MSServeError as exc:
        console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from exc
    if chosen.demo:
        console.print(demo_banner(chosen, settings))
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(application, host=settings.host, port=settings.port, log_level=settings.log_level,
                timeout_graceful_shutdown=30)


@app.command()
def profiles(
    profiles_dir: Annotated[Path | None, typer.Option(help="folder of profile YAML files")] = None,
) -> None:
    """List the model profiles."""
    folder = profiles_dir or Settings().profiles_dir
    table = Table(title="model profiles")
    for column in ("profile", "engine", "model", "quantization", "context", "GPU", "description"):
        table.add_column(column)
    for item in list_profiles(folder):
        gpu = f"{item.gpu_memory_gib:g} GB" if item.gpu_memory_gib else ("required" if item.requires_gpu else "no")
        table.add_row(item.name, item.engine, item.model, item.quantization or "-", str(item.max_model_len), gpu,
                      item.description)
    Console().print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
