#!/usr/bin/env python3
"""What scripts/gpu_check.sh carries to the lent GPU machine, and whether it fits.

That machine has no network. Its image (scripts/gpu_image.txt: Python 3.12, torch with CUDA 13, transformers, no
vLLM) lacks the server's web stack, mistral_common and bitsandbytes, so they travel as wheels in CARRY_DIR, a
gitignored folder. Everything sent (the working tree plus that folder) must stay under the device tool's 64 MiB.

  python scripts/gpu_carry.py download   fetch the wheels (pip download, for that Python), slim bitsandbytes
  python scripts/gpu_carry.py check      every carried wheel's requirements met by the carry or the image; size
  python scripts/gpu_carry.py paths      the wheels a part installs, one a line (gpu_check.sh run uses it there)
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
CARRY_DIR = ROOT / ".gpu-carry"
IMAGE_LIST = ROOT / "scripts" / "gpu_image.txt"
LIMIT_BYTES = 64 * 1024 * 1024  # the device tool's limit on everything that travels
# Room kept for the wheels of part `all` (28.0 MiB when last downloaded): the working tree must leave this free.
CARRY_BUDGET_BYTES = 32 * 1024 * 1024
PYTHON_VERSION = "3.12"  # the image's python3 (3.12.3)
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
    "manylinux_2_5_x86_64",
]

# The server's runtime needs that the image lacks (versions from constraints.txt where it pins them), the
# libraries they need in turn, and pytest-asyncio (pyproject's pytest settings name it).
CORE = [
    "fastapi==0.165.0",
    "starlette==1.10.0",
    "uvicorn==0.54.0",
    "httptools==0.9.0",
    "python-multipart==0.0.34",
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "pydantic-settings==2.16.3",
    "python-dotenv==1.2.4",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "opentelemetry-api==1.45.2",
    "importlib-metadata==10.2.0",
    "lazy-importer==0.1.0",
    "openai==3.57.0",
    "httpx2==2.16.2",
    "httpcore2==2.16.2",
    "truststore==0.10.5",
    "jiter==0.19.0",
    "sniffio==1.3.1",
    "mistral-common==1.13.1",
    "jsonschema==4.26.0",
    "jsonschema-specifications==2025.9.1",
    "referencing==0.37.0",
    "rpds-py==2026.9.1",
    "pydantic-extra-types==2.11.1",
    "pycountry==26.2.16",
    "pytest-asyncio==1.5.0",
]
BNB = ["bitsandbytes==0.50.2"]
# bitsandbytes ships one native library per CUDA/ROCm/XPU release (43 MB); the image's torch is CUDA 13.x.
BNB_KEEP = re.compile(r"libbitsandbytes_(cpu|cuda13\d)\.so$")
# The parts gpu_check.sh runs, and the wheels each needs.
PARTS = {"bf16": CORE, "4bit": CORE + BNB, "all": CORE + BNB}


def image_packages(path: Path = IMAGE_LIST) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(canonicalize_name(line))
    return names


def wheel_name(path: Path) -> str:
    return canonicalize_name(path.name.split("-", 1)[0])


def wheel_requirements(path: Path) -> list[Requirement]:
    with zipfile.ZipFile(path) as wheel:
        metadata = next(name for name in wheel.namelist() if name.endswith(".dist-info/METADATA"))
        message = Parser().parsestr(wheel.read(metadata).decode())
    return [Requirement(text) for text in message.get_all("Requires-Dist") or []]


def target_environment() -> dict[str, str]:
    """Marker values of the image's interpreter (Linux x86-64, CPython 3.12), whatever runs this."""
    env: dict[str, str] = dict(default_environment())
    env.update(
        python_version=PYTHON_VERSION,
        python_full_version=f"{PYTHON_VERSION}.3",
        sys_platform="linux",
        platform_system="Linux",
        platform_machine="x86_64",
        os_name="posix",
        implementation_name="cpython",
        platform_python_implementation="CPython",
        extra="",
    )
    return env


def missing_requirements(wheels: list[Path], image: set[str]) -> list[str]:
    """'wheel needs name' for each requirement neither carried nor on the image."""
    carried = {wheel_name(path) for path in wheels}
    env = target_environment()
    missing = []
    for path in wheels:
        for requirement in wheel_requirements(path):
            if requirement.marker is not None and not requirement.marker.evaluate(env):
                continue
            name = canonicalize_name(requirement.name)
            if name not in carried and name not in image:
                missing.append(f"{path.name} needs {requirement}")
    return missing


def wanted(part: str, folder: Path = CARRY_DIR) -> list[Path]:
    """The carried wheels a part installs (error if one was not downloaded)."""
    found = {wheel_name(path): path for path in folder.glob("*.whl")}
    names = [canonicalize_name(Requirement(spec).name) for spec in PARTS[part]]
    absent = [name for name in names if name not in found]
    if absent:
        raise SystemExit(f"not in {folder}: {', '.join(absent)}; run `python scripts/gpu_carry.py download`")
    return [found[name] for name in names]


def tree_bytes(root: Path = ROOT) -> int:
    """What the device tool sends besides the carry: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sum((root / name).stat().st_size for name in listed.split("\0") if name and (root / name).is_file())


def slim_bitsandbytes(path: Path) -> None:
    """Rewrite the wheel with only the native libraries this image can load (and RECORD to match)."""
    with zipfile.ZipFile(path) as source:
        members = [
            info for info in source.infolist() if not info.filename.endswith(".so") or BNB_KEEP.search(info.filename)
        ]
        kept = {info.filename for info in members}
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".whl", delete=False) as handle:
            slim = Path(handle.name)
        with zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as target:
            for info in members:
                data = source.read(info.filename)
                if info.filename.endswith(".dist-info/RECORD"):
                    lines = data.decode().splitlines()
                    data = "".join(
                        f"{line}\n" for line in lines if line.split(",", 1)[0] in kept or line.startswith(info.filename)
                    ).encode()
                target.writestr(info, data)
    slim.replace(path)


def download(folder: Path = CARRY_DIR) -> None:
    folder.mkdir(exist_ok=True)
    platform_args = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        PYTHON_VERSION,
        "--implementation",
        "cp",
        *platform_args,
        "-d",
        str(folder),
    ]
    subprocess.run([*command, *PARTS["all"]], check=True)
    for path in folder.glob("bitsandbytes-*.whl"):
        slim_bitsandbytes(path)


def report(part: str, folder: Path = CARRY_DIR) -> tuple[list[str], int]:
    """(problems, bytes that would travel) for one part."""
    wheels = wanted(part, folder)
    problems = missing_requirements(wheels, image_packages())
    carried = sum(path.stat().st_size for path in wheels)
    if carried > CARRY_BUDGET_BYTES:
        problems.append(
            f"the wheels take {carried / 2**20:.1f} MiB, over CARRY_BUDGET_BYTES: raise it if the tree allows"
        )
    total = tree_bytes() + carried
    if total > LIMIT_BYTES:
        problems.append(f"{total / 2**20:.1f} MiB would travel, over the {LIMIT_BYTES / 2**20:.0f} MiB limit")
    return problems, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("download", "check", "paths"))
    parser.add_argument("--part", choices=sorted(PARTS), default="all")
    args = parser.parse_args(argv)
    if args.action == "paths":
        print("\n".join(str(path) for path in wanted(args.part)))
        return 0
    if args.action == "download":
        download()
    problems, total = report(args.part)
    print(
        f"part {args.part}: {total / 2**20:.1f} MiB of {LIMIT_BYTES / 2**20:.0f} MiB would travel "
        f"(working tree + {CARRY_DIR.name}/)"
    )
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
