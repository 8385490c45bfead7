from __future__ import annotations

from pathlib import Path

import pytest

from server import resources
from server.config import DEFAULT_PROFILES_DIR, list_profiles, load_profile, load_settings, resolve_model_path
from server.errors import ModelUnavailableError, ProfileError
from tests.conftest import REPO


def test_profiles_on_disk_are_valid() -> None:
    names = {profile.name for profile in list_profiles(DEFAULT_PROFILES_DIR)}
    assert {"tiny-mistral3", "mistral-small-3.1", "mistral-small-3.1-fp8", "mistral-small-3.1-w4a16",
            "mistral-small-3.1-bnb4"} <= names
    assert load_profile("mistral-small-3.1-bnb4").engine == "hf"  # bitsandbytes runs through transformers
    assert load_profile("mistral-small-3.1").format == "mistral"
    assert load_profile("tiny-mistral3").demo


def test_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(ProfileError) as caught:
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


def test_user_profiles_come_before_the_packaged_ones(tmp_path: Path) -> None:
    (tmp_path / "tiny-mistral3.yaml").write_text("engine: hf\nmodel: /srv/mine\ndescription: my own\n")
    (tmp_path / "extra.yaml").write_text("engine: hf\nmodel: /srv/extra\n")
    assert load_profile("tiny-mistral3", tmp_path).description == "my own"
    assert load_profile("tiny-mistral3").description != "my own"  # the packaged one, without the user's folder
    assert load_profile("mistral-small-3.1", tmp_path).engine == "vllm"  # packaged, found behind the user's folder
    listed = {profile.name: profile for profile in list_profiles(tmp_path)}
    assert listed["tiny-mistral3"].description == "my own" and "extra" in listed and "mistral-small-3.1" in listed


def test_profiles_dir_from_the_environment_is_searched_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mine.yaml").write_text("engine: hf\nmodel: /srv/mine\n")
    monkeypatch.setenv("MSSERVE_PROFILES_DIR", str(tmp_path))
    settings = load_settings()
    assert settings.profiles_dir == tmp_path
    assert load_profile("mine", settings.profiles_dir).model == "/srv/mine"


def test_a_missing_profiles_dir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile("tiny-mistral3", tmp_path / "absent")


def test_packaged_data_is_found_through_the_package() -> None:
    settings = load_settings()
    assert settings.profiles_dir is None
    assert DEFAULT_PROFILES_DIR == resources.PROFILES_DIR and (DEFAULT_PROFILES_DIR / "tiny-mistral3.yaml").is_file()
    assert settings.router_weights == resources.ROUTER_WEIGHTS and settings.router_weights.is_file()
    assert (resources.ROUTER_DIR / "CARD.md").is_file()


def test_relative_model_paths(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    # From a checkout: relative to its root, built or not (tests build models/tiny-mistral3 there).
    assert resolve_model_path("models/tiny-mistral3", built=True, checkout=tmp_path, cache=cache) == (
        tmp_path / "models" / "tiny-mistral3"
    )
    # From a wheel install: a model the server builds goes to the cache; anything else is relative to the cwd.
    assert resolve_model_path("models/tiny-mistral3", built=True, checkout=None, cache=cache) == cache / "tiny-mistral3"
    assert resolve_model_path("weights/mine", built=False, checkout=None, cache=cache) == Path.cwd() / "weights/mine"
    assert resolve_model_path("/srv/w", built=True, checkout=tmp_path, cache=cache) == Path("/srv/w")


def test_this_checkout_is_found_and_its_tiny_model_used() -> None:
    assert resources.source_checkout() == REPO
    assert load_profile("tiny-mistral3").local_path() == REPO / "models" / "tiny-mistral3"


def test_cache_dir_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert resources.cache_dir() == tmp_path / "msserve"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resources.cache_dir() == tmp_path / "home" / ".cache" / "msserve"


def test_an_unknown_builder_is_refused_before_anything_runs(tmp_path: Path) -> None:
    from server.hub import build_local_model

    profile = load_profile("tiny-mistral3").model_copy(update={"build_script": "rm_everything.py"})
    with pytest.raises(ModelUnavailableError, match="unknown build_script"):
        build_local_model(profile, tmp_path / "model")
    assert not (tmp_path / "model").exists()
