"""Tenants: a plain key sees only its own requests; admin keys see all and reach /admin/*; forcing Azure is a
per-key permission (MSSERVE_AZURE_KEYS)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest
from fastapi import Depends, Request

from server.api.permissions import check_route_permission, require_admin
from server.middleware.auth import SESSION_COOKIE
from tests.fakes.fake_azure import FakeAzure
from tests.hostile.access_app import ALICE, BOB, KEYS, ROOT, app_client, bearer, chat
from tests.images import png_url

AZURE_KEY = "azure-test-key"


@pytest.fixture(scope="module")
def fake_azure() -> Iterator[FakeAzure]:
    with FakeAzure(api_key=AZURE_KEY, deployment="gpt-4o") as fake:
        yield fake


def azure_settings(fake: FakeAzure) -> dict[str, str]:
    return {"azure_endpoint": f"{fake.endpoint}/openai/v1/", "azure_api_key": AZURE_KEY, "azure_deployment": "gpt-4o"}


async def test_plain_keys_see_only_their_own_requests() -> None:
    async with app_client(api_keys=KEYS, admin_keys="root", log_contents=True) as client:
        for key, text in ((ALICE, "alice's secret prompt"), (BOB, "bob's secret prompt")):
            response = await client.post("/v1/chat/completions", json=chat(text), headers=bearer(key))
            assert response.status_code == 200
        ids = {row["key"]: row["request_id"] for row in client.app.state.telemetry.recent}  # type: ignore[attr-defined]

        alice = (await client.get("/dashboard/api/state", headers=bearer(ALICE))).json()
        assert alice["view"] == "own" and [row["key"] for row in alice["recent"]] == ["alice"]
        assert "alice's secret prompt" in json.dumps(alice)  # her own prompt, as log_contents allows
        assert "bob" not in json.dumps(alice) and ids["bob"] not in json.dumps(alice)
        assert alice["decisions"] == {"local": 1, "azure": 0} and alice["savings_usd"] is None

        root = (await client.get("/dashboard/api/state", headers=bearer(ROOT))).json()
        assert root["view"] == "all" and {row["key"] for row in root["recent"]} == {"alice", "bob"}
        assert root["decisions"] == {"local": 2, "azure": 0}

        # The server-rendered page too, signed in with alice's session cookie.
        assert (await client.post("/dashboard/login", headers=bearer(ALICE))).status_code == 204
        page = (await client.get("/")).text
        assert ids["alice"][:12] in page and ids["bob"][:12] not in page and "bob" not in page


async def test_anonymous_open_dashboard_shows_no_requests() -> None:
    async with app_client(api_keys=KEYS, dashboard_open=True) as client:
        assert (await client.post("/v1/chat/completions", json=chat(), headers=bearer(BOB))).status_code == 200
        state = (await client.get("/dashboard/api/state")).json()
        assert state["view"] == "own" and state["recent"] == []


async def test_admin_endpoints_need_an_admin_key() -> None:
    async with app_client(api_keys=KEYS, admin_keys="root") as client:
        plain = await client.post("/admin/no-such-endpoint", headers=bearer(ALICE))
        assert plain.status_code == 403 and plain.json()["error"]["code"] == "admin_required"
        assert plain.json()["error"]["type"] == "permission_error"
        assert (await client.post("/admin/no-such-endpoint")).status_code == 401
        # An admin key passes the gate (to the router, whose 404 says it is no refusal).
        assert (await client.post("/admin/no-such-endpoint", headers=bearer(ROOT))).status_code == 404
        # A session cookie is not enough for operator endpoints, even an admin's.
        assert (await client.post("/dashboard/login", headers=bearer(ROOT))).status_code == 204
        assert client.cookies.get(SESSION_COOKIE)
        assert (await client.post("/admin/no-such-endpoint")).status_code == 401


async def test_no_admin_keys_means_no_all_tenant_view() -> None:
    async with app_client(api_keys=KEYS) as client:
        assert (await client.get("/dashboard/api/state", headers=bearer(ROOT))).json()["view"] == "own"
        assert (await client.post("/admin/x", headers=bearer(ROOT))).status_code == 403


async def test_forcing_azure_is_a_per_key_permission(fake_azure: FakeAzure) -> None:
    async with app_client(api_keys=KEYS, azure_keys="alice", **azure_settings(fake_azure)) as client:
        http = httpx.AsyncClient(transport=client._transport)  # the same in-process app, through the SDK
        bob = openai.AsyncOpenAI(base_url="http://127.0.0.1:8000/v1", api_key=BOB, http_client=http, max_retries=0)
        with pytest.raises(openai.PermissionDeniedError) as caught:
            await bob.chat.completions.create(
                model="local-test",
                messages=chat()["messages"],
                max_tokens=4,
                extra_headers={"x-msserve-route": "Azure"},
            )
        assert caught.value.status_code == 403 and caught.value.code == "azure_not_permitted"
        fake_azure.reset()
        alice = openai.AsyncOpenAI(base_url="http://127.0.0.1:8000/v1", api_key=ALICE, http_client=http, max_retries=0)
        raw = await alice.chat.completions.with_raw_response.create(
            model="local-test", messages=chat()["messages"], max_tokens=4, extra_headers={"x-msserve-route": "azure"}
        )
        assert raw.headers["x-msserve-tier"] == "azure" and len(fake_azure.requests) == 1
        # bob may still choose local (or let the router decide); captions obey the same rule.
        local = await client.post(
            "/v1/chat/completions", json=chat(), headers={**bearer(BOB), "x-msserve-route": "local"}
        )
        assert local.status_code == 200 and local.headers["x-msserve-tier"] == "local"
        captions = await client.post(
            "/v1/captions", json={"image_urls": [png_url()]}, headers={**bearer(BOB), "x-msserve-route": "azure"}
        )
        assert captions.status_code == 403 and captions.json()["error"]["code"] == "azure_not_permitted"
        await http.aclose()
    assert len(fake_azure.requests) == 1  # bob's refused requests never reached Azure


async def test_unset_azure_keys_lets_every_key_force_azure(fake_azure: FakeAzure) -> None:
    async with app_client(api_keys=KEYS, **azure_settings(fake_azure)) as client:
        response = await client.post(
            "/v1/chat/completions", json=chat(), headers={**bearer(BOB), "x-msserve-route": "azure"}
        )
    assert response.status_code == 200 and response.headers["x-msserve-tier"] == "azure"


async def test_permission_helpers_for_other_endpoints() -> None:
    """What other code calls: an alias that resolves to `azure` is held to MSSERVE_AZURE_KEYS like the header,
    and operator endpoints outside /admin/ use require_admin."""
    async with app_client(api_keys=KEYS, admin_keys="root", azure_keys="alice") as client:
        app = client.app  # type: ignore[attr-defined]

        async def aliased(request: Request) -> dict[str, str]:
            return {"route": check_route_permission(request, "azure", param="model")}  # e.g. "model": "gpt-4o"

        app.add_api_route("/v1/alias-probe", aliased, methods=["POST"])
        app.add_api_route("/ops-probe", lambda: {"ok": True}, dependencies=[Depends(require_admin)])
        refused = await client.post("/v1/alias-probe", headers=bearer(BOB))
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "azure_not_permitted"
        assert refused.json()["error"]["param"] == "model"
        assert (await client.post("/v1/alias-probe", headers=bearer(ALICE))).json() == {"route": "azure"}
        assert (await client.get("/ops-probe", headers=bearer(ALICE))).status_code == 403
        assert (await client.get("/ops-probe", headers=bearer(ROOT))).json() == {"ok": True}
