"""The pure pieces behind conformance: system_fingerprint, the extension-field mapping, transformers' kwargs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from server.api import fingerprint as fingerprint_module
from server.api.chat.protocol import ChatCompletionRequest
from server.api.fingerprint import Fingerprints, azure_fingerprint, local_fingerprint, weights_revision
from server.api.vllm_extensions import engine_extras
from server.config import Settings, load_profile
from server.engines.extras import refuse_unsupported
from server.engines.hf_sampling import HF_EXTRAS, generate_kwargs
from server.errors import InvalidRequestError
from server.types import EngineExtras, SamplingParams


def request(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}], **fields})


def weights(folder: Path, content: bytes = b"weights") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(content)
    (folder / "config.json").write_text("{}")
    return folder


def test_fingerprint_is_stable_and_changes_with_engine_profile_and_weights(tmp_path: Path) -> None:
    profile = load_profile("tiny-mistral3")
    folder = weights(tmp_path / "model")
    first = local_fingerprint(profile, folder)
    assert first == local_fingerprint(profile, folder) and first.startswith("fp_") and len(first) == 13
    assert local_fingerprint(profile.model_copy(update={"engine": "vllm"}), folder) != first
    assert local_fingerprint(profile.model_copy(update={"max_model_len": 4096}), folder) != first
    assert local_fingerprint(profile.model_copy(update={"revision": "abc123"}), folder) != first
    other = weights(tmp_path / "other", b"other weights")
    assert local_fingerprint(profile, other) != first
    assert azure_fingerprint("https://a", "gpt-4o", None) != azure_fingerprint("https://a", "gpt-4o-mini", None)


class _LoadingEngine:
    """An engine whose weights folder is resolved when it loads, as the transformers and vLLM engines do."""

    model_dir: Path | None = None


def test_fingerprints_are_worked_out_once_and_only_once_the_weights_folder_is_known(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    profile = load_profile("tiny-mistral3")
    folder = weights(tmp_path / "model")
    calls: list[Path | None] = []

    def counted(profile_: object, model_dir: Path | None) -> str:
        calls.append(model_dir)
        return local_fingerprint(profile, model_dir)

    monkeypatch.setattr(fingerprint_module, "local_fingerprint", counted)
    engine = _LoadingEngine()
    settings = Settings(azure_endpoint="https://a.example", azure_deployment="gpt-4o")
    prints = Fingerprints(settings, profile, engine)  # type: ignore[arg-type]
    assert prints.azure == azure_fingerprint("https://a.example", "gpt-4o", settings.azure_api_version)
    before = prints.local  # not loaded yet: worked out, not kept
    engine.model_dir = folder
    values = {prints.local for _ in range(5)}
    assert values == {local_fingerprint(profile, folder)} != {before}
    assert calls == [None, folder]  # once before the load, once after it, never again
    (folder / "model.safetensors").write_bytes(b"changed on disk while serving")
    assert prints.local in values  # kept for the life of the server


def test_weights_revision_sources(tmp_path: Path) -> None:
    profile = load_profile("mistral-small-3.1")
    assert weights_revision(profile.model_copy(update={"revision": "v1"}), None) == "v1"
    snapshot = weights(tmp_path / "snapshots" / "0123abcd")
    assert weights_revision(profile.model_copy(update={"revision": None}), snapshot) == "0123abcd"
    local = weights(tmp_path / "local")
    before = weights_revision(profile.model_copy(update={"revision": None}), local)
    stat = (local / "model.safetensors").stat()
    os.utime(local / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # re-saved weights
    assert weights_revision(profile.model_copy(update={"revision": None}), local) != before


def test_extension_fields_map_to_engine_extras() -> None:
    assert engine_extras(request()) == EngineExtras()
    assert engine_extras(request(top_k=-1, skip_special_tokens=True, continue_final_message=False)) == EngineExtras()
    extras = engine_extras(request(top_k=4, min_p=0.2, no_stop_trim=True, priority=-3, stop_token_ids=[]))
    assert extras.asked() == {"top_k": 4, "min_p": 0.2, "include_stop_str_in_output": True, "priority": -3}
    with pytest.raises(InvalidRequestError) as caught:
        engine_extras(request(chat_template_kwargs={"enable_thinking": True}))
    assert (caught.value.code, caught.value.param) == ("unsupported_parameter", "chat_template_kwargs")
    assert "mistral_common" in caught.value.message


def test_transformers_engine_refuses_what_it_cannot_do() -> None:
    refuse_unsupported(
        EngineExtras(top_k=3, min_p=0.1, repetition_penalty=1.1, min_tokens=1, ignore_eos=True, cache_salt="s"),
        HF_EXTRAS,
        "transformers engine",
    )
    with pytest.raises(InvalidRequestError) as caught:
        refuse_unsupported(EngineExtras(priority=1), HF_EXTRAS, "transformers engine")
    assert caught.value.param == "priority" and "transformers engine" in caught.value.message


def test_generate_kwargs() -> None:
    greedy = generate_kwargs(SamplingParams(temperature=0), 8, eos_id=2)
    assert greedy == {"max_new_tokens": 8, "do_sample": False, "eos_token_id": 2, "pad_token_id": 2}
    sampled = generate_kwargs(SamplingParams(temperature=0.7, top_p=0.9), 8, eos_id=2)
    assert (sampled["top_k"], sampled["top_p"], sampled["temperature"]) == (0, 0.9, 0.7)  # no hidden top-50 cut
    extra = EngineExtras(top_k=5, min_p=0.05, repetition_penalty=1.3, min_tokens=20)
    asked = generate_kwargs(SamplingParams(temperature=0.7, frequency_penalty=1.0, extra=extra), 8, eos_id=2)
    assert (asked["top_k"], asked["min_p"], asked["repetition_penalty"]) == (5, 0.05, 1.3)
    assert asked["min_new_tokens"] == 8  # never past max_tokens
    ignoring = generate_kwargs(SamplingParams(extra=EngineExtras(ignore_eos=True, min_tokens=3)), 8, eos_id=2)
    assert ignoring["eos_token_id"] is None and "min_new_tokens" not in ignoring
    assert generate_kwargs(SamplingParams(frequency_penalty=1.0), 8, 2)["repetition_penalty"] == 1.5


def test_vendored_schemas_hold_every_root_and_every_schema_they_reference() -> None:
    from tests.conformance.openai.vendor import ROOTS, references
    from tests.conformance.schema import document

    schemas = document()["components"]["schemas"]
    assert set(ROOTS) <= set(schemas)
    assert set().union(*(references(schema) for schema in schemas.values())) <= set(schemas)
    assert '"nullable": true' not in json.dumps(schemas)  # every marker was resolved
