"""Render every error as OpenAI's ``{"error": {"message", "type", "param", "code"}}`` (the hierarchy itself is
``server.errors``).

Request-validation errors become 400 (OpenAI's status, not FastAPI's 422) with the failing
field as ``param`` and a stable code.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.errors import InvalidRequestError, MSServeError

log = logging.getLogger(__name__)
_Model = TypeVar("_Model", bound=BaseModel)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses=``: these statuses answer with the error body in the OpenAPI schema."""
    return {status: {"model": ErrorResponse} for status in statuses}

_VALIDATION_CODES = {
    "missing": "missing_required_parameter",
    "extra_forbidden": "unknown_parameter",
    "json_invalid": "invalid_json",
    "json_type": "invalid_json",
    "model_attributes_type": "invalid_type",
    "dict_type": "invalid_type",
    "list_type": "invalid_type",
    "string_type": "invalid_type",
    "int_type": "invalid_type",
    "int_parsing": "invalid_type",
    "float_type": "invalid_type",
    "float_parsing": "invalid_type",
    "bool_type": "invalid_type",
    "bool_parsing": "invalid_type",
    "union_tag_invalid": "unsupported_content_type",
    "union_tag_not_found": "missing_required_parameter",
    "literal_error": "invalid_value",
}
_HTTP_CODES = {404: ("not_found_error", "not_found"), 405: ("invalid_request_error", "method_not_allowed")}


def error_response(error: MSServeError) -> JSONResponse:
    return JSONResponse(error.to_body(), status_code=error.status_code, headers=error.headers or None)


def validation_error(exc: RequestValidationError) -> InvalidRequestError:
    first: dict[str, Any] = _most_specific(list(exc.errors()))
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = _dotted(location) or None
    kind = str(first.get("type", ""))
    code = _VALIDATION_CODES.get(kind, "invalid_value")
    if kind.startswith("json"):
        return InvalidRequestError("the request body is not valid JSON", code="invalid_json")
    message = str(first.get("msg", "invalid request"))
    if param:
        message = f"{param}: {message}"
    return InvalidRequestError(message, param=param, code=code)


def validated(model: type[_Model], payload: Any) -> _Model:
    """Validate a payload read by hand (a multipart form, a batch line) with the same 400s as a JSON body."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise validation_error(RequestValidationError(exc.errors())) from None


def _most_specific(errors: list[Any]) -> dict[str, Any]:
    """Among a union's failed branches, the one that says most: a wrong content-part tag, else the deepest path."""
    if not errors:
        return {}
    tagged = [error for error in errors if error.get("type") in ("union_tag_invalid", "union_tag_not_found")]
    if tagged:
        return dict(tagged[0])
    return dict(max(errors, key=lambda error: len(dict(error).get("loc", ()))))


def _dotted(location: list[str]) -> str:
    out = ""
    for part in location:
        if part.isdigit():
            out += f"[{part}]"
        elif part in ("TextContentPart", "ImageContentPart", "str", "list[tagged-union[...]]"):
            continue  # pydantic's union branch names mean nothing to a client
        else:
            out += f".{part}" if out else part
    return out


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(MSServeError)
    async def _ours(_request: Request, exc: MSServeError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type, code = _HTTP_CODES.get(exc.status_code, ("invalid_request_error", f"http_{exc.status_code}"))
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            code = "invalid_json"  # FastAPI's word for JSON it could not read (e.g. a 5,000-digit integer)
        body = {"error": {"message": str(exc.detail), "type": error_type, "param": None, "code": code}}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        body = {"error": {"message": "internal server error", "type": "server_error", "param": None,
                          "code": "internal_error"}}
        return JSONResponse(body, status_code=500)
