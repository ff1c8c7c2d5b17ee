"""Signing in to the dashboard with an API key, and out again.

The sign-in form is protected from cross-site posts before any session exists by a
double-submit token: a random cookie set with the form, and its derived token in a hidden
field. The session cookie is HttpOnly and SameSite=Lax, Secure when the service is served
over https, and lives as long as the session.
"""

from __future__ import annotations

import secrets
import time
from typing import Any
from urllib.parse import urlsplit

from litestar import Request, get, post
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.params import FromQuery
from litestar.response import Redirect, Template

from devbox_service.auth.guards import PAGE, PUBLIC, allow
from devbox_service.auth.web_sessions import (
    SESSION_COOKIE,
    SIGN_IN_COOKIE,
    WebSessions,
    check_csrf,
    csrf_token,
)
from devbox_service.errors import DevboxServiceError
from devbox_service.http_errors import status_for
from devbox_service.settings import Settings
from devbox_service.web.render import form_text, page

SIGN_IN_FORM_SECONDS = 3600


def _secure(request: Request[Any, Any, Any], settings: Settings) -> bool:
    return request.url.scheme == "https" or settings.base_url.startswith("https:")


def _safe_next(target: str) -> str:
    """Only a path on this site (no open redirect to another one)."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/devboxes"
    return target


def _sign_in_form(
    request: Request[Any, Any, Any],
    settings: Settings,
    next_path: str,
    error: str | None = None,
    status_code: int = 200,
) -> Template:
    form_secret = secrets.token_urlsafe(24)
    response = page(
        request,
        "sign_in.html",
        status_code=status_code,
        form_token=csrf_token(form_secret),
        next_path=_safe_next(next_path),
        error=error,
    )
    response.cookies.append(
        Cookie(
            key=SIGN_IN_COOKIE,
            value=form_secret,
            max_age=SIGN_IN_FORM_SECONDS,
            path="/sign-in",
            httponly=True,
            samesite="strict",
            secure=_secure(request, settings),
        )
    )
    return response


@get("/sign-in", guards=[allow(PUBLIC)], include_in_schema=False)
async def sign_in_form(
    request: Request[Any, Any, Any],
    settings: NamedDependency[Settings],
    next: FromQuery[str] = "/devboxes",
) -> Template:
    return _sign_in_form(request, settings, next)


@post("/sign-in", guards=[allow(PUBLIC)], include_in_schema=False, status_code=303)
async def sign_in(
    request: Request[Any, Any, Any],
    settings: NamedDependency[Settings],
    web_sessions: NamedDependency[WebSessions],
) -> Template | Redirect:
    form = await request.form()
    next_path = form_text(form, "next", 2000) or "/devboxes"
    try:
        check_csrf(request.cookies.get(SIGN_IN_COOKIE), form_text(form, "csrf_token", 200))
        signed_in = await web_sessions.sign_in(form_text(form, "api_key", 500))
    except DevboxServiceError as exc:
        return _sign_in_form(
            request, settings, next_path, error=exc.message, status_code=status_for(exc)
        )
    response = Redirect(_safe_next(next_path), status_code=303)
    response.cookies.append(
        Cookie(
            key=SESSION_COOKIE,
            value=signed_in.secret,
            max_age=int(signed_in.expires_at - time.time()),
            path="/",
            httponly=True,
            samesite="lax",
            secure=_secure(request, settings),
        )
    )
    response.delete_cookie(SIGN_IN_COOKIE, path="/sign-in")
    return response


@post("/sign-out", guards=[allow(PAGE)], include_in_schema=False, status_code=303)
async def sign_out(
    request: Request[Any, Any, Any], web_sessions: NamedDependency[WebSessions]
) -> Redirect:
    await web_sessions.sign_out(request.cookies.get(SESSION_COOKIE))
    response = Redirect("/sign-in", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
