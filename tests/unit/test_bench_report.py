"""docs/BENCHMARKS.md's tables are what scripts/bench_report.py makes of docs/bench-data, to the character."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO
from tests.scripts import SCRIPTS, load_script


def bench_report() -> ModuleType:
    return load_script("bench_report")


def test_the_committed_page_is_what_the_data_gives() -> None:
    """Fails when a table was edited by hand or data was added without `python scripts/bench_report.py`."""
    page = (REPO / "docs" / "BENCHMARKS.md").read_text()
    assert bench_report().render(page) == page


def test_the_check_flag_reports_a_stale_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = bench_report()
    data = tmp_path / "bench-data"
    shutil.copytree(REPO / "docs" / "bench-data", data)
    figures = json.loads((data / "gateway.json").read_text())
    figures["rows"][0]["ours_added_p50_ms"] = 99.9  # a new measurement the page does not show yet
    (data / "gateway.json").write_text(json.dumps(figures))
    monkeypatch.setattr(report, "DATA", data)
    page = (REPO / "docs" / "BENCHMARKS.md").read_text()
    fresh = report.render(page)
    assert "| 1 (VM 1) | 99.9 ms |" in fresh and fresh != page
    stale = tmp_path / "BENCHMARKS.md"
    stale.write_text(page.replace("**0.810 [0.789-0.831]**", "**0.800 [0.789-0.831]**", 1))
    monkeypatch.setattr(report, "PAGE", stale)
    monkeypatch.setattr(sys, "argv", ["bench_report.py", "--check"])
    assert report.main() == 1


def test_every_table_has_its_markers_and_every_marker_a_table() -> None:
    report = bench_report()
    page = (REPO / "docs" / "BENCHMARKS.md").read_text()
    with pytest.raises(SystemExit, match="serving-ceiling"):
        report.render(page.replace("bench_report:serving-ceiling", "bench_report:ceiling-typo"))
    with pytest.raises(SystemExit, match="gateway"):
        report.render(page.replace("<!-- bench_report:gateway -->", "").replace("<!-- /bench_report:gateway -->", ""))


def test_every_published_serving_run_is_pooled_into_a_table_or_named_on_the_page() -> None:
    report = bench_report()
    page = (REPO / "docs" / "BENCHMARKS.md").read_text()
    for path in (REPO / "docs" / "bench-data" / "serving").glob("*.json.gz"):
        assert any(path.match(pattern) for pattern in report.POOLED) or path.name in page, path.name


def test_the_script_rewrites_the_page_in_place(tmp_path: Path) -> None:
    shutil.copytree(SCRIPTS, tmp_path / "scripts")
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    page = tmp_path / "docs" / "BENCHMARKS.md"
    page.write_text(page.read_text().replace("| 8.6 ms | 153.4 ms |", "| 0.0 ms | 0.0 ms |"))
    done = subprocess.run(
        [sys.executable, str(tmp_path / "scripts" / "bench_report.py")], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert page.read_text() == (REPO / "docs" / "BENCHMARKS.md").read_text()
