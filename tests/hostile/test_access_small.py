"""The smaller holes: address guard (site-local, metadata behind an allow-listed name, IDNA forms), the
dashboard session's absolute lifetime, forwarded headers only from trusted proxies, /ready's detail, SDK body
logging at debug level, and plain-http Azure endpoints. Nothing here connects anywhere but loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections.abc import Iterator

import httpx
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from server.cli.main import app as cli_app
from server.config import Settings
from server.engines.base import EngineHealth
from server.errors import ImageError
from server.media import AddressPolicy, SafeFetcher, forbidden_reason
from server.middleware.auth import SESSION_COOKIE
from server.sdk_logging import BODY_LOGGERS, CHATTY_LOGGERS, quiet_sdk_loggers
from tests.conftest import LOOPBACK
from tests.fakes.fake_azure import FakeAzure
from tests.fakes.scripted_engine import ScriptedEngine
from tests.hostile.access_app import ALICE, KEYS, ROOT, app_client, bearer, chat
from tests.images import image_bytes

PUBLIC = "93.184.216.34"


# -- the address guard ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("address", ["fec0::1", "fec0:1234::5", "feff:ffff::1", "3fff::1"])
def test_site_local_and_documentation_v6_are_forbidden(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",
        "fd00:ec2::254",
        "168.63.129.16",
        "100.100.100.200",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
    ],
)
def test_allow_list_never_opens_metadata_addresses(address: str) -> None:
    policy = AddressPolicy.from_entries(
        [
            "images.internal",
            "169.254.0.0/16",
            "fd00::/8",
            "::ffff:0:0/96",
            "64:ff9b::/96",
            "168.63.0.0/16",
            "100.64.0.0/10",
        ]
    )
    for host in ("images.internal", "anything"):
        with pytest.raises(ImageError) as caught:
            policy.check(ipaddress.ip_address(address), host)  # the name's DNS may point anywhere
        assert caught.value.code == "image_url_forbidden"
    policy.check(ipaddress.ip_address("169.254.10.10"), "images.internal")  # what the list is for still works
    policy.check(ipaddress.ip_address("fd00::7"), "anything")


def _fetch_recorded(url: str, allow: list[str], answer: str) -> tuple[list[str], httpx.Request]:
    looked_up: list[str] = []
    sent: list[httpx.Request] = []

    async def resolve(host: str, port: int) -> list[str]:
        looked_up.append(host)
        return [answer]

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, stream=httpx.ByteStream(image_bytes()), headers={"content-type": "image/png"})

    fetcher = SafeFetcher(
        policy=AddressPolicy.from_entries(allow), resolver=resolve, transport=httpx.MockTransport(handle)
    )
    asyncio.run(fetcher.fetch(url, max_bytes=1_000_000))
    return looked_up, sent[0]


def test_idna_name_is_one_form_for_lookup_sni_host_and_allow_list() -> None:
    # IDNA 2003 (the OS resolver, Python's ssl) maps "faß" to "fass"; IDNA 2008 (httpx) to "xn--fa-hia".
    looked_up, request = _fetch_recorded("https://Faß.DE.:8443/a.png", [], PUBLIC)
    assert looked_up == ["xn--fa-hia.de"]
    assert request.headers["host"] == "xn--fa-hia.de:8443"
    assert request.extensions["sni_hostname"] == "xn--fa-hia.de"
    assert request.url.host == PUBLIC  # connected to the checked address
    # An allow-list entry written in Unicode matches the same name, whichever way the URL spells it.
    looked_up, request = _fetch_recorded("https://xn--fa-hia.de/a.png", ["faß.de"], "10.0.0.5")
    assert looked_up == ["xn--fa-hia.de"] and request.headers["host"] == "xn--fa-hia.de"


# -- the dashboard session ------------------------------------------------------------------------------------
async def test_a_session_cannot_renew_itself() -> None:
    async with app_client(api_keys=KEYS) as client:
        assert (await client.post("/dashboard/login", headers=bearer(ALICE))).status_code == 204
        first = client.cookies[SESSION_COOKIE]
        renewed = await client.post("/dashboard/login")  # the cookie alone, no key
        assert renewed.status_code == 401 and "set-cookie" not in renewed.headers
        assert client.cookies[SESSION_COOKIE] == first  # the same absolute expiry as before
        assert (await client.get("/dashboard/api/state")).status_code == 200  # the session itself still works


# -- forwarded headers and Secure cookies ---------------------------------------------------------------------
async def _login_cookie(client: httpx.AsyncClient, headers: dict[str, str]) -> str:
    response = await client.post("/dashboard/login", headers={**bearer(ALICE), **headers})
    assert response.status_code == 204
    return response.headers["set-cookie"].lower()


async def test_secure_cookie_on_https_seen_directly() -> None:
    async with app_client(api_keys=KEYS, base_url="https://127.0.0.1:8443") as client:
        assert "secure" in await _login_cookie(client, {})


async def test_forwarded_proto_only_from_trusted_proxies() -> None:
    forwarded = {"x-forwarded-proto": "https", "x-forwarded-for": "203.0.113.9"}
    async with app_client(api_keys=KEYS) as client:  # no trusted proxies: nobody's word is taken
        assert "secure" not in await _login_cookie(client, forwarded)
    async with app_client(api_keys=KEYS, trusted_proxies="10.0.0.0/8", client=("10.1.2.3", 4000)) as client:
        assert "secure" in await _login_cookie(client, forwarded)
    async with app_client(api_keys=KEYS, trusted_proxies="10.0.0.0/8", client=("192.0.2.7", 4000)) as client:
        assert "secure" not in await _login_cookie(client, forwarded)  # not the proxy: a forged header


def test_trusted_proxies_must_be_addresses() -> None:
    with pytest.raises(ValidationError):
        Settings(trusted_proxies="proxy.example")


def test_uvicorn_does_not_trust_loopback_by_itself(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A real server process: a local client's X-Forwarded-Proto is not believed unless it is a listed proxy."""
    from tests.conftest import stop_server
    from tests.ops.conftest import start_scripted_server

    server = start_scripted_server(tmp_path, {"MSSERVE_API_KEYS": f"alice:{ALICE}"})
    try:
        response = httpx.post(
            f"{server.base_url}/dashboard/login", headers={**bearer(ALICE), "x-forwarded-proto": "https"}, timeout=10
        )
        assert response.status_code == 204 and "secure" not in response.headers["set-cookie"].lower()
    finally:
        stop_server(server)


# -- /ready ----------------------------------------------------------------------------------------------------
class BrokenEngine(ScriptedEngine):
    def health(self) -> EngineHealth:
        return EngineHealth(
            ready=False, state="failed", detail="OSError: /srv/secret-models/weights.safetensors: permission denied"
        )


async def test_ready_hides_failure_text_from_all_but_admins() -> None:
    async with app_client(BrokenEngine(), api_keys=KEYS, admin_keys="root") as client:
        for headers in ({}, bearer(ALICE)):
            response = await client.get("/ready", headers=headers)
            assert response.status_code == 503 and response.json()["status"] == "failed"
            assert "secret-models" not in response.text and response.json()["engine"]["detail"]
        admin = await client.get("/ready", headers=bearer(ROOT))
        assert admin.status_code == 503 and "secret-models" in admin.json()["engine"]["detail"]
    async with app_client(BrokenEngine()) as client:  # no keys: nobody is authenticated, nobody sees it
        assert "secret-models" not in (await client.get("/ready")).text


# -- SDK body logging ------------------------------------------------------------------------------------------
@pytest.fixture
def logger_levels() -> Iterator[None]:
    saved = {name: logging.getLogger(name).level for name in (*BODY_LOGGERS, *CHATTY_LOGGERS)}
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


async def _escalate(caplog: pytest.LogCaptureFixture, prompt: str) -> None:
    with FakeAzure(api_key="azure-test-key") as fake:
        settings = {
            "azure_endpoint": f"{fake.endpoint}/openai/v1/",
            "azure_api_key": "azure-test-key",
            "azure_deployment": "gpt-4o",
        }
        async with app_client(**settings) as client:
            response = await client.post(
                "/v1/chat/completions", json=chat(prompt), headers={"x-msserve-route": "azure"}
            )
            assert response.status_code == 200 and response.headers["x-msserve-tier"] == "azure"


@pytest.mark.usefixtures("logger_levels")
async def test_debug_level_does_not_log_azure_bodies(caplog: pytest.LogCaptureFixture) -> None:
    """The real path at debug level: an escalated prompt appears in no log record."""
    caplog.set_level(logging.DEBUG)
    quiet_sdk_loggers(log_contents=False)
    await _escalate(caplog, "a private prompt about project nightingale")
    assert "nightingale" not in caplog.text
    assert any(record.name.startswith("msserve") for record in caplog.records)  # the capture did capture


@pytest.mark.usefixtures("logger_levels")
def test_sdk_body_lines_are_dropped_unless_contents_may_be_logged(caplog: pytest.LogCaptureFixture) -> None:
    """openai 1.x (pyproject allows >=1.60) logs every request's options, the body included, at debug level;
    the installed SDK no longer does, so its line is sent here as that SDK sends it."""
    caplog.set_level(logging.DEBUG)
    sdk = logging.getLogger("openai._base_client")
    body = {"method": "post", "url": "/chat/completions", "json_data": {"messages": [{"content": "nightingale"}]}}
    quiet_sdk_loggers(log_contents=False)
    sdk.debug("Request options: %s", body)
    assert "nightingale" not in caplog.text
    quiet_sdk_loggers(log_contents=True)  # the operator asked for contents in the log
    sdk.debug("Request options: %s", body)
    assert "nightingale" in caplog.text


# -- the Azure endpoint ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "endpoint",
    [
        "http://myres.openai.azure.com",
        "http://10.0.0.5/openai/v1/",
        "ftp://myres.openai.azure.com",
        "myres.openai.azure.com",
    ],
)
def test_azure_endpoint_must_be_https(endpoint: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(azure_endpoint=endpoint)
    assert "https://" in str(caught.value)


@pytest.mark.parametrize(
    "endpoint",
    ["https://myres.openai.azure.com", "http://127.0.0.1:9/openai/v1/", "http://[::1]:9", "http://localhost:9/models"],
)
def test_https_or_loopback_azure_endpoints_pass(endpoint: str) -> None:
    assert Settings(azure_endpoint=endpoint).azure_endpoint == endpoint


def test_msserve_serve_refuses_plain_http_azure(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("MSSERVE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MSSERVE_AZURE_ENDPOINT", "http://myres.openai.azure.com")
    result = CliRunner().invoke(cli_app, ["serve", "--host", LOOPBACK, "--port", "9"])
    assert result.exit_code == 2 and "MSSERVE_AZURE_ENDPOINT" in result.output, result.output
