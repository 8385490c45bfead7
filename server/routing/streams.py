"""Engine streams as the dispatcher handles them: start one (its first chunk fetched), collect or replay one, and
track one to its end so that a callback learns its usage and how it ended, whoever stops reading it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence

from server.engines.base import Engine
from server.types import GenerationChunk, GenerationRequest, Usage


async def aclose(stream: AsyncIterator[GenerationChunk]) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()


async def start(engine: Engine, request: GenerationRequest) -> tuple[GenerationChunk, AsyncIterator[GenerationChunk]]:
    chunks = engine.generate(request)
    try:
        return await anext(chunks), chunks
    except StopAsyncIteration:
        return GenerationChunk(finish_reason="stop"), chunks
    except BaseException:
        await aclose(chunks)
        raise


async def collect(engine: Engine, request: GenerationRequest) -> list[GenerationChunk]:
    chunks = engine.generate(request)
    try:
        return [chunk async for chunk in chunks] or [GenerationChunk(finish_reason="stop")]
    finally:
        await aclose(chunks)


async def replay(chunks: Sequence[GenerationChunk]) -> AsyncIterator[GenerationChunk]:
    for chunk in chunks:
        yield chunk


class Tracked:
    """Pass a stream through and report its usage once when it ends, however it ends.

    A class, not an async generator: a generator closed before its first ``__anext__`` never runs its
    ``finally``, and the API layer may close ``rest`` without reading it (client gone after the first chunk).
    """

    def __init__(
        self,
        inner: AsyncIterator[GenerationChunk],
        usage: Usage | None,
        on_done: Callable[[Usage | None, BaseException | None], None],
        on_chunk: Callable[[GenerationChunk], None] | None = None,
    ) -> None:
        self._inner = inner
        self.usage = usage
        self._on_done = on_done
        self._on_chunk = on_chunk
        self._done = False

    def __del__(self) -> None:
        # Dropped without being read to its end or closed: still report, so an Azure reservation is settled.
        if not getattr(self, "_done", True):
            self._done = True
            self._on_done(self.usage, None)

    def __aiter__(self) -> Tracked:
        return self

    async def __anext__(self) -> GenerationChunk:
        if self._done:
            raise StopAsyncIteration
        try:
            chunk = await anext(self._inner)
        except StopAsyncIteration:
            await self._finish(None)
            raise
        except BaseException as exc:
            await self._finish(exc)
            raise
        if chunk.usage is not None:
            self.usage = chunk.usage
        if self._on_chunk is not None:
            self._on_chunk(chunk)
        return chunk

    async def aclose(self) -> None:
        await self._finish(None)

    async def _finish(self, error: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        try:
            await aclose(self._inner)
        finally:
            self._on_done(self.usage, error)


def usage(chunks: Sequence[GenerationChunk]) -> Usage:
    found = [chunk.usage for chunk in chunks if chunk.usage is not None]
    return found[-1] if found else Usage()
