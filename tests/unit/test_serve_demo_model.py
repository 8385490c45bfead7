"""`msserve serve` builds a demo profile's model before serving, once, or says what is missing."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from server import demo_model
from server.cli import main as cli
from server.config import load_profile
from tests.conftest import TINY_MODEL


def test_without_torch_serve_names_the_extra_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "demo.yaml").write_text(
        f"engine: hf\nmodel: {tmp_path / 'not-built'}\nbuild_script: make_tiny_model.py\n"
    )
    monkeypatch.setattr(demo_model, "can_build", lambda: False)  # the probe: this venv has torch
    result = CliRunner().invoke(
        cli.app, ["serve", "--profile", "demo", "--port", "0"], env={"MSSERVE_PROFILES_DIR": str(tmp_path)}
    )
    assert result.exit_code == 2
    assert "pip install 'mistral-small-server[hf]'" in result.output
    assert not (tmp_path / "not-built").exists()


def test_a_current_model_is_served_as_it_is(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (TINY_MODEL / "model.safetensors").stat().st_mtime_ns
    cli.prepare_built_model(load_profile("tiny-mistral3"))
    assert "building" not in capsys.readouterr().err
    assert (TINY_MODEL / "model.safetensors").stat().st_mtime_ns == before
