"""Router learning end to end: a live server (tiny model) with the fake Azure as escalation target and judge.

Shadow calls and verdicts, POST /v1/feedback (owner only, 204/404/400), learn + POST /admin/router/reload,
rollback + SIGHUP, the metrics and the dashboard's learning feed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from typer.testing import CliRunner

from server.cli.router import app as router_cli
from server.routing.outcomes import OutcomeStore
from server.routing.router import Router
from server.state.db import StateDB
from tests.conftest import LiveServer, start_server, stop_server
from tests.fakes.fake_azure import FakeAzure
from tests.outcomes import local_outcome

AZURE_KEY = "azure-test-key"
ALICE, BOB = "sk-alice-0123456789", "sk-bob-0123456789ab"


@pytest.fixture(scope="module")
def fake_azure() -> Iterator[FakeAzure]:
    with FakeAzure(api_key=AZURE_KEY, deployment="gpt-4o") as fake:
        fake.judge_rule = lambda a, b: "B" if "Azure" in b else "A"  # the Azure answer wins in both orders
        yield fake


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("learning-state")


@pytest.fixture(scope="module")
def server(
    tiny_model: Path, fake_azure: FakeAzure, state_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    env = {
        "MSSERVE_AZURE_ENDPOINT": f"{fake_azure.endpoint}/openai/v1/",
        "MSSERVE_AZURE_API_KEY": AZURE_KEY,
        "MSSERVE_AZURE_DEPLOYMENT": "gpt-4o",
        "MSSERVE_ROUTER_THRESHOLD": "1.0",  # the router keeps everything local
        "MSSERVE_ROUTER_SHADOW_RATE": "1.0",  # and every local answer is shadowed and judged
        "MSSERVE_API_KEYS": f"alice:{ALICE},bob:{BOB}",
        "MSSERVE_ADMIN_KEYS": "alice",  # reloading weights is an operator's act
        "MSSERVE_STATE_DIR": str(state_dir),
    }
    live = start_server(tmp_path_factory.mktemp("learning"), env)
    yield live
    stop_server(live)


def _feed(server: LiveServer) -> dict:  # type: ignore[type-arg]
    response = httpx.get(f"{server.base_url}/dashboard/api/learning", headers={"authorization": f"Bearer {ALICE}"})
    assert response.status_code == 200
    return response.json()


def _until(condition, what: str, timeout_s: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


def test_shadowed_answer_is_judged_and_owner_feedback_is_taken(server: LiveServer, fake_azure: FakeAzure) -> None:
    with openai.OpenAI(base_url=server.v1, api_key=ALICE, max_retries=0, timeout=120) as client:
        response = client.chat.completions.with_raw_response.create(
            model="tiny-mistral3", messages=[{"role": "user", "content": "Name three primes."}], max_tokens=4
        )
    assert response.headers["x-msserve-tier"] == "local"
    completion = response.parse()
    _until(lambda: _feed(server)["counts"]["helped"] == 1, "the judge's verdict is stored")
    feed = _feed(server)
    assert feed["shadow_calls"] == 1 and feed["judged"][-1][1] == "helped"
    judged = [r for r in fake_azure.requests if "[Answer A]" in json.dumps(r.body)]
    assert len(judged) == 2  # both orders
    url = f"{server.base_url}/v1/feedback"
    as_bob = httpx.post(url, json={"id": completion.id, "score": 0.1}, headers={"authorization": f"Bearer {BOB}"})
    assert as_bob.status_code == 404 and as_bob.json()["error"]["code"] == "response_not_found"
    alice = {"authorization": f"Bearer {ALICE}"}
    bad = httpx.post(url, json={"id": completion.id, "score": 1.5}, headers=alice)
    assert bad.status_code == 400 and "error" in bad.json()
    unknown = httpx.post(url, json={"id": "chatcmpl-nope", "score": 0.5}, headers=alice)
    assert unknown.status_code == 404
    assert httpx.post(url, json={"id": completion.id, "score": 0.0}, headers=alice).status_code == 204
    assert httpx.post(url, json={"id": completion.id, "score": 0.0}).status_code == 401
    metrics = httpx.get(f"{server.base_url}/metrics", headers=alice).text
    assert 'msserve_router_shadow_calls_total{result="answered"} 1.0' in metrics
    assert 'msserve_router_judge_verdicts_total{verdict="helped"} 1.0' in metrics
    assert "msserve_router_estimated_quality " in metrics


def test_streamed_answers_are_stored_under_their_response_id(server: LiveServer, state_dir: Path) -> None:
    with openai.OpenAI(base_url=server.v1, api_key=ALICE, max_retries=0, timeout=120) as client:
        chunks = list(
            client.chat.completions.create(
                model="tiny-mistral3", messages=[{"role": "user", "content": "Say hi."}], max_tokens=3, stream=True
            )
        )
    response_id = chunks[0].id
    assert all(chunk.id == response_id for chunk in chunks)
    store = OutcomeStore(StateDB(state_dir))
    _until(lambda: store.get(response_id) is not None, "the streamed outcome is stored")
    row = store.get(response_id)
    assert row is not None and row.key_name == "alice" and row.tier == "local" and row.prompt is None


def _plant(state_dir: Path, n: int = 120) -> None:
    rng = random.Random(0)
    prior = Router.from_weights()
    store = OutcomeStore(StateDB(state_dir))
    for i in range(n):
        hard = rng.random() < 0.3
        prompt = f"About {'quaternions' if hard else 'gardens'} {i}"
        store.add(local_outcome(prior, prompt, f"planted-{i}", created=float(i), threshold=1.0))
        store.judge(f"planted-{i}", "helped" if hard else "same", now=float(i))


def test_learn_then_reload_and_rollback_then_sighup(
    server: LiveServer, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{server.base_url}/admin/router/reload"
    assert httpx.post(url).status_code == 401  # keys are configured: a key is required
    assert httpx.post(url, headers={"authorization": f"Bearer {BOB}"}).status_code == 403  # and an admin one
    _plant(state_dir)
    monkeypatch.setenv("MSSERVE_STATE_DIR", str(state_dir))
    result = CliRunner().invoke(router_cli, ["learn"])
    assert result.exit_code == 0, result.output
    reloaded = httpx.post(url, headers={"authorization": f"Bearer {ALICE}"})
    assert reloaded.status_code == 200 and reloaded.json()["router"].endswith("+learned-v1")
    assert _feed(server)["router"].endswith("+learned-v1")
    assert len(_feed(server)["curve"]) == 1
    page = httpx.get(f"{server.base_url}/", headers={"authorization": f"Bearer {ALICE}"}).text
    assert 'id="chart-judged"' in page and 'id="chart-curve"' in page  # the panel the feed draws into
    assert CliRunner().invoke(router_cli, ["rollback"]).exit_code == 0
    os.kill(server.process.pid, signal.SIGHUP)
    _until(lambda: "learned" not in _feed(server)["router"], "SIGHUP reloads the prior")
    assert server.process.poll() is None  # SIGHUP reloads, it does not stop the server


def test_a_killed_server_loses_no_stored_outcome(server: LiveServer, state_dir: Path) -> None:
    """Last in this module: it kills the server. Rows the server committed are all there after SIGKILL."""
    store = OutcomeStore(StateDB(state_dir))
    before = len(store.all())
    ids = []
    with openai.OpenAI(base_url=server.v1, api_key=BOB, max_retries=0, timeout=120) as client:
        for i in range(3):
            ids.append(
                client.chat.completions.create(
                    model="tiny-mistral3", messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=2
                ).id
            )
    _until(lambda: all(store.get(i) is not None for i in ids), "the three outcomes are stored")
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()
    reopened = OutcomeStore(StateDB(state_dir))
    assert len(reopened.all()) == before + 3
    assert all(reopened.get(i) is not None for i in ids)
