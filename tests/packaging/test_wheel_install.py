"""The wheel, installed non-editable in a fresh venv, is a working server: chat, images, the dashboard, the router.

Slow (a venv with torch: a few minutes on 2 cores), so marked ``wheel``; it runs in ``make test``. pip's cache and
its configured indexes are reused; nothing of the test environment leaks in (no PYTHONPATH, no system site).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LOOPBACK, REPO, free_port, wait_until_up
from tests.images import png_url

pytestmark = [pytest.mark.wheel, pytest.mark.timeout(1200)]  # the venv fixture (torch) runs inside one test


def torch_requirement() -> str:
    """The torch pin the Makefile installs (its TORCH variable; the environment's TORCH overrides, as in make)."""
    match = re.search(r"^TORCH \?= (\S+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert match, "Makefile: no `TORCH ?= ...` line"
    return os.environ.get("TORCH", match.group(1))


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would make the venv see the checkout or our settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and not key.startswith("MSSERVE_")
    }
    return {**env, **extra}


def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of what it is made of (an in-tree build/ could leak stale files into it)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "server", source / "server", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    result = run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"), str(source)],
        env=clean_env(),
    )
    assert result.returncode == 0, result.stderr
    (built,) = (work / "dist").glob("mistral_small_server-*.whl")
    return built


def test_wheel_holds_the_data_the_server_reads(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        "server/demo_model.py",
        "server/resources/router/CARD.md",
        "server/api/dashboard_assets/page.html",
        "server/api/dashboard_assets/dashboard.js",
    }
    expected |= {f"server/resources/profiles/{p.name}" for p in (REPO / "server/resources/profiles").glob("*.yaml")}
    expected |= {f"server/resources/router/{p.name}" for p in (REPO / "server/resources/router").glob("*.json")}
    assert len(expected) > 10 and expected <= names, sorted(expected - names)


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no system site-packages) with torch as the Makefile pins it, then the wheel with [hf]."""
    folder = tmp_path_factory.mktemp("venv") / "venv"
    env = clean_env()
    assert run([sys.executable, "-m", "venv", str(folder)], env=env).returncode == 0
    pip = [
        str(folder / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "-q",
        "--no-compile",
        "-c",
        str(REPO / "constraints.txt"),
    ]
    for requirement in (torch_requirement(), f"{wheel}[hf]"):
        result = run([*pip, requirement], env=env)
        assert result.returncode == 0, f"pip install {requirement}:\n{result.stderr}"
    return folder


def test_install_is_not_editable(venv: Path, tmp_path: Path) -> None:
    result = run(
        [str(venv / "bin" / "python"), "-c", "import server; print(server.__file__)"], env=clean_env(), cwd=tmp_path
    )
    location = Path(result.stdout.strip())
    assert location.is_relative_to(venv) and "site-packages" in location.parts, result.stdout + result.stderr


def test_bench_says_it_needs_a_source_checkout(venv: Path, tmp_path: Path) -> None:
    result = run([str(venv / "bin" / "msserve"), "bench", "router"], env=clean_env(), cwd=tmp_path)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1 and "needs a source checkout" in result.stderr


def test_packaged_profiles_and_router_weights(venv: Path, tmp_path: Path) -> None:
    profiles = run([str(venv / "bin" / "msserve"), "profiles"], env=clean_env(COLUMNS="200"), cwd=tmp_path)
    assert profiles.returncode == 0 and "mistral-small-3.1-w4a16" in profiles.stdout, profiles.stderr
    scored = run(
        [str(venv / "bin" / "msserve"), "router", "score", "-"],
        env=clean_env(),
        cwd=tmp_path,
        input=json.dumps({"prompt": "Prove that there are infinitely many primes."}) + "\n",
    )
    assert scored.returncode == 0, scored.stderr
    assert 0.0 <= json.loads(scored.stdout)["score"] <= 1.0


@pytest.fixture(scope="module")
def served(venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    """`msserve serve` with no profile, run from an empty folder: builds the demo model into the cache, serves it."""
    home = tmp_path_factory.mktemp("home")
    cache, log_path, port = home / "cache", home / "serve.log", free_port()
    env = clean_env(XDG_CACHE_HOME=str(cache), MSSERVE_STATE_DIR=str(home / "state"))
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(venv / "bin" / "msserve"), "serve", "--port", str(port)],
            cwd=home,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://{LOOPBACK}:{port}"
    try:
        wait_until_up(process, f"{base}/ready", log_path, timeout=600, interval=0.5)
        yield base, cache, log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_serve_builds_the_demo_model_into_the_cache_with_a_progress_line(served: tuple[str, Path, Path]) -> None:
    _, cache, log_path = served
    log = log_path.read_text(errors="replace")
    assert "building the demo model tiny-mistral3" in log and str(cache / "msserve" / "tiny-mistral3") in log
    assert (cache / "msserve" / "tiny-mistral3" / "model.safetensors").is_file()


def exact_prompt_tokens(tekken: Path, question: str, image_url: str | None) -> int:
    """mistral_common's count for one user turn: what the server must have tokenized, image included."""
    from mistral_common.protocol.instruct.messages import ImageURLChunk, TextChunk, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    content: list[TextChunk | ImageURLChunk] = [TextChunk(text=question)]
    if image_url is not None:
        content.append(ImageURLChunk(image_url=image_url))
    request = ChatCompletionRequest(messages=[UserMessage(content=content)])  # type: ignore[type-var]
    return len(MistralTokenizer.from_file(str(tekken)).encode_chat_completion(request).tokens)


def test_chat_image_and_dashboard_from_the_wheel(served: tuple[str, Path, Path]) -> None:
    from openai import OpenAI

    base, cache, _ = served
    question, picture = "Describe this.", png_url((56, 56))
    with OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120) as client:
        text = client.chat.completions.create(
            model="tiny-mistral3", max_tokens=4, messages=[{"role": "user", "content": question}]
        )
        image = client.chat.completions.create(
            model="tiny-mistral3",
            max_tokens=4,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": question},
                        {"type": "image_url", "image_url": {"url": picture}},
                    ],
                }
            ],
        )
    for answer in (text, image):
        assert answer.usage is not None and answer.usage.completion_tokens > 0
        assert isinstance(answer.choices[0].message.content, str)
    tekken = cache / "msserve" / "tiny-mistral3" / "tekken.json"
    assert text.usage is not None and image.usage is not None
    assert text.usage.prompt_tokens == exact_prompt_tokens(tekken, question, None)
    assert image.usage.prompt_tokens == exact_prompt_tokens(tekken, question, picture)  # the image reached the model
    page = httpx.get(f"{base}/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<title>mistral-small-server</title>" in page.text and 'id="c-requests"' in page.text
