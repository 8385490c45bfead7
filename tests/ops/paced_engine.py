"""A local engine for the operations tests: streams a fixed answer with a pause per chunk, counts what it runs."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import time
from collections.abc import AsyncIterator
from pathlib import Path

from server.engines.base import EngineCapabilities, EngineHealth
from server.engines.loading import in_load_thread
from server.types import GenerationChunk, GenerationRequest, Usage


class PacedEngine:
    def __init__(self, *, chunks: int = 5, delay_s: float = 0.0, load_s: float = 0.0, name: str = "paced-test",
                 gate: Path | None = None) -> None:
        self.name = name
        # Set: every stream holds after its first chunk until this file exists, so a test knows its streams are
        # in flight at a given moment however slow the machine is.
        self.gate = gate
        self.load_s = load_s  # > 0: start() loads like a real engine: a helper process, then a blocking wait
        self.capabilities = EngineCapabilities(logprobs=False)
        self.chunks = chunks
        self.delay_s = delay_s
        self.running = 0
        self.started = 0
        self.closed_early = 0  # streams closed before their end (client gone, or aborted at shutdown)
        self.ready = False

    async def start(self) -> None:
        if self.load_s:
            # As vLLM starts its engine process and then blocks a thread until it is up.
            helper = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(self.load_s,))
            helper.start()
            logging.getLogger(__name__).info("loading for %.0fs; helper process %d", self.load_s, helper.pid)
            await in_load_thread(lambda: time.sleep(self.load_s), name="paced-load")
        self.ready = True

    async def stop(self) -> None:
        self.ready = False

    def health(self) -> EngineHealth:
        return EngineHealth(ready=self.ready, state="ready" if self.ready else "starting", running=self.running)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        self.running += 1
        self.started += 1
        finished = False
        try:
            for index in range(self.chunks):
                while index == 1 and self.gate is not None and not self.gate.exists():
                    await asyncio.sleep(0.01)
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                last = index == self.chunks - 1
                yield GenerationChunk(
                    text=f"w{index} ",
                    finish_reason="stop" if last else None,
                    usage=Usage(prompt_tokens=7, completion_tokens=self.chunks) if last else None,
                )
            finished = True
        finally:
            self.running -= 1
            if not finished:
                self.closed_early += 1
