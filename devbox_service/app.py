"""`create_app(settings)`: the one place where the service's parts are wired together."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin

from devbox_service.auth.guards import GuardServices, current_principal
from devbox_service.auth.routes import AgentTokenController, AuditController
from devbox_service.backends.base import VMBackend
from devbox_service.devbox_templates.routes import TemplateController
from devbox_service.devboxes.routes import (
    DevboxController,
    ImageController,
    SnapshotController,
    SSHCredentialsController,
    upload_router,
)
from devbox_service.http_errors import EXCEPTION_HANDLERS
from devbox_service.instances.routes import ImageCatalogController, InstanceController
from devbox_service.instances.snapshot_routes import SnapshotCatalogController
from devbox_service.logs import request_log_middleware
from devbox_service.notifications.routes import (
    DevboxNotificationController,
    NotificationController,
)
from devbox_service.openapi import declare_errors
from devbox_service.previews.origins import preview_origin_middleware
from devbox_service.previews.routes import HttpServiceController, preview_router
from devbox_service.previews.websocket import preview_socket
from devbox_service.secrets.routes import UserSecretController
from devbox_service.services import Services
from devbox_service.settings import Settings
from devbox_service.sharing.routes import AliasController, ShareController
from devbox_service.system import (
    HealthController,
    ServiceStatus,
    collect_garbage,
    metrics,
    openapi_json,
)
from devbox_service.tmux import routes as tmux_routes
from devbox_service.web.pages import dashboard_router, static_router
from devbox_service.web.render import template_config
from devbox_service.wiring import build_backend

_NOT_GIVEN = object()
SWAGGER_UI = "/static/vendor/swagger-ui"


def create_app(settings: Settings, backend: VMBackend | object | None = _NOT_GIVEN) -> Litestar:
    """Build the ASGI app. Pass `backend` to share one VM backend (tests); the app then
    does not start or close it."""
    owns_backend = backend is _NOT_GIVEN
    vm_backend = build_backend(settings) if owns_backend else backend
    assert vm_backend is None or isinstance(vm_backend, VMBackend)
    services = Services(settings, vm_backend, owns_backend=owns_backend)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        declare_errors(app)
        await services.start()
        try:
            yield
        finally:
            await services.close()

    app = Litestar(
        route_handlers=[
            dashboard_router(),
            static_router(),
            HealthController,
            openapi_json,
            metrics,
            collect_garbage,
            DevboxController,
            upload_router(settings.upload_max_bytes),
            ImageController,
            ImageCatalogController,
            InstanceController,
            SnapshotCatalogController,
            SnapshotController,
            SSHCredentialsController,
            AgentTokenController,
            AuditController,
            UserSecretController,
            DevboxNotificationController,
            NotificationController,
            HttpServiceController,
            TemplateController,
            ShareController,
            AliasController,
            preview_router(settings.upload_max_bytes),
            preview_socket,
            *tmux_routes.route_handlers,
        ],
        dependencies=_dependencies(services),
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[request_log_middleware],
        lifespan=[lifespan],
        state=State({"services": _guarded(services)}),
        request_max_body_size=settings.max_body_bytes,
        template_config=template_config(),
        openapi_config=OpenAPIConfig(
            title="devbox-service",
            version="0.1.0",
            path="/docs",
            render_plugins=[
                SwaggerRenderPlugin(  # served from here: /docs loads no script from elsewhere
                    js_url=f"{SWAGGER_UI}/swagger-ui-bundle.js",
                    css_url=f"{SWAGGER_UI}/swagger-ui.css",
                    standalone_preset_js_url=f"{SWAGGER_UI}/swagger-ui-standalone-preset.js",
                )
            ],
        ),
        logging_config=None,
        debug=False,
    )
    # before routing: a service's own host is served by the preview route
    app.asgi_handler = preview_origin_middleware(settings.preview_origin_domain)(app.asgi_handler)
    return app


def _dependencies(services: Services) -> dict[str, Provide]:
    """What a handler may name as a parameter: the caller, and the one service it calls.

    Each service is read from `services` when a request needs it (they are built when the
    app starts). Each also depends on `principal`, so that Litestar resolves the two one
    after the other: independent dependencies are resolved in a task group per request,
    which costs more than both of them together. Every route's guard leaves a principal
    (the anonymous one on public routes), so this never refuses a request."""
    parts: dict[str, Callable[[], object]] = {
        "settings": lambda: services.settings,
        "service_status": lambda: _status(services),
        "devboxes": lambda: services.devboxes,
        "devbox_views": lambda: services.devbox_views,
        "checkpoints": lambda: services.checkpoints,
        "guest_access": lambda: services.guest_access,
        "uploads": lambda: services.uploads,
        "garbage": lambda: services.garbage,
        "instances": lambda: services.instances,
        "instance_snapshots": lambda: services.instances.snapshots,
        "previews": lambda: services.previews,
        "preview_proxy": lambda: services.preview_proxy,
        "agent_tokens": lambda: services.agent_tokens,
        "secrets": lambda: services.secrets,
        "notifications": lambda: services.notifications,
        "tmux": lambda: services.tmux,
        "templates": lambda: services.templates,
        "sharing": lambda: services.sharing,
        "web_sessions": lambda: services.web_sessions,
        "dashboard": lambda: services.dashboard,
    }
    provided = {
        name: Provide(_after_principal(part), sync_to_thread=False) for name, part in parts.items()
    }
    return {"principal": Provide(current_principal, sync_to_thread=False), **provided}


def _after_principal(part: Callable[[], object]) -> Callable[..., object]:
    def provide(principal: NamedDependency[Any]) -> object:
        return part()

    return provide


def _guarded(services: Services) -> GuardServices:
    """What the access guard reads from the app state; mypy checks Services provides it."""
    return services


def _status(services: Services) -> ServiceStatus:
    """What health and metrics read; mypy checks Services provides it."""
    return services
