"""Service-level routes: liveness, readiness, and the OpenAPI document at its usual path."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State

from devbox_service.auth.guards import ADMIN, PUBLIC, allow
from devbox_service.backends.base import GarbageReport
from devbox_service.services import AppServices


class Health(msgspec.Struct, frozen=True, kw_only=True):
    status: str
    checks: dict[str, bool] = {}


class HealthController(Controller):
    path = "/health"
    tags = ["health"]

    @get("/", guards=[allow(PUBLIC)])
    async def live(self) -> Health:
        return Health(status="ok")

    @get("/ready", guards=[allow(PUBLIC)])
    async def ready(self, state: State) -> Response[Any]:
        checks = await state.services.readiness()
        ok = all(checks.values())
        return Response(
            Health(status="ready" if ok else "not ready", checks=checks),
            status_code=200 if ok else 503,
        )


@get("/openapi.json", guards=[allow(PUBLIC)], include_in_schema=False)
async def openapi_json(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The generated OpenAPI document (also under /docs/openapi.json, beside the docs UI)."""
    return request.app.openapi_schema.to_schema()


@get("/metrics", guards=[allow(ADMIN)], include_in_schema=False, media_type="text/plain")
async def metrics(state: State) -> str:
    """Prometheus text exposition; service administrators only (their API key)."""
    text: str = await state.services.metrics()
    return text


@post(
    "/api/admin/gc",
    guards=[allow(ADMIN)],
    status_code=200,
    tags=["admin"],
    summary="Collect Garbage",
)
async def collect_garbage(services: AppServices) -> GarbageReport:
    """Remove the VM files nothing references now (also done every
    `DEVBOX_GC_INTERVAL_SECONDS`); service administrators only. What went, and the bytes."""
    return await services.garbage.run_once()
