"""The remote fetcher. Two kinds of test, and no other:

* unit tests with the resolver and the transport injected (httpx.MockTransport): private, link-local and
  metadata addresses are only ever *answers of a fake resolver*, and the fake transport records what would
  have been sent, so nothing here can connect anywhere even if the guard were broken;
* tests against a local server on 127.0.0.1 / ::1 only.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.config import Settings
from server.errors import ImageError
from server.media import AddressPolicy, ImageIntake, SafeFetcher
from tests.images import expect_error
from tests.media.loopback import PNG_BYTES, LoopbackServer, resolver_of

PUBLIC = "93.184.216.34"
LIMIT = 1_000_000


class Recorder:
    """A transport that never touches the network: answers from a script, records every request."""

    def __init__(self, *responses: httpx.Response) -> None:
        self.requests: list[httpx.Request] = []
        self.responses = list(responses)
        self.transport = httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.responses:
            return httpx.Response(599)
        return self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]


def resp(status: int, body: bytes = b"", **headers: str) -> httpx.Response:
    """A streamed response, as a real transport gives (the fetcher reads raw bytes)."""
    return httpx.Response(status, stream=httpx.ByteStream(body), headers=headers)


def png() -> httpx.Response:
    return resp(200, PNG_BYTES, **{"content-type": "image/png"})


def fetcher(recorder: Recorder, answers: dict[str, list[str]], **options: object) -> SafeFetcher:
    return SafeFetcher(resolver=resolver_of(answers), transport=recorder.transport, **options)  # type: ignore[arg-type]


def refused(fetch: SafeFetcher, url: str, status: int, code: str, max_bytes: int = LIMIT) -> ImageError:
    with pytest.raises(ImageError) as caught:
        asyncio.run(fetch.fetch(url, max_bytes=max_bytes))
    return expect_error(caught, status, code)


# ---------------------------------------------------------------- injected resolver and transport


@pytest.mark.parametrize("address", ["169.254.169.254", "10.0.0.5", "192.168.0.1", "172.31.255.1", "fd00:ec2::254"])
def test_names_resolving_to_internal_addresses_are_never_contacted(address: str) -> None:
    recorder = Recorder(png())
    refused(fetcher(recorder, {"evil.test": [address]}), "https://evil.test/x.png", 400, "image_url_forbidden")
    assert recorder.requests == []


def test_connects_to_the_checked_address_with_the_name_in_host_and_sni() -> None:
    recorder = Recorder(png())
    calls: list[str] = []
    fetch = SafeFetcher(resolver=resolver_of({"img.example": [PUBLIC]}, calls), transport=recorder.transport)
    result = asyncio.run(fetch.fetch("https://img.example:8443/a.png?x=1", max_bytes=LIMIT))
    assert result.data == PNG_BYTES and result.content_type == "image/png"
    (request,) = recorder.requests
    assert request.url.host == PUBLIC and request.url.port == 8443 and request.url.raw_path == b"/a.png?x=1"
    assert request.headers["host"] == "img.example:8443"
    assert request.extensions["sni_hostname"] == "img.example"
    assert request.headers["accept-encoding"] == "identity"
    assert calls == ["img.example"]  # one lookup: a rebinding second answer is never asked for


def test_every_redirect_hop_is_checked_again() -> None:
    recorder = Recorder(httpx.Response(302, headers={"location": "https://metadata.test/latest/meta-data/"}), png())
    fetch = fetcher(recorder, {"img.example": [PUBLIC], "metadata.test": ["169.254.169.254"]})
    refused(fetch, "https://img.example/a.png", 400, "image_url_forbidden")
    assert [r.url.host for r in recorder.requests] == [PUBLIC]
    recorder = Recorder(httpx.Response(301, headers={"location": "http://127.0.0.1/"}))
    refused(fetcher(recorder, {"img.example": [PUBLIC]}, allow_http=True), "https://img.example/", 400,
            "image_url_forbidden")
    assert len(recorder.requests) == 1


@pytest.mark.parametrize(
    ("location", "code"),
    [("file:///etc/passwd", "image_url_forbidden"), ("http://img.example/b.png", "image_url_forbidden"),
     ("gopher://img.example/", "image_url_forbidden")],
)
def test_redirects_to_other_schemes_or_down_to_http_are_refused(location: str, code: str) -> None:
    recorder = Recorder(httpx.Response(302, headers={"location": location}))
    refused(fetcher(recorder, {"img.example": [PUBLIC]}), "https://img.example/a.png", 400, code)
    assert len(recorder.requests) == 1


def test_relative_redirect_is_followed_and_hops_are_capped() -> None:
    recorder = Recorder(httpx.Response(302, headers={"location": "/b.png"}), png())
    fetch = fetcher(recorder, {"img.example": [PUBLIC]}).fetch("https://img.example/a.png", max_bytes=LIMIT)
    result = asyncio.run(fetch)
    assert result.data == PNG_BYTES and [r.url.path for r in recorder.requests] == ["/a.png", "/b.png"]
    recorder = Recorder(httpx.Response(302, headers={"location": "/again"}))
    refused(fetcher(recorder, {"img.example": [PUBLIC]}, max_redirects=2), "https://img.example/", 400,
            "image_fetch_failed")
    assert len(recorder.requests) == 3


@pytest.mark.parametrize(
    ("response", "status", "code"),
    [
        (httpx.Response(404), 400, "image_fetch_failed"),
        (httpx.Response(500), 400, "image_fetch_failed"),
        (httpx.Response(302), 400, "image_fetch_failed"),  # no Location
        (resp(200, gzip.compress(PNG_BYTES), **{"content-encoding": "gzip"}), 400, "image_fetch_failed"),
        (resp(200, **{"content-length": str(10**12)}), 413, "image_too_large"),
        (resp(200, b"\x00" * (LIMIT + 1)), 413, "image_too_large"),
    ],
)
def test_bad_responses(response: httpx.Response, status: int, code: str) -> None:
    refused(fetcher(Recorder(response), {"img.example": [PUBLIC]}), "https://img.example/a", status, code)


@pytest.mark.parametrize(
    "url",
    ["http://img.example/a.png", "https://user:pw@img.example/a.png", "https:///a.png", "ftp://img.example/"],
)
def test_refused_before_any_lookup(url: str) -> None:
    recorder = Recorder(png())
    calls: list[str] = []
    fetch = SafeFetcher(resolver=resolver_of({}, calls), transport=recorder.transport)
    refused(fetch, url, 400, "image_url_forbidden")
    assert recorder.requests == [] and calls == []


def test_intake_fetches_https_and_checks_the_declared_type() -> None:
    recorder = Recorder(png(), resp(200, b"<html></html>", **{"content-type": "text/html"}))
    intake = ImageIntake(Settings(), fetcher=fetcher(recorder, {"img.example": [PUBLIC]}))
    budget = intake.budget()
    part = asyncio.run(intake.from_url("https://img.example/a.png", budget))
    assert part.source == "https" and part.image.mode == "RGB" and budget.images == 1
    with pytest.raises(ImageError) as caught:
        asyncio.run(intake.from_url("https://img.example/page.html", budget))
    expect_error(caught, 415, "image_unsupported_format")


def test_intake_caps_the_fetch_at_what_the_request_budget_has_left() -> None:
    recorder = Recorder(png())
    intake = ImageIntake(Settings(max_total_image_bytes=len(PNG_BYTES) - 1),
                         fetcher=fetcher(recorder, {"img.example": [PUBLIC]}))
    with pytest.raises(ImageError) as caught:
        asyncio.run(intake.from_url("https://img.example/a.png", intake.budget()))
    expect_error(caught, 413, "image_too_large")


def test_intake_with_fetching_disabled_refuses_https() -> None:
    recorder = Recorder(png())
    intake = ImageIntake(Settings(image_fetch_enabled=False), fetcher=fetcher(recorder, {"img.example": [PUBLIC]}))
    with pytest.raises(ImageError) as caught:
        asyncio.run(intake.from_url("https://img.example/a.png", intake.budget()))
    expect_error(caught, 400, "image_url_forbidden")
    assert recorder.requests == []


def test_settings_reach_the_fetcher() -> None:
    fetch = SafeFetcher.from_settings(Settings(allow_http=True, image_fetch_allowlist=["127.0.0.1"],
                                               image_fetch_max_redirects=1, image_fetch_read_timeout_s=2.5))
    assert fetch.allow_http and fetch.max_redirects == 1 and fetch.timeout.read == 2.5
    assert fetch.policy == AddressPolicy.from_entries(["127.0.0.1/32"])


# ---------------------------------------------------------------- real sockets, loopback only


def loopback_fetcher(allow: list[str] | None = None, **options: object) -> SafeFetcher:
    return SafeFetcher(policy=AddressPolicy.from_entries(allow or []), allow_http=True, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "localhost", "127.1", "2130706433", "0x7f000001", "0177.0.0.1", "[::ffff:127.0.0.1]"]
)
def test_loopback_names_and_forms_are_refused_by_default(http4: LoopbackServer, host: str) -> None:
    before = len(http4.seen)
    refused(loopback_fetcher(), f"{http4.base(host)}/img.png", 400, "image_url_forbidden")
    assert len(http4.seen) == before


def test_ipv6_loopback_is_refused_by_default(http6: LoopbackServer) -> None:
    before = len(http6.seen)
    refused(loopback_fetcher(), f"{http6.base()}/img.png", 400, "image_url_forbidden")
    assert len(http6.seen) == before


@pytest.mark.parametrize("allow", [["127.0.0.1/32"], ["127.0.0.0/8"], ["localhost"]])
def test_allow_list_opens_loopback(http4: LoopbackServer, allow: list[str]) -> None:
    host = "localhost" if allow == ["localhost"] else "127.0.0.1"
    result = asyncio.run(loopback_fetcher(allow).fetch(f"{http4.base(host)}/img.png", max_bytes=LIMIT))
    assert result.data == PNG_BYTES
    assert http4.seen[-1] == ("/img.png", f"{host}:{http4.port}")


def test_ipv6_allow_list(http6: LoopbackServer) -> None:
    result = asyncio.run(loopback_fetcher(["::1"]).fetch(f"{http6.base()}/img.png", max_bytes=LIMIT))
    assert result.data == PNG_BYTES


def test_pinned_name_reaches_the_checked_address(http4: LoopbackServer) -> None:
    # "images.test" exists only in the injected resolver: the request can only succeed if the connection goes to
    # the address that was checked, with no second lookup by the HTTP stack.
    fetch = loopback_fetcher(["127.0.0.1"], resolver=resolver_of({"images.test": ["127.0.0.1"]}))
    assert asyncio.run(fetch.fetch(f"http://images.test:{http4.port}/img.png", max_bytes=LIMIT)).data == PNG_BYTES
    assert http4.seen[-1] == ("/img.png", f"images.test:{http4.port}")


def test_real_redirect_to_a_forbidden_hop(http4: LoopbackServer, http6: LoopbackServer) -> None:
    target, before = f"{http6.base()}/img.png", len(http6.seen)
    refused(loopback_fetcher(["127.0.0.1"]), f"{http4.base()}/redirect?to={target}", 400, "image_url_forbidden")
    assert len(http6.seen) == before
    fetch = loopback_fetcher(["127.0.0.1", "::1"]).fetch(f"{http4.base()}/redirect?to={target}", max_bytes=LIMIT)
    result = asyncio.run(fetch)
    assert result.data == PNG_BYTES and result.url == target


def test_real_redirect_loop_slow_server_and_endless_body(http4: LoopbackServer) -> None:
    fetch = loopback_fetcher(["127.0.0.1"], max_redirects=3, read_timeout_s=0.3)
    refused(fetch, f"{http4.base()}/loop", 400, "image_fetch_failed")
    refused(fetch, f"{http4.base()}/slow", 400, "image_fetch_failed")
    refused(fetch, f"{http4.base()}/missing", 400, "image_fetch_failed")
    refused(fetch, f"{http4.base()}/endless", 413, "image_too_large")
    refused(fetch, f"{http4.base()}/huge-declared", 413, "image_too_large")
    refused(loopback_fetcher(["127.0.0.1"], total_timeout_s=0.3), f"{http4.base()}/slow", 400, "image_fetch_failed")


def test_connection_refused_is_a_fetch_failure(http4: LoopbackServer) -> None:
    with LoopbackServer("127.0.0.1") as closed:
        port = closed.port
    refused(loopback_fetcher(["127.0.0.1"]), f"http://127.0.0.1:{port}/img.png", 400, "image_fetch_failed")


# ---------------------------------------------------------------- TLS: SNI and certificate follow the name


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A self-signed certificate for images.test, made in-process (no openssl command needed)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "images.test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("images.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    yield cert_path, key_path


def test_https_to_a_pinned_address_verifies_the_certificate_for_the_name(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    names = {"images.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}
    fetch = SafeFetcher(policy=AddressPolicy.from_entries(["127.0.0.1"]), resolver=resolver_of(names),
                        ssl_context=client_context)
    with LoopbackServer("127.0.0.1", tls=server_context) as server:
        result = asyncio.run(fetch.fetch(f"https://images.test:{server.port}/img.png", max_bytes=LIMIT))
        assert result.data == PNG_BYTES and server.sni[-1] == "images.test"
        assert server.seen[-1] == ("/img.png", f"images.test:{server.port}")
        # same address, another name: the certificate does not match, so no request is made
        refused(fetch, f"https://other.test:{server.port}/img.png", 400, "image_fetch_failed")
        assert len(server.seen) == 1
