"""The dashboard's routes in one Router: pages answer errors as pages, carry the page
security headers, and serve the static folder (scripts, styles, the vendored xterm.js)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Router, get
from litestar.di import NamedDependency
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router

from devbox_service.auth.guards import PUBLIC, allow, signed_in
from devbox_service.errors import NotAuthenticated
from devbox_service.settings import Settings
from devbox_service.system import ServiceStatus
from devbox_service.web import devbox_pages, sign_in, template_pages
from devbox_service.web.render import PAGE_EXCEPTION_HANDLERS, PAGE_HEADERS, STATIC_DIR, page


@get("/", guards=[allow(PUBLIC)], include_in_schema=False)
async def index(
    request: Request[Any, Any, Any],
    settings: NamedDependency[Settings],
    service_status: NamedDependency[ServiceStatus],
) -> Template | Redirect:
    """Where a browser pointed at the service lands: the dashboard when signed in; otherwise
    how to reach the service, and whether it is ready."""
    try:
        await signed_in(request)
        return Redirect("/devboxes", status_code=303)
    except NotAuthenticated:
        pass
    checks = await service_status.readiness()
    return page(
        request,
        "index.html",
        ready=all(checks.values()),
        base_url=settings.base_url,
        ssh_host=settings.ssh_host,
        ssh_port=service_status.ssh_port,
    )


def dashboard_router() -> Router:
    return Router(
        path="/",
        route_handlers=[
            index,
            sign_in.sign_in_form,
            sign_in.sign_in,
            sign_in.sign_out,
            devbox_pages.devbox_list,
            devbox_pages.devbox_list_events,
            devbox_pages.devbox_page,
            devbox_pages.devbox_terminals,
            devbox_pages.devbox_action,
            devbox_pages.confirm_delete,
            devbox_pages.revoke_agent_token,
            devbox_pages.pane_stream,
            devbox_pages.pane_keys,
            template_pages.template_list,
            template_pages.template_page,
            template_pages.build_template,
            template_pages.build_page,
            template_pages.build_events,
            template_pages.answer_secret,
            template_pages.start_from_template,
            template_pages.share_page,
            template_pages.start_from_share,
        ],
        exception_handlers=PAGE_EXCEPTION_HANDLERS,
        response_headers=PAGE_HEADERS,
        include_in_schema=False,
    )


def static_router() -> Router:
    return create_static_files_router(
        path="/static",
        directories=[STATIC_DIR],
        guards=[allow(PUBLIC)],
        include_in_schema=False,
        cache_control=None,
    )
