"""Start and stop the batch service with the app (the lifespan calls these two)."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable

from server.api.deps import Services
from server.batch.service import BatchService

log = logging.getLogger(__name__)


def open_batches(services: Services, *, live_waiting: Callable[[], int]) -> BatchService | None:
    """Open the store and start the worker. A state folder that cannot be opened leaves the live API serving
    and the batch endpoints answering 503, rather than keeping the whole server down."""
    try:
        service = BatchService.from_services(services, live_waiting)
    except (OSError, sqlite3.Error, RuntimeError) as exc:
        log.error("batch API unavailable: cannot open its state (%s); set MSSERVE_STATE_DIR to a writable folder",
                  exc)
        return None
    services.batches = service
    service.worker.start()
    return service


async def close_batches(services: Services) -> None:
    service, services.batches = services.batches, None
    if service is not None:
        await service.worker.stop()
        service.close()
