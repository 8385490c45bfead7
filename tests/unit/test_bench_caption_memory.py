"""scripts/bench_caption_memory.py's pass list, and the memory figures bench_report.py makes of both benchmarks."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from tests.scripts import load_script


@pytest.fixture(scope="module")
def memory() -> ModuleType:
    return load_script("bench_caption_memory")


def test_the_pass_list_reads_captions_levels_and_batches_in_order(memory: ModuleType) -> None:
    assert memory.parse_passes("captions:8, batch,captions:32") == [("captions", 8), ("batch", 0), ("captions", 32)]
    assert [kind for kind, _ in memory.parse_passes(memory.DEFAULT_PASSES)].count("batch") >= 2  # repeats tell
    for bad in ("captions", "captions:0", "batch:4", "chat:8", " , "):
        with pytest.raises(ValueError):
            memory.parse_passes(bad)


def test_the_memory_table_shows_each_pass_and_a_note_without_a_run(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    report = load_script("bench_report")
    monkeypatch.setattr(report, "DATA", tmp_path)
    assert report.captions_memory().startswith("No published run yet: `make bench-caption-memory`")
    (tmp_path / "captions-memory.json").write_text(json.dumps({
        "command": "scripts/bench_caption_memory.py", "images": 200, "batch_concurrency": 16, "ready_mib": 1536.0,
        "machine": {"cpu": "AMD EPYC", "cpus": 2, "mem_gib": 23.5, "commit": "abc"},
        "passes": [{"kind": "captions", "concurrency": 8, "images_per_s": 2.5, "errors": 0, "api_rss_mib": 1700.0},
                   {"kind": "batch", "concurrency": 0, "images_per_s": 3.0, "errors": 1, "api_rss_mib": 2304.0}]}))
    lines = report.captions_memory().splitlines()
    assert lines[2] == "| 0 | `/v1/captions` | 8 | 2.50 | 0 | 1.66 GiB |"
    assert lines[3] == "| 1 | Batch API | 16 lines | 3.00 | 1 | 2.25 GiB |"
    assert "1.50 GiB when ready" in lines[5] and "Command: `scripts/bench_caption_memory.py`" in lines[5]


def test_the_captions_report_gives_the_most_memory_any_pass_left(monkeypatch: pytest.MonkeyPatch) -> None:
    report = load_script("bench_report")
    runs = [{"sweep": {"captions": {"8": {"api_rss_mib": 1024.0}, "16": {"api_rss_mib": 1536.0}},
                       "vllm": {"8": {"api_rss_mib": 2048.0}}}, "batch": {"api_rss_mib": 1280.0}},
            {"sweep": {"captions": {"8": {"api_rss_mib": 1024.0}}, "vllm": {"8": {"api_rss_mib": 2048.0}}},
             "batch": {"api_rss_mib": 2560.0}}]
    line = report.memory_line(runs)
    assert "ours 2.00 GiB (1.50 GiB-2.50 GiB), `vllm serve` 2.00 GiB." in line
    del runs[0]["batch"]["api_rss_mib"]  # a run from before the figure was recorded: no line at all
    assert report.memory_line(runs) == ""
