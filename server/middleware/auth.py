"""API keys: ``Authorization: Bearer <key>`` or ``api-key: <key>``; 401 in OpenAI's error shape without one.

Keys are named (``alice:sk-abc,bob:sk-def``) so that logs, metrics and per-key limits say who, never the key.
Every configured key is compared, in constant time, on every request. No keys configured: everything is open.

Path classes: ``/health`` and ``/ready`` are always open (probes); ``/metrics`` and the dashboard need a key
unless ``metrics_open`` / ``dashboard_open``; the dashboard also accepts its signed session cookie, and its
page at ``/`` falls through unauthenticated so it can show its login form. ``/admin/*`` needs an admin key
(``MSSERVE_ADMIN_KEYS``; 403 ``admin_required`` for other keys). Everything else needs a key.

Start-up refuses keys that parse to nothing or are malformed (``ApiKeysError``): a typo never means "open".
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import time
from dataclasses import dataclass, field

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from server.config import Settings
from server.errors import AuthenticationError, PermissionDeniedError
from server.middleware._respond import scope_state, send_error

OPEN_PATHS = frozenset({"/health", "/ready", "/dashboard/login", "/dashboard/logout", "/favicon.ico"})
ADMIN_PREFIX = "/admin/"  # operator endpoints (e.g. POST /admin/router/reload): admin keys only, never a cookie
SESSION_COOKIE = "msserve_session"
SESSION_TTL_S = 12 * 3600
MIN_KEY_LENGTH = 16
# A key's name goes into logs, metrics, cookies and MSSERVE_ADMIN_KEYS / MSSERVE_AZURE_KEYS lists.
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


class ApiKeysError(ValueError):
    """MSSERVE_API_KEYS (or a list naming its keys) cannot be used: the server must not start."""


def parse_api_keys(text: str | None) -> dict[str, str]:
    """``"alice:sk-abc...", "bob:sk-def..."`` -> {"alice": ..., "bob": ...}; a bare key is named key1, key2...

    Unset (None) means no keys. Set, it must name at least one well-formed key: a value that parses to nothing
    (``" , "``), an empty or malformed entry, a short key or a repeated name or key is an error, never "no auth".
    Entries split on the first ":" only, so a key may contain ":" when it has a name in front of it.
    Messages name entries by position and name, never by the key.
    """
    if text is None:
        return {}
    if not text.strip():
        raise ApiKeysError("MSSERVE_API_KEYS is set but names no key; unset it to run without keys")
    keys: dict[str, str] = {}
    for index, entry in enumerate(item.strip() for item in text.split(",")):
        where = f"MSSERVE_API_KEYS entry {index + 1}"
        if not entry:
            raise ApiKeysError(f"{where} is empty (a stray comma, or a variable that expanded to nothing?)")
        name, sep, key = entry.partition(":")
        name, key = name.strip(), key.strip()
        if not sep:
            name, key = f"key{index + 1}", entry
        elif not _NAME.fullmatch(name):
            raise ApiKeysError(
                f"{where}: {'an empty' if not name else 'an invalid'} name before the first ':'. Entries are "
                "name:key (names: 1-64 of A-Z a-z 0-9 _ . @ -); a key that contains ':' needs a name in front")
        elif name.lower().startswith(("sk-", "sk_")):
            raise ApiKeysError(f"{where}: the part before the first ':' looks like a key, not a name; a key that "
                               "contains ':' needs a name in front (name:key)")
        if not key:
            raise ApiKeysError(f"{where} ({name}) has no key after the ':'")
        if len(key) < MIN_KEY_LENGTH:
            raise ApiKeysError(f"{where} ({name}): the key is {len(key)} characters; keys need at least "
                               f"{MIN_KEY_LENGTH} (e.g. sk- and 32 random hex digits)")
        if any(ch.isspace() or not ch.isprintable() for ch in key):
            raise ApiKeysError(f"{where} ({name}): the key contains spaces or control characters")
        if name in keys:
            raise ApiKeysError(f"MSSERVE_API_KEYS names {name!r} twice")
        if key in keys.values():
            raise ApiKeysError(f"{where} ({name}) repeats another entry's key: each name needs its own key")
        keys[name] = key
    return keys


def _named(setting: str, names: list[str] | None, keys: dict[str, str]) -> frozenset[str] | None:
    if names is None:
        return None
    if names and not keys:
        raise ApiKeysError(f"{setting} names keys, but MSSERVE_API_KEYS is not set")
    unknown = [name for name in names if name not in keys]
    if unknown:
        raise ApiKeysError(f"{setting} names {', '.join(map(repr, unknown))}, not a key name in MSSERVE_API_KEYS "
                           f"(known: {', '.join(keys) or 'none'})")
    return frozenset(names)


@dataclass
class ApiKeys:
    keys: dict[str, str]
    metrics_open: bool = False
    dashboard_open: bool = False
    admins: frozenset[str] = frozenset()  # key names with the operator's view and endpoints
    azure_allowed: frozenset[str] | None = None  # key names that may force Azure; None: every key
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))  # signs dashboard sessions

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        """The keys and who may do what; raises ``ApiKeysError`` (start-up stops) on anything malformed."""
        text = settings.api_keys.get_secret_value() if settings.api_keys is not None else None
        keys = parse_api_keys(text)
        admins = _named("MSSERVE_ADMIN_KEYS", settings.admin_keys, keys) or frozenset()
        azure = _named("MSSERVE_AZURE_KEYS", settings.azure_keys, keys)
        made = cls(keys, settings.metrics_open, settings.dashboard_open, admins, azure)
        if keys:  # sessions exist only with keys; without, no need to ask Redis
            made.secret = session_secret(settings)
        return made

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def is_admin(self, name: str | None) -> bool:
        """Without keys the server has one tenant, its operator; with keys, only the names in admin_keys."""
        return not self.enabled or (name is not None and name in self.admins)

    def may_force_azure(self, name: str | None) -> bool:
        return not self.enabled or self.azure_allowed is None or (name is not None and name in self.azure_allowed)

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

    # -- dashboard session: "name.expiry.signature", signed with ``secret`` (``session_secret``; the key never
    # leaves JS).
    # The expiry is absolute: only presenting the key itself (POST /dashboard/login) makes a new session.
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


def session_secret(settings: Settings) -> bytes:
    """What signs dashboard sessions. Every replica must use the same one for a cookie to work on all of them:
    ``MSSERVE_DASHBOARD_SESSION_SECRET`` (from a Kubernetes Secret), else one kept in Redis when
    ``MSSERVE_REDIS_URL`` is set (the first replica makes it), else a random one per process (one box; a restart
    logs the dashboard out)."""
    if settings.dashboard_session_secret is not None:
        return settings.dashboard_session_secret.get_secret_value().encode()
    if settings.redis_url is not None:
        from server.state.redis_store import RedisUnavailable, shared_secret  # the redis package is an extra

        try:
            return shared_secret(settings.redis_url.get_secret_value(), settings.redis_timeout_s,
                                 "dashboard-session").encode()
        except RedisUnavailable:
            logging.getLogger(__name__).warning(
                "Redis unavailable at start-up: dashboard sessions are signed with a secret of this process only, "
                "so other replicas will not accept its cookies (set MSSERVE_DASHBOARD_SESSION_SECRET)")
    return secrets.token_bytes(32)


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


def is_admin_path(path: str) -> bool:
    return path.startswith(ADMIN_PREFIX) or path == ADMIN_PREFIX.rstrip("/")


class AuthMiddleware:
    """Sets, for the handlers: ``key_name``, ``auth_via`` ("key" or "session"), ``authenticated`` and ``admin``."""

    def __init__(self, app: ASGIApp, keys: ApiKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope_state(scope)
        if not self.keys.enabled:
            state.update(key_name=None, auth_via=None, authenticated=True, admin=True)
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        headers = Headers(scope=scope)
        name = self.keys.match(presented_key(headers))
        via = "key" if name is not None else None
        if name is None and is_dashboard_path(path):
            name = self.keys.session_name(cookie_value(headers, SESSION_COOKIE))
            via = "session" if name is not None else None
        state.update(key_name=name, auth_via=via, admin=self.keys.is_admin(name))
        state["authenticated"] = name is not None or self._open(path)
        if is_admin_path(path) and not state["admin"]:
            await send_error(send, self._refusal(name, "this endpoint is for admin keys (MSSERVE_ADMIN_KEYS)"))
            return
        if state["authenticated"] or path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if path == "/" and scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)  # the dashboard shows its login form (state["authenticated"])
            return
        await send_error(send, self._refusal(None, ""))

    @staticmethod
    def _refusal(name: str | None, why: str) -> AuthenticationError | PermissionDeniedError:
        if name is not None:
            return PermissionDeniedError(f"API key {name!r} may not do this: {why}", code="admin_required")
        return AuthenticationError(
            "a valid API key is required: send 'Authorization: Bearer <key>' or an 'api-key' header",
            code="invalid_api_key", headers={"www-authenticate": "Bearer"},
        )

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
