"""The Files API for batches: POST/GET /v1/files, GET/DELETE /v1/files/{id}, GET /v1/files/{id}/content.

Uploads stream to disk (server.batch.files) outside the per-request body limit and the model slots; they are
capped by MSSERVE_BATCH_MAX_FILE_BYTES and MSSERVE_BATCH_MAX_DISK_BYTES instead. A file is its uploader's:
another API key gets 404.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from server.api.batches.service import Batches, owner_of
from server.api.error_responses import documented
from server.batch.protocol import FileDeleted, FileObject, Page

router = APIRouter()
_ERRORS = documented(400, 401, 404, 413, 415)
_UPLOAD_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file", "purpose"],
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "purpose": {"type": "string", "enum": ["batch"]},
                },
            }
        }
    },
}


@router.post(
    "/v1/files",
    response_model=FileObject,
    response_model_exclude_none=True,
    responses=_ERRORS,
    openapi_extra={"requestBody": _UPLOAD_BODY},
)
async def upload_file(request: Request, service: Batches) -> FileObject:
    return await service.upload(request, owner_of(request))


@router.get("/v1/files", response_model=Page, response_model_exclude_none=True, responses=_ERRORS)
async def list_files(
    request: Request,
    service: Batches,
    purpose: str | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
    order: Literal["asc", "desc"] = "desc",
) -> Page:
    files, more = await asyncio.to_thread(
        service.store.list_files, owner_of(request), purpose=purpose, after=after, limit=limit, ascending=order == "asc"
    )
    return Page.of(files, more)


@router.get("/v1/files/{file_id}", response_model=FileObject, response_model_exclude_none=True, responses=_ERRORS)
async def get_file(file_id: str, request: Request, service: Batches) -> FileObject:
    return await service.file(file_id, owner_of(request))


@router.get("/v1/files/{file_id}/content", responses={200: {"content": {"application/octet-stream": {}}}, **_ERRORS})
async def file_content(file_id: str, request: Request, service: Batches) -> FileResponse:
    path = await service.file_path(file_id, owner_of(request))
    return FileResponse(path, media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}", response_model=FileDeleted, responses=_ERRORS)
async def delete_file(file_id: str, request: Request, service: Batches) -> FileDeleted:
    return await service.delete_file(file_id, owner_of(request))
