"""GET /v1/models: what is served, with its context length, and the aliases clients may name instead.

Clients that list the models before calling (and Azure clients, at ``/openai/models``) find every name a chat
request accepts: the served model first, then each alias with the route it stands for.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from server.api.aliases import ModelNames
from server.api.deps import Services, get_services

router = APIRouter()


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "mistral-small-server"
    context_length: int
    max_model_len: int
    engine: str
    profile: str
    demo: bool = False


class AliasCard(BaseModel):
    """A name that a chat request may give as its model (MSSERVE_MODEL_ALIASES), and the route it stands for."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "mistral-small-server"
    route: str  # auto, local, azure or cascade


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard | AliasCard]



@router.get("/v1/models", response_model=ModelList)
@router.get("/openai/v1/models", response_model=ModelList, include_in_schema=False)
@router.get("/openai/models", response_model=ModelList, include_in_schema=False)
async def list_models(services: Annotated[Services, Depends(get_services)]) -> ModelList:
    profile = services.profile
    created = int(services.started_at)
    card = ModelCard(
        id=services.engine.name,
        created=created,
        context_length=profile.max_model_len,
        max_model_len=profile.max_model_len,
        engine=profile.engine,
        profile=profile.name,
        demo=profile.demo,
    )
    aliases = [
        AliasCard(id=name, created=created, route=route)
        for name, route in ModelNames.from_services(services).aliases.items()
    ]
    return ModelList(data=[card, *aliases])
