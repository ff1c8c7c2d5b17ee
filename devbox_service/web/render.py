"""How pages are answered: templates with the signed-in user and the form token, errors as
pages (their status from the one error table), and the sign-in redirect."""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from litestar import MediaType, Request, Response
from litestar.datastructures import ResponseHeader
from litestar.exceptions import HTTPException, ValidationException
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.template.config import TemplateConfig

from devbox_service import errors
from devbox_service.auth.guards import principal_of_scope
from devbox_service.auth.models import Principal
from devbox_service.auth.web_sessions import SESSION_COOKIE, SignInRequired, csrf_token
from devbox_service.http_errors import status_for

TEMPLATE_DIR = Path(__file__).parent / "templates"  # the top-level templates/, linked in
STATIC_DIR = Path(__file__).parent / "static"

PAGE_HEADERS = [
    ResponseHeader(
        name="Content-Security-Policy",
        value="default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
    ResponseHeader(name="X-Frame-Options", value="DENY"),
    ResponseHeader(name="Referrer-Policy", value="same-origin"),
    ResponseHeader(name="X-Content-Type-Options", value="nosniff"),
    ResponseHeader(name="Cache-Control", value="no-store"),
]
"""Every page: no framing (clickjacking), scripts only from this origin, nothing cached."""


def age(timestamp: float | None) -> str:
    """'3 min', '2 h', '5 d': how long ago."""
    if not timestamp:
        return ""
    seconds = max(0, int(time.time() - timestamp))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def when(timestamp: float | None) -> str:
    if not timestamp:
        return ""
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def path_segment(value: object) -> str:
    """A value as one URL path segment (`/`, `?`, `#`, `%` encoded), so a value cannot add
    segments or a query to a page's URL. A browser still reads a lone `..` (even encoded)
    as a step up: values from guests are checked where they enter (`tmux.pane`)."""
    return quote(str(value), safe="")


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    def register(engine: JinjaTemplateEngine) -> None:
        engine.engine.filters["age"] = age
        engine.engine.filters["when"] = when
        engine.engine.filters["path_segment"] = path_segment

    return TemplateConfig(
        directory=TEMPLATE_DIR, engine=JinjaTemplateEngine, engine_callback=register
    )


def session_form_token(request: Request[Any, Any, Any]) -> str:
    """The CSRF token of the request's session ('' without one)."""
    secret = request.cookies.get(SESSION_COOKIE)
    return csrf_token(secret) if secret else ""


def page(
    request: Request[Any, Any, Any],
    template_name: str,
    status_code: int = 200,
    signed_in_user: Principal | None = None,
    **context: Any,
) -> Template:
    """A page with what the layout needs: who is signed in (the route's guard said, or a
    public page found out) and this session's form token."""
    principal = signed_in_user or principal_of_scope(request.scope)
    return Template(
        template_name=template_name,
        status_code=status_code,
        context={
            "user": principal,
            "csrf_token": session_form_token(request) if principal else "",
            "notice": context.pop("notice", None),
            **context,
        },
    )


def form_text(form: Any, name: str, max_length: int = 200) -> str:
    """A text field of a submitted form ('' when absent); InvalidInput when too long."""
    value = form.get(name, "")
    if not isinstance(value, str):
        raise errors.InvalidInput(f"'{name}' must be text")
    if len(value) > max_length:
        raise errors.InvalidInput(f"'{name}' is longer than {max_length} characters")
    return value.strip()


def render_row(request: Request[Any, Any, Any], principal: Principal, row: Any) -> str:
    """One devbox row as HTML (the list page and its live updates share this template)."""
    engine = request.app.template_engine
    assert engine is not None
    html: str = engine.get_template("_devbox_row.html").render(
        row=row, user=principal, csrf_token=session_form_token(request)
    )
    return html


def render_terminal(
    request: Request[Any, Any, Any], devbox_id: str, pane: Any, *, may_type: bool
) -> str:
    """One pane's terminal view as HTML (the devbox page and its live updates share it)."""
    engine = request.app.template_engine
    assert engine is not None
    html: str = engine.get_template("_terminal.html").render(
        pane=pane,
        devbox_id=devbox_id,
        may_type=may_type,
        screens={},
        csrf_token=session_form_token(request),
    )
    return html


def _error_page(request: Request[Any, Any, Any], status: int, message: str) -> Response[Any]:
    if "text/html" not in request.headers.get("accept", "text/html"):
        return Response({"detail": message}, status_code=status, media_type=MediaType.JSON)
    response = page(request, "error.html", status_code=status, status=status, message=message)
    # An exception handler's response skips the router's response_headers: add them here.
    response.headers.update({header.name: header.value for header in PAGE_HEADERS})
    return response


def page_domain_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """A page's error in words; no session sends a browser to sign in (and back after)."""
    if isinstance(exc, SignInRequired) and request.method == "GET":
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        response: Response[Any] = Redirect(f"/sign-in?next={quote(target)}", status_code=303)
        return response
    return _error_page(request, status_for(exc), getattr(exc, "message", str(exc)))


def page_validation_error(
    request: Request[Any, Any, Any], exc: ValidationException
) -> Response[Any]:
    return _error_page(request, 400, f"the request is not valid: {exc.detail}")


def page_http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    return _error_page(request, exc.status_code, exc.detail)


PAGE_EXCEPTION_HANDLERS: dict[type[Exception] | int, Any] = {
    errors.DevboxServiceError: page_domain_error,
    ValidationException: page_validation_error,
    HTTPException: page_http_error,
}
