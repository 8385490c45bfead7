"""What the API key of a request may do, for handlers: force Azure, use operator endpoints.

``server.middleware.auth`` authenticates and leaves the key's name (and whether it is an admin key) in the
request state; the decisions that need the effective route live here, so that every way of choosing a route
(the ``x-msserve-route`` header, a model alias) is held to the same rule by calling ``check_route_permission``
once the route is resolved and before anything is dispatched.
"""

from __future__ import annotations

from fastapi import Request

from server.errors import PermissionDeniedError
from server.middleware.auth import ApiKeys
from server.routing.dispatch import parse_route


def key_name(request: Request) -> str | None:
    name = getattr(request.state, "key_name", None)
    return name if isinstance(name, str) else None


def is_admin(request: Request) -> bool:
    """An admin key (MSSERVE_ADMIN_KEYS), or any request when no keys are configured (one tenant)."""
    return bool(getattr(request.state, "admin", False))


def is_authenticated_admin(request: Request) -> bool:
    """An admin key was presented: with no keys configured nobody is, so anonymous callers never qualify."""
    keys: ApiKeys | None = getattr(request.app.state, "api_keys", None)
    return keys is not None and keys.enabled and is_admin(request) and key_name(request) is not None


def check_route_permission(request: Request, route: str | None, *, param: str = "x-msserve-route") -> str:
    """Refuse (403 ``azure_not_permitted``) a forced Azure route this key may not take; return the route.

    ``route`` is the effective route (header, else alias, else auto). Only forcing Azure is a permission: the
    router's own escalations (auto, cascade, overload) are the operator's policy, open to every key. ``param``
    names what chose the route (``model`` for an alias).
    """
    effective = parse_route(route)
    keys: ApiKeys | None = getattr(request.app.state, "api_keys", None)
    name = key_name(request)
    if effective == "azure" and keys is not None and not keys.may_force_azure(name):
        raise PermissionDeniedError(
            f"API key {name!r} may not force Azure; MSSERVE_AZURE_KEYS lists the keys that may",
            param=param,
            code="azure_not_permitted",
        )
    return effective


def require_admin(request: Request) -> None:
    """A FastAPI dependency for operator endpoints outside ``/admin/`` (which the middleware already guards)."""
    if not is_admin(request):
        raise PermissionDeniedError("this endpoint is for admin keys (MSSERVE_ADMIN_KEYS)", code="admin_required")
