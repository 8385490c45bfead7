"""API keys: Bearer and api-key headers, 401 in OpenAI's shape, open paths, metrics/dashboard switches, sessions."""

from __future__ import annotations

import logging

import httpx
import pytest

from server.config import Settings
from server.middleware.auth import SESSION_COOKIE, ApiKeys, parse_api_keys, warn_if_exposed
from tests.ops.conftest import CHAT

KEYS = "alice:sk-alice-00000001,bob:sk-bob-000000002"


def test_parse_api_keys() -> None:
    a, b = "sk-a-0123456789abcdef", "sk-b-0123456789abcdef"
    assert parse_api_keys(f"alice:{a}, bob:{b}") == {"alice": a, "bob": b}
    assert parse_api_keys(f"{a},{b}") == {"key1": a, "key2": b}
    assert parse_api_keys(None) == {}  # unset: no keys (open); set, it must name keys (tests/hostile)
    with pytest.raises(ValueError):
        parse_api_keys("alice:")
    with pytest.raises(ValueError):
        parse_api_keys(f"alice:{a},alice:{b}")


def test_match_names_the_key_and_rejects_others() -> None:
    keys = ApiKeys(parse_api_keys(KEYS))
    assert keys.match("sk-bob-000000002") == "bob"
    assert keys.match("sk-bob-") is None and keys.match("") is None and keys.match(None) is None


async def test_no_keys_means_open(make_client) -> None:
    client = make_client()
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    assert (await client.get("/metrics")).status_code == 200


async def test_missing_or_wrong_key_is_openai_shaped_401(make_client) -> None:
    client = make_client(api_keys=KEYS)
    no_scheme = {"authorization": "sk-alice-00000001"}
    for headers in ({}, {"authorization": "Bearer sk-nope"}, {"api-key": "sk-nope"}, no_scheme):
        response = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert response.status_code == 401, headers
        assert response.json() == {"error": {"message": response.json()["error"]["message"],
                                             "type": "authentication_error", "param": None,
                                             "code": "invalid_api_key"}}
        assert response.headers["www-authenticate"] == "Bearer"
    assert (await client.get("/v1/models")).status_code == 401
    assert (await client.get("/v1/no-such-path")).status_code == 401  # no route map for strangers


async def test_bearer_and_api_key_headers_are_accepted(make_client) -> None:
    client = make_client(api_keys=KEYS)
    bearer = await client.post("/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer sk-alice-00000001"})
    azure_style = await client.post("/v1/chat/completions", json=CHAT, headers={"api-key": "sk-bob-000000002"})
    assert bearer.status_code == 200 and azure_style.status_code == 200
    recent = client.app.state.telemetry.recent  # type: ignore[attr-defined]
    assert [row["key"] for row in recent] == ["alice", "bob"]  # the key's name, never the key


async def test_health_and_ready_stay_open(make_client) -> None:
    client = make_client(api_keys=KEYS)
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/ready")).status_code == 200


async def test_metrics_need_a_key_unless_open(make_client) -> None:
    closed = make_client(api_keys=KEYS)
    assert (await closed.get("/metrics")).status_code == 401
    assert (await closed.get("/metrics", headers={"api-key": "sk-alice-00000001"})).status_code == 200
    opened = make_client(api_keys=KEYS, metrics_open=True)
    assert (await opened.get("/metrics")).status_code == 200
    assert (await opened.post("/v1/chat/completions", json=CHAT)).status_code == 401


async def test_dashboard_login_session_and_logout(make_client) -> None:
    client = make_client(api_keys=KEYS)
    page = await client.get("/")
    assert page.status_code == 200 and 'id="login"' in page.text and 'id="recent"' not in page.text
    assert (await client.get("/dashboard/api/state")).status_code == 401
    assert (await client.post("/dashboard/login", headers={"authorization": "Bearer sk-wrong"})).status_code == 401
    login = await client.post("/dashboard/login", headers={"authorization": "Bearer sk-alice-00000001"})
    assert login.status_code == 204
    set_cookie = login.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=strict" in set_cookie and "sk-alice-00000001" not in set_cookie
    cookie = client.cookies[SESSION_COOKIE]
    assert cookie.startswith("alice.")
    assert 'id="recent"' in (await client.get("/")).text
    assert (await client.get("/dashboard/api/state")).status_code == 200
    # The session is for the dashboard only: the API still wants the key.
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 401
    client.cookies.clear()
    forged = cookie.replace("alice.", "bob.")  # another name under alice's signature
    response = await client.get("/dashboard/api/state", headers={"cookie": f"{SESSION_COOKIE}={forged}"})
    assert response.status_code == 401
    cleared = (await client.post("/dashboard/logout")).headers["set-cookie"]
    assert f'{SESSION_COOKIE}=""' in cleared and "max-age=0" in cleared.lower()


async def test_dashboard_open_switch(make_client) -> None:
    client = make_client(api_keys=KEYS, dashboard_open=True)
    assert 'id="recent"' in (await client.get("/")).text
    assert (await client.get("/dashboard/api/state")).status_code == 200


def test_expired_session_is_refused() -> None:
    keys = ApiKeys(parse_api_keys(KEYS))
    cookie = keys.session_cookie("alice", now=1000.0)
    assert keys.session_name(cookie, now=1001.0) == "alice"
    assert keys.session_name(cookie, now=1000.0 + 13 * 3600) is None
    assert keys.session_name("garbage", now=1001.0) is None


def test_warns_when_exposed_without_keys(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("tests.ops.warn")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        assert warn_if_exposed(Settings(host="0.0.0.0"), ApiKeys({}), logger)
        assert not warn_if_exposed(Settings(host="127.0.0.1"), ApiKeys({}), logger)
        assert not warn_if_exposed(Settings(host="::1"), ApiKeys({}), logger)
        assert not warn_if_exposed(Settings(host="0.0.0.0"), ApiKeys({"a": "k"}), logger)
    assert ["no API keys" in record.message for record in caplog.records] == [True]


async def test_openai_sdk_sends_the_key(make_client) -> None:
    from openai import AsyncOpenAI, AuthenticationError

    client = make_client(api_keys=KEYS)
    http = httpx.AsyncClient(transport=client._transport)  # the same in-process app
    good = AsyncOpenAI(base_url="http://127.0.0.1:8000/v1", api_key="sk-bob-000000002", http_client=http, max_retries=0)
    completion = await good.chat.completions.create(model="paced-test", messages=CHAT["messages"], max_tokens=4)
    assert completion.choices[0].message.content
    bad = AsyncOpenAI(base_url="http://127.0.0.1:8000/v1", api_key="sk-evil", http_client=http, max_retries=0)
    with pytest.raises(AuthenticationError):
        await bad.chat.completions.create(model="paced-test", messages=CHAT["messages"], max_tokens=4)
    await http.aclose()
