from __future__ import annotations

from pathlib import Path

import pytest

from server.config import DEFAULT_PROFILES_DIR, list_profiles, load_profile, load_settings
from server.errors import InvalidRequestError


def test_profiles_on_disk_are_valid() -> None:
    names = {profile.name for profile in list_profiles(DEFAULT_PROFILES_DIR)}
    assert {"tiny-mistral3", "mistral-small-3.1", "mistral-small-3.1-fp8", "mistral-small-3.1-w4a16",
            "mistral-small-3.1-bnb4"} <= names
    assert load_profile("mistral-small-3.1-bnb4").engine == "hf"  # bitsandbytes runs through transformers
    assert load_profile("mistral-small-3.1").format == "mistral"
    assert load_profile("tiny-mistral3").demo


def test_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        load_profile("nope")
    assert "tiny-mistral3" in caught.value.message


def test_precedence_flags_over_env_over_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "msserve.yaml"
    config.write_text("port: 9100\nmax_queue: 3\nlog_level: debug\n")
    monkeypatch.setenv("MSSERVE_PORT", "9200")
    settings = load_settings(config)
    assert (settings.port, settings.max_queue, settings.log_level) == (9200, 3, "debug")
    assert load_settings(config, port=9300).port == 9300


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "absent.yaml")


def test_invalid_env_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSSERVE_PORT", "99999")
    with pytest.raises(ValueError, match="port"):
        load_settings()


def test_a_profile_that_builds_its_model_is_local_before_the_first_build(tmp_path: Path) -> None:
    profile = load_profile("tiny-mistral3").model_copy(update={"model": "models/not-built-yet"})
    assert profile.local_path() is not None and not profile.local_path().exists()  # type: ignore[union-attr]
    hub = load_profile("mistral-small-3.1")
    assert hub.local_path() is None  # a hub id stays a hub id
