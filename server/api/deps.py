"""Typed access from handlers to what the lifespan built (no module-level state)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request

from server.api.fingerprint import Fingerprints
from server.config import ModelProfile, Settings
from server.engines.base import Engine
from server.media import ImageIntake
from server.routing.dispatch import Dispatcher

if TYPE_CHECKING:  # the runtime pulls in the learning stack; the API needs only its type here
    from server.api.aliases import ModelNames
    from server.batch.service import BatchService
    from server.routing.runtime import LearningRuntime


@dataclass
class Services:
    settings: Settings
    profile: ModelProfile
    engine: Engine
    dispatcher: Dispatcher
    intake: ImageIntake
    started_at: float = 0.0
    draining: bool = False
    learning: LearningRuntime | None = None  # router learning (outcome store, shadow, reload); None: off
    batches: BatchService | None = None  # the Files and Batch APIs; None: not started or unavailable
    model_names: ModelNames | None = None  # served names and aliases, computed once (server.api.aliases)
    fingerprints: Fingerprints = field(init=False)  # system_fingerprint's values, computed once

    def __post_init__(self) -> None:
        self.fingerprints = Fingerprints(self.settings, self.profile, self.engine)


async def get_services(request: Request) -> Services:  # async: FastAPI runs sync dependencies in a thread
    services: Services = request.app.state.services
    return services
