"""`msserve bench serving|gateway|media|router|pool`: run the benchmark scripts of a source checkout.

The benchmarks live in scripts/ (they are not part of the installed package) and each needs its own venv:
serving needs vLLM (.venv-vllm), gateway needs LiteLLM (.venv-bench, from scripts/bench_env.sh). Each
command runs its script in a subprocess with that venv's interpreter when it exists (--python overrides),
passing every further argument through, e.g. `msserve bench serving --rounds 2`. `pool` reads the JSON
results of several serving runs and pools their pairs of rounds into one ratio with its 95 % interval.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NamedTuple

import typer

from server.resources import source_checkout

app = typer.Typer(help="Run the benchmarks (scripts/bench_*.py) of a source checkout.", no_args_is_help=True)
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


class Benchmark(NamedTuple):
    script: str
    venv: str | None  # the venv whose interpreter it prefers
    help: str


BENCHMARKS = {
    "serving": Benchmark("bench_serving.py", ".venv-vllm", "Ours vs `vllm serve` on the same model and engine "
                         "settings (`--help` for the script's options)."),
    "gateway": Benchmark("bench_gateway.py", ".venv-bench",
                         "Latency our Azure escalation adds, against a LiteLLM proxy on the same fake Azure backend."),
    "media": Benchmark("bench_media.py", None, "Image intake: bytes to model-ready pixels, ours vs mistral_common."),
    "router": Benchmark("bench_router.py", None, "Router decision latency."),
    "pool": Benchmark("bench_pool.py", None, "Pool several `bench serving` results (JSON files): ours/vLLM with its "
                      "95 % interval, target met or not."),
}
PythonOption = Annotated[Path | None, typer.Option("--python", help="interpreter to run the script with")]


def interpreter(root: Path, name: str, python: Path | None) -> Path:
    if python is not None:
        return python
    venv = BENCHMARKS[name].venv
    preferred = root / venv / "bin" / "python" if venv else None
    return preferred if preferred is not None and preferred.exists() else Path(sys.executable)


def run(name: str, args: list[str], python: Path | None) -> None:
    root = source_checkout()
    if root is None:
        typer.echo("error: `msserve bench` needs a source checkout (git clone the repository, then `pip install -e .` "
                   "there): the benchmarks and their venvs are not part of the installed package", err=True)
        raise typer.Exit(2)
    script = root / "scripts" / BENCHMARKS[name].script
    raise typer.Exit(subprocess.call([str(interpreter(root, name, python)), str(script), *args], cwd=root))


def _command(name: str) -> Callable[[typer.Context, Path | None], None]:
    def command(ctx: typer.Context, python: PythonOption = None) -> None:
        run(name, ctx.args, python)

    return command


for _name, _benchmark in BENCHMARKS.items():
    app.command(_name, help=_benchmark.help, context_settings=PASS_THROUGH)(_command(_name))
