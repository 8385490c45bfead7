#!/usr/bin/env python3
"""Run the GPU tests for each engine variant on the tiny model, and print one summary for docs/development.md.

Run by scripts/gpu_check.sh on the lent GPU machine (it installs the carried wheels and builds the tiny model
first). Each variant serves the tiny model through a `tiny-mistral3.yaml` put in MSSERVE_PROFILES_DIR (looked up
before the packaged profiles), derived from the packaged profile with the variant's dtype and quantization, and
runs tests/gpu (chat, an image, streaming, on the GPU) and tests/api/test_captions.py against it.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.resources import PROFILES_DIR  # noqa: E402

TESTS = ["tests/gpu", "tests/api/test_captions.py"]
# Three variants (vLLM too, when the image has it) and the set-up fit the device tool's 600 s for one command.
PER_VARIANT_TIMEOUT_S = 170


@dataclass(frozen=True)
class Variant:
    name: str  # bf16, 4bit, vllm: GPU_CHECK_VARIANT for tests/gpu
    base: str  # packaged profile it is derived from
    changes: dict[str, Any]

    def profile(self) -> dict[str, Any]:
        data: dict[str, Any] = yaml.safe_load((PROFILES_DIR / f"{self.base}.yaml").read_text())
        data.update({key: value for key, value in self.changes.items() if key != "engine_options"})
        options = {**data.get("engine_options", {}), **self.changes.get("engine_options", {})}
        if options:
            data["engine_options"] = options
        data["served_model_name"] = "tiny-mistral3"  # the tests ask for this model name
        return data


HF_BF16 = Variant("bf16", "tiny-mistral3", {"dtype": "bfloat16"})
HF_4BIT = Variant("4bit", "tiny-mistral3", {"dtype": "bfloat16", "quantization": "bnb-4bit"})
# enforce_eager (from the packaged profile) skips CUDA graph capture: seconds instead of a minute at start.
VLLM = Variant("vllm", "tiny-mistral3-vllm", {"dtype": "bfloat16", "engine_options": {"gpu_memory_utilization": 0.3}})


def variants(part: str, has_vllm: bool) -> list[Variant]:
    chosen = {"bf16": [HF_BF16], "4bit": [HF_4BIT], "all": [HF_BF16, HF_4BIT]}[part]
    return chosen + ([VLLM] if has_vllm and part == "all" else [])


@dataclass
class Outcome:
    variant: str
    passed: int = 0
    failed: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.failed and not self.error and self.passed > 0


def read_junit(path: Path, variant: str) -> Outcome:
    outcome = Outcome(variant)
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            outcome.failed.append(case.get("name", "?"))
        elif case.find("skipped") is None:
            outcome.passed += 1
    return outcome


def run_variant(variant: Variant, work: Path) -> Outcome:
    folder = work / variant.name
    folder.mkdir(parents=True)
    (folder / "tiny-mistral3.yaml").write_text(yaml.safe_dump(variant.profile(), sort_keys=False))
    junit = folder / "junit.xml"
    env = {**os.environ, "MSSERVE_PROFILES_DIR": str(folder), "GPU_CHECK_VARIANT": variant.name}
    # The image's libraries are not constraints.txt's: their deprecation notices are not what this check is about.
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-m",
        "not vllm",
        "-W",
        "ignore::DeprecationWarning",
        "-W",
        "ignore::FutureWarning",
        f"--junitxml={junit}",
        *TESTS,
    ]
    print(f"== {variant.name}: {' '.join(command)}", flush=True)
    try:
        result = subprocess.run(command, cwd=ROOT, env=env, timeout=PER_VARIANT_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return Outcome(variant.name, error=f"timed out after {PER_VARIANT_TIMEOUT_S} s")
    if not junit.is_file():
        return Outcome(variant.name, error=f"pytest exited {result.returncode} before any test")
    return read_junit(junit, variant.name)


def versions() -> dict[str, str]:
    import torch

    found = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": str(torch.version.cuda)}
    for name in ("transformers", "bitsandbytes", "vllm", "mistral_common"):
        if importlib.util.find_spec(name) is not None:
            found[name] = getattr(__import__(name), "__version__", "?")
    return found


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"


def summary(outcomes: list[Outcome], gpu: str, found: dict[str, str], day: datetime.date) -> str:
    lines = [
        f"### GPU check, {day.isoformat()}, {gpu}",
        "",
        "Versions: " + ", ".join(f"{name} {version}" for name, version in found.items()),
        "",
        "| variant | result | tests passed | failed |",
        "| --- | --- | --- | --- |",
    ]
    for outcome in outcomes:
        failed = ", ".join(outcome.failed) or outcome.error or "-"
        lines.append(f"| {outcome.variant} | {'pass' if outcome.ok else 'FAIL'} | {outcome.passed} | {failed} |")
    if "vllm" not in found:
        lines += ["", "vLLM is not on the image: its variant did not run."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "bf16", "4bit"), default="all")
    parser.add_argument("--dry-run", action="store_true", help="print the variants' profiles; run nothing")
    args = parser.parse_args(argv)
    has_vllm = importlib.util.find_spec("vllm") is not None
    chosen = variants(args.part, has_vllm)
    if args.dry_run:
        for variant in chosen:
            print(f"== {variant.name}\n{yaml.safe_dump(variant.profile(), sort_keys=False)}")
        return 0
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        outcomes = [run_variant(variant, Path(work)) for variant in chosen]
    text = summary(outcomes, gpu_name(), versions(), datetime.datetime.now(datetime.UTC).date())
    print(text)
    if os.environ.get("OUT"):  # the device tool brings $OUT back
        (Path(os.environ["OUT"]) / "gpu-check.md").write_text(text)
    return 0 if outcomes and all(outcome.ok for outcome in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
