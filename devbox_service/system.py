"""Service-level routes: liveness, readiness, and the OpenAPI document at its usual path."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency

from devbox_service.auth.guards import ADMIN, PUBLIC, allow
from devbox_service.backends.base import GarbageReport
from devbox_service.devboxes.background import GarbageCollector


@runtime_checkable  # a dependency's value is checked against its type
class ServiceStatus(Protocol):
    """What the health, metrics and landing routes read of the running service as a whole."""

    async def readiness(self) -> dict[str, bool]: ...

    async def metrics(self) -> str: ...

    @property
    def ssh_port(self) -> int: ...


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
    async def ready(self, service_status: NamedDependency[ServiceStatus]) -> Response[Any]:
        checks = await service_status.readiness()
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
async def metrics(service_status: NamedDependency[ServiceStatus]) -> str:
    """Prometheus text exposition; service administrators only (their API key)."""
    return await service_status.metrics()


@post(
    "/api/admin/gc",
    guards=[allow(ADMIN)],
    status_code=200,
    tags=["admin"],
    summary="Collect Garbage",
)
async def collect_garbage(garbage: NamedDependency[GarbageCollector]) -> GarbageReport:
    """Remove the VM files nothing references now (also done every
    `DEVBOX_GC_INTERVAL_SECONDS`); service administrators only. What went, and the bytes."""
    return await garbage.run_once()
