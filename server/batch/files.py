"""Batch files on disk (``batch_files/`` beside the state database), and uploads streamed straight into them.

An upload is parsed as it arrives (python-multipart's push parser) and its ``file`` part written to a temporary
file in the same folder, counted against the file and disk caps on every chunk; nothing is buffered whole and
the per-request body limit does not apply. Ids are made here (``file-<32 hex>``) and checked before they are
ever joined to a path, so no client string names a path.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from server.errors import InvalidRequestError

_ID = re.compile(r"^file-[0-9a-f]{32}$")
_TMP_PREFIX = ".upload-"
_MAX_FIELD_BYTES = 1024


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    temp: Path | None = None
    size: int = 0


@dataclass
class _Part:
    """The multipart part being parsed."""

    headers: dict[bytes, bytes] = field(default_factory=dict)
    header_name: bytes = b""
    header_value: bytes = b""
    name: str = ""
    is_file: bool = False
    buffer: bytes = b""


class FileStorage:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, file_id: str) -> Path:
        if not _ID.match(file_id):
            raise ValueError(f"not a file id: {file_id!r}")
        return self.directory / file_id

    def write_lines(self, file_id: str, lines: Iterable[str]) -> int:
        """Write a whole file under a temporary name, fsync, then rename: a crash leaves no half file."""
        temp = self.directory / f"{_TMP_PREFIX}{file_id}"
        size = 0
        with temp.open("wb") as out:
            for line in lines:
                data = line.encode() + b"\n"
                out.write(data)
                size += len(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, self.path(file_id))
        return size

    def adopt(self, temp: Path, file_id: str) -> None:
        os.replace(temp, self.path(file_id))

    def remove(self, file_id: str) -> None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            self.path(file_id).unlink()

    def sweep(self, known: set[str]) -> int:
        """Remove temporary files and files without a database row (a crash between the two); how many."""
        removed = 0
        for entry in self.directory.iterdir():
            if entry.name.startswith(_TMP_PREFIX) or (_ID.match(entry.name) and entry.name not in known):
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                    removed += 1
        return removed

    async def receive(self, request: Request, *, max_bytes: int, disk_left: int) -> Upload:
        """Stream a multipart upload's ``file`` part to a temporary file; other fields are kept as short strings."""
        content_type, params = parse_options_header(request.headers.get("content-type", ""))
        boundary = params.get(b"boundary")
        if content_type != b"multipart/form-data" or not boundary:
            raise InvalidRequestError("send multipart/form-data with a `file` field and `purpose`",
                                      code="unsupported_media_type", status_code=415)
        upload = Upload()
        part = _Part()
        out: list[IO[bytes]] = []
        limit = min(max_bytes, disk_left)

        def on_part_begin() -> None:
            nonlocal part
            part = _Part()

        def on_header_field(data: bytes, start: int, end: int) -> None:
            part.header_name += data[start:end]

        def on_header_value(data: bytes, start: int, end: int) -> None:
            part.header_value += data[start:end]

        def on_header_end() -> None:
            part.headers[part.header_name.lower()] = part.header_value
            part.header_name, part.header_value = b"", b""

        def on_headers_finished() -> None:
            _, disposition = parse_options_header(part.headers.get(b"content-disposition", b""))
            part.name = disposition.get(b"name", b"").decode("utf-8", "replace")
            if part.name == "file" and b"filename" in disposition:
                if upload.temp is not None:
                    raise InvalidRequestError("send one `file` per upload", param="file", code="too_many_files")
                upload.filename = disposition[b"filename"].decode("utf-8", "replace")
                upload.temp = self.directory / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
                out.append(upload.temp.open("wb"))
                part.is_file = True

        def on_part_data(data: bytes, start: int, end: int) -> None:
            if part.is_file:
                upload.size += end - start
                if upload.size > limit:
                    raise _too_large(max_bytes, disk=upload.size <= max_bytes)
                out[0].write(data[start:end])
                return
            part.buffer += data[start:end]
            if len(part.buffer) > _MAX_FIELD_BYTES:
                raise InvalidRequestError(f"field {part.name} is too long", code="invalid_value", param=part.name)

        def on_part_end() -> None:
            if not part.is_file:
                upload.fields[part.name] = part.buffer.decode("utf-8", "replace")

        ended: list[bool] = []

        parser = MultipartParser(boundary, {  # type: ignore[arg-type]
            "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
            "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data, "on_part_end": on_part_end, "on_end": lambda: ended.append(True),
        })
        try:
            async for chunk in request.stream():
                parser.write(chunk)
            parser.finalize()
            if not ended:  # no closing boundary: the client stopped sending midway
                raise InvalidRequestError("malformed multipart body: it ends before its closing boundary",
                                          code="invalid_multipart")
            if out:
                out[0].flush()
                os.fsync(out[0].fileno())
        except InvalidRequestError:
            self._discard(upload, out)
            raise
        except Exception as exc:  # python-multipart's parse errors, a client gone midway
            self._discard(upload, out)
            raise InvalidRequestError(f"malformed multipart body: {exc}", code="invalid_multipart") from exc
        finally:
            for handle in out:
                handle.close()
        return upload

    def _discard(self, upload: Upload, out: list[IO[bytes]]) -> None:
        for handle in out:
            handle.close()
        if upload.temp is not None:
            with contextlib.suppress(FileNotFoundError):
                upload.temp.unlink()
            upload.temp = None


def _too_large(max_bytes: int, *, disk: bool) -> InvalidRequestError:
    if disk:
        return InvalidRequestError("the server's storage for batch files is full; delete files you no longer need",
                                   code="storage_full", status_code=413)
    return InvalidRequestError(f"the file is larger than {max_bytes} bytes", param="file", code="file_too_large",
                               status_code=413)
