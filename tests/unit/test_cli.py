"""`msserve` start-up paths that must fail clearly, and the profile list."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def test_gpu_profile_without_gpu_exits_non_zero_with_a_reason() -> None:
    result = msserve("serve", "--profile", "mistral-small-3.1", "--port", str(free_port()),
                     env={"PATH": "/usr/bin:/bin"})  # no nvidia-smi on this PATH
    assert result.returncode == 2
    assert "needs an NVIDIA GPU" in result.stderr


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
