"""The app freezes what the engine load left alive (so full collections stop walking it) and thaws it on exit."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

from server.app import create_app
from server.config import Settings
from tests.fakes.scripted_engine import ScriptedEngine


async def test_startup_heap_is_frozen_once_the_engine_is_up_and_thawed_at_shutdown(tmp_path: Path) -> None:
    gc.unfreeze()
    engine = ScriptedEngine(ready=False)
    app = create_app(Settings(profile="tiny-mistral3", state_dir=tmp_path), engine=engine)  # state: not in $HOME
    async with app.router.lifespan_context(app):
        for _ in range(200):  # the engine starts in a background task
            if gc.get_freeze_count():
                break
            await asyncio.sleep(0.01)
        assert engine.ready
        frozen = gc.get_freeze_count()
        assert frozen > 1000  # everything the imports and the app made: the test process's whole heap
    assert gc.get_freeze_count() == 0
