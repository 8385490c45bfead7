"""GET /v1/models: what is served, with its context length."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from server.api.deps import Services, get_services
from server.api.protocol import ModelCard, ModelList

router = APIRouter()


@router.get("/v1/models", response_model=ModelList)
async def list_models(services: Annotated[Services, Depends(get_services)]) -> ModelList:
    profile = services.profile
    card = ModelCard(
        id=services.engine.name,
        created=int(services.started_at),
        context_length=profile.max_model_len,
        max_model_len=profile.max_model_len,
        engine=profile.engine,
        profile=profile.name,
        demo=profile.demo,
    )
    return ModelList(data=[card])
