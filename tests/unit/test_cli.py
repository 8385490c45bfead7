"""`msserve` start-up paths that must fail clearly, and the profile list."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from server.cli import main as cli
from tests.conftest import REPO, free_port


def msserve(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_profiles_lists_every_profile() -> None:
    result = msserve("profiles")
    assert result.returncode == 0, result.stderr
    for name in ("tiny-mistral3", "mistral-small-3.1", "mistral-small-3.1-fp8", "mistral-small-3.1-w4a16",
                 "mistral-small-3.1-bnb4"):
        assert name in result.stdout


def test_gpu_profile_without_gpu_exits_non_zero_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    # The GPU probe says "none", whatever this host has: on a GPU host the test must not load the 24B model.
    monkeypatch.setattr(cli, "cuda_available", lambda: False)
    result = CliRunner().invoke(cli.app, ["serve", "--profile", "mistral-small-3.1", "--port", str(free_port())])
    assert result.exit_code == 2
    assert "needs an NVIDIA GPU" in result.output


@pytest.mark.parametrize(("gpu", "profile"), [(True, "mistral-small-3.1"), (False, "tiny-mistral3")])
def test_auto_picks_the_profile_the_gpu_probe_allows(monkeypatch: pytest.MonkeyPatch, gpu: bool, profile: str) -> None:
    monkeypatch.setattr(cli, "cuda_available", lambda: gpu)
    assert cli.pick_profile("auto") == profile
    assert cli.pick_profile("tiny-mistral3-vllm") == "tiny-mistral3-vllm"  # a named profile is never replaced


def test_unknown_profile_exits_non_zero() -> None:
    result = msserve("serve", "--profile", "no-such-profile", "--port", str(free_port()))
    assert result.returncode == 2
    assert "unknown profile" in result.stderr


def test_missing_weights_stop_the_server_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("engine: hf\nmodel: /nonexistent/weights\nmax_model_len: 1024\n")
    result = msserve("serve", "--profile", "broken", "--port", str(free_port()),
                     env={"MSSERVE_PROFILES_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert "failed to start" in result.stderr and "/nonexistent/weights" in result.stderr


def test_missing_router_weights_stop_start_up_with_the_reason(tiny_model: Path, tmp_path: Path) -> None:
    # A start-up error (server.errors.StartupError), not an HTTP one: its message and status 2, no traceback.
    missing = tmp_path / "no-weights.json"
    result = CliRunner().invoke(
        cli.app, ["serve", "--profile", "tiny-mistral3", "--port", str(free_port())],
        env={"MSSERVE_ROUTER_WEIGHTS": str(missing), "MSSERVE_STATE_DIR": str(tmp_path / "state")},
    )
    assert result.exit_code == 2, result.output
    assert f"router weights not found: {missing}" in " ".join(result.output.split())
    assert isinstance(result.exception, SystemExit)  # typer.Exit, not the error escaping as a crash


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["download", "--profile", "no-such-profile"], "unknown profile 'no-such-profile'"),
        (["profiles", "--profiles-dir", "/absent-profiles"], "profiles folder /absent-profiles does not exist"),
    ],
)
def test_other_commands_turn_start_up_errors_into_a_message(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert isinstance(result.exception, SystemExit)


def test_each_bench_command_runs_its_script_with_the_arguments_passed_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from server.cli import bench

    calls: list[list[str]] = []
    monkeypatch.setattr(bench.subprocess, "call", lambda command, cwd: calls.append(command) or 3)
    assert set(bench.BENCHMARKS) == {"serving", "gateway", "media", "router", "pool"}  # `msserve bench` promises these
    for name, benchmark in bench.BENCHMARKS.items():
        result = CliRunner().invoke(cli.app, ["bench", name, "--python", sys.executable, "--rounds", "2", "--help"])
        assert result.exit_code == 3, result.output  # the script's own status
        assert calls[-1] == [sys.executable, str(REPO / "scripts" / benchmark.script), "--rounds", "2", "--help"]
        assert (REPO / "scripts" / benchmark.script).is_file()


def test_a_profile_whose_engine_is_not_installed_stops_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    from server.config import Settings, load_profile
    from server.engines import build_engine
    from server.errors import ProfileError

    monkeypatch.setitem(sys.modules, "server.engines.vllm", None)  # the import fails, as without the [vllm] extra
    with pytest.raises(ProfileError, match="needs the vLLM engine") as caught:
        build_engine(load_profile("tiny-mistral3-vllm"), Settings())
    assert caught.value.code == "engine_unavailable"
