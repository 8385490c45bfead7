"""The Batch API: POST/GET /v1/batches, GET /v1/batches/{id}, POST /v1/batches/{id}/cancel (OpenAI's shapes).

A batch's lines are answered by server.batch.worker through the same chat service, captioning and router as
live requests; a batch is its creator's: another API key gets 404.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Request

from server.api.batches.service import Batches, owner_of
from server.api.error_responses import documented
from server.batch.protocol import Batch, CreateBatchRequest, Page

router = APIRouter()
_ERRORS = documented(400, 401, 404, 409)


@router.post("/v1/batches", response_model=Batch, response_model_exclude_none=True, responses=_ERRORS)
async def create_batch(body: CreateBatchRequest, request: Request, service: Batches) -> Batch:
    return await service.create(body, owner_of(request))


@router.get("/v1/batches", response_model=Page, response_model_exclude_none=True, responses=_ERRORS)
async def list_batches(
    request: Request,
    service: Batches,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Page:
    batches, more = await asyncio.to_thread(service.store.list_batches, owner_of(request), after=after, limit=limit)
    return Page.of(batches, more)


@router.get("/v1/batches/{batch_id}", response_model=Batch, response_model_exclude_none=True, responses=_ERRORS)
async def get_batch(batch_id: str, request: Request, service: Batches) -> Batch:
    return await service.batch(batch_id, owner_of(request))


@router.post("/v1/batches/{batch_id}/cancel", response_model=Batch, response_model_exclude_none=True, responses=_ERRORS)
async def cancel_batch(batch_id: str, request: Request, service: Batches) -> Batch:
    return await service.cancel(batch_id, owner_of(request))
