"""vLLM's chat-completion extension fields, one request each, sent straight to the server (transformers engine).

Each field at its default is accepted silently; a non-default value is honoured (200) or refused with a 400
``unsupported_parameter`` naming it. The expectations are written out here, not read from the server's tables.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from server.api.vllm_extensions import VLLMExtensionFields
from tests.conformance.conftest import MODEL
from tests.conformance.schema import assert_valid

OK, REFUSED = "ok", "refused"
# field: (its default as vLLM or vllm-router sends it, another value, what the transformers engine does with that)
FIELDS: dict[str, tuple[Any, Any, str]] = {
    "top_k": (-1, 1, OK),
    "min_p": (0.0, 0.1, OK),
    "repetition_penalty": (1.0, 1.3, OK),
    "min_tokens": (0, 2, OK),
    "ignore_eos": (False, True, OK),
    "cache_salt": (None, "tenant-a", OK),
    "request_id": (None, "my-request-1", OK),
    "session_id": (None, "session-9", OK),
    "include_reasoning": (True, False, OK),
    "separate_reasoning": (True, False, OK),
    "stream_reasoning": (True, False, OK),
    "return_mm_kwargs": (True, False, OK),
    "return_token_offsets": (False, True, OK),
    "skip_special_tokens": (True, False, REFUSED),
    "spaces_between_special_tokens": (True, False, REFUSED),
    "include_stop_str_in_output": (False, True, REFUSED),
    "no_stop_trim": (False, True, REFUSED),
    "stop_token_ids": ([], [5], REFUSED),
    "bad_words": ([], ["x"], REFUSED),
    "allowed_token_ids": (None, [1, 2, 3], REFUSED),
    "priority": (0, 5, REFUSED),  # one request at a time here: the vLLM engine honours it
    "use_beam_search": (False, True, REFUSED),
    "length_penalty": (1.0, 0.5, REFUSED),
    "watermarking": (None, True, REFUSED),
    "truncate_prompt_tokens": (None, 10, REFUSED),
    "truncation_side": (None, "left", REFUSED),
    "prompt_logprobs": (None, 1, REFUSED),
    "logprob_token_ids": (None, [1], REFUSED),
    "echo": (False, True, REFUSED),
    "add_generation_prompt": (True, False, REFUSED),
    "continue_final_message": (False, True, REFUSED),
    "add_special_tokens": (False, True, REFUSED),
    "documents": (None, [{"title": "a", "text": "b"}], REFUSED),
    "chat_template": (None, "{{ messages }}", REFUSED),
    "chat_template_kwargs": ({}, {"enable_thinking": False}, REFUSED),
    "media_io_kwargs": (None, {"image": {"x": 1}}, REFUSED),
    "mm_processor_kwargs": (None, {"x": 1}, REFUSED),
    "structured_outputs": (None, {"json": {"type": "object"}}, REFUSED),
    "kv_transfer_params": (None, {"x": 1}, REFUSED),
    "ec_transfer_params": (None, {"x": 1}, REFUSED),
    "vllm_xargs": (None, {"x": 1}, REFUSED),
    "return_tokens_as_token_ids": (None, True, REFUSED),
    "return_token_ids": (None, True, REFUSED),
    "return_prompt_text": (None, True, REFUSED),
    "return_hidden_states": (False, True, REFUSED),
    "repetition_detection": (None, {"max_pattern_size": 4}, REFUSED),
    "stream_interval": (None, 4, REFUSED),
    "thinking_token_budget": (None, 100, REFUSED),
    "routed_experts_prompt_start": (0, 3, REFUSED),
}


def ask(http: httpx.Client, **extra: Any) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **extra}
    return http.post("/v1/chat/completions", json=body)


def test_the_table_covers_every_field_the_server_declares() -> None:
    assert set(FIELDS) == set(VLLMExtensionFields.model_fields)


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_default_value_is_accepted_silently(http: httpx.Client, field: str) -> None:
    response = ask(http, **{field: FIELDS[field][0]})
    assert response.status_code == 200, response.text
    assert_valid("CreateChatCompletionResponse", response.json())


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_other_value_is_honoured_or_refused_by_name(http: httpx.Client, field: str) -> None:
    _, value, outcome = FIELDS[field]
    response = ask(http, **{field: value})
    if outcome == OK:
        assert response.status_code == 200, response.text
        assert_valid("CreateChatCompletionResponse", response.json())
    else:
        assert response.status_code == 400, response.text
        assert_valid("ErrorResponse", response.json())
        error = response.json()["error"]
        named = "include_stop_str_in_output" if field == "no_stop_trim" else field  # the param vLLM itself has
        assert (error["code"], error["param"]) == ("unsupported_parameter", named)
        assert field in error["message"]


def test_what_vllm_router_adds_to_every_body(http: httpx.Client) -> None:
    """The fields vllm-router 0.1.17 put into each chat body it forwarded (captured from its traffic)."""
    added = {
        "logprobs": False,
        "no_stop_trim": False,
        "ignore_eos": False,
        "continue_final_message": False,
        "skip_special_tokens": True,
        "separate_reasoning": True,
        "stream_reasoning": True,
        "return_hidden_states": False,
        "include_reasoning": True,
    }
    response = ask(http, **added)
    assert response.status_code == 200, response.text


def test_badly_typed_extension_field_is_a_400(http: httpx.Client) -> None:
    response = ask(http, top_k="many")
    assert response.status_code == 400
    assert (response.json()["error"]["code"], response.json()["error"]["param"]) == ("invalid_type", "top_k")


def test_top_k_1_samples_the_greedy_answer(http: httpx.Client) -> None:
    """Hot sampling with top_k 1 can only pick the most likely token: the greedy answer, whatever the seed."""

    def answer(**sampling: Any) -> str:
        response = ask(http, max_tokens=8, **sampling)
        assert response.status_code == 200, response.text
        return str(response.json()["choices"][0]["message"]["content"])

    greedy = answer(temperature=0)
    hot = {answer(temperature=1.8, seed=seed) for seed in (1, 2, 3)}
    assert len(hot) > 1 and greedy not in hot  # without top_k the random model wanders at this temperature
    assert {answer(temperature=1.8, seed=seed, top_k=1) for seed in (1, 2, 3)} == {greedy}


def test_extension_fields_refused_on_an_azure_route(http: httpx.Client) -> None:
    response = ask(http, top_k=5, **{})
    assert response.status_code == 200  # local: honoured
    forced = http.post(
        "/v1/chat/completions",
        headers={"x-msserve-route": "azure"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "top_k": 5},
    )
    assert forced.status_code == 400
    assert (forced.json()["error"]["code"], forced.json()["error"]["param"]) == ("unsupported_parameter", "top_k")
