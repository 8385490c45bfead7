"""The ceiling for bench_serving.py: vLLM's renderer and AsyncLLM driven in-process, no HTTP, no API server.

    python scripts/bench_engine_direct.py --profile tiny-mistral3-vllm      (started by bench_serving.py --direct)

Any OpenAI server on this engine (ours, `vllm serve`) renders each chat with vLLM's renderer, hands it to
``AsyncLLM.generate`` and streams what comes back; this process does only the first two, with the same engine
arguments (server.engines.vllm_mapping.engine_args), the same request bodies and the same schedule (bench_common's
drive_load), and no client, HTTP, validation or SSE in the way. Its requests/s over `vllm serve`'s is the most that
any API layer could gain over vLLM's own with the same engine settings on this machine.

Protocol with the parent, one JSON object per line: it writes ``{"ready": true}`` once loaded; then for each line
``{"bodies": [[kind, body], ...], "concurrency": N, "arrivals": [...] | null}`` on stdin it runs that load and writes
``{"wall_s": ..., "results": [RequestResult as a dict, ...]}``; end of stdin ends it. vLLM's own output goes to
stderr, so stdout carries the protocol only.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import REPO, RequestResult, drive_load, results_json

Body = tuple[str, dict[str, Any]]  # (kind, OpenAI chat body), as bench_serving.build_bodies makes them


# -- parent side: the handle bench_serving.py drives like a server -------------------------------------------------


@dataclasses.dataclass
class DirectEngine:
    """The child process, with the parts of bench_common.Service that wait_ready and the round loop use."""

    name: str
    command: list[str]
    log_path: Path
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    ready_after_s: float | None = None
    _lines: queue.Queue[str] = dataclasses.field(default_factory=queue.Queue)
    _reader: threading.Thread | None = None

    @classmethod
    def for_profile(cls, python: Path, profile: str, log_path: Path, env: dict[str, str]) -> DirectEngine:
        return cls("direct", [str(python), str(Path(__file__).resolve()), "--profile", profile], log_path, env)

    def start(self) -> DirectEngine:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(self.command, cwd=REPO, env={**os.environ, **self.env},
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                            start_new_session=True)
        self.started_at = time.monotonic()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.decode())
        self._lines.put("")  # end of output: the process is gone

    def _reply(self, timeout_s: float) -> dict[str, Any]:
        line = self._lines.get(timeout=timeout_s)
        if not line:
            raise RuntimeError(f"{self.name} exited; log {self.log_path}")
        return json.loads(line)  # type: ignore[no-any-return]

    def poll_ready(self) -> bool:
        assert self.process is not None
        if self.ready_after_s is not None:
            return True
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}; log {self.log_path}")
        try:
            self._reply(timeout_s=0.01)
        except queue.Empty:
            return False
        self.ready_after_s = time.monotonic() - self.started_at
        return True

    def run(self, bodies: list[Body], concurrency: int, arrivals: list[float] | None = None,
            timeout_s: float = 600.0) -> tuple[list[RequestResult], float]:
        assert self.process is not None and self.process.stdin is not None
        job = {"bodies": bodies, "concurrency": concurrency, "arrivals": arrivals}
        self.process.stdin.write((json.dumps(job) + "\n").encode())
        self.process.stdin.flush()
        reply = self._reply(timeout_s)
        return [RequestResult(**r) for r in reply["results"]], float(reply["wall_s"])

    def stop(self) -> None:
        if self.process is None:
            return
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()  # ends its loop; it shuts the engine down
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)  # it reads to the end of the output, then the pipe can close
        self.process.stdout.close()


# -- child side -----------------------------------------------------------------------------------------------------


async def prepare(llm: Any, chat_params: Any, body: dict[str, Any]) -> tuple[Any, Any]:
    """(engine input, sampling params) for one chat body, as an OpenAI server on this engine makes them."""
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    _, (engine_input,) = await llm.renderer.render_chat_async([body["messages"]], chat_params)
    params = SamplingParams(max_tokens=body["max_tokens"], temperature=body.get("temperature", 1.0),
                            output_kind=RequestOutputKind.DELTA)
    return engine_input, params


async def one(llm: Any, chat_params: Any, item: Body, t0: float) -> RequestResult:
    """One chat body through the renderer and the engine: first text and last output timed as the client does."""
    kind, body = item
    start = time.perf_counter()
    result = RequestResult(kind=kind, ok=False, start_s=start - t0, e2e_s=0.0)
    try:
        engine_input, params = await prepare(llm, chat_params, body)
        async for output in llm.generate(engine_input, params, uuid.uuid4().hex):
            completion = output.outputs[0]
            result.output_tokens += len(completion.token_ids)
            if completion.text:
                result.content_events += 1
                if result.ttft_s is None:
                    result.ttft_s = time.perf_counter() - start
            if output.finished:
                result.prompt_tokens = len(output.prompt_token_ids or [])
        result.ok = True
    except Exception as exc:  # reported per request, as the HTTP driver reports a failed request
        result.error = f"{type(exc).__name__}: {exc}"[:200]
    result.e2e_s = time.perf_counter() - start
    return result


def start_engine(profile_name: str) -> tuple[Any, Any]:
    """(AsyncLLM, ChatParams) built from the profile exactly as our vLLM engine builds them."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.renderers.params import ChatParams
    from vllm.v1.engine.async_llm import AsyncLLM

    from server.config import load_profile
    from server.engines.vllm_mapping import engine_args

    profile = load_profile(profile_name)
    model_dir = profile.local_path()
    if model_dir is None:
        raise SystemExit(f"profile {profile_name} has no local model folder")
    llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_args(profile, model_dir)))
    # As our engine and `vllm serve` render: the HF chat template as text, then tokenized with the images.
    return llm, ChatParams(chat_template_kwargs={"tokenize": profile.format == "mistral"})


async def serve(profile_name: str, protocol: IO[str]) -> None:
    llm, chat_params = start_engine(profile_name)
    protocol.write(json.dumps({"ready": True}) + "\n")
    send = functools.partial(one, llm, chat_params)
    loop = asyncio.get_running_loop()
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            job = json.loads(line)
            results, wall = await drive_load([tuple(b) for b in job["bodies"]], job["concurrency"], send,
                                             arrivals=job["arrivals"])
            protocol.write(json.dumps({"wall_s": wall, "results": results_json(results)}) + "\n")
    finally:
        llm.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny-mistral3-vllm")
    args = parser.parse_args()
    # The protocol keeps the real stdout; everything else written to fd 1 (vLLM's logs, its engine processes,
    # which inherit the descriptor) goes to stderr.
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    asyncio.run(serve(args.profile, protocol))


if __name__ == "__main__":
    main()
