"""The learning parts of a running server, built once by the app: outcome store, weights registry, shadow/judge
service, and the reload that swaps the router in place (``POST /admin/router/reload``, SIGHUP)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from server.config import Settings
from server.engines.azure import AzureEngine
from server.engines.base import Engine
from server.routing import embed
from server.routing.dispatch import Dispatcher
from server.routing.learned import WeightsRegistry, router_for
from server.routing.outcomes import open_outcome_store
from server.routing.router import Router
from server.routing.shadow import LearningService
from server.state.db import StateDB, default_state_dir

log = logging.getLogger(__name__)


class LearningRuntime:
    def __init__(self, settings: Settings, folder: Path, db: StateDB) -> None:
        self.settings = settings
        self.folder = folder
        self.db = db
        self.store = open_outcome_store(settings, db)  # Redis (every replica's outcomes) when MSSERVE_REDIS_URL is set
        self.registry = WeightsRegistry(db, folder)
        self.dispatcher: Dispatcher | None = None
        self.service: LearningService | None = None
        self._judge: Engine | None = None

    @classmethod
    def open(cls, settings: Settings) -> LearningRuntime | None:
        """None when learning is off or the state folder cannot be used (the server then runs on the prior)."""
        if not settings.router_learning:
            return None
        folder = settings.state_dir or default_state_dir()
        try:
            return cls(settings, folder, StateDB(folder))
        except (OSError, RuntimeError) as exc:
            log.warning("router learning off: state folder %s unusable (%s)", folder, exc)
            return None

    def router(self) -> Router:
        return router_for(self.settings, self.registry)

    def attach(self, dispatcher: Dispatcher, azure: Engine | None) -> LearningService:
        settings = self.settings
        self.dispatcher = dispatcher
        judge = azure
        if azure is not None and settings.router_judge_deployment not in (None, settings.azure_deployment):
            judge = self._judge = AzureEngine.from_settings(settings, deployment=settings.router_judge_deployment)
        self.service = LearningService(
            store=self.store,
            router=lambda: dispatcher.router,  # type: ignore[arg-type,return-value]
            policy=dispatcher.policy,
            azure=azure,
            judge_engine=judge,
            shadow_rate=settings.router_shadow_rate,
            log_contents=settings.log_contents,
            embedder=embed.default_embedder(),
        )
        return self.service

    def reload(self) -> str:
        """Swap in the current weights (learned, or the prior after a rollback); returns the router's name."""
        assert self.dispatcher is not None
        router = self.router()
        self.dispatcher.router = router
        name = str(getattr(router, "name", router.model.name))
        log.info("router reloaded: %s (threshold %.4f)", name, router.threshold)
        if self.service is not None:
            self.service.refresh_estimate()
        return name

    async def start(self) -> None:
        if self._judge is not None:
            await self._judge.start()
        await asyncio.to_thread(self.store.prune)
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)
        if self.service is not None:
            await asyncio.to_thread(self.service.refresh_estimate)

    def _on_sighup(self) -> None:
        try:
            self.reload()
        except Exception:
            log.exception("router reload on SIGHUP failed; the previous router keeps serving")

    async def stop(self) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if self.service is not None:
            await self.service.drain()
        if self._judge is not None:
            await self._judge.stop()
        await asyncio.to_thread(self.store.close)
        self.db.close()
