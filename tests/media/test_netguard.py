"""The address policy, checked on addresses alone: nothing here touches the network."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from server.errors import ImageError
from server.media import AddressPolicy, forbidden_reason
from server.media._netguard import resolve_checked
from tests.images import expect_error
from tests.media.loopback import resolver_of

# address -> a word the reason must contain ("" where Python versions classify differently)
FORBIDDEN = {
    "127.0.0.1": "loopback",
    "127.255.255.254": "loopback",
    "0.0.0.0": "unspecified",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "192.168.1.1": "private",
    "169.254.169.254": "cloud metadata",
    "169.254.10.10": "link-local",
    "100.64.0.1": "",  # carrier-grade NAT
    "100.100.100.200": "",  # Alibaba Cloud metadata
    "224.0.0.1": "multicast",
    "240.0.0.1": "",  # reserved; Python files it under private
    "255.255.255.255": "",
    "192.0.2.1": "",  # documentation range
    "::1": "loopback",
    "::": "unspecified",
    "fe80::1": "link-local",
    "fc00::1": "private",
    "fd00:ec2::254": "metadata",  # AWS metadata over IPv6
    "ff02::1": "multicast",
    "::ffff:127.0.0.1": "IPv4-mapped",
    "::ffff:8.8.8.8": "IPv4-mapped",  # even a public one: refused unless allow-listed
    "2002:7f00:1::1": "embeds an IPv4",  # 6to4 of 127.0.0.1
    "64:ff9b::7f00:1": "embeds an IPv4",  # NAT64 of 127.0.0.1
    "2001:0:4136:e378:8000:63bf:3fff:fdd2": "embeds an IPv4",  # Teredo
}


@pytest.mark.parametrize(("address", "reason"), FORBIDDEN.items())
def test_non_public_addresses_are_forbidden(address: str, reason: str) -> None:
    found = forbidden_reason(ipaddress.ip_address(address))
    assert found is not None and reason in found


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is None


def test_allow_list_entries() -> None:
    policy = AddressPolicy.from_entries(["10.0.0.0/8", "::1", " Images.Internal. ", "*.corp.example", "[fd00::1]", ""])
    policy.check(ipaddress.ip_address("10.9.9.9"), "anything")
    policy.check(ipaddress.ip_address("::1"), "anything")
    policy.check(ipaddress.ip_address("fd00::1"), "anything")
    policy.check(ipaddress.ip_address("192.168.0.5"), "images.internal")
    policy.check(ipaddress.ip_address("192.168.0.5"), "a.b.corp.example.")
    for address, host in [("192.168.0.5", "corp.example.evil"), ("169.254.169.254", "x"), ("127.0.0.1", "x")]:
        with pytest.raises(ImageError) as caught:
            policy.check(ipaddress.ip_address(address), host)
        expect_error(caught, 400, "image_url_forbidden")


@pytest.mark.parametrize("entry", ["*.", "a..b", "http://x/y", "*"])
def test_bad_allow_list_entries_fail_loudly(entry: str) -> None:
    with pytest.raises(ValueError):
        AddressPolicy.from_entries([entry])


def test_one_bad_answer_refuses_the_name() -> None:
    resolve = resolver_of({"mixed.test": ["93.184.216.34", "10.0.0.7"]})
    with pytest.raises(ImageError) as caught:
        asyncio.run(resolve_checked("mixed.test", 443, AddressPolicy(), resolve))
    expect_error(caught, 400, "image_url_forbidden")


def test_resolution_failures() -> None:
    for answers in ({}, {"empty.test": []}):
        with pytest.raises(ImageError) as caught:
            asyncio.run(resolve_checked("empty.test", 443, AddressPolicy(), resolver_of(answers)))
        expect_error(caught, 400, "image_fetch_failed")
    with pytest.raises(ImageError) as caught:
        asyncio.run(resolve_checked("junk.test", 443, AddressPolicy(), resolver_of({"junk.test": ["not-an-ip"]})))
    expect_error(caught, 400, "image_url_forbidden")


def test_ip_literals_skip_the_resolver() -> None:
    calls: list[str] = []
    assert asyncio.run(resolve_checked("8.8.8.8", 443, AddressPolicy(), resolver_of({}, calls))) == [
        ipaddress.ip_address("8.8.8.8")
    ]
    assert calls == []
