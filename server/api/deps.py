"""Typed access from handlers to what the lifespan built (no module-level state)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from server.config import ModelProfile, Settings
from server.engines.base import Engine
from server.media import ImageIntake
from server.routing.dispatch import Dispatcher


@dataclass
class Services:
    settings: Settings
    profile: ModelProfile
    engine: Engine
    dispatcher: Dispatcher
    intake: ImageIntake
    started_at: float = 0.0
    draining: bool = False
    extras: dict[str, object] = field(default_factory=dict)


async def get_services(request: Request) -> Services:  # async: FastAPI runs sync dependencies in a thread
    services: Services = request.app.state.services
    return services
