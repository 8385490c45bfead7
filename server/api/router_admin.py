"""POST /admin/router/reload (pick up weights written by ``msserve router learn`` / ``rollback``) and the
dashboard's learning feed (GET /dashboard/api/learning: judged outcomes and the learning curve)."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from server.api.deps import Services, get_services
from server.api.error_responses import documented
from server.api.permissions import require_admin
from server.errors import InvalidRequestError
from server.routing.learned import load_learned
from server.state.redis_store import RedisUnavailable

router = APIRouter()
_ERRORS = documented(400, 401, 403)


@router.post("/admin/router/reload", responses=_ERRORS)
async def reload_router(request: Request, services: Annotated[Services, Depends(get_services)]) -> JSONResponse:
    require_admin(request)  # the auth middleware guards /admin/ too; this keeps the rule beside the endpoint
    runtime = services.learning
    if runtime is None:
        raise InvalidRequestError("router learning is off (MSSERVE_ROUTER_LEARNING=false)", code="learning_disabled")
    name = await asyncio.to_thread(runtime.reload)
    router = services.dispatcher.router
    return JSONResponse({"router": name, "threshold": getattr(router, "threshold", None)})


def _curve(runtime: Any) -> list[dict[str, Any]]:
    """Per learned version: outcomes used and APGR before/after on held-back outcomes (from each card)."""
    points = []
    for row in runtime.db.query("SELECT version, path, state FROM router_weights ORDER BY version"):
        try:
            card = load_learned(row["path"]).card
        except (OSError, ValueError):
            continue
        points.append(
            {
                "version": row["version"],
                "state": row["state"],
                "outcomes": card.get("outcomes_used"),
                "apgr_before": card.get("apgr_before"),
                "apgr_after": card.get("apgr_after"),
            }
        )
    return points


@router.get("/dashboard/api/learning", responses=_ERRORS)
async def learning_feed(services: Annotated[Services, Depends(get_services)]) -> JSONResponse:
    runtime = services.learning
    if runtime is None or runtime.service is None:
        return JSONResponse({"enabled": False}, headers={"cache-control": "no-store"})
    try:
        counts = await asyncio.to_thread(runtime.store.counts)
        judged = await asyncio.to_thread(runtime.store.judged_series)
    except RedisUnavailable:  # the shared outcome store is down: the panel says so rather than a 500
        return JSONResponse({"enabled": False, "unavailable": "the outcome store (Redis) is unavailable"},
                            headers={"cache-control": "no-store"})
    curve = await asyncio.to_thread(_curve, runtime)
    counters = runtime.service.counters
    body = {
        "enabled": True,
        "router": str(getattr(services.dispatcher.router, "name", "prior")),
        "counts": counts,
        "judged": [[round(t, 1), v] for t, v in judged],
        "curve": json.loads(json.dumps(curve, default=str)),
        "shadow_calls": counters.shadow_calls,
        "estimated_quality": counters.estimated_quality,
    }
    return JSONResponse(body, headers={"cache-control": "no-store"})
