"""The one error hierarchy of the server.

    MSServeError                 base: HTTP status, OpenAI error type, stable code, param
    ├── InvalidRequestError      400 invalid_request_error (bad field, unsupported option)
    │   └── ImageError           400/413/415 image intake (bad data URL, too large, wrong format)
    ├── AuthenticationError      401 authentication_error
    ├── PermissionDeniedError    403 permission_error (a valid key that may not do this)
    ├── NotFoundError            404 not_found_error (unknown model)
    ├── RateLimitError           429 rate_limit_error (queue full, per-key limit)
    ├── UpstreamError            502 upstream_error (Azure failed)
    ├── EngineUnavailableError   503 service_unavailable (loading, draining, engine down)
    └── DeadlineExceededError    504 timeout (request deadline passed)

    StartupError                 base: the server cannot start as configured (message, stable code; no HTTP status)
    ├── ProfileError             unknown profile, missing profiles folder, an engine this install lacks
    ├── RouterConfigError        router weights missing, invalid or incompatible; threshold or policy out of range
    └── ModelUnavailableError    the weights cannot be had: missing locally, no access on the hub, no network

Request-time code raises the ``MSServeError`` family; one handler in ``server.api.error_responses`` renders them as
``{"error": {"message", "type", "param", "code"}}``. Third-party errors are translated into these once, at
the engine boundary (``raise ... from exc``). The ``StartupError`` family is raised while settings, profiles,
weights and the router are read, before any request exists: the ``msserve`` commands print its message and exit
with status 2 (a client never sees one; if one escaped into a request it would be an internal error, 500).
"""

from __future__ import annotations


class MSServeError(Exception):
    status_code: int = 500
    error_type: str = "server_error"
    default_code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.param = param
        if status_code is not None:
            self.status_code = status_code
        self.headers = headers or {}

    def to_body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}


class InvalidRequestError(MSServeError):
    status_code = 400
    error_type = "invalid_request_error"
    default_code = "invalid_request"


class ImageError(InvalidRequestError):
    default_code = "image_invalid"


class AuthenticationError(MSServeError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(MSServeError):
    status_code = 403
    error_type = "permission_error"
    default_code = "permission_denied"


class NotFoundError(MSServeError):
    status_code = 404
    error_type = "not_found_error"
    default_code = "not_found"


class RateLimitError(MSServeError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limited"


class UpstreamError(MSServeError):
    status_code = 502
    error_type = "upstream_error"
    default_code = "upstream_error"


class EngineUnavailableError(MSServeError):
    status_code = 503
    error_type = "service_unavailable"
    default_code = "engine_unavailable"


class DeadlineExceededError(MSServeError):
    status_code = 504
    error_type = "timeout"
    default_code = "deadline_exceeded"


class StartupError(Exception):
    default_code: str = "startup_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code


class ProfileError(StartupError):
    default_code = "unknown_profile"


class RouterConfigError(StartupError):
    default_code = "invalid_router_config"


class ModelUnavailableError(StartupError):
    default_code = "model_unavailable"
