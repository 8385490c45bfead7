"""The `msserve` command line: the root app and `serve`, `profiles`, `download`.

The other commands live beside it: `caption` (server.cli.caption), `router` (server.cli.router, server.cli.learn)
and `bench` (server.cli.bench).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from server.cli.bench import app as bench_app
from server.cli.caption import caption
from server.cli.router import app as router_app
from server.config import ModelProfile, Settings, list_profiles, load_profile, load_settings
from server.errors import MSServeError, StartupError
from server.sdk_logging import quiet_sdk_loggers

app = typer.Typer(
    help="mistral-small-server: serve Mistral Small 3.1 with an OpenAI-compatible API.", no_args_is_help=True
)
app.add_typer(router_app, name="router", help="Score, evaluate and calibrate the escalation router.")
app.add_typer(bench_app, name="bench", help="Run the benchmarks (scripts/bench_*.py) of a source checkout.")
app.command()(caption)
console = Console(stderr=True)

AUTO = "auto"
GPU_PROFILE = "mistral-small-3.1"
CPU_PROFILE = "tiny-mistral3"


@contextmanager
def exit_on_startup_error(status: int = 2) -> Iterator[None]:
    """A configuration the server cannot start with (unknown profile, missing weights): its message, exit status."""
    try:
        yield
    except StartupError as exc:
        console.print(f"[red]error:[/red] {escape(exc.message)}", soft_wrap=True)
        raise typer.Exit(status) from exc


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
    from server.hub import build_local_model

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
    with exit_on_startup_error(status=1):  # the build itself failed: not a wrong setting
        build_local_model(profile, target)
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
    from server.serving import serve_until_signal

    try:
        settings = load_settings(config, host=host, port=port, profile=profile)
    except ValueError as exc:  # pydantic's ValidationError too: a setting that must not be served with
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    settings = settings.model_copy(update={"profile": pick_profile(settings.profile)})
    with exit_on_startup_error():
        chosen = load_profile(settings.profile, settings.profiles_dir)
    if chosen.requires_gpu and not cuda_available():
        console.print(
            f"[red]error:[/red] profile {chosen.name} needs an NVIDIA GPU and none was found. "
            f"Use --profile {CPU_PROFILE} for the CPU demo."
        )
        raise typer.Exit(2)
    prepare_built_model(chosen)
    try:
        with exit_on_startup_error():
            application = create_app(settings, profile=chosen)
    except MSServeError as exc:
        console.print(f"[red]error:[/red] {escape(exc.message)}")
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
    with exit_on_startup_error():
        found = list_profiles(folder)
    for item in found:
        gpu = f"{item.gpu_memory_gib:g} GB" if item.gpu_memory_gib else ("required" if item.requires_gpu else "no")
        table.add_row(
            item.name, item.engine, item.model, item.quantization or "-", str(item.max_model_len), gpu, item.description
        )
    Console().print(table)


@app.command()
def download(
    profile: Annotated[str, typer.Option(help="profile whose weights to fetch")] = GPU_PROFILE,
    token: Annotated[str | None, typer.Option(envvar="HF_TOKEN", help="Hugging Face token (gated models)")] = None,
) -> None:
    """Download a profile's weights from the Hugging Face hub (resumable, with progress)."""
    from server.hub import resolve_model_dir

    with exit_on_startup_error():
        chosen = load_profile(profile, Settings().profiles_dir)
        path = resolve_model_dir(chosen, token=token)
    revision = path.name if path.parent.name == "snapshots" else "local"
    console.print(f"{chosen.name}: weights in {path} (revision {revision}; pin it with `revision:` in the profile)")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
