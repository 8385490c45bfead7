"""The Azure daily budget holds against a real server over HTTP: concurrent forced escalations, a kill -9 and a
restart. The server is the real app (``tests/ops/scripted_server.py``: a paced local engine, no model to load);
Azure is the fake Azure, both on 127.0.0.1; the spend lives in SQLite under the test's MSSERVE_STATE_DIR.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import LiveServer, stop_server
from tests.fakes.fake_azure import FakeAzure, Reply
from tests.ops.conftest import metric, start_scripted_server

KEY = "azure-test-key"
FORCED = {"x-msserve-route": "azure"}
MESSAGES = [{"role": "user", "content": "Prove that there are infinitely many primes."}]


@pytest.fixture
def fake() -> Iterator[FakeAzure]:
    with FakeAzure(api_key=KEY, deployment="gpt-4o") as server:
        yield server


def _start(fake: FakeAzure, tmp_path: Path, state: Path) -> LiveServer:
    return start_scripted_server(
        tmp_path,
        {
            "MSSERVE_STATE_DIR": str(state),
            "MSSERVE_AZURE_ENDPOINT": f"{fake.endpoint}/openai/v1/",
            "MSSERVE_AZURE_API_KEY": KEY,
            "MSSERVE_AZURE_DEPLOYMENT": "gpt-4o",
            "MSSERVE_AZURE_DAILY_BUDGET_USD": "3",
            # A dollar per completion token and nothing for the prompt: a one-token answer costs exactly $1.
            "MSSERVE_AZURE_PRICE_INPUT_PER_MTOK": "0",
            "MSSERVE_AZURE_PRICE_OUTPUT_PER_MTOK": "1000000",
        },
    )


def _kill(server: LiveServer) -> None:
    server.process.kill()  # SIGKILL: no shutdown, no settling
    server.process.wait(30)


def _spent_today(server: LiveServer) -> float | None:
    return metric(httpx.get(f"{server.base_url}/metrics", timeout=10).text, "msserve_azure_spend_today_usd")


async def _forced(client: openai.AsyncOpenAI, max_tokens: int) -> str:
    """'paid' for an Azure answer, else the error code the server gave."""
    try:
        await client.chat.completions.create(
            model="paced-test",
            messages=MESSAGES,
            max_tokens=max_tokens,
            extra_headers=FORCED,  # type: ignore[arg-type]
        )
    except openai.APIStatusError as exc:
        return f"{exc.status_code} {exc.body.get('code') if isinstance(exc.body, dict) else exc.body}"
    return "paid"


def _client(server: LiveServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=60)


def test_twelve_concurrent_one_dollar_escalations_pay_for_three_and_a_restart_keeps_the_total(
    fake: FakeAzure, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    # Every answer waits before its first byte, so all twelve are in flight together.
    fake.script += [Reply(text="Hi.", delay_s=0.5) for _ in range(12)]
    server = _start(fake, tmp_path, state)
    try:

        async def burst() -> list[str]:
            async with _client(server) as client:
                return await asyncio.gather(*(_forced(client, max_tokens=1) for _ in range(12)))

        outcomes = asyncio.run(burst())
        assert sorted(outcomes) == ["429 azure_budget_exhausted"] * 9 + ["paid"] * 3
        assert len(fake.requests) == 3  # Azure was asked, and paid, for three answers only
        assert _spent_today(server) == pytest.approx(3.0)
    finally:
        _kill(server)

    restarted = _start(fake, tmp_path, state)  # a crash loop cannot reset the cap
    try:
        assert _spent_today(restarted) == pytest.approx(3.0)
        assert asyncio.run(_with(restarted, max_tokens=1)) == "429 azure_budget_exhausted"
        assert len(fake.requests) == 3
    finally:
        stop_server(restarted)


async def _with(server: LiveServer, *, max_tokens: int) -> str:
    async with _client(server) as client:
        return await _forced(client, max_tokens)


def test_a_reservation_open_when_the_server_is_killed_still_counts_after_restart(
    fake: FakeAzure, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    fake.script.append(Reply(text="Hi.", delay_s=30.0))  # Azure is still answering when the server dies
    server = _start(fake, tmp_path, state)
    caller = threading.Thread(target=lambda: _swallow(lambda: asyncio.run(_with(server, max_tokens=3))), daemon=True)
    try:
        caller.start()  # reserves $3, the whole budget
        while not fake.requests:
            caller.join(0.05)
        assert _spent_today(server) == pytest.approx(3.0)
    finally:
        _kill(server)
    caller.join(30)

    restarted = _start(fake, tmp_path, state)
    try:
        # Settled at start-up at what it reserved: its real cost is unknown, and $3 is the most it could be.
        assert _spent_today(restarted) == pytest.approx(3.0)
        assert asyncio.run(_with(restarted, max_tokens=1)) == "429 azure_budget_exhausted"
        assert len(fake.requests) == 1
    finally:
        stop_server(restarted)


def _swallow(run: Callable[[], object]) -> None:
    with contextlib.suppress(Exception):  # the server was killed under it: the connection drops
        run()
