"""Plain ASGI middleware, one concern per module, installed in one written order by ``install``.

Outermost first (a request passes them top to bottom, the response bottom to top):

    ProxyHeadersMiddleware       uvicorn's: X-Forwarded-For/-Proto, only from MSSERVE_TRUSTED_PROXIES (if any)
    RequestIdMiddleware          x-request-id accepted or generated, echoed on every response
    AccessLogMiddleware          timing, metrics, one JSON log line, recent-request ring buffer
    HostAllowListMiddleware      Host not allowed (DNS rebinding): 400 host_not_allowed
    CrossSiteMiddleware          cross-site browser requests that change things: 403 cross_site_request
    AuthMiddleware               API keys (401), admin endpoints (403), key name for logs and per-key limits
    KeyLimitsMiddleware          per-key requests/tokens per minute, shared per-key cap (429 + Retry-After)
    BodySizeLimitMiddleware      413 request_too_large / 408 request_body_timeout while the body streams in
    ConcurrencyLimitMiddleware   reads the body, then slots, wait queue, per-key cap (429 + Retry-After), draining (503)

Forwarded headers are applied first so that everything after sees the client's scheme and address (the
server's own uvicorn proxy handling is off: it trusted 127.0.0.1 unasked). The id comes next so that every log
line and error carries it; the access log sits outside auth and the limits so that refused requests are counted
too; a key over its own limits is refused before its body is read; the body limits run, and the body is in,
before a slot is taken.
"""

from __future__ import annotations

from fastapi import FastAPI
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from server.config import Settings
from server.limits import KeyLimitsCollector, open_key_limits
from server.middleware.access_log import AccessLogMiddleware
from server.middleware.auth import ApiKeys, AuthMiddleware, _named, warn_if_exposed
from server.middleware.body_limit import BodySizeLimitMiddleware
from server.middleware.concurrency import ConcurrencyLimitMiddleware, Limiter
from server.middleware.cross_site import CrossSiteMiddleware
from server.middleware.host_allow import HostAllowListMiddleware, allowed_hosts
from server.middleware.key_limits import KeyLimitsMiddleware
from server.middleware.request_id import RequestIdMiddleware
from server.telemetry import Telemetry

__all__ = ["ApiKeys", "Limiter", "install", "warn_if_exposed"]


def install(app: FastAPI, settings: Settings, telemetry: Telemetry) -> None:
    """Add the middleware in the order above; ``app.state.api_keys``, ``app.state.limiter`` and
    ``app.state.key_limits`` (its store: the lifespan closes it) are shared.

    Raises ``ApiKeysError`` (a ValueError) when the keys or the lists naming them are malformed.
    """
    keys = ApiKeys.from_settings(settings)
    for setting, names in (("MSSERVE_KEY_RPM_OVERRIDES", settings.key_rpm_overrides),
                           ("MSSERVE_KEY_TPM_OVERRIDES", settings.key_tpm_overrides)):
        _named(setting, list(names), keys.keys)
    limiter = Limiter.from_settings(settings)
    key_limits = open_key_limits(settings)
    telemetry.limiter = limiter
    telemetry.registry.register(KeyLimitsCollector(key_limits.stats))
    app.state.api_keys = keys
    app.state.limiter = limiter
    app.state.key_limits = key_limits.store
    # add_middleware puts each new one outside the previous ones: add innermost first.
    app.add_middleware(ConcurrencyLimitMiddleware, limiter=limiter)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes,
                       min_bytes_per_s=settings.body_min_bytes_per_s, grace_s=settings.body_min_rate_grace_s)
    app.add_middleware(KeyLimitsMiddleware, policy=key_limits.policy, store=key_limits.store,
                       stats=key_limits.stats)
    app.add_middleware(AuthMiddleware, keys=keys)
    app.add_middleware(CrossSiteMiddleware)
    app.add_middleware(HostAllowListMiddleware, allowed=allowed_hosts(settings))
    app.add_middleware(AccessLogMiddleware, telemetry=telemetry)
    app.add_middleware(RequestIdMiddleware)
    if settings.trusted_proxies:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(settings.trusted_proxies))
