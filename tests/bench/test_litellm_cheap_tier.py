"""LiteLLM can use this server as its cheap tier: a litellm.Router with an `openai/` model whose api_base is our /v1.

Needs litellm, which is kept out of the runtime and test dependencies: it lives in .venv-bench
(scripts/bench_env.sh; `make test-bench`). Elsewhere this module is skipped, and only for that reason.
"""

from __future__ import annotations

import gc
import importlib.util
import warnings
from collections.abc import Iterator

import pytest

from tests.conftest import LiveServer

if importlib.util.find_spec("litellm") is None:
    pytest.skip("litellm is not installed in this venv: run `make test-bench` (.venv-bench from scripts/bench_env.sh)",
                allow_module_level=True)

MODEL = "tiny-mistral3"
# LiteLLM's own warnings (deprecations, pydantic's note on its ReadOnly TypedDicts, sockets its clients leave
# open) are not this project's concern; the suite turns warnings into errors.
pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::PendingDeprecationWarning", "ignore:.*ReadOnly. qualifier:UserWarning",
    "ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning",
)


@pytest.fixture(scope="module", autouse=True)
def _collect_litellm_leftovers() -> Iterator[None]:
    """LiteLLM's sync path leaves an event loop and its sockets unclosed; collect them here, not at exit.

    Left to the end of the session, pytest reports them as unraisable ResourceWarnings, which the suite's
    ``filterwarnings = error`` turns into a failing exit code.
    """
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture(scope="module")
def router(live_server: LiveServer):  # type: ignore[no-untyped-def]
    with pytest.MonkeyPatch.context() as patch:
        # Otherwise importing litellm fetches its model price list from the internet: loopback only here.
        patch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm

        model_list = [{"model_name": "cheap", "litellm_params": {
            "model": f"openai/{MODEL}", "api_base": live_server.v1, "api_key": "not-needed", "timeout": 120}}]
        yield litellm.Router(model_list=model_list, num_retries=0)


def test_router_completion_is_answered_by_our_server(router) -> None:  # type: ignore[no-untyped-def]
    response = router.completion(model="cheap", messages=[{"role": "user", "content": "Say hello."}], max_tokens=6,
                                 temperature=0)
    choice = response.choices[0]
    assert isinstance(choice.message.content, str) and choice.message.content
    # Greedy decoding of our random tiny model runs to the cap; LiteLLM passes our usage through unchanged.
    assert choice.finish_reason == "length" and response.usage.completion_tokens == 6
    # The answer came from our server: its routing header travels back through LiteLLM's response headers.
    headers = response._hidden_params.get("additional_headers") or {}
    assert headers.get("llm_provider-x-msserve-tier") == "local"


async def test_router_streams_through_our_server(router) -> None:  # type: ignore[no-untyped-def]
    stream = await router.acompletion(model="cheap", messages=[{"role": "user", "content": "Count."}], max_tokens=6,
                                      temperature=0, stream=True)
    pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    assert len([p for p in pieces if p]) >= 2  # streamed, not one blob
