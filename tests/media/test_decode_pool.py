"""Image work runs on the decode pool's own threads, never on the event loop; the pool is bounded."""

from __future__ import annotations

import asyncio
import threading

import pytest
from PIL import Image

import server.media._decode as decode_module
import server.media._intake as intake_module
from server.config import Settings
from server.errors import RateLimitError
from server.media import ImageIntake
from server.media._pool import THREAD_NAME_PREFIX, DecodePool
from tests.images import data_url, encode, photo

TINY_PNG = encode(photo(4, 4), "PNG")  # the smallest images were decoded on the loop before
JPEG = encode(photo(640, 480), "JPEG")


def test_every_step_of_image_work_runs_on_decode_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: dict[str, set[str]] = {"open": set(), "prescan": set(), "base64": set()}

    def recording(kind: str, real):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            threads[kind].add(threading.current_thread().name)
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(decode_module.Image, "open", recording("open", Image.open))
    monkeypatch.setattr(decode_module, "prescan", recording("prescan", decode_module.prescan))
    monkeypatch.setattr(intake_module, "decode_data_url", recording("base64", intake_module.decode_data_url))
    intake = ImageIntake(Settings())

    async def requests() -> str:
        budget = intake.budget()
        await intake.from_url(data_url(TINY_PNG, "image/png"), budget)
        await intake.from_url(data_url(JPEG, "image/jpeg"), budget)
        await intake.from_bytes(TINY_PNG, budget, source="upload", content_type="image/png")
        return threading.current_thread().name

    loop_thread = asyncio.run(requests())
    seen = set().union(*threads.values())
    assert threads["open"] and threads["prescan"] and threads["base64"]
    assert loop_thread not in seen
    assert all(name.startswith(THREAD_NAME_PREFIX) for name in seen), seen


def test_the_pool_refuses_past_its_queue_and_frees_its_slots() -> None:
    pool = DecodePool(workers=1, queue=1)
    release = threading.Event()
    started = threading.Event()

    def blocking() -> str:
        started.set()
        release.wait(30)
        return "done"

    async def scenario() -> list[str]:
        running = asyncio.ensure_future(pool.run(blocking))
        await asyncio.to_thread(started.wait, 30)
        queued = asyncio.ensure_future(pool.run(lambda: "queued"))
        await asyncio.sleep(0)
        assert pool.pending == 2
        with pytest.raises(RateLimitError) as caught:
            await pool.run(lambda: "refused")
        assert caught.value.status_code == 429 and caught.value.code == "image_decoder_busy"
        assert caught.value.headers["Retry-After"] == "1"
        release.set()
        return [await running, await queued]

    assert asyncio.run(scenario()) == ["done", "queued"]
    assert pool.pending == 0
    pool.shutdown()


def test_a_job_whose_caller_left_before_it_started_never_runs() -> None:
    pool = DecodePool(workers=1, queue=4)
    release = threading.Event()
    started = threading.Event()
    ran: list[str] = []

    def blocking() -> None:
        started.set()
        release.wait(30)

    async def scenario() -> None:
        running = asyncio.ensure_future(pool.run(blocking))
        await asyncio.to_thread(started.wait, 30)
        abandoned = asyncio.ensure_future(pool.run(lambda: ran.append("abandoned")))
        await asyncio.sleep(0)
        abandoned.cancel()  # the client disconnected while its image waited for a thread
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        release.set()
        await running
        await pool.run(lambda: ran.append("next"))

    asyncio.run(scenario())
    assert ran == ["next"] and pool.pending == 0
    pool.shutdown()


def test_intake_builds_its_pool_from_settings() -> None:
    intake = ImageIntake(Settings(image_decode_workers=3, image_decode_queue=5))
    assert (intake.pool.workers, intake.pool.capacity) == (3, 8)
