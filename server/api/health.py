"""GET /health (the process answers) and GET /ready (the engine is loaded and not draining).

Both are open (probes). ``/ready`` says the state and the queue counts to anyone, but the engine's detail text
(why it failed to load: paths, exception text, internal state) only to an admin key; everyone else gets a
generic reason, and the details are in the server's log.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from server.api.deps import Services, get_services
from server.api.permissions import is_authenticated_admin

router = APIRouter()

GENERIC_REASONS = {
    "starting": "the model is loading",
    "ready": "",
    "draining": "the server is shutting down",
    "stopped": "the engine is stopped",
    "failed": "the engine failed; the server log says why",
}


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "engine loading, failed or draining"}})
async def ready(request: Request, services: Annotated[Services, Depends(get_services)]) -> JSONResponse:
    engine = services.engine.health()
    is_ready = engine.ready and not services.draining
    status = "ready" if is_ready else ("draining" if services.draining else engine.state)
    shown = engine.model_dump()
    if not is_authenticated_admin(request):
        shown["detail"] = GENERIC_REASONS.get(engine.state, "")
    body: dict[str, Any] = {"status": status, "model": services.engine.name, "engine": shown}
    return JSONResponse(body, status_code=200 if is_ready else 503)
