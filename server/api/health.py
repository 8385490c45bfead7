"""GET /health (the process answers) and GET /ready (the engine is loaded and not draining)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from server.api.deps import Services, get_services

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "engine loading, failed or draining"}})
async def ready(services: Annotated[Services, Depends(get_services)]) -> JSONResponse:
    engine = services.engine.health()
    is_ready = engine.ready and not services.draining
    body: dict[str, Any] = {
        "status": "ready" if is_ready else ("draining" if services.draining else engine.state),
        "model": services.engine.name,
        "engine": engine.model_dump(),
    }
    return JSONResponse(body, status_code=200 if is_ready else 503)
