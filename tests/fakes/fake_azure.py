"""A fake Azure OpenAI / Azure AI Foundry endpoint that speaks Azure's wire format, for tests.

Paths: ``/openai/v1/chat/completions``, ``/openai/deployments/{deployment}/chat/completions?api-version=...``
and Foundry's ``/models/chat/completions?api-version=...``. Auth: the ``api-key`` header (or a bearer token),
401 in Azure's error shape otherwise. Streams as Azure does: a first chunk with empty ``choices`` and
``prompt_filter_results``, content chunks with ``content_filter_results``, a finish chunk, a usage chunk.

Behaviour is scripted per test through ``FakeAzure.script`` (consumed one entry per request; empty: a normal
answer), and every request is recorded (path, headers, query, JSON body). It also plays the router's judge: a
request whose last message holds ``[Answer A]`` and ``[Answer B]`` sections is answered with
``judge_rule(answer_a, answer_b)`` ("A", "B" or "TIE"; scripted failures still apply). ``Reply.hold`` makes an
answer wait until the test sets that event (ordering tests, no clocks)::

    with FakeAzure(api_key="k") as fake:
        fake.script += [RateLimited(retry_after_ms=1500)] * 2
        ...  # call fake.endpoint
        assert fake.requests[0].headers["api-key"] == "k"
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

SAFE = {"filtered": False, "severity": "safe"}
FILTER_RESULTS = {"hate": SAFE, "self_harm": SAFE, "sexual": SAFE, "violence": SAFE}
PROMPT_FILTER_RESULTS = [
    {
        "prompt_index": 0,
        "content_filter_results": {**FILTER_RESULTS, "jailbreak": {"filtered": False, "detected": False}},
    }
]
CONTENT_FILTER_MESSAGE = (
    "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. "
    "Please modify your prompt and retry. To learn more about our content filtering policies please read our "
    "documentation: https://go.microsoft.com/fwlink/?linkid=2198766"
)
UNAUTHORIZED_MESSAGE = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an "
    "active subscription and use a correct regional API endpoint for your resource."
)


# -- scripted behaviours -----------------------------------------------------------------------------------------


@dataclass
class Reply:
    """A normal answer. ``logprob`` gives every token that log-probability when logprobs are asked for."""

    text: str = "Hello from Azure."
    model: str = "gpt-4o-2024-11-20"
    finish_reason: str = "stop"
    tool_call: dict[str, str] | None = None  # {"id", "name", "arguments"}
    logprob: float = -0.05
    prompt_tokens: int = 11
    delay_s: float = 0.0  # before the first byte
    chunk_delay_s: float = 0.0  # before each content chunk (a stream that trickles)
    fail_after_chunks: int | None = None  # cut the stream after this many content chunks
    error_after_chunks: int | None = None  # send an `error` event (as OpenAI's servers do) after this many
    hold: threading.Event | None = None  # answer only once the test sets it


@dataclass
class RateLimited:
    retry_after_ms: int | None = 1000
    retry_after: int | None = 1


@dataclass
class ContentFiltered:
    category: str = "violence"


@dataclass
class ServerError:
    status: int = 500


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    query: dict[str, str]
    body: dict[str, Any]


Behaviour = Reply | RateLimited | ContentFiltered | ServerError


# -- the app -----------------------------------------------------------------------------------------------------


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _content_filter_error(category: str) -> JSONResponse:
    result = {
        **FILTER_RESULTS,
        category: {"filtered": True, "severity": "high"},
        "jailbreak": {"filtered": False, "detected": False},
    }
    body = {
        "error": {
            "message": CONTENT_FILTER_MESSAGE,
            "type": None,
            "param": "prompt",
            "code": "content_filter",
            "status": 400,
            "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": result},
        }
    }
    return JSONResponse(body, status_code=400)


_JUDGED = re.compile(r"\[Answer A\]\n(.*)\n\n\[Answer B\]\n(.*)\n\nWhich answer is better", re.DOTALL)


def _judged_pair(body: dict[str, Any]) -> tuple[str, str] | None:
    messages = body.get("messages") or []
    content = messages[-1].get("content") if messages else None
    text = content if isinstance(content, str) else "".join(p.get("text", "") for p in content or [])
    match = _JUDGED.search(text)
    return (match.group(1), match.group(2)) if match else None


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


class FakeAzure:
    def __init__(
        self, *, api_key: str = "test-key", bearer_token: str | None = None, deployment: str = "gpt-4o"
    ) -> None:
        self.api_key = api_key
        self.bearer_token = bearer_token
        self.deployment = deployment
        self.script: list[Behaviour] = []
        self.requests: list[RecordedRequest] = []
        # The judge: (answer A, answer B) -> "A" | "B" | "TIE".
        self.judge_rule: Callable[[str, str], str] = lambda a, b: "TIE"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.app = Starlette(
            routes=[
                Route("/openai/v1/chat/completions", self._v1, methods=["POST"]),
                Route("/openai/deployments/{deployment}/chat/completions", self._deployments, methods=["POST"]),
                Route("/models/chat/completions", self._foundry, methods=["POST"]),
            ]
        )

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        self.script.clear()
        self.requests.clear()

    # -- routes ---------------------------------------------------------------------------------------------
    async def _v1(self, request: Request) -> Response:
        return await self._handle(request, needs_version=False)

    async def _deployments(self, request: Request) -> Response:
        if request.path_params["deployment"] != self.deployment:
            return await self._record_then(
                request, _error(404, "DeploymentNotFound", "The API deployment for this resource does not exist.")
            )
        return await self._handle(request, needs_version=True)

    async def _foundry(self, request: Request) -> Response:
        return await self._handle(request, needs_version=True)

    async def _record_then(self, request: Request, response: Response) -> Response:
        await self._record(request)
        return response

    async def _record(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        body = json.loads(raw) if raw else {}
        self.requests.append(
            RecordedRequest(
                path=request.url.path,
                headers={k.lower(): v for k, v in request.headers.items()},
                query=dict(request.query_params),
                body=body,
            )
        )
        return body

    def _authorized(self, request: Request) -> bool:
        if request.headers.get("api-key") == self.api_key:
            return True
        return self.bearer_token is not None and request.headers.get("authorization") == f"Bearer {self.bearer_token}"

    async def _handle(self, request: Request, *, needs_version: bool) -> Response:
        body = await self._record(request)
        if not self._authorized(request):
            return _error(401, "401", UNAUTHORIZED_MESSAGE)
        if needs_version and "api-version" not in request.query_params:
            return _error(404, "404", "Resource not found")
        if "model" not in body and not request.url.path.startswith("/openai/deployments/"):
            return _error(400, "BadRequest", "model is required")
        behaviour = self.script.pop(0) if self.script else Reply()
        if isinstance(behaviour, RateLimited):
            headers = {}
            if behaviour.retry_after_ms is not None:
                headers["retry-after-ms"] = str(behaviour.retry_after_ms)
            if behaviour.retry_after is not None:
                headers["retry-after"] = str(behaviour.retry_after)
            message = (
                "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have "
                f"exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after "
                f"{behaviour.retry_after or 1} second."
            )
            return _error(429, "429", message, headers)
        if isinstance(behaviour, ContentFiltered):
            return _content_filter_error(behaviour.category)
        if isinstance(behaviour, ServerError):
            return _error(
                behaviour.status, "InternalServerError", "The server had an error while processing your request."
            )
        if behaviour.delay_s:
            await asyncio.sleep(behaviour.delay_s)
        if behaviour.hold is not None:
            await asyncio.to_thread(behaviour.hold.wait, 30)
        pair = _judged_pair(body)
        if pair is not None:
            behaviour = replace(behaviour, text=self.judge_rule(*pair))
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(self._sse(behaviour, body, include_usage), media_type="text/event-stream")
        return JSONResponse(self._completion(behaviour, body))

    # -- answers --------------------------------------------------------------------------------------------
    def _usage(self, reply: Reply) -> dict[str, int]:
        completion = len(_words(reply.text)) if reply.text else 1
        return {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": reply.prompt_tokens + completion,
        }

    def _logprobs(self, tokens: list[str], reply: Reply, body: dict[str, Any]) -> dict[str, Any] | None:
        if not body.get("logprobs"):
            return None
        # top_logprobs as OpenAI sends them: the token itself first, then made-up, less likely alternatives.
        wanted = body.get("top_logprobs") or 0
        content = []
        for t in tokens:
            ranked = [(t, reply.logprob), *((f"{t}~{i}", reply.logprob - 1.0 - i) for i in range(wanted - 1))]
            top = [{"token": word, "logprob": lp, "bytes": list(word.encode())} for word, lp in ranked[:wanted]]
            content.append({"token": t, "logprob": reply.logprob, "bytes": list(t.encode()), "top_logprobs": top})
        return {"content": content, "refusal": None}

    def _completion(self, reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
        if reply.tool_call:
            message["tool_calls"] = [
                {
                    "id": reply.tool_call["id"],
                    "type": "function",
                    "function": {"name": reply.tool_call["name"], "arguments": reply.tool_call["arguments"]},
                }
            ]
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": reply.model,
            "prompt_filter_results": PROMPT_FILTER_RESULTS,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "tool_calls" if reply.tool_call else reply.finish_reason,
                    "message": message,
                    "logprobs": self._logprobs(_words(reply.text), reply, body),
                    "content_filter_results": FILTER_RESULTS,
                }
            ],
            "usage": self._usage(reply),
            "system_fingerprint": "fp_fake",
        }

    async def _sse(self, reply: Reply, body: dict[str, Any], include_usage: bool) -> AsyncIterator[bytes]:
        created = int(time.time())

        def event(payload: dict[str, Any]) -> bytes:
            return f"data: {json.dumps(payload)}\n\n".encode()

        def chunk(choice: dict[str, Any]) -> dict[str, Any]:
            return {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": created,
                "model": reply.model,
                "system_fingerprint": "fp_fake",
                "choices": [choice],
            }

        # Azure's first event: prompt filter results only, with empty choices and blank id/model.
        yield event(
            {
                "id": "",
                "object": "",
                "created": 0,
                "model": "",
                "choices": [],
                "prompt_filter_results": PROMPT_FILTER_RESULTS,
            }
        )
        yield event(
            chunk(
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "finish_reason": None,
                    "content_filter_results": {},
                }
            )
        )
        for n, word in enumerate(_words(reply.text) if reply.text else []):
            if reply.fail_after_chunks is not None and n >= reply.fail_after_chunks:
                raise RuntimeError("fake Azure cut the stream")  # uvicorn drops the connection mid-body
            if reply.error_after_chunks is not None and n >= reply.error_after_chunks:
                yield event({"error": {"message": "The server had an error while processing your request.",
                                       "type": "server_error", "code": None}})
                return
            yield event(
                chunk(
                    {
                        "index": 0,
                        "delta": {"content": word},
                        "finish_reason": None,
                        "logprobs": self._logprobs([word], reply, body),
                        "content_filter_results": FILTER_RESULTS,
                    }
                )
            )
            await asyncio.sleep(reply.chunk_delay_s)
        if reply.tool_call:
            call = {
                "index": 0,
                "id": reply.tool_call["id"],
                "type": "function",
                "function": {"name": reply.tool_call["name"], "arguments": ""},
            }
            yield event(chunk({"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}))
            rest = {"index": 0, "function": {"arguments": reply.tool_call["arguments"]}}
            yield event(chunk({"index": 0, "delta": {"tool_calls": [rest]}, "finish_reason": None}))
        finish = "tool_calls" if reply.tool_call else reply.finish_reason
        yield event(chunk({"index": 0, "delta": {}, "finish_reason": finish, "content_filter_results": {}}))
        if include_usage:
            yield event(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": reply.model,
                    "choices": [],
                    "usage": self._usage(reply),
                }
            )
        yield b"data: [DONE]\n\n"

    # -- server lifecycle -------------------------------------------------------------------------------------
    def start(self) -> FakeAzure:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake Azure did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeAzure:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
