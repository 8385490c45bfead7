"""What the Files and Batches endpoints do, on the store, the file storage and the worker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from starlette.requests import Request

from server.api.deps import Services
from server.batch.files import FileStorage
from server.batch.protocol import Batch, CreateBatchRequest, FileDeleted, FileObject
from server.batch.store import BatchStore, new_file_id
from server.batch.worker import BatchWorker
from server.errors import InvalidRequestError, NotFoundError
from server.state import StateDB, default_state_dir

FILES_FOLDER = "batch_files"
PURPOSES = ("batch",)  # what may be uploaded; batch_output files are made by the server


class BatchService:
    def __init__(self, services: Services, state_dir: Path, *, clock: Callable[[], float] = time.time,
                 live_waiting: Callable[[], int] = lambda: 0) -> None:
        settings = services.settings
        self.settings = settings
        self.clock = clock
        self.store = BatchStore(StateDB(state_dir), retention_s=settings.batch_retention_s)
        self.storage = FileStorage(state_dir / FILES_FOLDER)
        self.worker = BatchWorker(self.store, self.storage, services, clock=clock, live_waiting=live_waiting)

    @classmethod
    def from_services(cls, services: Services, live_waiting: Callable[[], int]) -> BatchService:
        return cls(services, services.settings.state_dir or default_state_dir(), live_waiting=live_waiting)

    def close(self) -> None:
        self.store.db.close()

    # -- files ----------------------------------------------------------------------------------------

    async def upload(self, request: Request, owner: str) -> FileObject:
        settings = self.settings
        used = await asyncio.to_thread(self.store.disk_bytes)
        upload = await self.storage.receive(request, max_bytes=settings.batch_max_file_bytes,
                                            disk_left=max(0, settings.batch_max_disk_bytes - used))
        try:
            purpose = upload.fields.get("purpose")
            if upload.temp is None:
                raise InvalidRequestError("attach the JSONL file in a `file` field", param="file",
                                          code="missing_required_parameter")
            if purpose is None:
                raise InvalidRequestError("purpose is required", param="purpose", code="missing_required_parameter")
            if purpose not in PURPOSES:
                raise InvalidRequestError(f"purpose {purpose!r} is not supported here; use 'batch'", param="purpose",
                                          code="invalid_value")
            file_id = new_file_id()
            await asyncio.to_thread(self.storage.adopt, upload.temp, file_id)
            upload.temp = None
        finally:
            if upload.temp is not None:
                upload.temp.unlink(missing_ok=True)
        name = (upload.filename or "upload.jsonl")[:255]
        return await asyncio.to_thread(self.store.add_file, file_id, owner, name, purpose, upload.size,
                                       int(self.clock()))

    async def file(self, file_id: str, owner: str) -> FileObject:
        found = await asyncio.to_thread(self.store.get_file, file_id, owner)
        if found is None:
            raise NotFoundError(f"no file with id {file_id!r}", param="file_id", code="file_not_found")
        return found

    async def file_path(self, file_id: str, owner: str) -> Path:
        await self.file(file_id, owner)  # ownership first: an id never reaches the disk unchecked
        path = self.storage.path(file_id)
        if not path.is_file():  # removed behind the server's back: say so, not a 500
            raise NotFoundError(f"the content of file {file_id!r} is gone", param="file_id", code="file_not_found")
        return path

    async def delete_file(self, file_id: str, owner: str) -> FileDeleted:
        if not await asyncio.to_thread(self.store.delete_file, file_id, owner):
            raise NotFoundError(f"no file with id {file_id!r}", param="file_id", code="file_not_found")
        await asyncio.to_thread(self.storage.remove, file_id)
        return FileDeleted(id=file_id, deleted=True)

    # -- batches --------------------------------------------------------------------------------------

    async def create(self, request: CreateBatchRequest, owner: str) -> Batch:
        found = await asyncio.to_thread(self.store.get_file, request.input_file_id, owner)
        if found is None:
            raise NotFoundError(f"no file with id {request.input_file_id!r}", param="input_file_id",
                                code="file_not_found")
        if found.purpose != "batch":
            raise InvalidRequestError("the input file's purpose must be 'batch'", param="input_file_id",
                                      code="invalid_file_purpose")
        batch = await asyncio.to_thread(self.store.create_batch, owner, request, int(self.clock()))
        self.worker.poke()
        return batch

    async def batch(self, batch_id: str, owner: str) -> Batch:
        found = await asyncio.to_thread(self.store.get_batch, batch_id, owner)
        if found is None:
            raise NotFoundError(f"no batch with id {batch_id!r}", param="batch_id", code="batch_not_found")
        return found

    async def cancel(self, batch_id: str, owner: str) -> Batch:
        found = await asyncio.to_thread(self.store.request_cancel, batch_id, owner, int(self.clock()))
        if found is None:
            raise NotFoundError(f"no batch with id {batch_id!r}", param="batch_id", code="batch_not_found")
        if found.status not in ("cancelling", "cancelled"):
            raise InvalidRequestError(f"a batch that is {found.status} cannot be cancelled",
                                      code="batch_not_cancellable", status_code=409)
        self.worker.poke()
        return found
