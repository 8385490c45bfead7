"""API keys: ``Authorization: Bearer <key>`` or ``api-key: <key>``; 401 in OpenAI's error shape without one.

Keys are named (``alice:sk-abc,bob:sk-def``) so that logs, metrics and per-key limits say who, never the key.
Every configured key is compared, in constant time, on every request. No keys configured: everything is open.

Path classes: ``/health`` and ``/ready`` are always open (probes); ``/metrics`` and the dashboard need a key
unless ``metrics_open`` / ``dashboard_open``; the dashboard also accepts its signed session cookie, and its
page at ``/`` falls through unauthenticated so it can show its login form. Everything else needs a key.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from dataclasses import dataclass, field

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from server.config import Settings
from server.errors import AuthenticationError
from server.middleware._respond import scope_state, send_error

OPEN_PATHS = frozenset({"/health", "/ready", "/dashboard/login", "/dashboard/logout", "/favicon.ico"})
SESSION_COOKIE = "msserve_session"
SESSION_TTL_S = 12 * 3600


def parse_api_keys(text: str | None) -> dict[str, str]:
    """``"alice:sk-abc, bob:sk-def"`` -> {"alice": "sk-abc", "bob": "sk-def"}; a bare key is named key1, key2..."""
    keys: dict[str, str] = {}
    for index, entry in enumerate(item.strip() for item in (text or "").split(",")):
        if not entry:
            continue
        name, sep, key = entry.partition(":")
        if not sep:
            name, key = f"key{index + 1}", entry
        name, key = name.strip(), key.strip()
        if not name or not key:
            raise ValueError(f"MSSERVE_API_KEYS entry {index + 1} needs the form name:key")
        if name in keys:
            raise ValueError(f"MSSERVE_API_KEYS names {name!r} twice")
        keys[name] = key
    return keys


@dataclass
class ApiKeys:
    keys: dict[str, str]
    metrics_open: bool = False
    dashboard_open: bool = False
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))  # signs dashboard sessions

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        text = settings.api_keys.get_secret_value() if settings.api_keys else None
        return cls(parse_api_keys(text), settings.metrics_open, settings.dashboard_open)

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def match(self, presented: str | None) -> str | None:
        """The name of the key presented, or None. Compares against every key, without an early exit."""
        if not presented:
            return None
        given = hashlib.sha256(presented.encode()).digest()  # equal lengths for compare_digest
        found: str | None = None
        for name, key in self.keys.items():
            if hmac.compare_digest(given, hashlib.sha256(key.encode()).digest()) and found is None:
                found = name
        return found

    # -- dashboard session: "name.expiry.signature", signed with a per-process secret (the key never leaves JS)
    def session_cookie(self, name: str, now: float | None = None) -> str:
        expiry = int((now or time.time()) + SESSION_TTL_S)
        return f"{name}.{expiry}.{self._sign(name, expiry)}"

    def session_name(self, cookie: str | None, now: float | None = None) -> str | None:
        if not cookie:
            return None
        parts = cookie.rsplit(".", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        name, expiry, signature = parts[0], int(parts[1]), parts[2]
        if not hmac.compare_digest(signature, self._sign(name, expiry)) or expiry < (now or time.time()):
            return None
        return name if name in self.keys else None

    def _sign(self, name: str, expiry: int) -> str:
        return hmac.new(self.secret, f"{name}.{expiry}".encode(), hashlib.sha256).hexdigest()


def presented_key(headers: Headers) -> str | None:
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("api-key") or None


def cookie_value(headers: Headers, name: str) -> str | None:
    for item in headers.get("cookie", "").split(";"):
        key, _, value = item.strip().partition("=")
        if key == name:
            return value
    return None


def is_dashboard_path(path: str) -> bool:
    return path == "/" or path.startswith("/dashboard/")


class AuthMiddleware:
    def __init__(self, app: ASGIApp, keys: ApiKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys.enabled:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        headers = Headers(scope=scope)
        state = scope_state(scope)
        name = self.keys.match(presented_key(headers))
        if name is None and is_dashboard_path(path):
            name = self.keys.session_name(cookie_value(headers, SESSION_COOKIE))
        state["key_name"] = name
        state["authenticated"] = name is not None or self._open(path)
        if state["authenticated"] or path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if path == "/" and scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)  # the dashboard shows its login form (state["authenticated"])
            return
        await send_error(send, AuthenticationError(
            "a valid API key is required: send 'Authorization: Bearer <key>' or an 'api-key' header",
            code="invalid_api_key", headers={"www-authenticate": "Bearer"},
        ))

    def _open(self, path: str) -> bool:
        if path == "/metrics":
            return self.keys.metrics_open
        return is_dashboard_path(path) and self.keys.dashboard_open


def warn_if_exposed(settings: Settings, keys: ApiKeys, logger: logging.Logger) -> bool:
    """Say loudly when the API is reachable from other machines without any key. True when it warned."""
    if keys.enabled:
        return False
    try:
        loopback = ipaddress.ip_address(settings.host.strip("[]")).is_loopback
    except ValueError:
        loopback = settings.host == "localhost"
    if loopback:
        return False
    logger.warning("binding %s with no API keys: anyone who can reach this port can use the model "
                   "(set MSSERVE_API_KEYS=name:key,...)", settings.host)
    return True
