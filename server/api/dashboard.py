"""The dashboard at ``/``: one server-rendered page (no build step, no external assets) plus a JSON feed.

The page shows recent requests with their routing, the escalation rate, spend and savings, the engine's
state, and an upload box that posts to ``/v1/captions``. Its script and style are inlined under a per-response
CSP nonce; every value is escaped on the server and set with ``textContent`` in the browser.

Access (see server.middleware.auth): with API keys configured and ``dashboard_open`` off, ``/`` shows a login
form; the key entered stays in the tab's sessionStorage (the upload sends it as a Bearer token) and
``/dashboard/login`` sets a signed, HttpOnly, SameSite=Strict cookie naming the key for the page itself. Only
the key itself signs in: a session never renews itself, so it ends at its absolute expiry.

Tenants: an admin key (``MSSERVE_ADMIN_KEYS``), or any visitor when no keys are configured, sees every request
(the all-tenant view); any other key sees only its own requests, and totals computed over them alone.
"""

from __future__ import annotations

import html
import secrets
import time
from functools import cache
from importlib.resources import files
from string import Template
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from server.api.error_responses import documented
from server.api.permissions import is_admin, key_name
from server.errors import AuthenticationError
from server.middleware.auth import SESSION_COOKIE, SESSION_TTL_S, ApiKeys
from server.telemetry import Telemetry

router = APIRouter()
ASSETS = files("server.api") / "dashboard_assets"  # package data: a wheel install ships them
_UNAUTHORIZED = documented(401)
_TENANT_TOTALS = ("spend_azure_usd", "cost_local_usd", "savings_usd")  # all tenants' money: admins only


@cache
def _asset(name: str) -> str:
    return ASSETS.joinpath(name).read_text(encoding="utf-8")


def _csp(nonce: str) -> str:
    return (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
            "img-src 'self' data: blob:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:.4f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{1000 * value:.0f} ms" if value < 1 else f"{value:.2f} s"


def _row(r: dict[str, Any]) -> str:
    tokens = None if r["prompt_tokens"] is None else f"{r['prompt_tokens']} / {r['completion_tokens']}"
    status = f"{r['status']} {r['error']}" if r["error"] else str(r["status"])
    cells = [
        (r["request_id"][:12], ""), (r["endpoint"], ""), (r["key"], ""), (status, ""),
        (r["tier"], f"tier-{r['tier']}" if r["tier"] else ""), (r["reason"], "reason"),
        (None if r["score"] is None else f"{r['score']:.3f}", ""), (_secs(r["ttft_s"]), ""), (_secs(r["e2e_s"]), ""),
        (tokens, ""), (_money(r["cost_usd"]), ""),
    ]
    out = [f"<td>{time.strftime('%H:%M:%S', time.localtime(r['ts']))}</td>"]
    for text, css in cells:
        attr = f' class="{css}"' if css else ""
        out.append(f"<td{attr}>{html.escape('-' if text is None else str(text))}</td>")
    return f'<tr data-request-id="{html.escape(r["request_id"])}">{"".join(out)}</tr>'


def _dashboard_body(state: dict[str, Any]) -> str:
    engine = state["engine"]
    values = {
        "requests": state["decisions"]["local"] + state["decisions"]["azure"],
        "escalation": _pct(state["escalation_rate"]),
        "escalation_recent": _pct(state["recent_escalation_rate"]),
        "spend": _money(state["spend_azure_usd"]),
        "savings": _money(state["savings_usd"]),
        "engine_state": "draining" if state["draining"] else engine["state"],
        "engine_load": f"{engine['running']} running, {engine['waiting']} waiting",
        "breaker": state["breaker"] if state["azure_configured"] else "not configured",
        "scope": "all keys" if state.get("view", "all") == "all" else "this key's only",
    }
    escaped = {name: html.escape(str(value)) for name, value in values.items()}
    rows = "".join(_row(r) for r in state["recent"])
    return Template(_asset("dashboard.html")).substitute(escaped, rows=rows)


def tenant_view(state: dict[str, Any], request: Request) -> dict[str, Any]:
    """The snapshot this caller may see: all of it for admins, else its own requests and totals over them."""
    if is_admin(request):
        return {**state, "view": "all"}
    name = key_name(request)
    own = [row for row in state["recent"] if name is not None and row["key"] == name]
    routed = [row for row in own if row["tier"] in ("local", "azure")]
    decisions = {"local": sum(row["tier"] == "local" for row in routed),
                 "azure": sum(row["tier"] == "azure" for row in routed)}
    rate = decisions["azure"] / len(routed) if routed else None
    spend = sum(row["cost_usd"] or 0.0 for row in routed if row["tier"] == "azure")
    view = {**state, "view": "own", "recent": own, "decisions": decisions, "escalation_rate": rate,
            "recent_escalation_rate": rate}
    view.update(dict.fromkeys(_TENANT_TOTALS))
    view["spend_azure_usd"] = spend
    return view


@router.get("/", response_class=HTMLResponse, include_in_schema=True,
            responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}, "description": "dashboard"}})
async def dashboard(request: Request) -> HTMLResponse:
    telemetry: Telemetry = request.app.state.telemetry
    keys: ApiKeys = request.app.state.api_keys
    signed_in = bool(getattr(request.state, "authenticated", True)) or not keys.enabled
    nonce = secrets.token_urlsafe(16)
    body = _dashboard_body(tenant_view(telemetry.snapshot(), request)) if signed_in else _asset("login.html")
    logout = '<button id="logout" type="button">sign out</button>' if keys.enabled and signed_in else ""
    page = Template(_asset("page.html")).substitute(
        nonce=nonce, css=_asset("dashboard.css"), js=_asset("dashboard.js"), body=body, logout=logout,
        model=html.escape(telemetry.services.engine.name), auth="required" if keys.enabled else "none",
        view="dashboard" if signed_in else "login",
    )
    headers = {"content-security-policy": _csp(nonce), "x-content-type-options": "nosniff",
               "referrer-policy": "no-referrer", "cache-control": "no-store"}
    return HTMLResponse(page, headers=headers)


@router.get("/dashboard/api/state", responses=_UNAUTHORIZED)
async def dashboard_state(request: Request) -> JSONResponse:
    telemetry: Telemetry = request.app.state.telemetry
    return JSONResponse(tenant_view(telemetry.snapshot(), request), headers={"cache-control": "no-store"})


@router.post("/dashboard/login", status_code=204, response_class=Response, responses=_UNAUTHORIZED)
async def dashboard_login(request: Request) -> Response:
    """Exchange a valid API key (Authorization: Bearer / api-key header) for a signed session cookie."""
    keys: ApiKeys = request.app.state.api_keys
    if not keys.enabled:
        return Response(status_code=204)
    name = key_name(request)
    if name is None or getattr(request.state, "auth_via", None) != "key":
        # A session cookie must not buy a new session: its lifetime is absolute, the key is needed again.
        raise AuthenticationError("sign in with an API key (a session cannot renew itself)", code="invalid_api_key")
    response = Response(status_code=204)
    response.set_cookie(SESSION_COOKIE, keys.session_cookie(name), max_age=SESSION_TTL_S, path="/", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return response


@router.post("/dashboard/logout", status_code=204, response_class=Response)
async def dashboard_logout() -> Response:
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response
