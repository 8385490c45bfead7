"""The FastAPI factory and its lifespan: build services, start the engine in the background, drain on exit.

The engine loads in the background so that /health answers at once and /ready says 503
until the model is in memory, which is what load balancers and Kubernetes probes expect.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI

from server import __version__, middleware
from server.api import dashboard, health, metrics, models, router_admin
from server.api.batches import router as batches
from server.api.captions import router as captions
from server.api.chat import router as chat
from server.api.deps import Services
from server.api.error_responses import install_error_handlers
from server.api.feedback import router as feedback
from server.api.files import router as files
from server.batch.lifecycle import close_batches, open_batches
from server.batch.metrics import BatchCollector
from server.config import ModelProfile, Settings, load_profile
from server.engines import build_engine
from server.engines.azure import AzureEngine
from server.engines.base import Engine
from server.media import ImageIntake
from server.routing.dispatch import Dispatcher
from server.routing.learning_metrics import LearningCollector
from server.routing.ledger import open_spend_ledger
from server.routing.policy import RoutingPolicy
from server.routing.router import Router
from server.routing.runtime import LearningRuntime
from server.serving import begin_drain
from server.telemetry import Telemetry

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, profile: ModelProfile | None = None, engine: Engine | None = None) -> FastAPI:
    profile = profile or load_profile(settings.profile, settings.profiles_dir)
    engine = engine or build_engine(profile, settings)
    azure = AzureEngine.from_settings(settings)
    # Azure spend is reserved and settled in the state database (or Redis, shared by every replica, when
    # MSSERVE_REDIS_URL is set), so a restart cannot reset the daily budget.
    ledger = open_spend_ledger(settings) if azure is not None else None
    learning = LearningRuntime.open(settings)  # outcome store and learned weights (None: learning off)
    router = learning.router() if learning is not None else Router.from_settings(settings)
    policy = RoutingPolicy.from_settings(settings, ledger=ledger)  # the breaker: shared through Redis when set
    dispatcher = Dispatcher(engine, azure, router=router, policy=policy)
    services = Services(
        settings=settings,
        profile=profile,
        engine=engine,
        dispatcher=dispatcher,
        intake=ImageIntake(settings),
    )
    telemetry = Telemetry(settings, services)  # metrics, request log, recent requests
    if learning is not None:
        services.learning = learning
        telemetry.registry.register(LearningCollector(learning.attach(dispatcher, azure)))
    telemetry.registry.register(BatchCollector(services))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.started_at = time.time()
        app.state.services = services
        telemetry.start()
        open_batches(services, live_waiting=lambda: app.state.limiter.waiting)  # resumes unfinished batches
        middleware.warn_if_exposed(settings, app.state.api_keys, log)
        loading = asyncio.create_task(
            _start_engine(engine, settings, getattr(app.state, "request_exit", None)), name="engine-start"
        )
        if azure is not None:
            await azure.start()
        if learning is not None:
            await learning.start()
        try:
            yield
        finally:
            services.draining = True
            begin_drain(app)
            if learning is not None:
                await learning.stop()
            if not loading.done():
                # Its thread cannot be interrupted; serve_until_signal() exits without waiting for it (server.serving).
                app.state.engine_load_abandoned = True
                loading.cancel()
            with contextlib.suppress(BaseException):
                await loading
            await close_batches(services)  # lines still running are redone after the restart
            await engine.stop()
            await app.state.key_limits.close()  # the requests are over: no lease left to renew
            if azure is not None:
                await azure.stop()
            if ledger is not None:
                ledger.close()  # the queued settles are written before the process goes
            policy.breaker.close()
            await telemetry.stop()
            gc.unfreeze()  # what the engine left is garbage now; a test process builds many apps

    app = FastAPI(
        title="mistral-small-server",
        version=__version__,
        description="OpenAI-compatible server for Mistral Small 3.1 with an Azure escalation router.",
        lifespan=lifespan,
    )
    app.state.services = services
    app.state.telemetry = telemetry
    middleware.install(app, settings, telemetry)  # the order is written down in server/middleware/__init__.py
    install_error_handlers(app)
    app.include_router(chat.router)
    app.include_router(captions.router)
    app.include_router(files.router)
    app.include_router(batches.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(dashboard.router)
    app.include_router(feedback.router)
    app.include_router(router_admin.router)
    return app


async def _start_engine(engine: Engine, settings: Settings, on_failure: Callable[[str], None] | None) -> None:
    started = time.monotonic()
    try:
        await engine.start()
    except Exception as exc:
        log.error("engine %s failed to start: %s", engine.name, exc, exc_info=settings.log_level == "debug")
        if settings.exit_on_engine_failure and on_failure is not None:
            # A server that can never answer should not look alive to an orchestrator: stop serving;
            # `msserve serve` then exits non-zero with the reason.
            on_failure(str(exc))
        return
    freeze_startup_heap()
    log.info("engine %s ready in %.1fs", engine.name, time.monotonic() - started)


def freeze_startup_heap() -> None:
    """Put everything alive once the model is loaded out of the garbage collector's reach.

    torch, transformers and vLLM leave ~700k tracked objects in this process; every full collection walked
    them all (0.55 s on one core of the dev VM), stalling every stream and every new request at once. They
    live as long as the process, so they are frozen (vLLM's own server does the same after its start-up).
    """
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.debug("froze %d objects in %.0f ms", gc.get_freeze_count(), (time.perf_counter() - started) * 1e3)
