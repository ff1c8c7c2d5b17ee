"""`create_app(settings)`: the one place where the service's parts are wired together."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
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
from devbox_service.instances.routes import (
    ImageCatalogController,
    InstanceController,
    SnapshotCatalogController,
)
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
from devbox_service.system import HealthController, collect_garbage, metrics, openapi_json
from devbox_service.tmux import routes as tmux_routes
from devbox_service.web.pages import dashboard_router, static_router
from devbox_service.web.render import template_config
from devbox_service.wiring import build_backend

_NOT_GIVEN = object()


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
        dependencies={
            "principal": Provide(current_principal, sync_to_thread=False),
            "services": Provide(lambda: services, sync_to_thread=False),
        },
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
            render_plugins=[SwaggerRenderPlugin()],
        ),
        logging_config=None,
        debug=False,
    )
    # before routing: a service's own host is served by the preview route
    app.asgi_handler = preview_origin_middleware(settings.preview_origin_domain)(app.asgi_handler)
    return app


def _guarded(services: Services) -> GuardServices:
    """What the access guard reads from the app state; mypy checks Services provides it."""
    return services
