"""Bad input always gets a 4xx in OpenAI's error shape with a stable code, and the server keeps answering."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import LiveServer
from tests.images import data_url

MODEL = "tiny-mistral3"


def post(server: LiveServer, body: object = None, *, content: bytes | None = None) -> httpx.Response:
    if content is not None:
        return httpx.post(f"{server.v1}/chat/completions", content=content,
                          headers={"content-type": "application/json"}, timeout=60)
    return httpx.post(f"{server.v1}/chat/completions", json=body, timeout=60)


def assert_error(response: httpx.Response, status: int, code: str, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code, error
    assert error["message"]
    if param is not None:
        assert error["param"] == param, error


def user(content: object) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 2}


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"model": MODEL, "messages": []}, 400, "invalid_value", "messages"),
        ({"model": MODEL}, 400, "missing_required_parameter", "messages"),
        ({"model": MODEL, "messages": "hello"}, 400, "invalid_type", "messages"),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, 400, "invalid_value", "messages[0].role"),
        ({**user("x"), "max_tokens": "many"}, 400, "invalid_type", "max_tokens"),
        ({**user("x"), "max_tokens": 0}, 400, "invalid_value", "max_tokens"),
        ({**user("x"), "temperature": 5}, 400, "invalid_value", "temperature"),
        ({**user("x"), "n": 3}, 400, "unsupported_n", "n"),
        ({**user("x"), "frobnicate": True}, 400, "unknown_parameter", "frobnicate"),
        ({**user("x"), "model": "gpt-9"}, 404, "model_not_found", "model"),
        (user([{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]), 400,
         "unsupported_content_type", None),
        (user([{"type": "image_url", "image_url": {"url": data_url(b"this is not an image", "image/png")}}]), 415,
         "image_unsupported_format", None),
        (user([{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@@"}}]), 400,
         "image_invalid_data_url", None),
        (user([{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]), 400, "image_url_forbidden", None),
        ({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}, 400, "invalid_value", None),
    ],
)
def test_bad_requests(live_server: LiveServer, body: object, status: int, code: str, param: str | None) -> None:
    assert_error(post(live_server, body), status, code, param)


def test_bad_json(live_server: LiveServer) -> None:
    assert_error(post(live_server, content=b'{"model": "tiny-mistral3", "messages": ['), 400, "invalid_json")


def test_context_length_exceeded(live_server: LiveServer) -> None:
    response = post(live_server, {**user("word " * 9000)})
    assert_error(response, 400, "context_length_exceeded")


def test_sdk_raises_typed_errors(openai_client) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], n=3)
    assert caught.value.code == "unsupported_n"
    with pytest.raises(openai.NotFoundError):
        openai_client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])


def test_server_still_answers_after_errors(live_server: LiveServer, openai_client) -> None:
    for _ in range(3):
        post(live_server, content=b"\xff\xfe garbage")
    completion = openai_client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "ok?"}],
                                                       max_tokens=2)
    assert completion.choices[0].message.content is not None
