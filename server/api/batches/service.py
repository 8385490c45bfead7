"""The batch service as the Files and Batch API routers get it, and whose files and batches a caller sees."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from server.api.deps import Services, get_services
from server.batch.service import BatchService
from server.errors import EngineUnavailableError


def batch_service(services: Annotated[Services, Depends(get_services)]) -> BatchService:
    service = services.batches
    if service is None:
        raise EngineUnavailableError("the batch API is not available on this server", code="batches_unavailable")
    return service


def owner_of(request: Request) -> str:
    """The API key's name; with no keys configured every caller is the same, unnamed owner."""
    name = getattr(request.state, "key_name", None)
    return name if isinstance(name, str) else ""


Batches = Annotated[BatchService, Depends(batch_service)]
