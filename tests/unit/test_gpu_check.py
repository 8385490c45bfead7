"""scripts/gpu_check.sh's CPU-side parts, so it still works the day a GPU is lent: arguments, what it carries, size."""

from __future__ import annotations

import datetime
import re
import subprocess
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from server.config import ModelProfile
from tests.conftest import REPO
from tests.scripts import load_script

carry = load_script("gpu_carry")
check = load_script("gpu_check")


def gpu_check_sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("args", [(), ("bogus",), ("run", "fp8"), ("check", "all", "extra"), ("prepare", "now")])
def test_bad_arguments_print_the_usage_and_do_nothing(args: tuple[str, ...]) -> None:
    result = gpu_check_sh(*args)
    assert result.returncode == 2 and result.stderr.startswith("usage: bash scripts/gpu_check.sh")
    assert result.stdout == ""  # nothing ran: no nvidia-smi, no pip


def fake_wheel(folder: Path, name: str, requires: list[str], files: dict[str, bytes] | None = None) -> Path:
    path = folder / f"{name}-1.0-py3-none-any.whl"
    info = f"{name}-1.0.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    contents = {**(files or {}), f"{info}/METADATA": metadata.encode()}
    record = "".join(f"{member},sha256=x,1\n" for member in contents) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, data in {**contents, f"{info}/RECORD": record.encode()}.items():
            wheel.writestr(member, data)
    return path


def test_requirements_are_read_for_the_images_python(tmp_path: Path) -> None:
    wheels = [
        fake_wheel(
            tmp_path,
            "alpha",
            [
                'numpy<2.4; python_version <= "3.12"',
                "beta>=1",
                "gamma",
                'tomli; python_version < "3.11"',
                'extra-only; extra == "docs"',
                'winlib; sys_platform == "win32"',
            ],
        ),
        fake_wheel(tmp_path, "beta", ["Typing_Extensions"]),
    ]
    image = {"numpy", "typing-extensions"}
    assert carry.missing_requirements(wheels, image) == [f"{wheels[0].name} needs gamma"]


def test_bitsandbytes_is_slimmed_to_the_images_cuda(tmp_path: Path) -> None:
    libraries = ("cpu", "cuda118", "cuda128", "cuda130", "cuda132", "rocm64", "xpu2026")
    files = {f"bitsandbytes/libbitsandbytes_{lib}.so": b"\0" * 100 for lib in libraries}
    wheel = fake_wheel(tmp_path, "bitsandbytes", ["torch"], {**files, "bitsandbytes/__init__.py": b""})
    carry.slim_bitsandbytes(wheel)
    with zipfile.ZipFile(wheel) as slim:
        names = set(slim.namelist())
        record = slim.read("bitsandbytes-1.0.dist-info/RECORD").decode()
    kept = {f"bitsandbytes/libbitsandbytes_{lib}.so" for lib in ("cpu", "cuda130", "cuda132")}
    assert {name for name in names if name.endswith(".so")} == kept and "bitsandbytes/__init__.py" in names
    assert {line.split(",")[0] for line in record.splitlines()} == names


def test_every_runtime_dependency_is_on_the_image_or_carried() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    needed = project["dependencies"] + project["optional-dependencies"]["hf"] + ["bitsandbytes"]
    carried = {canonicalize_name(Requirement(spec).name) for spec in carry.PARTS["all"]}
    available = carried | carry.image_packages()
    names = {canonicalize_name(Requirement(spec).name) for spec in needed}
    assert names - available == set()


def test_carried_pins_match_constraints() -> None:
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", (REPO / "constraints.txt").read_text(), re.MULTILINE))
    pins = {canonicalize_name(name): version for name, version in pins.items()}
    for spec in carry.PARTS["all"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert len(requirement.specifier) == 1 and str(requirement.specifier).startswith("=="), spec
        assert name not in pins or str(requirement.specifier) == f"=={pins[name]}", spec


def test_the_working_tree_leaves_room_for_the_wheels() -> None:
    assert carry.tree_bytes(REPO) + carry.CARRY_BUDGET_BYTES <= carry.LIMIT_BYTES


def test_a_part_whose_wheels_are_absent_says_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"gpu_carry\.py download"):
        carry.wanted("bf16", tmp_path)


def test_variants_derive_valid_profiles_from_the_packaged_ones() -> None:
    assert [v.name for v in check.variants("all", has_vllm=False)] == ["bf16", "4bit"]
    assert [v.name for v in check.variants("all", has_vllm=True)] == ["bf16", "4bit", "vllm"]
    assert [v.name for v in check.variants("4bit", has_vllm=True)] == ["4bit"]
    profiles = {
        v.name: ModelProfile.model_validate({"name": "tiny-mistral3", **v.profile()})
        for v in check.variants("all", has_vllm=True)
    }
    assert (profiles["bf16"].engine, profiles["bf16"].dtype, profiles["bf16"].quantization) == ("hf", "bfloat16", None)
    assert profiles["4bit"].quantization == "bnb-4bit" and profiles["4bit"].model == profiles["bf16"].model
    vllm = profiles["vllm"]
    assert vllm.engine == "vllm" and vllm.engine_options["gpu_memory_utilization"] == 0.3
    assert vllm.engine_options["enforce_eager"] is True  # kept from the packaged profile
    assert {p.model_name for p in profiles.values()} == {"tiny-mistral3"}


def test_dry_run_prints_each_variants_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert check.main(["--part", "4bit", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("== 4bit\n") and yaml.safe_load(out.split("\n", 1)[1])["quantization"] == "bnb-4bit"


def test_junit_results_and_the_summary(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite><testcase name="test_a"/><testcase name="test_b"><failure/></testcase>'
        '<testcase name="test_c"><skipped/></testcase><testcase name="test_d"/></testsuite></testsuites>'
    )
    outcome = check.read_junit(junit, "bf16")
    assert (outcome.passed, outcome.failed, outcome.ok) == (2, ["test_b"], False)
    good = check.Outcome("4bit", passed=7)
    text = check.summary([outcome, good], "NVIDIA H200", {"torch": "2.11.0+cu130"}, datetime.date(2026, 12, 3))
    assert text.startswith("### GPU check, 2026-12-03, NVIDIA H200\n")
    assert "| bf16 | FAIL | 2 | test_b |" in text and "| 4bit | pass | 7 | - |" in text
    assert "vLLM is not on the image" in text
