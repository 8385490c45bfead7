"""docs/configuration.md is what scripts/gen_config_doc.py makes of server.config.Settings."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from server import config
from tests.conftest import REPO
from tests.scripts import load_script


def gen() -> ModuleType:
    return load_script("gen_config_doc")


def test_the_committed_page_is_what_settings_gives() -> None:
    """Fails when a setting was added or changed without `python scripts/gen_config_doc.py`."""
    assert (REPO / "docs" / "configuration.md").read_text() == gen().render()


def test_every_setting_has_a_row_with_its_variable_and_default() -> None:
    page = (REPO / "docs" / "configuration.md").read_text()
    rows = {
        line.split(" | ")[0].removeprefix("| ").split(" ")[0].strip("`"): line
        for line in page.splitlines()
        if line.startswith("| `MSSERVE_")
    }
    assert set(rows) == {f"MSSERVE_{name.upper()}" for name in config.Settings.model_fields}
    assert "| `8000` |" in rows["MSSERVE_PORT"] and "| `64` |" in rows["MSSERVE_MAX_QUEUE"]
    assert "| `server/resources/router/task-lr-v2.json` |" in rows["MSSERVE_ROUTER_WEIGHTS"]  # no machine path


def with_extra_field(script: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str) -> None:
    source = script.SOURCE.read_text()
    anchor = "    recent_requests: int = 200"
    assert anchor in source
    edited = tmp_path / "config.py"
    edited.write_text(source.replace(anchor, line + anchor, 1))

    class Extended(config.Settings):
        new_knob: int = 7

    monkeypatch.setattr(script, "SOURCE", edited)
    monkeypatch.setattr(script, "config", SimpleNamespace(Settings=Extended))


def test_a_new_setting_with_a_comment_gets_its_row_and_the_check_fails_until_regenerated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = gen()
    with_extra_field(script, tmp_path, monkeypatch, "    new_knob: int = 7  # how many knobs\n")
    assert "| `MSSERVE_NEW_KNOB` | int | `7` | how many knobs |" in script.render()
    monkeypatch.setattr(sys, "argv", ["gen_config_doc.py", "--check"])
    assert script.main() == 1


def test_the_comment_above_a_field_is_its_description(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = gen()
    with_extra_field(
        script, tmp_path, monkeypatch, "    # how many knobs,\n    # on two lines\n    new_knob: int = 7\n"
    )
    assert "| `MSSERVE_NEW_KNOB` | int | `7` | how many knobs, on two lines |" in script.render()


def test_a_field_the_source_does_not_show_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = gen()
    with_extra_field(script, tmp_path, monkeypatch, "")
    with pytest.raises(SystemExit, match="new_knob"):
        script.render()
