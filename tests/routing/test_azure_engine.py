"""The Azure engine against a fake Azure endpoint speaking Azure's wire format."""

from __future__ import annotations

import base64
import io
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from PIL import Image
from pydantic import SecretStr

from server.config import Settings
from server.engines.azure import AzureEngine, azure_configured, resolve_api_style, retry_after_seconds
from server.errors import DeadlineExceededError, InvalidRequestError, RateLimitError, UpstreamError
from server.types import GenerationChunk, GenerationRequest, ImagePart, Message, SamplingParams, TextPart
from tests.fakes.fake_azure import ContentFiltered, FakeAzure, RateLimited, Reply, ServerError

KEY = "test-key"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAzure]:
    with FakeAzure(api_key=KEY, bearer_token="entra-token", deployment="gpt-4o") as server:
        yield server


@pytest.fixture(autouse=True)
def _reset(fake: FakeAzure) -> None:
    fake.reset()


# Every test runs with both HTTP clients the engine can put under the openai SDK: errors surface differently.
_CLIENT = {"kind": "auto"}


@pytest.fixture(autouse=True, params=["aiohttp", "httpx"])
def http_client(request: pytest.FixtureRequest) -> Iterator[str]:
    _CLIENT["kind"] = request.param
    yield request.param
    _CLIENT["kind"] = "auto"


class Sleeps:
    """An injected sleep: records what the engine was told to wait, without waiting."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@asynccontextmanager
async def azure(fake: FakeAzure, **options: Any) -> AsyncIterator[AzureEngine]:
    """An engine on the test's own event loop, closed afterwards."""
    options = {
        "endpoint": fake.endpoint,
        "deployment": "gpt-4o",
        "api_key": KEY,
        "http_client": _CLIENT["kind"],
        **options,
    }
    eng = AzureEngine(**options)
    try:
        yield eng
    finally:
        await eng.stop()


def _request(
    text: str = "hello", *, image: bool = False, logprobs: bool = False, stream: bool = True
) -> GenerationRequest:
    content: list[TextPart | ImagePart] = [TextPart(text=text)]
    if image:  # a photo source: forwarded as JPEG
        content.append(ImagePart(image=Image.new("RGB", (28, 14), (200, 30, 30)), mime_type="image/jpeg"))
    return GenerationRequest(
        request_id="req-1",
        messages=[Message(role="system", content=[TextPart(text="be brief")]), Message(role="user", content=content)],
        sampling=SamplingParams(max_tokens=32, logprobs=logprobs),
        stream=stream,
    )


async def _run(engine: AzureEngine, request: GenerationRequest) -> list[GenerationChunk]:
    return [chunk async for chunk in engine.generate(request)]


async def test_v1_request_wire_format_and_streamed_chunks(fake: FakeAzure, sleeps: Sleeps) -> None:
    async with azure(fake, sleep=sleeps, max_retry_wait_s=5.0) as engine:
        fake.script.append(Reply(text="one two three", model="gpt-4o-2024-11-20"))
        request = _request("describe this", image=True)
        chunks = await _run(engine, request)

        [sent] = fake.requests
        assert sent.path == "/openai/v1/chat/completions"
        assert sent.headers["api-key"] == KEY
        assert "authorization" not in sent.headers
        assert "api-version" not in sent.query
        assert sent.body["model"] == "gpt-4o"
        assert sent.body["stream"] is True and sent.body["stream_options"] == {"include_usage": True}
        assert sent.body["max_tokens"] == 32
        assert sent.body["messages"][0] == {"role": "system", "content": "be brief"}
        text_part, image_part = sent.body["messages"][1]["content"]
        assert text_part == {"type": "text", "text": "describe this"}
        url = image_part["image_url"]["url"]
        assert url.startswith("data:image/jpeg;base64,")
        forwarded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert forwarded.format == "JPEG" and forwarded.size == (28, 14)  # the pixels the local model would see
        red, green, blue = forwarded.convert("RGB").getpixel((14, 7))  # type: ignore[misc]
        assert red > 180 and green < 60 and blue < 60

        # Azure's metadata-only first chunk and the empty role chunk are dropped; deltas arrive one by one.
        assert [c.text for c in chunks if c.text] == ["one", " two", " three"]
        assert chunks[-2].finish_reason == "stop"
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
        assert {c.model for c in chunks} == {"gpt-4o-2024-11-20"}


async def test_deployments_form_sends_api_version_in_query(fake: FakeAzure) -> None:
    async with azure(fake, api_version="2024-10-21") as eng:
        chunks = await _run(eng, _request())
    [sent] = fake.requests
    assert sent.path == "/openai/deployments/gpt-4o/chat/completions"
    assert sent.query["api-version"] == "2024-10-21"
    assert sent.headers["api-key"] == KEY
    assert "".join(c.text for c in chunks) == "Hello from Azure."


async def test_foundry_models_endpoint_puts_model_in_body(fake: FakeAzure) -> None:
    async with azure(fake, endpoint=f"{fake.endpoint}/models", deployment="Mistral-Large-2411") as eng:
        await _run(eng, _request())
    [sent] = fake.requests
    assert sent.path == "/models/chat/completions"
    assert sent.query["api-version"] == "2024-05-01-preview"
    assert sent.body["model"] == "Mistral-Large-2411"
    assert "authorization" not in sent.headers


async def test_entra_token_provider_sends_bearer_token(fake: FakeAzure) -> None:
    async def token() -> str:
        return "entra-token"

    async with azure(fake, api_key=None, token_provider=token) as eng:
        await _run(eng, _request())
    [sent] = fake.requests
    assert sent.headers["authorization"] == "Bearer entra-token"
    assert "api-key" not in sent.headers


async def test_429_waits_retry_after_ms_then_succeeds(fake: FakeAzure, sleeps: Sleeps) -> None:
    async with azure(fake, sleep=sleeps, max_retry_wait_s=5.0) as engine:
        fake.script += [RateLimited(retry_after_ms=1500, retry_after=2), RateLimited(retry_after_ms=250, retry_after=1)]
        chunks = await _run(engine, _request())
        assert sleeps.calls == [1.5, 0.25]  # retry-after-ms wins over the coarser retry-after
        assert len(fake.requests) == 3
        assert "".join(c.text for c in chunks) == "Hello from Azure."


async def test_429_falls_back_to_retry_after_seconds(fake: FakeAzure, sleeps: Sleeps) -> None:
    async with azure(fake, sleep=sleeps, max_retry_wait_s=5.0) as engine:
        fake.script.append(RateLimited(retry_after_ms=None, retry_after=2))
        await _run(engine, _request())
        assert sleeps.calls == [2.0]


async def test_429_gives_up_when_the_wait_budget_is_spent(fake: FakeAzure, sleeps: Sleeps) -> None:
    async with azure(fake, sleep=sleeps, max_retry_wait_s=5.0) as engine:
        fake.script += [RateLimited(retry_after_ms=3000)] * 3  # budget 5 s: one wait of 3 s fits, a second does not
        with pytest.raises(RateLimitError) as caught:
            await _run(engine, _request())
        assert caught.value.code == "azure_rate_limited"
        assert sleeps.calls == [3.0]
        assert len(fake.requests) == 2


async def test_429_gives_up_after_max_attempts(fake: FakeAzure, sleeps: Sleeps) -> None:
    fake.script += [RateLimited(retry_after_ms=10)] * 5
    async with azure(fake, sleep=sleeps, max_attempts=2) as eng:
        with pytest.raises(RateLimitError):
            await _run(eng, _request())
    assert len(fake.requests) == 2


async def test_content_filter_is_passed_on_and_not_retried(fake: FakeAzure, sleeps: Sleeps) -> None:
    async with azure(fake, sleep=sleeps, max_retry_wait_s=5.0) as engine:
        fake.script.append(ContentFiltered())
        with pytest.raises(InvalidRequestError) as caught:
            await _run(engine, _request())
        assert caught.value.code == "content_filter"
        assert caught.value.status_code == 400
        assert "content management policy" in caught.value.message
        assert len(fake.requests) == 1


async def test_server_error_becomes_upstream_error(fake: FakeAzure, sleeps: Sleeps) -> None:
    async with azure(fake, sleep=sleeps, max_retry_wait_s=5.0) as engine:
        fake.script.append(ServerError(500))
        with pytest.raises(UpstreamError) as caught:
            await _run(engine, _request())
        assert caught.value.status_code == 502
        assert caught.value.code == "azure_server_error"
        assert len(fake.requests) == 1  # the SDK's own retries are off


async def test_slow_answer_times_out(fake: FakeAzure) -> None:
    fake.script.append(Reply(delay_s=2.0))
    async with azure(fake, timeout_s=0.2) as eng:
        with pytest.raises(UpstreamError) as caught:
            await _run(eng, _request())
    assert caught.value.code == "azure_timeout"


async def test_wrong_key_is_an_upstream_auth_failure(fake: FakeAzure) -> None:
    async with azure(fake, api_key="wrong") as eng:
        with pytest.raises(UpstreamError) as caught:
            await _run(eng, _request())
    assert caught.value.code == "azure_auth_failed"


async def test_unreachable_endpoint_is_an_upstream_error(fake: FakeAzure) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the call: nothing listens there
    async with azure(fake, endpoint=f"http://127.0.0.1:{port}") as eng:
        with pytest.raises(UpstreamError) as caught:
            await _run(eng, _request())
    assert caught.value.code == "azure_unreachable"


async def test_tool_call_deltas_and_logprobs(fake: FakeAzure, sleeps: Sleeps) -> None:
    async with azure(fake, sleep=sleeps, max_retry_wait_s=5.0) as engine:
        fake.script.append(Reply(text="ok", tool_call={"id": "call_1", "name": "lookup", "arguments": '{"q": 1}'}))
        chunks = await _run(engine, _request(logprobs=True))
        assert fake.requests[0].body["logprobs"] is True
        deltas = [d for c in chunks for d in c.tool_calls]
        assert deltas[0].id == "call_1" and deltas[0].name == "lookup"
        assert "".join(d.arguments for d in deltas) == '{"q": 1}'
        assert any(c.finish_reason == "tool_calls" for c in chunks)
        assert [lp.token for c in chunks for lp in c.logprobs] == ["ok"]


async def test_whole_answer_asks_azure_for_one_completion(fake: FakeAzure) -> None:
    """A caller that only needs the whole answer gets it from one non-streamed Azure call, in one chunk."""
    async with azure(fake) as engine:
        fake.script.append(Reply(text="one two three", model="gpt-4o-2024-11-20", prompt_tokens=7))
        fake.script.append(Reply(text="", tool_call={"id": "call_9", "name": "lookup", "arguments": '{"q": 2}'}))
        [answer] = await _run(engine, _request(logprobs=True, stream=False))
        [called] = await _run(engine, _request(stream=False))
    first, second = fake.requests
    assert first.body["stream"] is False and "stream_options" not in first.body
    assert answer.text == "one two three" and answer.finish_reason == "stop"
    assert answer.model == "gpt-4o-2024-11-20"
    assert answer.usage is not None and (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (7, 3)
    assert [lp.token for lp in answer.logprobs] == ["one", " two", " three"]
    assert second.body["stream"] is False
    [call] = called.tool_calls
    assert (call.index, call.id, call.name, call.arguments) == (0, "call_9", "lookup", '{"q": 2}')
    assert called.finish_reason == "tool_calls" and called.text == ""


def test_retry_after_parsing() -> None:
    assert retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 20 < (retry_after_seconds({"retry-after": later}) or 0) <= 30
    assert retry_after_seconds({}) is None


@pytest.mark.parametrize(
    ("endpoint", "version", "style"),
    [
        ("https://r.openai.azure.com", None, "v1"),
        ("https://r.openai.azure.com/openai/v1/", None, "v1"),
        ("https://r.openai.azure.com", "2024-10-21", "deployments"),
        ("https://r.services.ai.azure.com/models", "2024-05-01-preview", "foundry"),
        ("https://r.services.ai.azure.com", None, "foundry"),
    ],
)
def test_api_style_is_inferred(endpoint: str, version: str | None, style: str) -> None:
    assert resolve_api_style(endpoint, version) == style


def test_configured_needs_endpoint_deployment_and_credential() -> None:
    assert not azure_configured(Settings())
    assert not azure_configured(Settings(azure_endpoint="https://r.openai.azure.com", azure_deployment="d"))
    configured = Settings(
        azure_endpoint="https://r.openai.azure.com", azure_deployment="d", azure_api_key=SecretStr("k")
    )
    assert azure_configured(configured)
    assert AzureEngine.from_settings(Settings()) is None


@pytest.mark.parametrize(
    ("failure", "code", "said"),
    [
        ({"fail_after_chunks": 2}, "azure_unreachable", "mid-answer"),  # the connection drops mid-body
        ({"error_after_chunks": 2}, "azure_server_error", "processing your request"),  # an `error` event
    ],
)
async def test_failure_mid_stream_is_an_upstream_error(
    fake: FakeAzure, failure: dict[str, int], code: str, said: str
) -> None:
    fake.script.append(Reply(text="one two three four", **failure))
    seen: list[str] = []
    async with azure(fake) as engine:
        with pytest.raises(UpstreamError) as caught:
            async for chunk in engine.generate(_request()):
                seen.append(chunk.text)
    assert seen == ["one", " two"]
    assert caught.value.code == code and said in caught.value.message


# -- the request's deadline bounds the whole call, not each read ---------------------------------------------------


def _with_deadline(deadline: float, *, stream: bool = True) -> GenerationRequest:
    request = _request(stream=stream)
    request.deadline = deadline
    return request


async def test_a_trickling_stream_is_cut_at_the_request_deadline(fake: FakeAzure) -> None:
    # Every chunk comes well within the per-read timeout; the whole stream would take ~6 s.
    fake.script.append(Reply(text=" ".join(["word"] * 30), chunk_delay_s=0.2))
    seen: list[str] = []
    async with azure(fake, timeout_s=60.0) as eng:
        with pytest.raises(DeadlineExceededError) as caught:
            async for chunk in eng.generate(_with_deadline(time.monotonic() + 0.5)):
                seen.append(chunk.text)
    assert caught.value.status_code == 504 and caught.value.code == "deadline_exceeded"
    assert len(seen) < 30


async def test_a_silent_azure_is_cut_at_the_request_deadline(fake: FakeAzure) -> None:
    fake.script.append(Reply(delay_s=3.0))  # before the first byte; the per-read timeout is far longer
    async with azure(fake, timeout_s=60.0) as eng:
        with pytest.raises(DeadlineExceededError):
            await _run(eng, _with_deadline(time.monotonic() + 0.3, stream=False))


async def test_no_read_starts_after_the_deadline(fake: FakeAzure) -> None:
    clock = [100.0]
    fake.script.append(Reply(text="one two three four"))
    seen: list[str] = []
    async with azure(fake, timeout_s=60.0, clock=lambda: clock[0]) as eng:
        with pytest.raises(DeadlineExceededError):
            async for chunk in eng.generate(_with_deadline(110.0)):
                seen.append(chunk.text)
                clock[0] = 110.0  # the deadline passes while the caller holds the first chunk
    assert seen == ["one"]
