"""The second ceiling for bench_serving.py: the thinnest OpenAI streaming server on the same engine.

    python scripts/bench_engine_thin.py --profile tiny-mistral3-vllm --port P     (started by bench_serving.py --thin)

bench_engine_direct.py has no HTTP and no client, so direct/vLLM bounds what an API layer could gain only if the
client cost nothing. This one serves the same engine over HTTP to the same client: a bare ASGI app under uvicorn
(uvloop and httptools, as `msserve serve` and `vllm serve` run), the start-up heap frozen and the GIL switch interval
at our 1 ms, that renders each body with vLLM's renderer (as both servers do), streams ``AsyncLLM.generate`` and
writes the same chat.completion.chunk events ours writes, with ours' writer (server.api.sse.ChunkEvents: role with
the first delta, one event per output, a finish event, the usage event with [DONE]). No validation, no middleware,
no routing, no telemetry, no limits: unsafe to expose, and the least any OpenAI server on this engine has to do. So
thin/vLLM is the most any such server, read by this client, could gain over `vllm serve` here, and thin/ours is what
our layer costs.

Only what the benchmark sends is handled: POST /v1/chat/completions with ``stream: true``, and GET /health.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_engine_direct import prepare, start_engine

from server.api.sse import DONE, ChunkEvents

Scope = dict[str, Any]
SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


async def read_body(receive: Any) -> bytes:
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


async def respond(send: Any, status: int, body: dict[str, Any]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


def make_app(llm: Any, chat_params: Any, model: str) -> Any:
    async def chat(receive: Any, send: Any) -> None:
        body = json.loads(await read_body(receive))
        try:
            engine_input, params = await prepare(llm, chat_params, body)
        except Exception as exc:  # the benchmark's bodies are valid; a failure must still reach the client
            await respond(send, 400, {"error": {"message": f"{type(exc).__name__}: {exc}"}})
            return
        base = {"id": "chatcmpl-" + uuid.uuid4().hex, "object": "chat.completion.chunk", "created": int(time.time()),
                "model": model, "system_fingerprint": None}
        events = ChunkEvents(base, include_usage=True)  # ours' event writer: the very bytes ours sends

        await send({"type": "http.response.start", "status": 200, "headers": SSE})
        pending = [events.chunk({"role": "assistant", "content": "", "refusal": None})]
        prompt_tokens = completion_tokens = 0
        async for output in llm.generate(engine_input, params, uuid.uuid4().hex):
            completion = output.outputs[0]
            completion_tokens += len(completion.token_ids)
            if completion.text:
                pending.append(events.text(completion.text))
            if output.finished:
                prompt_tokens = len(output.prompt_token_ids or [])
                pending.append(events.chunk({}, finish=completion.finish_reason or "stop"))
            if pending:
                await send({"type": "http.response.body", "body": b"".join(pending), "more_body": True})
                pending = []
        last = events.usage(prompt_tokens, completion_tokens) + DONE
        await send({"type": "http.response.body", "body": last, "more_body": False})

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/v1/chat/completions" and scope["method"] == "POST":
            await chat(receive, send)
        elif scope["path"] == "/health":
            await respond(send, 200, {"status": "ok"})
        else:
            await respond(send, 404, {"error": {"message": "not found"}})

    return app


async def serve(profile_name: str, port: int) -> None:
    import uvicorn

    from server.config import load_profile

    llm, chat_params = start_engine(profile_name)
    gc.collect()
    gc.freeze()  # as both servers do once their engine is up
    sys.setswitchinterval(0.001)  # our server's default (MSSERVE_GIL_SWITCH_INTERVAL_MS)
    app = make_app(llm, chat_params, load_profile(profile_name).model_name)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", access_log=False, http="httptools",
                            log_level="warning")
    try:
        await uvicorn.Server(config).serve()
    finally:
        llm.shutdown()


def main() -> None:
    import uvloop

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny-mistral3-vllm")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.profile, args.port))


if __name__ == "__main__":
    main()
