"""MSSERVE_API_KEYS that parse to nothing or are malformed stop start-up; they never mean "no auth"."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from server.config import Settings
from server.middleware.auth import ApiKeys, ApiKeysError, parse_api_keys
from tests.conftest import REPO, free_port
from tests.hostile.access_app import ALICE, BOB, KEYS, app_client, bearer, chat

LONG = "sk-0123456789abcdef"  # 19 characters


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (" , ", "empty"),
        ("", "names no key"),
        ("   ", "names no key"),
        (",", "empty"),
        (f"alice:{ALICE},", "empty"),  # a stray comma, or ",$UNSET_VARIABLE"
        (f"alice:{ALICE},,bob:{BOB}", "entry 2 is empty"),
        ("alice:", "no key"),
        (f":{LONG}", "empty name"),  # a nameless key that contains ':'
        (f"sk-abc:{LONG}", "looks like a key"),  # a bare key with ':' in it would become name "sk-abc"
        (f"a/b+c=:{LONG}", "invalid name"),  # base64-ish text before the ':' is not a name
        ("alice:short-key", "at least 16"),
        ("0123456789abcde", "at least 16"),  # a bare key, 15 characters
        (f"alice:{ALICE},alice:{BOB}", "twice"),
        (f"alice:{ALICE},bob:{ALICE}", "repeats another entry's key"),
        ("alice:sk-alice 0123456789", "spaces"),
    ],
)
def test_malformed_keys_are_refused(value: str, says: str) -> None:
    with pytest.raises(ApiKeysError) as caught:
        parse_api_keys(value)
    assert says in str(caught.value)
    for secret in (ALICE, BOB, LONG):
        assert secret not in str(caught.value)  # messages name entries, never keys


def test_entries_split_on_the_first_colon_only() -> None:
    assert parse_api_keys(f"alice:{ALICE}:with:colons") == {"alice": f"{ALICE}:with:colons"}
    assert parse_api_keys(f" alice : {ALICE} , {LONG} ") == {"alice": ALICE, "key2": LONG}
    assert parse_api_keys(None) == {}  # unset: the only way to run without keys


def test_settings_with_keys_that_parse_to_nothing_build_no_app() -> None:
    with pytest.raises(ApiKeysError):
        ApiKeys.from_settings(Settings(api_keys=" , "))


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"api_keys": KEYS, "admin_keys": "root,carol"}, "'carol'"),
        ({"api_keys": KEYS, "azure_keys": "mallory"}, "'mallory'"),
        ({"admin_keys": "root"}, "MSSERVE_API_KEYS is not set"),
        ({"azure_keys": "alice"}, "MSSERVE_API_KEYS is not set"),
    ],
)
def test_key_lists_must_name_configured_keys(overrides: dict[str, str], says: str) -> None:
    with pytest.raises(ApiKeysError) as caught:
        ApiKeys.from_settings(Settings(**overrides))
    assert says in str(caught.value)


async def test_configured_keys_are_enforced() -> None:
    async with app_client(api_keys=KEYS) as client:
        assert (await client.post("/v1/chat/completions", json=chat())).status_code == 401
        assert (await client.post("/v1/chat/completions", json=chat(), headers=bearer(ALICE))).status_code == 200


@pytest.mark.parametrize("value", [" , ", "alice:short"])
def test_msserve_serve_refuses_to_start(value: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A real `msserve serve`: exits non-zero with the reason, and never binds its port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSERVE_")}
    env.update(MSSERVE_API_KEYS=value, MSSERVE_STATE_DIR=str(tmp_path))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "server",
            "serve",
            "--profile",
            "tiny-mistral3",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "MSSERVE_API_KEYS" in done.stderr
    assert "Uvicorn running" not in done.stdout + done.stderr
