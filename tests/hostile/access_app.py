"""An in-process app (all middleware, real routes) on a scripted local engine, for the access-control tests."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from server.app import create_app
from server.config import Settings
from server.engines.base import Engine
from tests.fakes.scripted_engine import ScriptedEngine

ALICE, BOB, ROOT = "sk-alice-0123456789", "sk-bob-0123456789ab", "sk-root-0123456789a"
KEYS = f"alice:{ALICE},bob:{BOB},root:{ROOT}"
LOCAL = "http://127.0.0.1:8000"


def chat(text: str = "hello") -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "max_tokens": 8}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@asynccontextmanager
async def app_client(
    engine: Engine | None = None,
    *,
    client: tuple[str, int] = ("127.0.0.1", 50000),
    base_url: str = LOCAL,
    **settings: Any,
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on a fresh app; ``client`` is the peer address the app sees (for proxy tests)."""
    settings.setdefault("host", "127.0.0.1")
    settings.setdefault("state_dir", tempfile.mkdtemp(prefix="msserve-access-"))
    app = create_app(Settings(port=0, **settings), engine=engine or ScriptedEngine())
    azure = app.state.services.dispatcher.azure
    if azure is not None:
        await azure.start()
    transport = httpx.ASGITransport(app=app, client=client)
    try:
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as http:
            http.app = app  # type: ignore[attr-defined]
            yield http
    finally:
        if azure is not None:
            await azure.stop()
