"""The transformers engine: Mistral3 on CPU or one GPU, bitsandbytes 4/8-bit on CUDA.

transformers has no continuous batching, so requests run one at a time behind a bounded
wait queue: past ``max_queue`` waiting requests, new ones are refused with 429 instead of
piling up. Generation runs in a worker thread; tokens cross to the event loop through a
thread-safe queue. Closing the stream sets an abort flag that a StoppingCriteria checks
after every token, so a client that leaves frees the model within one decoding step; the request's
deadline is kept the same way while it generates, not only while it waits for the engine.

torch and transformers are imported only inside this module.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from server.config import ModelProfile
from server.engines.base import EngineCapabilities, EngineHealth, max_new_tokens
from server.engines.extras import refuse_unsupported
from server.engines.hf_sampling import HF_EXTRAS, generate_kwargs
from server.engines.loading import in_load_thread
from server.engines.mistral_format import EncodedPrompt, MistralChatFormat
from server.engines.mistral_tools import ToolCallParser
from server.engines.priority_gate import PriorityGate
from server.engines.stops import StopMatcher
from server.errors import DeadlineExceededError, EngineUnavailableError, InvalidRequestError, RateLimitError
from server.hub import resolve_model_dir
from server.types import GenerationChunk, GenerationRequest, TokenLogprob, ToolCallDelta, TopLogprob, Usage

log = logging.getLogger(__name__)

_DONE = object()


class HFEngine:
    def __init__(self, profile: ModelProfile, *, model_dir: Path | None = None, max_queue: int = 64,
                 hf_token: str | None = None) -> None:
        self.profile = profile
        self.name = profile.model_name
        self.model_dir = model_dir
        self.hf_token = hf_token
        self.max_queue = max_queue
        self.capabilities = EngineCapabilities(
            images=True, tools=True, response_format=False, logprobs=True, extras=HF_EXTRAS
        )
        self._state = "starting"
        self._detail = ""
        self._model: Any = None
        self._format: MistralChatFormat | None = None
        self._device = "cpu"
        self._slot = PriorityGate()  # live requests before waiting batch lines
        self._waiting = 0
        self._running = 0

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await in_load_thread(self._load, name="hf-load")
        except Exception as exc:
            self._state, self._detail = "failed", str(exc)
            raise
        self._state = "ready"

    def _load(self) -> None:
        import torch
        from transformers import Mistral3ForConditionalGeneration

        if self.model_dir is None:
            self.model_dir = resolve_model_dir(self.profile, token=self.hf_token)
        tokenizer_path = self.model_dir / self.profile.tokenizer_file
        if not tokenizer_path.is_file():
            raise EngineUnavailableError(f"{tokenizer_path} is missing: mistral_common needs the Tekken tokenizer file")
        self._format = MistralChatFormat.from_file(tokenizer_path)
        cuda = torch.cuda.is_available()
        self._device = "cuda" if cuda else "cpu"
        kwargs: dict[str, Any] = {"dtype": _torch_dtype(self.profile.dtype, cuda)}
        quantization = self.profile.quantization
        if quantization in ("bnb-4bit", "bnb-8bit"):
            kwargs["quantization_config"] = _bitsandbytes_config(quantization, cuda)
            kwargs["device_map"] = "auto"
        elif quantization:
            raise EngineUnavailableError(
                f"quantization {quantization!r} is not available in the transformers engine; "
                "use bnb-4bit or bnb-8bit here, or the vllm engine for fp8 / compressed-tensors"
            )
        started = time.monotonic()
        model = Mistral3ForConditionalGeneration.from_pretrained(str(self.model_dir), **kwargs)  # type: ignore[arg-type]
        if "device_map" not in kwargs:
            model = model.to(self._device)  # type: ignore[arg-type]
        model.eval()
        self._model = model
        log.info("loaded %s on %s in %.1fs", self.name, self._device, time.monotonic() - started)

    async def stop(self) -> None:
        self._state = "stopped"
        self._model = None

    def health(self) -> EngineHealth:
        ready = self._state == "ready"
        return EngineHealth(
            ready=ready, state=self._state, detail=self._detail, running=self._running, waiting=self._waiting  # type: ignore[arg-type]
        )

    # -- generation ------------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if self._state != "ready" or self._model is None or self._format is None:
            raise EngineUnavailableError(f"engine is {self._state}", code="engine_not_ready")
        refuse_unconstrainable(request)
        refuse_unsupported(request.sampling.extra, self.capabilities.extras, "transformers engine",
                           "; the vLLM profiles take it")
        chat_format = self._format
        prompt = await asyncio.to_thread(chat_format.encode, request.messages, request.tools)
        max_new = max_new_tokens(request, len(prompt.tokens), self.profile.max_model_len)

        await self._acquire_slot(request)
        abort = threading.Event()
        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue[Any] = asyncio.Queue()
        self._running += 1
        worker = loop.run_in_executor(None, self._run, request, prompt, max_new, abort, loop, tokens)
        worker.add_done_callback(self._release_slot)
        try:
            async for chunk in self._stream(request, prompt, max_new, abort, tokens):
                yield chunk
        finally:
            abort.set()  # client gone or done: the StoppingCriteria ends generation at the next token

    async def _acquire_slot(self, request: GenerationRequest) -> None:
        if self._slot.locked() and self._waiting >= self.max_queue:
            raise RateLimitError(
                f"the local engine queue is full ({self.max_queue} waiting); retry shortly",
                code="queue_full",
                headers={"retry-after": "1"},
            )
        self._waiting += 1
        try:
            timeout = None if request.deadline is None else max(0.0, request.deadline - time.monotonic())
            await asyncio.wait_for(self._slot.acquire(request.priority), timeout)
        except TimeoutError as exc:
            raise DeadlineExceededError("request timed out waiting for the engine", code="queue_timeout") from exc
        finally:
            self._waiting -= 1

    def _release_slot(self, _future: asyncio.Future[None]) -> None:
        self._running -= 1
        self._slot.release()

    async def _stream(
        self,
        request: GenerationRequest,
        prompt: EncodedPrompt,
        max_new: int,
        abort: threading.Event,
        tokens: asyncio.Queue[Any],
    ) -> AsyncIterator[GenerationChunk]:
        assert self._format is not None
        decoder = self._format.decoder(keep_tool_calls=bool(request.tools))
        tools = ToolCallParser() if request.tools else None
        stops = StopMatcher(request.sampling.stop)
        eos = self._format.eos_id
        generated = 0
        finish: str | None = None
        while finish is None:
            item = await _next_token(tokens, request.deadline, abort)
            if item is _DONE:
                finish = "length" if generated >= max_new else "stop"
                break
            if isinstance(item, BaseException):
                raise EngineUnavailableError(f"generation failed: {item}", code="generation_failed") from item
            token_id, logprob, top = item
            generated += 1
            if token_id == eos and not request.sampling.extra.ignore_eos:
                finish = "stop"
                break
            piece = decoder.push(token_id)
            calls: list[ToolCallDelta] = []
            if tools is not None:
                piece, calls = tools.feed(piece)
            text, matched = stops.feed(piece)
            logprobs = [] if logprob is None else [TokenLogprob(
                token=decoder.piece(token_id), logprob=logprob,
                top_logprobs=[TopLogprob(token=decoder.piece(alt), logprob=alt_logprob) for alt, alt_logprob in top],
            )]
            if matched:
                abort.set()
                finish = "stop"
            elif generated >= max_new:
                finish = "length"
            if text or logprobs or calls:
                yield GenerationChunk(text=text, logprobs=logprobs, tool_calls=calls)
        rest, calls = tools.finish() if tools is not None else ("", [])
        tail = stops.flush(decoder.flush() + rest)
        if tools is not None and tools.called and finish == "stop":
            finish = "tool_calls"
        usage = Usage(prompt_tokens=len(prompt.tokens), completion_tokens=generated)
        yield GenerationChunk(text=tail, tool_calls=calls, finish_reason=finish, usage=usage)  # type: ignore[arg-type]

    def _run(
        self,
        request: GenerationRequest,
        prompt: EncodedPrompt,
        max_new: int,
        abort: threading.Event,
        loop: asyncio.AbstractEventLoop,
        out: asyncio.Queue[Any],
    ) -> None:
        """Worker thread: run model.generate and push (token_id, logprob) pairs to the event loop."""
        import torch

        def emit(item: Any) -> None:
            loop.call_soon_threadsafe(out.put_nowait, item)

        try:
            inputs = self._model_inputs(prompt, torch)
            sampling = request.sampling
            recorder = _LogprobRecorder(sampling.top_logprobs) if sampling.logprobs else None
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            kwargs = generate_kwargs(sampling, max_new, self._format.eos_id if self._format else None)
            kwargs.update(
                streamer=_QueueStreamer(emit, recorder), stopping_criteria=[_AbortCriteria(abort, request.deadline)]
            )
            if recorder is not None:
                kwargs["logits_processor"] = [recorder]
            with torch.inference_mode():
                self._model.generate(**inputs, **kwargs)
        except Exception as exc:  # surfaced to the client as a stream error, never a dead worker
            log.exception("generation failed for %s", request.request_id)
            emit(exc)
        finally:
            emit(_DONE)

    def _model_inputs(self, prompt: EncodedPrompt, torch: Any) -> dict[str, Any]:
        device = self._model.device
        inputs: dict[str, Any] = {"input_ids": torch.tensor([prompt.tokens], device=device)}
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        if prompt.images:
            # Pad images of different sizes to one batch tensor; image_sizes tells the vision tower the real sizes.
            height = max(image.shape[1] for image in prompt.images)
            width = max(image.shape[2] for image in prompt.images)
            batch = torch.zeros((len(prompt.images), 3, height, width), dtype=self._model.dtype)
            for index, image in enumerate(prompt.images):
                batch[index, :, : image.shape[1], : image.shape[2]] = torch.from_numpy(image)
            inputs["pixel_values"] = batch.to(device)
            inputs["image_sizes"] = torch.tensor([[image.shape[1], image.shape[2]] for image in prompt.images])
        return inputs


class _QueueStreamer:
    """transformers streamer protocol: the first put() is the prompt, later ones are new tokens."""

    def __init__(self, emit: Any, recorder: _LogprobRecorder | None) -> None:
        self._emit = emit
        self._recorder = recorder
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        for token_id in value.reshape(-1).tolist():
            logprob = self._recorder.logprob_of(token_id) if self._recorder else None
            top = self._recorder.top() if self._recorder else []
            self._emit((int(token_id), logprob, top))

    def end(self) -> None:
        return None


class _LogprobRecorder:
    """A logits processor that keeps the last step's log-probabilities, so the streamer can look up
    the chosen token's and the ``top_logprobs`` most likely ones. It sees the scores after the other
    processors (temperature, top-p)."""

    def __init__(self, top_logprobs: int = 0) -> None:
        self._last: Any = None
        self._top = top_logprobs

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        self._last = scores[0].float().log_softmax(dim=-1)
        return scores

    def logprob_of(self, token_id: int) -> float | None:
        if self._last is None:
            return None
        value = float(self._last[token_id])
        return value if math.isfinite(value) else -9999.0

    def top(self) -> list[tuple[int, float]]:
        """(token id, logprob) of the ``top_logprobs`` most likely tokens, most likely first."""
        if self._last is None or self._top <= 0:
            return []
        values, ids = self._last.topk(self._top)
        pairs = zip(ids.tolist(), values.tolist(), strict=True)
        return [(int(i), v if math.isfinite(v) else -9999.0) for i, v in pairs]


async def _next_token(tokens: asyncio.Queue[Any], deadline: float | None, abort: threading.Event) -> Any:
    """The worker's next item, or DeadlineExceededError once the request's deadline passes (generation aborted).

    One timer per token is affordable here: this engine makes tens of tokens a second, one request at a time.
    """
    if deadline is None:
        return await tokens.get()
    try:
        async with asyncio.timeout(deadline - time.monotonic()):
            return await tokens.get()
    except TimeoutError:
        abort.set()
        raise DeadlineExceededError("the request's deadline passed during generation",
                                    code="deadline_exceeded") from None


class _AbortCriteria:
    """Stop generating when the stream is closed (client gone, stop string) or the deadline has passed.

    The deadline is checked here as well as on the event loop, so the worker stops even when nobody is reading.
    """

    def __init__(self, abort: threading.Event, deadline: float | None = None) -> None:
        self._abort = abort
        self._deadline = deadline

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        stop = self._abort.is_set() or (self._deadline is not None and time.monotonic() >= self._deadline)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


def _torch_dtype(name: str, cuda: bool) -> Any:
    import torch

    if name == "auto":
        return torch.bfloat16 if cuda else torch.float32
    return getattr(torch, name)


def _bitsandbytes_config(quantization: str, cuda: bool) -> Any:
    if not cuda:
        raise EngineUnavailableError(f"{quantization} needs a CUDA GPU; bitsandbytes does not run on this machine")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise EngineUnavailableError(
            "bitsandbytes is not installed: pip install 'mistral-small-server[bnb]'"
        ) from exc
    import torch
    from transformers import BitsAndBytesConfig

    if quantization == "bnb-8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["vision_tower", "multi_modal_projector"])
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
        llm_int8_skip_modules=["vision_tower", "multi_modal_projector", "lm_head"],
    )


def refuse_unconstrainable(request: GenerationRequest) -> None:
    """What needs constrained decoding cannot be promised here: say so instead of answering loosely."""
    if request.response_format:
        raise InvalidRequestError(
            "response_format json_object / json_schema needs constrained decoding, which the transformers engine "
            "does not have; use a vLLM profile",
            param="response_format", code="response_format_unsupported",
        )
    if request.tools and (request.tool_choice == "required" or isinstance(request.tool_choice, dict)):
        raise InvalidRequestError(
            "tool_choice 'required' or a named function needs constrained decoding, which the transformers "
            "engine does not have; use tool_choice 'auto' or a vLLM profile",
            param="tool_choice", code="tool_choice_unsupported",
        )
